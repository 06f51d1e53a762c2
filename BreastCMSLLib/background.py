"""Running ``breastcmsl analyze`` (or any command) in a background process that can be cancelled.

Used by the Slicer module so that the GUI stays responsive: the caller polls :meth:`poll` and
:meth:`read_output` from a timer. Output goes to a log file (no pipes, so no reader thread), and
cancelling kills the whole process tree (the Python launcher of Slicer starts a child interpreter).
``breastcmsl analyze`` reports its stages as ``progress <fraction> <stage>`` lines (:func:`split_progress`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path


def analyze_command(python: str, t1: str | Path, series: list[str | Path], kind: str, model: str | Path,
                    out_dir: str | Path, device: str = "auto", label_fraction: float = 0.5) -> list[str]:
    """The ``breastcmsl analyze`` command line for named input files, run as ``python -m BreastCMSLLib.cli``,
    reporting its stages (``--progress``, see :func:`split_progress`).

    ``kind="subtractions"``: ``series`` are the subtractions; ``"phases"``: pre-contrast then posts.
    """
    if kind == "subtractions":
        volumes = ["--sub", *map(str, series)]
    elif kind == "phases":
        volumes = ["--pre", str(series[0]), "--post", *map(str, series[1:])]
    else:
        raise ValueError(f"unknown input kind {kind!r}")
    return [python, "-m", "BreastCMSLLib.cli", "analyze", "--t1", str(t1), *volumes, "--model", str(model),
            "--out", str(out_dir), "--device", device, "--label-fraction", repr(float(label_fraction)), "--progress"]


PROGRESS_LINE = re.compile(r"progress ([0-9]*\.?[0-9]+) (\S+)")


def split_progress(text: str) -> tuple[str, tuple[float, str] | None]:
    """Separate the ``progress <fraction> <stage>`` lines that ``breastcmsl analyze`` prints on stderr
    before each stage from the rest of a log text.

    Returns (the text without those lines, the last (fraction clipped to [0, 1], stage) or None).
    """
    kept, last = [], None
    for line in text.splitlines(keepends=True):
        match = PROGRESS_LINE.fullmatch(line.rstrip("\r\n"))
        if match:
            last = (min(max(float(match.group(1)), 0.0), 1.0), match.group(2))
        else:
            kept.append(line)
    return "".join(kept), last


class BackgroundCommand:
    """One command in its own process group (POSIX) or process tree (Windows), logging to ``log_path``."""

    def __init__(self, command: list[str], log_path: str | Path, env: dict | None = None,
                 cwd: str | Path | None = None):
        self.command = command
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self.cancelled = False
        self._read_offset = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            if sys.platform == "win32":
                self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                                creationflags=subprocess.CREATE_NEW_PROCESS_GROUP)
            else:
                self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                                start_new_session=True)

    def poll(self) -> int | None:
        """The exit code once finished, else None."""
        return None if self.process is None else self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout)

    def read_output(self) -> str:
        """Whole lines logged since the previous call (once the process has ended, the rest as well)."""
        finished = self.poll() is not None
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._read_offset)
                data = log.read()
        except FileNotFoundError:
            return ""
        if not finished:
            data = data[:data.rfind(b"\n") + 1]  # a line still being written waits for the next call
        self._read_offset += len(data)
        return data.decode("utf-8", errors="replace")

    def cancel(self) -> None:
        """Kill the process and everything it started; safe to call when it has already ended."""
        if self.process is None or self.process.poll() is not None:
            return
        self.cancelled = True
        if sys.platform == "win32":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True,
                           check=False)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # the session leader's group is its tree
        self.process.wait()
