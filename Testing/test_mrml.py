"""BreastCMSLLib.mrml on a real vtkMRMLScene (slicer-core wheel): geometry, analyze_nodes, evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from BreastCMSLLib import mrml


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_image(size=(7, 5, 4), spacing=(0.8, 1.3, 2.7), origin=(-31.5, 12.25, 40.0)) -> sitk.Image:
    array = np.random.default_rng(3).normal(size=size[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(rotation(0.3, -0.2, 0.5).ravel().tolist())
    return image


def matrix_of(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_image_to_node_places_every_voxel_at_its_lps_point_negated():
    scene = slicer.vtkMRMLScene()
    image = oblique_image()
    node = mrml.volume_node_from_image(scene, image, "oblique")
    matrix = matrix_of(node)
    data = node.GetImageData()
    for ijk in [(0, 0, 0), (6, 0, 0), (0, 4, 0), (0, 0, 3), (3, 2, 1), (6, 4, 3)]:
        x, y, z = image.TransformIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(matrix @ [*ijk, 1.0], [-x, -y, z, 1.0], atol=1e-9)
        assert data.GetScalarComponentAsDouble(*ijk, 0) == pytest.approx(image.GetPixel(ijk), abs=0)
    assert node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")
    assert scene.GetNodeByID(node.GetID()) is node


def test_node_image_node_round_trip_with_oblique_ijk_to_ras():
    scene = slicer.vtkMRMLScene()
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation(-0.4, 0.25, 1.1) @ np.diag([0.7, 0.9, 3.1])
    ijk_to_ras[:3, 3] = [12.5, -80.0, 33.3]
    node = slicer.vtkMRMLScalarVolumeNode()
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(6, 4, 3)
    image_data.AllocateScalars(vtk.VTK_SHORT, 1)
    values = np.arange(6 * 4 * 3, dtype=np.int16) * 7 - 100
    image_data.GetPointData().GetScalars().SetVoidArray(values, values.size, 1)
    node.SetAndObserveImageData(image_data)
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, ijk_to_ras[r, c])
    node.SetIJKToRASMatrix(m)
    scene.AddNode(node)

    image = mrml.image_from_volume_node(node)
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image).ravel(), values)
    lps = np.diag([-1, -1, 1]) @ ijk_to_ras[:3]
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((5, 3, 2)), lps @ [5, 3, 2, 1], atol=1e-9)

    back = mrml.volume_node_from_image(scene, image, "back")
    np.testing.assert_allclose(matrix_of(back), ijk_to_ras, atol=1e-6)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(back), slicer.util.arrayFromVolume(node))

    label = mrml.volume_node_from_image(scene, sitk.Cast(image > 0, sitk.sitkUInt8), "label", labelmap=True)
    assert label.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_allclose(matrix_of(label), ijk_to_ras, atol=1e-6)


def test_linear_parent_transform_is_applied():
    scene = slicer.vtkMRMLScene()
    node = mrml.volume_node_from_image(scene, oblique_image(), "moved")
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    to_parent = np.eye(4)
    to_parent[:3, :3] = rotation(0.1, 0.0, -0.3)
    to_parent[:3, 3] = [5.0, -2.0, 7.5]
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, to_parent[r, c])
    transform.SetMatrixTransformToParent(m)
    local = matrix_of(node)
    node.SetAndObserveTransformNodeID(transform.GetID())
    image = mrml.image_from_volume_node(node)
    np.testing.assert_allclose(mrml.ijk_to_ras_of_image(image), to_parent @ local, atol=1e-9)
