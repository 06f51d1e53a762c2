"""Weakly supervised attention maps: COAM (Eq. 5) and CAM on the network's last feature grid, and the fine map
(Eq. 5 on a shallower stage, optionally gated by layer4's COAM)."""

from __future__ import annotations

import torch


def coam(features: torch.Tensor) -> torch.Tensor:
    """Correlation attention map: M_i = sum_j (X' X'^T)_ij for features X (B, C, D, H, W) -> (B, D, H, W).

    Computed as X' (X'^T 1) in float32: O(N C) instead of the O(N^2 C) Gram matrix, same value.
    """
    b, _, *grid = features.shape
    x = features.float().flatten(2)  # (B, C, N)
    column_sum = x.sum(dim=2, keepdim=True)  # (B, C, 1) = X'^T 1
    return (x * column_sum).sum(dim=1).reshape(b, *grid)


def cam(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | float | None = None) -> torch.Tensor:
    """Class activation map of the 1x1x1 conv head: w . x at each position, (B, C, ...) -> (B, ...).

    ``weight`` is the head's weight in any shape holding C values ((1, C, 1, 1, 1) or (C,)).
    """
    w = weight.float().reshape(1, -1, *([1] * (features.dim() - 2)))
    out = (features.float() * w).sum(dim=1)
    return out if bias is None else out + torch.as_tensor(bias, dtype=out.dtype).reshape(())


def normalized(values: torch.Tensor) -> torch.Tensor:
    """Min-max normalization to [0, 1] over the whole tensor (zeros when it is constant)."""
    lo, hi = values.min(), values.max()
    return torch.zeros_like(values) if hi <= lo else (values - lo) / (hi - lo)


def carried_to(coarse: torch.Tensor, shape: tuple[int, ...], ratio: int) -> torch.Tensor:
    """A (d, h, w) map on a coarser feature grid, linearly interpolated onto a finer grid of ``shape`` whose
    voxel u is centred on coarse voxel u / ``ratio`` (every stage centres output o on input 2 o), constant
    beyond the outer coarse centres."""
    axes = [torch.arange(n, dtype=torch.float32) / ratio for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)  # (x=k, y=j, z=i) for grid_sample
    size = torch.tensor(coarse.shape[::-1], dtype=torch.float32)
    grid = 2 * grid / (size - 1).clamp(min=1) - 1
    return torch.nn.functional.grid_sample(coarse.float()[None, None], grid[None], mode="bilinear",
                                           padding_mode="border", align_corners=True)[0, 0]


def fine_map(stage_coam: torch.Tensor, layer4_coam: torch.Tensor, ratio: int, gated: bool) -> torch.Tensor:
    """The fine map on a shallower stage's grid (d, h, w) from that stage's COAM (Eq. 5, :func:`coam`):
    F = norm(COAM_stage), times norm(COAM_layer4) carried onto the stage's grid (:func:`carried_to`) when
    ``gated``; ``ratio``: the stage's voxels per layer4 voxel (2 for layer3, 4 for layer2); ``norm``: min-max
    to [0, 1]."""
    local = normalized(stage_coam.float())
    return local * normalized(carried_to(layer4_coam, tuple(local.shape), ratio)) if gated else local
