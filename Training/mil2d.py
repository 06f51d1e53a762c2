"""The 2D MIL baseline: a 2D ResNet34 (MONAI, spatial_dims=2) over the axial slices of a volume.

Each axial slice k (an I x J image with the C subtraction channels) is an instance; a 1x1 convolution
head and average pooling give one logit per slice, and the volume (bag) logit is the maximum over the
slices (standard max-pooling MIL). The runtime (``breastcmsl analyze``) cannot build this
architecture: it has no 3D feature map for COAM, so its exports are for ``breastcmsl-train`` only.
"""

from __future__ import annotations

import torch
from monai.networks.nets.resnet import ResNet
from torch import nn

from BreastCMSLLib.config import ModelConfig
from BreastCMSLLib.network.net import RESNET34_LAYERS, RESNET_WIDTHS

ARCH = "mil2d_resnet34"


class MIL2DNet(nn.Module):
    """2D ResNet34 slice classifier; ``forward`` returns (bag logit (B,), slice logits (B, K))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNet(
            block="basic",
            layers=RESNET34_LAYERS,
            block_inplanes=RESNET_WIDTHS,
            spatial_dims=2,
            n_input_channels=cfg.in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            widen_factor=cfg.width_factor,
            feed_forward=False,
        )
        self.head = nn.Conv2d(self.backbone.in_planes, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, i, j, k = x.shape
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * k, c, i, j)  # (B*K, C, I, J): axial slices
        net = self.backbone
        f = net.maxpool(net.act(net.bn1(net.conv1(slices))))
        f = net.layer4(net.layer3(net.layer2(net.layer1(f))))
        instance = self.head(f).float().mean(dim=(2, 3)).reshape(b, k)
        return instance.amax(dim=1), instance
