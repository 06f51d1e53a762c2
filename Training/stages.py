"""Named pipeline stages with their wall time, for the demo and the localization study."""

from __future__ import annotations

import time
from collections.abc import Callable


class Stages:
    """Runs ``fn(*args, **kwargs)`` as a named stage, printing ``[prefix] name ...`` and its wall time;
    ``seconds`` holds each stage's time (s, rounded to 0.1) and, after :meth:`total`, the whole run's."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    def __call__(self, name: str, fn: Callable, *args, **kwargs):
        t0 = time.perf_counter()
        print(f"[{self.prefix}] {name} ...", flush=True)
        result = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"[{self.prefix}] {name}: {self.seconds[name]} s", flush=True)
        return result

    def total(self) -> dict[str, float]:
        """Record the time since construction as ``total``; returns :attr:`seconds`."""
        self.seconds["total"] = round(time.perf_counter() - self.started, 1)
        return self.seconds
