"""The model file: ONE ``.safetensors`` file; its metadata holds the ModelConfig JSON, provenance and, once
calibrated, the :class:`Calibration` (temperature and operating point) and, once measured, the
:class:`~BreastCMSLLib.network.domain.DomainRecord` (the training domain); what it says without loading the
weights is in :mod:`.header`.

Loading reads tensors with safetensors only: nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from BreastCMSLLib.config import ModelConfig
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.calibration import Calibration
from BreastCMSLLib.network.domain import DomainRecord
from BreastCMSLLib.network.header import (
    FORMAT,
    FORMAT_VERSION,
    file_sha256,
    model_info,
    model_name,
    read_model_domain,
    read_model_file_metadata,
)
from BreastCMSLLib.network.net import CMSLNet, bf16_native, build_model, inference_module


def save_model(path: str | Path, model: torch.nn.Module, cfg: ModelConfig, provenance: dict,
               calibration: Calibration | None = None, domain: DomainRecord | None = None) -> str:
    """Write weights, config, provenance and (when given) the calibration and the training-domain record (the
    config then takes its phases and their times, :func:`domain_config`) atomically to ``path``; return the
    file's sha256."""
    cfg = cfg if domain is None else domain_config(cfg, domain)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_json(),
        "provenance": json.dumps(provenance, sort_keys=True),
    }
    if calibration is not None:
        metadata["calibration"] = calibration.to_json()
    if domain is not None:
        metadata["domain"] = domain.to_json()
    return _write(path, tensors, metadata)


def domain_config(cfg: ModelConfig, domain: DomainRecord) -> ModelConfig:
    """``cfg`` with the record's post-contrast phases and their training times: a longer study's phases are
    matched to these (:mod:`BreastCMSLLib.pipeline.model_phases`)."""
    return dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, phases=domain.phases,
                                                                   phase_times_s=domain.phase_times_s))


def add_domain(path: str | Path, domain: DomainRecord) -> str:
    """Rewrite the model file ``path`` (atomically) with ``domain`` as its training-domain record and its config's
    phases (:func:`domain_config`), every tensor and other metadata entry as they were; return its new sha256."""
    cfg, _, _ = read_model_file_metadata(path)  # a BreastCMSL model file, or an InputError
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    return _write(path, load_file(str(path)), {**metadata, "config": domain_config(cfg, domain).to_json(),
                                               "domain": domain.to_json()})


def _write(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    domain: DomainRecord | None = None  # the training domain (None: absent or damaged, see domain_problem)
    domain_problem: str | None = None  # why there is no record
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
        return model_info(self.path, self.config, self.provenance, self.sha256)


def save_untrained_model(path: str | Path, cfg: ModelConfig, seed: int = 0) -> str:
    """An untrained model (random weights from ``seed``, flagged untrained) written to ``path``; its sha256.
    For smoke tests, self-tests and benchmarks only."""
    torch.manual_seed(seed)
    provenance = {"name": Path(path).stem, "untrained": True, "seed": seed,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "note": "untrained: random weights, for smoke tests and benchmarks only"}
    return save_model(path, build_model(cfg), cfg, provenance)


def load_model(path: str | Path, device: str | torch.device = "cpu", sha256: str | None = None) -> LoadedModel:
    """Build the network its config describes and load the weights (strict), in eval mode. ``sha256``: the
    file's, when the caller has already hashed it (else it is hashed in the background)."""
    path = Path(path)
    cfg, provenance, calibration = read_model_file_metadata(path)
    domain, problem = read_model_domain(path)
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
    if sha256 is None:
        digest = _HASHING.submit(file_sha256, path)
    else:
        digest = Future()
        digest.set_result(sha256)
    return LoadedModel(model, cfg, provenance, path, digest, calibration, domain, problem)
