"""A training run's folder, the one place that knows its files: ``run.json`` (configs), ``checkpoint.pt`` (resume
state), ``model_best.safetensors`` (lowest validation loss), ``model_last.safetensors``, ``log.csv``, ``tb/``
(TensorBoard), once calibrated ``calibration.json`` (the calibration, the validation scores it was fitted on and the
sha256 of the best model that gave them) and, once measured, ``domain.json`` (the training-domain record,
:mod:`.domain`, and the sha256 of the best model it belongs to); both written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from BreastCMSLLib.atomic import atomic_write_text
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.calibration import Calibration
from BreastCMSLLib.network.domain import DomainRecord
from BreastCMSLLib.network.header import file_sha256
from BreastCMSLLib.network.modelfile import add_domain


def run_files(out: str | Path) -> dict[str, Path]:
    """The paths of a run folder's files by role: run, checkpoint, best, last, log, tb, calibration, domain."""
    out = Path(out)
    return {"run": out / "run.json", "checkpoint": out / "checkpoint.pt", "best": out / "model_best.safetensors",
            "last": out / "model_last.safetensors", "log": out / "log.csv", "tb": out / "tb",
            "calibration": out / "calibration.json", "domain": out / "domain.json"}


def read_run(run_dir: str | Path) -> dict:
    """``run.json`` of a run folder (its configs: ``fit``, ``model``, ...)."""
    path = run_files(run_dir)["run"]
    if not path.is_file():
        raise InputError(run_dir, "is not a training run folder (no run.json)")
    return json.loads(path.read_text())


def run_model_path(run_dir: str | Path) -> Path:
    """The best model of a run folder."""
    path = run_files(run_dir)["best"]
    if not path.is_file():
        raise InputError(run_dir, "is not a finished training run (no model_best.safetensors)")
    return path


def write_run_calibration(run_dir: str | Path, cal: Calibration, subject_ids: list[str], label: np.ndarray,
                          score: np.ndarray) -> Path:
    """``RUN/calibration.json``: the calibration, the validation scores it was fitted on and the sha256 of
    the best model that gave them (atomic)."""
    path = run_files(run_dir)["calibration"]
    atomic_write_text(path, json.dumps({
        "model_sha256": file_sha256(run_model_path(run_dir)),
        "calibration": json.loads(cal.to_json()),
        "validation": {"subject_id": list(subject_ids), "label": [int(v) for v in label],
                       "score": [float(v) for v in score]}}, indent=1))
    return path


def read_run_calibration(run_dir: str | Path) -> tuple[Calibration, dict] | None:
    """(calibration, validation scores) of a run, or None when it has not been calibrated. A calibration
    of another best model (the run was trained again) is refused."""
    path = run_files(run_dir)["calibration"]
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        val = data["validation"]
        val = {"subject_id": list(val["subject_id"]), "label": np.asarray(val["label"], dtype=int),
               "score": np.asarray(val["score"], dtype=float)}
        cal, sha = Calibration.from_json(json.dumps(data["calibration"])), data["model_sha256"]
    except (KeyError, ValueError, TypeError) as err:
        raise InputError(path, f"is not a readable run calibration ({err})") from None
    if sha != file_sha256(run_model_path(run_dir)):
        raise InputError(path, "was fitted for another model_best.safetensors; run `breastcmsl-train calibrate` again")
    return cal, val


def write_domain(run_dir: str | Path, record: DomainRecord, into_model: bool = False) -> Path:
    """``RUN/domain.json`` (atomic) with the sha256 of the best model; ``into_model``: the record (and the model's
    phases and their times) written into ``model_best.safetensors`` first."""
    best = run_model_path(run_dir)
    sha = add_domain(best, record) if into_model else file_sha256(best)
    path = run_files(run_dir)["domain"]
    atomic_write_text(path, json.dumps({"model_sha256": sha, "record": json.loads(record.to_json())}))
    return path


def read_domain(run_dir: str | Path) -> DomainRecord | None:
    """The run's record, or None when it has none; one of another best model is refused."""
    path = run_files(run_dir)["domain"]
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        record, sha = DomainRecord.from_json(json.dumps(data["record"])), data["model_sha256"]
    except (KeyError, ValueError, TypeError) as err:
        raise InputError(path, f"is not a readable training-domain record ({err})") from None
    if sha != file_sha256(run_model_path(run_dir)):
        raise InputError(path, "was measured for another model_best.safetensors; run `breastcmsl-train domain` again")
    return record
