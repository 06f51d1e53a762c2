"""What a model file says without building its network: the metadata of the ``.safetensors`` file (config,
provenance, calibration), its sha256 and the record result.json keeps of it. No torch: the model store lists
files and the cohort plans its run with this alone (:mod:`.modelfile` loads the weights).

Nothing is ever unpickled: a pickle checkpoint is refused with its own message.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors import SafetensorError, safe_open

from BreastCMSLLib.config import ModelConfig
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.calibration import Calibration
from BreastCMSLLib.network.domain import DomainRecord, read_record

__all__ = ["FORMAT", "FORMAT_VERSION", "file_sha256", "model_info", "model_name", "read_model_domain",
           "read_model_file_metadata", "read_model_metadata"]

FORMAT = "breastcmsl-model"
FORMAT_VERSION = "1"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_name(path: str | Path, provenance: dict) -> str:
    """The name a model is shown by: its provenance's ``name``, else the file's stem."""
    return str(provenance.get("name") or Path(path).stem)


def model_info(path: str | Path, config: ModelConfig, provenance: dict, sha256: str) -> dict:
    """What result.json records about the model file ``path``."""
    return {
        "name": model_name(path, provenance),
        "path": str(path),
        "sha256": sha256,
        "untrained": bool(provenance.get("untrained", False)),
        "synthetic": bool(provenance.get("synthetic", False)),
        "method": config.loss if config.arch == "resnet34_3d" else config.arch,
        "version": provenance.get("version"),
    }


def read_model_metadata(path: str | Path) -> tuple[ModelConfig, dict]:
    """Config and provenance of a model file, without building the network."""
    cfg, provenance, _ = read_model_file_metadata(path)
    return cfg, provenance


def read_model_domain(path: str | Path) -> tuple[DomainRecord | None, str | None]:
    """The training-domain record of a model file, or (None, why there is none: absent or damaged); a damaged
    record does not make the file unreadable (:func:`BreastCMSLLib.network.domain.read_record`)."""
    return read_record(_metadata(path).get("domain"))


def _metadata(path: str | Path) -> dict:
    """The metadata of a BreastCMSL model file; anything else is an :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such model file")
    try:
        with safe_open(str(path), framework="numpy") as f:
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
    return meta


def read_model_file_metadata(path: str | Path) -> tuple[ModelConfig, dict, Calibration]:
    """Config, provenance and calibration (T = 1, unfitted, when absent) of a model file, parsed strictly."""
    path = Path(path)
    meta = _metadata(path)
    try:
        cfg = ModelConfig.from_json(meta["config"])
        provenance = json.loads(meta.get("provenance", "{}"))
        if not isinstance(provenance, dict):
            raise ValueError("provenance is not a JSON object")
        calibration = Calibration.from_json(meta["calibration"]) if "calibration" in meta else Calibration()
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise InputError(path, f"has unreadable BreastCMSL metadata ({err})") from None
    return cfg, provenance, calibration
