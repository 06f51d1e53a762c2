"""Weakly supervised attention maps on the network's last feature grid: COAM (Eq. 5) and CAM."""

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
