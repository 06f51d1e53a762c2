"""Background processes that can be cancelled: the analysis worker's process group, other commands.

The session starts the warm worker (:mod:`.worker`) with :func:`start_group` and cancels it with
:func:`kill_group`, which ends the whole process tree (the Python launcher of Slicer starts a child
interpreter). :class:`BackgroundCommand` runs a one-off command logging to a file (building the demo model).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path


def start_group(command: list[str], stdout, stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT, env: dict | None = None,
                cwd: str | Path | None = None) -> subprocess.Popen:
    """Start ``command`` in its own process group (POSIX) or process tree (Windows), so that
    :func:`kill_group` ends it with everything it started (Slicer's Python launcher starts a child)."""
    flags = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if sys.platform == "win32" else \
        {"start_new_session": True}
    return subprocess.Popen(command, stdout=stdout, stderr=stderr, stdin=stdin, env=env, cwd=cwd, **flags)


def kill_group(process: subprocess.Popen) -> None:
    """Kill a process started by :func:`start_group` and everything it started; wait for it. Safe to call
    when it has already ended."""
    if process.poll() is not None:
        return
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the session leader's group is its tree
    process.wait()


class BackgroundCommand:
    """One command in its own process group, logging to ``log_path`` (e.g. building the demo model)."""

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
            self.process = start_group(self.command, stdout=log, env=self.env, cwd=self.cwd)

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
        kill_group(self.process)
