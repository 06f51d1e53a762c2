"""The training methods: CMSL and the paper's baselines, each a network, a loss and a probability.

How each baseline is read (documented in Training/README.md):

- ``cmsl`` / ``nsl`` / ``bce``: the core's 3D ResNet34 ``CMSLNet`` with ModelConfig.loss set; p is
  sigmoid(s cos(theta)) for the angular losses and sigmoid(logit) for BCE.
- ``sparse_mil`` (Zhu et al., MICCAI 2017): every position of the final 3D feature grid is an instance
  with probability r_i = sigmoid(logit_map_i) of the core's 1x1x1 head; the bag probability is the
  maximum instance probability, and the sparse label assignment is the L1 penalty mu * mean(r) added
  to the bag's BCE (so only a few instances of a malignant volume may be positive).
- ``dkmt`` (domain-knowledge multi-task): the core's CMSLNet with the BCE malignancy output plus its
  auxiliary head over BI-RADS categories 0-6 from the manifest (cross-entropy, weight ``aux_weight``;
  cases without a BI-RADS category do not contribute to it).
- ``mil2d``: :mod:`Training.mil2d`, a 2D ResNet34 over axial slices with max-pooled slice logits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from BreastCMSLLib.config import ModelConfig
from BreastCMSLLib.network.calibration import score
from BreastCMSLLib.network.losses import bce_loss, cmsl_loss, nsl_loss
from BreastCMSLLib.network.net import build_model

from .mil2d import ARCH as MIL2D_ARCH
from .mil2d import MIL2DNet

METHODS = ("cmsl", "nsl", "bce", "mil2d", "sparse_mil", "dkmt")
BIRADS_CLASSES = 7  # BI-RADS 0..6; the auxiliary head's class index is the category itself
SPARSE_MIL_ARCH = "resnet34_3d"


@dataclass(frozen=True)
class MethodConfig:
    """Method-specific hyper-parameters that are not part of the core's ModelConfig."""

    name: str = "cmsl"
    sparsity: float = 0.1  # sparse_mil: weight mu of the L1 penalty on mean instance probability
    aux_weight: float = 0.5  # dkmt: weight of the BI-RADS cross-entropy


@dataclass
class Scores:
    """Per-case outputs of a forward pass: probability, the decision score and (angular) cos(theta)."""

    probability: torch.Tensor  # (B,) malignancy probability sigmoid(score), threshold 0.5
    cos_theta: torch.Tensor | None  # (B,) for the angular methods, else None
    score: torch.Tensor  # (B,) pre-sigmoid score: s cos(theta) (angular) or the logit (what calibration scales)


def model_config(method: str, base: ModelConfig) -> ModelConfig:
    """The ModelConfig of ``method`` derived from ``base`` (input channels, width, s, m, preprocessing)."""
    if method in ("cmsl", "nsl", "bce"):
        return dataclasses.replace(base, loss=method, aux_classes=0, arch="resnet34_3d")
    if method == "sparse_mil":
        return dataclasses.replace(base, loss="bce", aux_classes=0, arch=SPARSE_MIL_ARCH, pooling="instance_max")
    if method == "dkmt":
        return dataclasses.replace(base, loss="bce", aux_classes=BIRADS_CLASSES, arch="resnet34_3d")
    if method == "mil2d":
        return dataclasses.replace(base, loss="bce", aux_classes=0, arch=MIL2D_ARCH)
    raise ValueError(f"unknown method {method!r} (one of {', '.join(METHODS)})")


def build_network(cfg: ModelConfig) -> nn.Module:
    """The network of a ModelConfig: the core's CMSLNet, or the Training-only 2D MIL network."""
    return MIL2DNet(cfg) if cfg.arch == MIL2D_ARCH else build_model(cfg)


def forward(method: MethodConfig, cfg: ModelConfig, model: nn.Module, x: torch.Tensor,
            label: torch.Tensor, birads: torch.Tensor) -> tuple[torch.Tensor, Scores]:
    """Loss (mean over the batch) and per-case scores of ``method`` on a batch (x (B, C, I, J, K))."""
    y = label.float()
    if method.name == "mil2d":
        bag, _ = model(x)
        return bce_loss(bag, y), Scores(torch.sigmoid(bag), None, bag.detach().float())
    out = model(x)
    if method.name == "sparse_mil":
        instance = out.logit_map.float().flatten(1)  # (B, N) instance logits over the feature grid
        loss = bce_loss(out.logit, y) + method.sparsity * torch.sigmoid(instance).mean()  # logit: the max instance
        return loss, Scores(torch.sigmoid(out.logit), None, out.logit.detach().float())
    if cfg.loss == "cmsl":
        loss = cmsl_loss(out.cos_theta, y, s=cfg.s, m=cfg.m)
    elif cfg.loss == "nsl":
        loss = nsl_loss(out.cos_theta, y, s=cfg.s)
    else:
        loss = bce_loss(out.logit, y)
    if method.name == "dkmt":
        aux = F.cross_entropy(out.aux_logits.float(), birads, ignore_index=-100, reduction="sum")
        loss = loss + method.aux_weight * aux / (birads >= 0).sum().clamp(min=1)  # no host sync
    z = score(out, cfg).detach()
    return loss, Scores(torch.sigmoid(z), out.cos_theta.detach() if cfg.angular else None, z)
