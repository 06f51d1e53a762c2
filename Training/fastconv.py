"""conv1 (7x7x7, stride 2, padding 3, over the few DCE channels) rewritten for the GPU's tensor cores.

conv1 holds ~40% of the network's forward FLOPs but, over only 6 input channels, maps poorly onto
tensor cores. Two exact rewrites, used on CUDA during training (the weights keep their shape, so state
dicts and model files are unchanged):

- ``pad``: the input is zero-padded to 8 channels and the weight likewise; zero channels add nothing.
- ``s2d`` (space-to-depth): with the kernel zero-padded to 8 taps, tap t = 2a + b (a in 0..3, b in
  0..1) of a stride-2 convolution reads x_pad[2(o + a) + b], so the convolution equals a stride-1,
  4x4x4 convolution over the 2x2x2 space-to-depth rearrangement of the padded input: 8 x C = 48
  channels at half resolution. PyTorch/cuDNN has no such rewrite, hence this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("s2d", "pad", "none")
KERNEL, STRIDE, PAD = 7, 2, 3


def s2d_padding(size: int) -> tuple[int, int]:
    """(left, right) zero padding of one axis before space-to-depth; the padded length is even."""
    out = (size + 2 * PAD - KERNEL) // STRIDE + 1  # conv1's output length
    return PAD, 2 * (out + 3) - PAD - size  # 4-tap stride-1 conv over out + 3 blocks of 2


def space_to_depth(xp: torch.Tensor) -> torch.Tensor:
    """(B, C, 2I', 2J', 2K') padded input -> (B, 8C, I', J', K'), channel order (c, bi, bj, bk),
    stored channels_last_3d (one pass)."""
    b, c, i, j, k = xp.shape
    v = xp.reshape(b, c, i // 2, 2, j // 2, 2, k // 2, 2).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return v.contiguous().reshape(b, i // 2, j // 2, k // 2, c * 8).permute(0, 4, 1, 2, 3)


class FastConv1(nn.Module):
    """Wraps conv1 (same parameter); takes the input prepared for ``mode`` (see :func:`prepare_input`)."""

    def __init__(self, conv: nn.Conv3d, mode: str):
        super().__init__()
        if tuple(conv.kernel_size) != (KERNEL,) * 3 or tuple(conv.stride) != (STRIDE,) * 3:
            raise ValueError("FastConv1 expects conv1 7x7x7 stride 2 padding 3")
        self.conv, self.mode = conv, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, bias = self.conv.weight, self.conv.bias
        if self.mode == "s2d":
            o, c = w.shape[:2]
            w8 = F.pad(w, (0, 1, 0, 1, 0, 1)).reshape(o, c, 4, 2, 4, 2, 4, 2)
            w8 = w8.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(o, c * 8, 4, 4, 4)
            return F.conv3d(x, w8.to(memory_format=torch.channels_last_3d), bias)
        if x.shape[1] > w.shape[1]:
            w = F.pad(w, (0, 0, 0, 0, 0, 0, 0, x.shape[1] - w.shape[1]))
        return F.conv3d(x, w, bias, self.conv.stride, self.conv.padding)


def arrange(x: torch.Tensor, mode: str, channels_last: bool) -> torch.Tensor:
    """The network input for ``mode`` from a (B, C, I, J, K) batch: zero-padded and space-to-depth
    rearranged (``s2d``), zero channels appended (``pad``) or as is (``none``); channels_last_3d when
    ``channels_last`` (always for ``s2d``)."""
    if mode == "s2d":
        pads = [p for n in reversed(x.shape[2:]) for p in s2d_padding(n)]
        return space_to_depth(F.pad(x, pads))
    if mode == "pad":
        x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, 8 * -(-x.shape[1] // 8) - x.shape[1]))
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x


def install(net: nn.Module, mode: str) -> bool:
    """Replace ``net.backbone.conv1`` by :class:`FastConv1` for ``mode``; False when not applicable."""
    conv = getattr(getattr(net, "backbone", None), "conv1", None)
    if mode == "none" or not isinstance(conv, nn.Conv3d):
        return False
    net.backbone.conv1 = FastConv1(conv, mode)
    return True
