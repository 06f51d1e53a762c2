"""Shared fixtures: a tiny phantom case and a tiny untrained model (session-scoped, made once)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from BreastCMSLLib.config import ModelConfig, PreprocessConfig
from BreastCMSLLib.network.modelfile import save_model
from BreastCMSLLib.network.net import build_model

ROOT = Path(__file__).resolve().parents[1]
TINY_SHAPE = (96, 64, 40)
TINY_SPACING = (3.6, 3.6, 3.5)
TINY_INPUT = (64, 48, 32)


def run_cli(*args: str, module: str = "BreastCMSLLib.cli") -> subprocess.CompletedProcess:
    """Run a CLI in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """An untrained 1/8-width model for 64x48x32 inputs."""
    torch.manual_seed(0)
    cfg = ModelConfig(width_factor=0.125, preprocess=PreprocessConfig(input_size=TINY_INPUT))
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(path, build_model(cfg), cfg, {"name": "tiny", "untrained": True})
    return path


@pytest.fixture(scope="session")
def tiny_case(tmp_path_factory) -> Path:
    """A small malignant phantom case folder (t1, pre, post_1..6, truth/, case.json)."""
    from BreastCMSLLib.phantom.synth import synth_case

    out = tmp_path_factory.mktemp("case") / "case"
    synth_case(out, seed=7, label=1, shape=TINY_SHAPE, spacing=TINY_SPACING)
    return out
