"""The stem computed only around the input's non-zero box gives the plain stem's output."""

import numpy as np
import pytest
import torch

from BreastCMSLLib.config import ModelConfig, PreprocessConfig
from BreastCMSLLib.network.net import build_model, inference_module
from BreastCMSLLib.network.resnet import MaxPool3d
from BreastCMSLLib.network.sparse import EMPTY, nonzero_box, stem_on_box

SMALL = ModelConfig(width_factor=0.125, preprocess=PreprocessConfig(input_size=(64, 64, 32)))


def sparse_input(box, size=(64, 64, 32), seed=0) -> np.ndarray:
    """(6, I, J, K) float32: random values inside the inclusive box, zeros (some of them -0.0) elsewhere."""
    rng = np.random.default_rng(seed)
    array = np.zeros((6, *size), np.float32)
    array[:, :: 7] = -0.0  # a masked negative subtraction: equal to zero, another bit pattern
    inside = tuple(slice(lo, hi + 1) for lo, hi in box)
    array[(slice(None), *inside)] = rng.uniform(0.0, 1.0, size=array[(slice(None), *inside)].shape)
    return array


def test_nonzero_box_counts_negative_zero_as_zero():
    box = ((5, 40), (0, 12), (31, 31))
    assert nonzero_box(sparse_input(box)) == box
    assert nonzero_box(np.zeros((6, 8, 8, 8), np.float32)) == EMPTY
    single = np.zeros((2, 9, 9, 9), np.float32)
    single[1, 3, 8, 0] = 0.5
    assert nonzero_box(single) == ((3, 3), (8, 8), (0, 0))


BOXES = {
    "inside": ((20, 41), (11, 30), (9, 20)),
    "touching every border": ((0, 63), (0, 5), (28, 31)),
    "one voxel": ((33, 33), (17, 17), (0, 0)),
    "empty": EMPTY,
}


@pytest.mark.parametrize("name", sorted(BOXES))
@pytest.mark.parametrize("size", [(64, 64, 32), (61, 45, 23)])  # even and odd: the pooling's edges
@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_stem_on_box_equals_the_stem(name, size, bf16, bias):
    torch.manual_seed(1)
    conv = torch.nn.Conv3d(6, 8, kernel_size=7, stride=2, padding=3, bias=bias).eval()
    if bias:  # some channels negative, so that ReLU decides what the pooled voxels away from the box hold
        torch.nn.init.uniform_(conv.bias, -1.0, 1.0)
    relu, pool = torch.nn.ReLU(inplace=True), MaxPool3d(kernel_size=3, stride=2, padding=1)
    box = tuple((min(lo, n - 1), min(hi, n - 1)) for (lo, hi), n in zip(BOXES[name], size)) if BOXES[name] != EMPTY \
        else EMPTY
    x = torch.from_numpy(sparse_input(box if box != EMPTY else ((0, 0),) * 3, size))
    if box == EMPTY:
        x.zero_()
    x = x.unsqueeze(0).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        expected, got = pool(relu(conv(x))), stem_on_box(conv, relu, pool, x, box)
    assert got.dtype == expected.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    value = torch.relu(conv.bias.to(got.dtype)) if bias else torch.zeros(8, dtype=got.dtype)
    far = got[0, :, -1, -1, -1] if box != EMPTY and box[0][1] < 40 else got[0, :, 0, 0, 0]
    if box == EMPTY or box[0][1] < 40:  # a pooled voxel far from the box: the stem of zeros, exactly
        assert torch.equal(far, value)


def test_the_inference_network_with_a_box_gives_the_same_output():
    torch.manual_seed(2)
    model = build_model(SMALL).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    fast = inference_module(model, torch.device("cpu"))
    array = sparse_input(((10, 37), (25, 60), (3, 17)))
    x = torch.from_numpy(array).unsqueeze(0).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        plain, boxed = fast(x), fast(x, nonzero_box(array))
    torch.testing.assert_close(boxed.features, plain.features, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(boxed.cos_theta, plain.cos_theta, rtol=0, atol=1e-6)
    torch.testing.assert_close(boxed.logit_map, plain.logit_map, rtol=1e-5, atol=1e-6)
