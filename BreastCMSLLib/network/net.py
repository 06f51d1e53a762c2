"""The CMSL network: a 3D ResNet34 trunk (MONAI-identical, resnet.py) with a 1x1x1 convolutional head and pooling.

Tensors are (B, C, I, J, K): spatial axes in (i, j, k) order of the canonical LPS input grid.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from BreastCMSLLib.config import ModelConfig
from BreastCMSLLib.network.resnet import ResNet3d
from BreastCMSLLib.network.sparse import Box

RESNET34_LAYERS = [3, 4, 6, 3]
RESNET_WIDTHS = [64, 128, 256, 512]


class NetOutput(NamedTuple):
    """Everything one forward pass gives."""

    cos_theta: torch.Tensor  # (B,) cosine between the classifier vector w and the pooled feature
    logit: torch.Tensor  # (B,) w . pooled + b
    features: torch.Tensor  # (B, C, d, h, w) last activation map (for COAM)
    logit_map: torch.Tensor  # (B, d, h, w) per-position logit of the 1x1x1 head before pooling (CAM)
    aux_logits: torch.Tensor | None  # (B, aux_classes) auxiliary head (DK-MT baseline) or None
    stages: dict[str, torch.Tensor] | None = None  # {"layer2": (B, C2, I/8, ..), "layer3": (B, C3, I/16, ..)}
    # outputs of the shallower stages, kept only when the forward is asked for them (the fine map)
    pooled: torch.Tensor | None = None  # (B, C) float32: the pooled feature the head reads (the domain check's)


class CMSLNet(nn.Module):
    """3D ResNet34 (BasicBlocks [3, 4, 6, 3], conv1 7x7x7 stride 2, max pooling; MONAI-identical, resnet.py)
    + 1x1x1 conv head.

    The paper replaces GAP + FC by a 1x1x1 convolution (512 -> 1) followed by global pooling; the
    convolution's weight is the classifier vector w of cos(theta).
    """

    def __init__(self, cfg: ModelConfig, initialize: bool = True):
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNet3d(RESNET34_LAYERS, RESNET_WIDTHS, cfg.in_channels, cfg.width_factor, conv1_stride=2,
                                 initialize=initialize)
        channels = self.backbone.in_planes
        self.head = nn.Conv3d(channels, 1, kernel_size=1)
        self.aux_head = nn.Linear(channels, cfg.aux_classes) if cfg.aux_classes else None

    def features(self, x: torch.Tensor, box: Box | None = None) -> torch.Tensor:
        """The last activation map of layer4, (B, C, I/32, J/32, K/32) rounded up. ``box``: ``x`` is zero
        outside it (:mod:`.sparse`)."""
        return self.backbone(x, box)

    def forward(self, x: torch.Tensor, box: Box | None = None, keep_stages: bool = False) -> NetOutput:
        """One pass; ``keep_stages``: also return layer2's and layer3's outputs (``NetOutput.stages``)."""
        kept: dict[str, torch.Tensor] = {}
        f = self.backbone(x, box, kept if keep_stages else None)
        logit_map = self.head(f)[:, 0]
        w = self.head.weight.reshape(-1).float()
        if self.cfg.pooling == "avg":
            pooled = f.mean(dim=(2, 3, 4))
        elif self.cfg.pooling == "max":
            pooled = f.amax(dim=(2, 3, 4))
        else:  # "instance_max": the bag is its strongest position (the sparse MIL baseline)
            strongest = logit_map.flatten(1).argmax(dim=1)
            pooled = f.flatten(2)[torch.arange(f.shape[0], device=f.device), :, strongest]
        logit = pooled.float() @ w + self.head.bias.float()
        cos_theta = nn.functional.cosine_similarity(pooled.float(), w.unsqueeze(0), dim=1, eps=1e-8)
        aux = self.aux_head(pooled) if self.aux_head is not None else None
        return NetOutput(cos_theta, logit, f, logit_map, aux, kept if keep_stages else None, pooled.float())


def probability(out: NetOutput, cfg: ModelConfig) -> torch.Tensor:
    """Malignancy probability: sigmoid(s cos(theta)) for the angular losses, sigmoid(logit) for BCE."""
    return torch.sigmoid(cfg.s * out.cos_theta) if cfg.angular else torch.sigmoid(out.logit)


BF16_SWITCH = "BREASTCMSL_BF16"  # environment variable: "0" runs inference in float32 everywhere


def bf16_native(device: torch.device) -> bool:
    """True where bf16 runs natively and fast: CUDA, and CPUs whose oneDNN has bf16 kernels
    (AVX512-BF16 / AMX). Elsewhere bf16 would be emulated and slower than float32. ``BREASTCMSL_BF16=0`` in the
    environment: False everywhere (float32, as on a CPU without bf16; the benchmarks compare both)."""
    if os.environ.get(BF16_SWITCH) == "0":
        return False
    if device.type == "cuda":
        return True
    try:
        return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def inference_module(model: CMSLNet, device: torch.device, bf16: bool = False) -> CMSLNet:
    """An eval-mode copy for inference on ``device``: every BatchNorm folded into the convolution registered
    just before it (each ``bn*`` follows its ``conv*``, and a shortcut's BatchNorm its convolution;
    exact up to float rounding), convolution weights in channels_last_3d, which oneDNN and cuDNN run
    fastest; with ``bf16`` (for bf16 autocast, where :func:`bf16_native`) in bf16: the rounding autocast
    would apply at every forward, applied once (the head stays float32). ``model`` is not changed.

    Built on the meta device and given only the folded tensors: torch.fx's ``fuse`` deep-copies the
    network and then each convolution again (with the channels_last copy ~1 GB of fresh memory for
    the full-size model, a measurable part of a cold ``breastcmsl analyze``).
    """
    low = torch.bfloat16 if bf16 else torch.float32

    def placed(tensor: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        layout = torch.channels_last_3d if tensor.dim() == 5 else torch.preserve_format
        return tensor.detach().to(device, dtype if tensor.is_floating_point() else tensor.dtype, memory_format=layout)

    with torch.device("meta"):
        folded = CMSLNet(model.cfg, initialize=False).eval()
    source = dict(model.named_modules())
    state, conv = {}, ""
    for name, module in list(folded.named_modules()):
        if isinstance(module, nn.Conv3d):
            conv = name
        elif isinstance(module, nn.BatchNorm3d):
            c, bn = source[conv], source[name]
            weight, bias = fuse_conv_bn_weights(c.weight, c.bias, bn.running_mean, bn.running_var, bn.eps,
                                                bn.weight, bn.bias)
            state[f"{conv}.weight"], state[f"{conv}.bias"] = placed(weight, low), placed(bias)
            folded.get_submodule(conv).bias = nn.Parameter(torch.empty_like(bias, device="meta"))
            parent, _, attr = name.rpartition(".")
            setattr(folded.get_submodule(parent), attr, nn.Identity())
    wanted = folded.state_dict()
    state.update({k: placed(v) for k, v in model.state_dict().items() if k in wanted and k not in state})
    folded.load_state_dict(state, strict=True, assign=True)
    return folded.requires_grad_(False)


def build_model(cfg: ModelConfig, initialize: bool = True) -> CMSLNet:
    """The network a :class:`ModelConfig` describes; ``initialize=False`` when its weights are loaded next."""
    if cfg.arch != "resnet34_3d":
        raise ValueError(f"architecture {cfg.arch!r} is not one the runtime can build (resnet34_3d)")
    return CMSLNet(cfg, initialize)
