"""The exact voxel copy between coinciding lattices equals SimpleITK's nearest-neighbour Resample."""

import itertools

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.pipeline.grids import coverage, lattice_aligned, resample, values_on

DIRECTION = np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], float)


def source_image(rng) -> sitk.Image:
    image = sitk.GetImageFromArray(rng.normal(size=(9, 7, 5)).astype(np.float32))
    image.SetSpacing((1.5, 2.0, 2.5))
    image.SetOrigin((3.0, -2.0, 7.0))
    image.SetDirection(DIRECTION.ravel().tolist())
    return image


def aligned_grids(image: sitk.Image, rng):
    """Grids over every signed axis permutation of ``image``'s lattice, random sizes and integer offsets
    (some overlapping fully, some partly, some not at all)."""
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product([1, -1], repeat=3):
            p = np.zeros((3, 3))
            for row, col in enumerate(perm):
                p[col, row] = signs[row]
            grid = sitk.Image([int(n) for n in rng.integers(2, 12, 3)], sitk.sitkUInt8)
            grid.SetSpacing(np.array(image.GetSpacing())[list(perm)].tolist())
            grid.SetDirection((DIRECTION @ p).ravel().tolist())
            grid.SetOrigin(image.TransformIndexToPhysicalPoint([int(n) for n in rng.integers(-6, 12, 3)]))
            yield grid
    window = sitk.Image([3, 4, 5], sitk.sitkUInt8)  # a crop window inside the volume
    window.SetSpacing(image.GetSpacing())
    window.SetDirection(image.GetDirection())
    window.SetOrigin(image.TransformIndexToPhysicalPoint([1, 2, 3]))
    yield window


def nearest(image: sitk.Image, grid: sitk.Image, pixel) -> np.ndarray:
    resampled = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, pixel)
    return sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)


def test_copy_on_coinciding_lattices_equals_sitk_resample():
    rng = np.random.default_rng(0)
    image = source_image(rng)
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    overlaps = set()
    for grid in aligned_grids(image, rng):
        assert lattice_aligned(image, grid)
        expected = nearest(image, grid, sitk.sitkFloat32)
        np.testing.assert_array_equal(values_on(image, grid), expected)
        inside = nearest(ones, grid, sitk.sitkUInt8).astype(bool)
        np.testing.assert_array_equal(coverage(image, grid), inside)
        overlaps.add("none" if not inside.any() else "full" if inside.all() else "part")
    assert overlaps == {"none", "full", "part"}


def test_other_lattices_are_resampled_linearly():
    rng = np.random.default_rng(1)
    image = source_image(rng)
    grid = sitk.Image([6, 5, 4], sitk.sitkUInt8)
    grid.SetSpacing((1.1, 1.7, 2.3))
    grid.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([0.4, 0.3, 0.2]))
    assert not lattice_aligned(image, grid)
    linear = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    np.testing.assert_array_equal(values_on(image, grid), sitk.GetArrayFromImage(linear).transpose(2, 1, 0))


def test_resample_onto_its_own_grid_is_the_image_itself():
    image = source_image(np.random.default_rng(5))
    grid = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    grid.CopyInformation(image)
    assert resample(image, grid) is image  # float32 already: no copy
    label = resample(image > 0, grid, label=True)
    assert label.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(image) > 0)
    shifted = sitk.Image(grid)
    shifted.SetOrigin(image.TransformIndexToPhysicalPoint([1, 0, 0]))
    moved = resample(image, shifted)  # the same lattice, shifted by one voxel: not the same grid
    assert moved is not image
    assert np.array_equal(sitk.GetArrayFromImage(moved)[:, :, :-1], sitk.GetArrayFromImage(image)[:, :, 1:])
