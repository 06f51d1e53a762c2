"""What the benchmarks share: the folder they work in, a phantom case and an untrained model made once in it with
the product's own commands (``breastcmsl synth``, ``breastcmsl init-model``), and a wall-time and peak-memory
measurement of one call."""

from __future__ import annotations

import gc
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "BreastCMSLLib.cli"]

__all__ = ["CLI", "ROOT", "measured", "phantom_case", "untrained_model", "work_folder"]


def work_folder(work: Path | None, prefix: str) -> Path:
    """``work`` (made if missing), or a new temporary folder named ``prefix``…; absolute."""
    folder = (work or Path(tempfile.mkdtemp(prefix=prefix))).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def phantom_case(folder: Path, seed: int = 1, *extra: str) -> Path:
    """A malignant phantom case folder (``breastcmsl synth --seed seed --malignant`` + ``extra``), made once."""
    if not folder.exists():
        subprocess.run([*CLI, "synth", "--out", str(folder), "--seed", str(seed), "--malignant", *extra], check=True,
                       capture_output=True, cwd=ROOT)
    return folder


def untrained_model(path: Path, *extra: str) -> Path:
    """An untrained model file (``breastcmsl init-model`` + ``extra``; default: full width, the paper's input
    340 x 220 x 128), made once."""
    if not path.exists():
        subprocess.run([*CLI, "init-model", "--out", str(path), *extra], check=True, capture_output=True, cwd=ROOT)
    return path


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def measured(run) -> tuple[float, float, object]:
    """Wall time (s) of ``run()``, the peak resident memory above the memory before it (MiB; Linux: VmHWM after
    resetting it through /proc/self/clear_refs), its result."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - t0
    return seconds, (_status_kib("VmHWM") - before) / 1024, result
