"""The voxel grid of a phantom case in the patient frame (LPS axes, origin at the grid's physical centre), and
index boxes on it. Boxes are numpy (k, j, i) slices of the SimpleITK array order."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.errors import InputError

FOV_MM = (360.0, 232.0, 144.0)  # default field of view (x, y, z), mm
DEFAULT_SHAPE = (360, 232, 120)  # default grid, voxels (i, j, k): 1.0 x 1.0 x 1.2 mm
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
Box = tuple[slice, slice, slice]  # numpy (k, j, i) slices of the SimpleITK array order


@dataclass(frozen=True)
class Grid:
    size: tuple[int, int, int]  # (I, J, K)
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray  # 3x3, columns = index axes in LPS

    @property
    def matrix(self) -> np.ndarray:
        """Index (i, j, k) -> LPS mm offset from the origin."""
        return self.direction * self.spacing[None, :]

    @property
    def centre(self) -> np.ndarray:
        return self.origin + self.matrix @ ((np.array(self.size) - 1) / 2.0)

    @property
    def full(self) -> Box:
        return (slice(0, self.size[2]), slice(0, self.size[1]), slice(0, self.size[0]))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size[2], self.size[1], self.size[0])

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient-frame coordinates (mm from the grid centre) of the voxels of ``box``, float32.

        Each is broadcastable to the box shape; terms with a zero direction entry are left out, so an
        axis-aligned grid yields 1D-like arrays and the cost of full 3D arrays is paid only when needed.
        """
        idx = [np.arange(box[2 - n].start, box[2 - n].stop, dtype=np.float64) for n in range(3)]
        shapes = [(1, 1, -1), (1, -1, 1), (-1, 1, 1)]
        base = self.origin - self.centre
        out = []
        for a in range(3):
            value: np.ndarray | float = np.float32(base[a])
            for n in range(3):
                if self.matrix[a, n] != 0.0:
                    value = value + (self.matrix[a, n] * idx[n]).astype(np.float32).reshape(shapes[n])
            out.append(np.asarray(value, dtype=np.float32))
        return out[0], out[1], out[2]

    def box(self, lo: np.ndarray, hi: np.ndarray) -> Box | None:
        """The smallest index box covering the patient-frame box [lo, hi] (mm), None if outside."""
        corners = np.array(list(itertools.product(*zip(lo, hi))))
        cont = np.linalg.solve(self.matrix, (corners + self.centre - self.origin).T)
        start = np.maximum(np.floor(cont.min(axis=1)).astype(int) - 1, 0)
        stop = np.minimum(np.ceil(cont.max(axis=1)).astype(int) + 2, np.array(self.size))
        if np.any(stop <= start):
            return None
        return (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0]))

    def index_of(self, point: np.ndarray) -> tuple[int, int, int] | None:
        """Numpy (k, j, i) index of the voxel containing the patient-frame ``point``, None outside."""
        ijk = np.rint(np.linalg.solve(self.matrix, point + self.centre - self.origin)).astype(int)
        if np.any(ijk < 0) or np.any(ijk >= np.array(self.size)):
            return None
        return (int(ijk[2]), int(ijk[1]), int(ijk[0]))

    def image(self, array: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(self.spacing.tolist())
        img.SetOrigin(self.origin.tolist())
        img.SetDirection(self.direction.ravel().tolist())
        return img


def resolve_grid(shape: tuple[int, int, int] | None = None, spacing: tuple[float, float, float] | None = None,
                 origin: tuple[float, float, float] | None = None, direction: tuple[float, ...] = IDENTITY) -> Grid:
    """The checked grid of ``shape`` (i, j, k) voxels at ``spacing`` mm, ``origin`` LPS mm of voxel (0, 0, 0),
    ``direction`` 3x3 row-major. Missing ``shape``/``spacing`` keep the field of view :data:`FOV_MM`; a missing
    ``origin`` centres the grid on the LPS point (0, 0, 0)."""
    fov = np.array(FOV_MM)
    if spacing is not None:
        step = np.array(spacing, dtype=float)
        if step.shape != (3,) or np.any(step <= 0) or not np.all(np.isfinite(step)):
            raise InputError("--spacing", f"expected three positive numbers (mm), got {spacing}")
    if shape is not None:
        size = np.array(shape, dtype=int)
    else:
        size = np.array(DEFAULT_SHAPE) if spacing is None else np.rint(fov / step).astype(int)
    if size.shape != (3,) or np.any(size < 4):
        raise InputError("--shape", f"expected three sizes of at least 4 voxels, got {tuple(size.tolist())}")
    if spacing is None:
        step = fov / size
    axes = np.array(direction, dtype=float)
    if axes.shape != (9,):
        raise InputError("direction", "expected 9 numbers (3x3 row-major)")
    axes = axes.reshape(3, 3)
    if not np.allclose(axes.T @ axes, np.eye(3), atol=1e-4):
        raise InputError("direction", "the direction matrix is not orthonormal")
    grid = Grid(tuple(int(s) for s in size), step, np.zeros(3), axes)
    corner = -grid.centre if origin is None else np.array(origin, dtype=float)
    return Grid(grid.size, step, corner, axes)


def canonical_normal(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    """Standard normal noise drawn in the order of the nearest axial LPS grid, returned in storage
    (k, j, i) order: the same physical voxel gets the same value however a grid is flipped/permuted."""
    axis = np.abs(grid.direction).argmax(axis=0)  # physical axis of each index axis
    sign = np.sign(grid.direction[axis, [0, 1, 2]])
    if len(set(axis.tolist())) < 3:
        return rng.standard_normal(grid.shape, dtype=np.float32)
    canon_shape = [0, 0, 0]
    for n in range(3):
        canon_shape[2 - axis[n]] = grid.size[n]
    noise = rng.standard_normal(tuple(canon_shape), dtype=np.float32)
    noise = noise.transpose([2 - axis[2 - a] for a in range(3)])
    flips = tuple(a for a in range(3) if sign[2 - a] < 0)
    return np.flip(noise, axis=flips) if flips else noise


def intersect(a: Box, b: Box) -> Box | None:
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return None if any(s.stop <= s.start for s in out) else out


def local(inner: Box, outer: Box) -> Box:
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))
