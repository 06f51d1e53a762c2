"""Loading a run's trained network (any method, including the Training-only 2D MIL) from its model file."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from BreastCMSLLib.config import ModelConfig
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.header import read_model_metadata

from .methods import MethodConfig, build_network


def load_network(path: str | Path, device: torch.device) -> tuple[nn.Module, ModelConfig, dict]:
    """(network in eval mode, ModelConfig, provenance) of a model file written by ``fit`` or ``export``."""
    cfg, provenance = read_model_metadata(path)
    net = build_network(cfg)
    try:
        net.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as err:
        raise InputError(path, f"weights do not match its config ({str(err).splitlines()[0]})") from None
    return net.to(device).eval(), cfg, provenance


def method_of(provenance: dict) -> MethodConfig:
    """The MethodConfig recorded in a model's provenance."""
    return MethodConfig(**provenance.get("method_config", {"name": provenance.get("method", "cmsl")}))
