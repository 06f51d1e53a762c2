"""The 3D ResNet34 trunk, module for module and key for key MONAI's ``ResNet(block="basic")`` (shortcut B).

Written here instead of imported because ``import monai`` loads monai.data, transforms, scipy.signal and
matplotlib (``python -X importtime``), which cost a cold ``breastcmsl analyze`` more than the whole margin the
runtime has over a bare MONAI forward (``benchmarks/README.md``). The state dict
is MONAI's: ``Testing/test_model.py`` loads these weights into MONAI's ``resnet34`` and checks that both
give the same features, so model files stay interchangeable with MONAI. Training still uses MONAI
(transforms, 2D ResNet of the MIL baseline).
"""

from __future__ import annotations

import torch
from torch import nn

from BreastCMSLLib.network.sparse import Box, stem_on_box


class MaxPool3d(nn.MaxPool3d):
    """MONAI's max pooling, run in its input's dtype under autocast.

    CPU autocast lists ``max_pool3d`` among the ops it runs in float32: under bf16 autocast it turned conv1's
    bf16 output (64 x 170 x 110 x 64 at the paper's size) into float32 and back (its cost:
    ``benchmarks/README.md``). A maximum commutes with rounding, so the pooled values
    are the same; CUDA autocast already pools in bf16. Without autocast this is ``nn.MaxPool3d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x)


class BasicBlock(nn.Module):
    """Two 3x3x3 convolutions with BatchNorm and a residual connection (MONAI's ``ResNetBlock``)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv3d(in_planes, planes, kernel_size=3, padding=1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(out + residual)


class ResNet3d(nn.Module):
    """conv1 (7x7x7, ``conv1_stride``), BatchNorm, ReLU, 3x3x3 max pooling (stride 2), four stages of
    BasicBlocks with ``widths`` x ``width_factor`` channels (stages 2-4 stride 2); no pooling, no FC.

    ``initialize=False`` skips MONAI's Kaiming initialization, for networks whose weights are loaded next
    (on the meta device ``kaiming_normal_`` imports torch._dynamo, a large part of a cold analyze)."""

    def __init__(self, layers: list[int], widths: list[int], in_channels: int, width_factor: float = 1.0,
                 conv1_stride: int = 2, initialize: bool = True):
        super().__init__()
        planes = [int(w * width_factor) for w in widths]
        self.in_planes = planes[0]
        self.conv1 = nn.Conv3d(in_channels, self.in_planes, kernel_size=7, stride=conv1_stride, padding=3,
                               bias=False)
        self.bn1 = nn.BatchNorm3d(self.in_planes)
        self.act = nn.ReLU(inplace=True)
        self.maxpool = MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(planes[0], layers[0], stride=1)
        self.layer2 = self._make_layer(planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(planes[3], layers[3], stride=2)
        for m in self.modules() if initialize else ():  # MONAI's initialization
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != planes:
            downsample = nn.Sequential(nn.Conv3d(self.in_planes, planes, kernel_size=1, stride=stride, bias=True),
                                       nn.BatchNorm3d(planes))
        layers = [BasicBlock(self.in_planes, planes, stride, downsample)]
        self.in_planes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, box: Box | None = None, kept: dict | None = None) -> torch.Tensor:
        """layer4's output. ``box``: when given, ``x`` is zero outside it and the stem (conv1, BatchNorm, ReLU, max
        pooling) runs only where it sees data (:func:`.sparse.stem_on_box`; the same output). ``kept``: a dict that
        receives layer2's and layer3's outputs (no block writes into its input, so they stay valid)."""
        if box is None:
            stem = self.maxpool(self.act(self.bn1(self.conv1(x))))
        else:
            stem = stem_on_box(self.conv1, lambda t: self.act(self.bn1(t)), self.maxpool, x, box)
        x = self.layer2(self.layer1(stem))
        y = self.layer3(x)
        if kept is not None:
            kept.update(layer2=x, layer3=y)
        return self.layer4(y)
