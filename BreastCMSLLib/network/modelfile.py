"""The model file: ONE ``.safetensors`` file; its metadata holds the ModelConfig JSON, provenance and, once
calibrated, the :class:`Calibration` (temperature and operating point).

Loading reads tensors with safetensors only: nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from BreastCMSLLib.config import ModelConfig
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.calibration import Calibration
from BreastCMSLLib.network.net import CMSLNet, bf16_native, build_model, inference_module

FORMAT = "breastcmsl-model"
FORMAT_VERSION = "1"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(path: str | Path, model: torch.nn.Module, cfg: ModelConfig, provenance: dict,
               calibration: Calibration | None = None) -> str:
    """Write weights, config, provenance and (when given) the calibration atomically to ``path``; return the
    file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_json(),
        "provenance": json.dumps(provenance, sort_keys=True),
    }
    if calibration is not None:
        metadata["calibration"] = calibration.to_json()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return file_sha256(path)


_HASHING = ThreadPoolExecutor(1, thread_name_prefix="model-sha256")


@dataclass
class LoadedModel:
    """A network in eval mode with its config, provenance (``untrained``, ``method``, ...) and sha256."""

    model: CMSLNet
    config: ModelConfig
    provenance: dict
    path: Path
    _digest: Future = field(repr=False, compare=False)
    calibration: Calibration = field(default_factory=Calibration)  # T = 1, unfitted, when the file has none
    _inference: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def sha256(self) -> str:
        """Hex sha256 of the model file, hashed in the background from loading on (hashlib releases the
        GIL: it overlaps reading and preprocessing the volumes instead of delaying them)."""
        return self._digest.result()

    def inference_module(self, device: torch.device) -> torch.nn.Module:
        """The network prepared for inference on ``device`` (built once per device)."""
        key = str(device)
        if key not in self._inference:
            self._inference[key] = inference_module(self.model, device, bf16_native(device))
        return self._inference[key]

    @property
    def name(self) -> str:
        return model_name(self.path, self.provenance)

    def info(self) -> dict:
        """What result.json records about the model."""
        return {
            "name": self.name,
            "path": str(self.path),
            "sha256": self.sha256,
            "untrained": bool(self.provenance.get("untrained", False)),
            "synthetic": bool(self.provenance.get("synthetic", False)),
            "method": self.config.loss if self.config.arch == "resnet34_3d" else self.config.arch,
            "version": self.provenance.get("version"),
        }


def save_untrained_model(path: str | Path, cfg: ModelConfig, seed: int = 0) -> str:
    """An untrained model (random weights from ``seed``, flagged untrained) written to ``path``; its sha256.
    For smoke tests, self-tests and benchmarks only."""
    torch.manual_seed(seed)
    provenance = {"name": Path(path).stem, "untrained": True, "seed": seed,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "note": "untrained: random weights, for smoke tests and benchmarks only"}
    return save_model(path, build_model(cfg), cfg, provenance)


def model_name(path: str | Path, provenance: dict) -> str:
    """The name a model is shown by: its provenance's ``name``, else the file's stem."""
    return str(provenance.get("name") or Path(path).stem)


def read_model_metadata(path: str | Path) -> tuple[ModelConfig, dict]:
    """Config and provenance of a model file, without building the network."""
    cfg, provenance, _ = read_model_file_metadata(path)
    return cfg, provenance


def read_model_file_metadata(path: str | Path) -> tuple[ModelConfig, dict, Calibration]:
    """Config, provenance and calibration (T = 1, unfitted, when absent) of a model file, parsed strictly."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such model file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        with open(path, "rb") as f:
            head = f.read(2)
        # only once safetensors refused it: a valid header length can also start with these bytes
        if head == b"PK" or head[:1] == b"\x80":
            raise InputError(path, "is a PyTorch/pickle checkpoint, not a BreastCMSL .safetensors model; "
                             "refusing to unpickle it (export one with `breastcmsl-train export`)") from None
        raise InputError(path, f"is not a safetensors model file ({err})") from None
    if meta.get("format") != FORMAT:
        raise InputError(path, "is a safetensors file but not a BreastCMSL model (no breastcmsl metadata)")
    try:
        cfg = ModelConfig.from_json(meta["config"])
        provenance = json.loads(meta.get("provenance", "{}"))
        if not isinstance(provenance, dict):
            raise ValueError("provenance is not a JSON object")
        calibration = Calibration.from_json(meta["calibration"]) if "calibration" in meta else Calibration()
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise InputError(path, f"has unreadable BreastCMSL metadata ({err})") from None
    return cfg, provenance, calibration


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Build the network its config describes and load the weights (strict), in eval mode."""
    path = Path(path)
    cfg, provenance, calibration = read_model_file_metadata(path)
    try:
        with torch.device("meta"):  # no random initialization: every tensor comes from the file
            model = build_model(cfg, initialize=False)
    except ValueError as err:
        raise InputError(path, str(err)) from None
    try:
        model.load_state_dict(load_file(str(path)), strict=True, assign=True)
    except RuntimeError as err:
        raise InputError(path, f"weights do not match its config ({str(err).splitlines()[0]})") from None
    model.to(device).eval()
    return LoadedModel(model, cfg, provenance, path, _HASHING.submit(file_sha256, path), calibration)
