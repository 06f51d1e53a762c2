"""COAM equals the row sums of the full Gram matrix; CAM equals the 1x1x1 head's output."""

import torch

from BreastCMSLLib.attention import cam, coam
from BreastCMSLLib.config import ModelConfig, PreprocessConfig
from BreastCMSLLib.model import build_model


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
