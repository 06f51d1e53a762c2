"""Losses of the paper (Luo et al. 2019, Eqs. 1-4): CMSL, NSL (CMSL with m = 0) and plain BCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cmsl_loss(
    cos_theta: torch.Tensor, target: torch.Tensor, s: float = 20.0, m: float = 0.35, reduction: str = "mean"
) -> torch.Tensor:
    """Cosine Margin Sigmoid Loss, Eq. 4: BCE of p = sigmoid(s * (cos(theta) - I(y) * m)).

    I(1) = +1, I(0) = -1, so the margin pushes malignant cosines above +m and benign ones below -m.
    Written as BCE-with-logits on z = s * (cos - I(y) m), which is exact and stable (log-sum-exp).
    """
    y = target.to(cos_theta.dtype)
    z = s * (cos_theta - (2.0 * y - 1.0) * m)
    return F.binary_cross_entropy_with_logits(z, y, reduction=reduction)


def nsl_loss(cos_theta: torch.Tensor, target: torch.Tensor, s: float = 20.0, reduction: str = "mean"):
    """Normalized Sigmoid Loss, Eq. 3: CMSL without margin."""
    return cmsl_loss(cos_theta, target, s=s, m=0.0, reduction=reduction)


def bce_loss(logit: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The plain sigmoid loss of Eqs. 1-2 on the unnormalized logit w^T x + b."""
    return F.binary_cross_entropy_with_logits(logit, target.to(logit.dtype), reduction=reduction)
