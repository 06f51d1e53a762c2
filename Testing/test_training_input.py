"""The training input path: uint8 -> intensities, the augmentation draws, and the exact conv1 rewrites."""

import pytest
import torch

from Training import fastconv
from Training.cache import SCALE
from Training.data import Augment, augment_seed
from Training.inference import network_input, prepare

CPU = torch.device("cpu")


def batch(shape=(3, 6, 21, 16, 13)) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_plain_input_is_the_cached_intensity():
    u8 = batch()
    x = prepare(u8.clone(), CPU)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, u8.float() / SCALE, rtol=0, atol=1e-7)


def test_augmentation_is_the_drawn_flip_gain_and_offset():
    u8, augment = batch(), Augment()
    x = prepare(u8.clone(), CPU, augment=augment, seed=5, epoch=2, index=[7, 8, 9])
    draws = [augment.draw(augment_seed(5, 2, i)) for i in (7, 8, 9)]
    assert {d[0] for d in draws} == {False, True}  # both branches are exercised by these seeds
    for n, (flip, gain, offset) in enumerate(draws):
        assert 0.9 <= gain <= 1.1 and -0.05 <= offset <= 0.05
        volume = (u8[n].flip(1) if flip else u8[n]).double()
        torch.testing.assert_close(x[n].double(), offset + gain * volume / SCALE, rtol=0, atol=1e-6)
    again = prepare(u8.clone(), CPU, augment=augment, seed=5, epoch=2, index=[7, 8, 9])
    assert torch.equal(x, again)  # deterministic per (seed, epoch, index)


@pytest.mark.parametrize("mode", ["pad", "s2d"])
def test_conv1_rewrites_equal_conv1(mode):
    """Odd and even sizes: the rewritten input and weight give conv1's output (same shape, same values)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(6, 8, kernel_size=7, stride=2, padding=3, bias=False)
    u8 = batch()
    expected = conv(prepare(u8.clone(), CPU))
    got = fastconv.FastConv1(conv, mode)(prepare(u8.clone(), CPU, mode))
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_compiled_input_equals_eager():
    """The batch function compiles as one graph (as on CUDA, where it runs compiled) to the same values and
    layout; compiled here for the CPU (inductor, C++)."""
    u8 = batch((2, 6, 21, 16, 13))
    gain, offset = torch.tensor([1 / SCALE, 1.05 / SCALE]), torch.tensor([0.0, 0.02])
    compiled = torch.compile(network_input, dynamic=False, fullgraph=True)
    for mode in fastconv.MODES:
        expected = network_input(u8, gain, offset, mode, torch.bfloat16, True)
        got = compiled(u8, gain, offset, mode, torch.bfloat16, True)
        assert torch.equal(got, expected) and got.stride() == expected.stride()
