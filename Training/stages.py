"""Named pipeline stages with their wall time, for the demo and the localization study."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack, redirect_stderr, redirect_stdout
from pathlib import Path


class Stages:
    """Runs ``fn(*args, **kwargs)`` as a named stage and prints its wall time; ``seconds`` holds each stage's
    time (s, rounded to 0.1) and, after :meth:`total`, the whole run's.

    Without ``log`` a stage prints ``[prefix] name ...`` when it starts and ``[prefix] name: T s`` when it ends,
    with whatever the stage prints in between. With ``log`` (a file, appended to) the stage's own output
    (Python's stdout and stderr: epoch lines, progress bars, warnings) goes to that file and the console gets
    one line per stage, ``[prefix] name ... T s``."""

    def __init__(self, prefix: str, log: str | Path | None = None):
        self.prefix = prefix
        self.log = Path(log) if log else None
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    def __call__(self, name: str, fn: Callable, *args, **kwargs):
        t0 = time.perf_counter()
        print(f"[{self.prefix}] {name} ...", end="" if self.log else "\n", flush=True)
        with ExitStack() as stack:
            if self.log:
                f = stack.enter_context(open(self.log, "a"))
                stack.enter_context(redirect_stdout(f))
                stack.enter_context(redirect_stderr(f))
                print(f"[{self.prefix}] {name}", flush=True)
            result = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        print(f" {self.seconds[name]} s" if self.log else f"[{self.prefix}] {name}: {self.seconds[name]} s",
              flush=True)
        return result

    def total(self) -> dict[str, float]:
        """Record the time since construction as ``total``; returns :attr:`seconds`."""
        self.seconds["total"] = round(time.perf_counter() - self.started, 1)
        return self.seconds
