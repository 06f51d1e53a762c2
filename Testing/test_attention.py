"""COAM equals the row sums of the full Gram matrix; CAM equals the 1x1x1 head's output."""

import pytest
import torch

from BreastCMSLLib.config import ModelConfig, PreprocessConfig
from BreastCMSLLib.network.attention import cam, coam
from BreastCMSLLib.network.net import build_model


def test_coam_equals_float64_gram_row_sums():
    torch.manual_seed(1)
    features = torch.relu(torch.randn(2, 24, 5, 4, 3))
    got = coam(features)
    x = features.double().flatten(2).transpose(1, 2)  # (B, N, C)
    gram = x @ x.transpose(1, 2)  # (B, N, N)
    expected = gram.sum(dim=2).reshape(2, 5, 4, 3)
    assert got.shape == (2, 5, 4, 3)
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-4)


def test_cam_is_the_logit_map_and_pools_to_the_logit():
    torch.manual_seed(2)
    cfg = ModelConfig(width_factor=0.125, preprocess=PreprocessConfig(input_size=(64, 64, 32)))
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 6, 64, 64, 32))
        got = cam(out.features, model.head.weight, model.head.bias)
    assert torch.allclose(got, out.logit_map, atol=1e-5)
    assert torch.allclose(got.mean(dim=(1, 2, 3)), out.logit, atol=1e-5)
    pooled = out.features.mean(dim=(2, 3, 4))
    w = model.head.weight.reshape(-1)
    cos = (pooled @ w) / (pooled.norm(dim=1) * w.norm())
    assert torch.allclose(out.cos_theta, cos, atol=1e-6)


def test_feature_voxel_f_is_centred_on_input_voxel_32f():
    """The geometry the maps rely on: gradient centroid of feature (2, 1, 1) lies at input (64, 32, 32).

    Positive constant weights and a positive input keep every ReLU open, and each axis has 64 f + 1 voxels,
    so the receptive field is clipped symmetrically; a half-stride shift would put it at (79.5, 47.5, 47.5).
    """
    torch.manual_seed(0)
    model = build_model(ModelConfig(in_channels=1, width_factor=0.125)).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv3d):
            torch.nn.init.constant_(module.weight, 0.01)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    x = (torch.rand(1, 1, 129, 65, 65) + 0.5).requires_grad_()
    features = model.features(x)
    assert features.shape[2:] == (5, 3, 3)
    features[0, :, 2, 1, 1].sum().backward()
    grad = x.grad[0, 0].abs().double()
    for axis, expected in enumerate((64, 32, 32)):
        profile = grad.sum(dim=tuple(a for a in range(3) if a != axis))
        centroid = float((profile * torch.arange(profile.numel())).sum() / profile.sum())
        assert abs(centroid - expected) < 0.5, (axis, centroid)


def test_a_one_hot_feature_peaks_at_input_voxel_32f():
    import numpy as np
    import SimpleITK as sitk

    from BreastCMSLLib.pipeline.maps import normalized_on_input_grid, peak_lps
    from BreastCMSLLib.pipeline.preprocess import Preprocessed

    grid = sitk.Image([96, 64, 64], sitk.sitkUInt8)
    grid.SetSpacing((0.9, 1.1, 2.0))
    grid.SetOrigin((-40.0, 12.5, 7.0))
    grid.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    prep = Preprocessed(np.zeros((1, 96, 64, 64), np.float32), grid, grid, np.ones((96, 64, 64), bool))
    small = np.zeros((3, 2, 2), np.float32)
    small[1, 1, 0] = 5.0
    up = normalized_on_input_grid(small, prep)
    assert up.shape == (96, 64, 64) and up.max() == 1.0 and up.min() == 0.0
    assert np.unravel_index(up.argmax(), up.shape) == (32, 32, 0)
    # feature j = 1 is the last along j: voxels j = 32..63 form a plateau of maxima; its centroid j = 47.5 is
    # equidistant from j = 47 and 48, and j runs towards +L, so the smaller L coordinate (j = 47) is the peak
    assert int((up == 1.0).sum()) == 32
    assert peak_lps(up, prep) == grid.TransformIndexToPhysicalPoint((32, 47, 0))
    assert up[16, 32, 0] == 0.5  # linear between feature centres 0 and 32
    assert up[16, 63, 0] == 0.5  # and constant beyond the last centre (j = 32), still linear along i


@pytest.mark.parametrize(("size", "stride"), [((96, 64, 40), 32), ((45, 30, 21), 8)])
def test_upsampling_equals_physical_resampling_of_the_padded_feature_grid(size, stride):
    """Independent reference: the feature grid as a physical image (input direction, stride x spacing, voxel f
    centred on input voxel stride f, one edge-replicated voxel around it) resampled linearly by SimpleITK."""
    import numpy as np
    import SimpleITK as sitk

    from BreastCMSLLib.pipeline.maps import upsample_linear

    grid = sitk.Image(list(size), sitk.sitkUInt8)
    grid.SetSpacing((0.9, 1.1, 2.0))
    grid.SetOrigin((-40.0, 12.5, 7.0))
    grid.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    small = np.random.default_rng(1).random([-(-n // stride) for n in size]).astype(np.float32)
    padded = sitk.GetImageFromArray(np.pad(small, 1, mode="edge").transpose(2, 1, 0).copy())
    padded.SetDirection(grid.GetDirection())
    padded.SetSpacing([s * stride for s in grid.GetSpacing()])
    padded.SetOrigin(grid.TransformContinuousIndexToPhysicalPoint([-float(stride)] * 3))
    reference = sitk.GetArrayFromImage(sitk.Resample(padded, grid, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                     sitk.sitkFloat32)).transpose(2, 1, 0)
    up = upsample_linear(small, size, stride)
    assert up.shape == size and up.dtype == np.float32
    assert np.abs(up - reference).max() < 1e-6
