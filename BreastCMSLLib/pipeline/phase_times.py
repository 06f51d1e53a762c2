"""The acquisition times of the post-contrast phases and the choice of the early and late phase.

Times are seconds after the injection; where the injection time is not given it is assumed at the first
post-contrast phase (that phase is then at 0 s). Sources: a DICOM study's headers (:mod:`BreastCMSLLib.dicom.times`),
a case folder's ``times.json``, or the command line (``--times``, ``--injection-s``).

``times.json`` (case folders; ``synth`` writes it from the phantom's phase times)::

    {"post_s": [75, 150, 225, 300, 375, 450], "injection_s": 0}

``post_s``: the time of every post-contrast phase in order (seconds on any one clock); ``injection_s``
(optional): the injection on the same clock, else the first post-contrast time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from BreastCMSLLib.atomic import atomic_write_text
from BreastCMSLLib.errors import InputError

TIMES_FILE = "times.json"


@dataclass(frozen=True)
class PhaseTimes:
    """Post-contrast phase times in seconds after the injection (None: unknown) and where they came from."""

    post_s: tuple[float, ...] | None
    source: str
    injection_given: bool = False

    @classmethod
    def from_clock(cls, post: list[float | None], injection: float | None, source: str) -> PhaseTimes:
        """Times on one clock (s), made relative to ``injection`` (None: the first post-contrast phase); unknown
        when any phase lacks a time."""
        if not post or any(t is None for t in post):
            return cls(None, source)
        origin = post[0] if injection is None else injection
        return cls(tuple(round(float(t) - origin, 3) for t in post), source, injection is not None)


def read_times_file(path: str | Path, n_post: int) -> PhaseTimes:
    """``times.json`` of a case folder (format: module docstring) for ``n_post`` post-contrast phases."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(path, f"not valid JSON ({err})") from None
    post = data.get("post_s") if isinstance(data, dict) else None
    injection = data.get("injection_s") if isinstance(data, dict) else None
    numbers = isinstance(post, list) and all(isinstance(t, int | float) for t in post)
    if not numbers or (injection is not None and not isinstance(injection, int | float)):
        raise InputError(path, 'expected {"post_s": [seconds, ...], "injection_s": seconds (optional)}')
    if len(post) != n_post:
        raise InputError(path, f"post_s gives {len(post)} times for {n_post} post-contrast phases")
    return PhaseTimes.from_clock(post, injection, str(path))


def write_times_file(folder: str | Path, post_s, injection_s: float | None = 0.0) -> None:
    """Write ``times.json`` into ``folder`` (format: module docstring)."""
    data = {"post_s": [round(float(t), 3) for t in post_s]}
    if injection_s is not None:
        data["injection_s"] = float(injection_s)
    atomic_write_text(Path(folder) / TIMES_FILE, json.dumps(data))


def case_times(case_dir: str | Path, n_post: int) -> PhaseTimes:
    """The phase times of a case folder: its ``times.json``, else unknown."""
    path = Path(case_dir) / TIMES_FILE
    return read_times_file(path, n_post) if path.is_file() else PhaseTimes(None, f"{case_dir} (no {TIMES_FILE})")


def given_times(post_s: list[float], injection_s: float | None, n_post: int) -> PhaseTimes:
    """Times given on the command line (``--times``, ``--injection-s``)."""
    if len(post_s) != n_post:
        raise InputError("--times", f"{len(post_s)} times given for {n_post} post-contrast phases")
    return PhaseTimes.from_clock(list(post_s), injection_s, "--times")


@dataclass(frozen=True)
class PhaseChoice:
    """The early and late post-contrast phase (0-based among the post-contrast phases; ``late`` None when
    unavailable) and why a choice was limited (``note``)."""

    early: int
    late: int | None
    note: str | None = None

    def as_dict(self, times: PhaseTimes) -> dict:
        def phase(k):
            return None if k is None else {"post": k + 1, "time_s": None if times.post_s is None else times.post_s[k]}
        return {"times_s": None if times.post_s is None else list(times.post_s), "times_source": times.source,
                "injection": "given" if times.injection_given else "assumed at the first post-contrast phase",
                "early_phase": phase(self.early), "late_phase": phase(self.late), "note": self.note}


def choose_phases(times: PhaseTimes, n_post: int, early_s: float = 150.0, late_s: float = 450.0) -> PhaseChoice:
    """Early: the post-contrast phase nearest ``early_s``; late: the one nearest ``late_s`` after the early one.
    Two phases: the first and the second; one: early only (PE, no SER or delayed class). More than two without
    times: :class:`InputError` (the times are needed to choose)."""
    if n_post < 1:
        raise InputError(times.source, "no post-contrast phase")
    if n_post == 1:
        return PhaseChoice(0, None, "one post-contrast phase: PE only; SER, its label and the delayed class need "
                           "a late phase")
    if n_post == 2:
        return PhaseChoice(0, 1, None if times.post_s else "two post-contrast phases: the first is early, the "
                           "second late")
    if times.post_s is None:
        raise InputError(times.source, f"{n_post} post-contrast phases without acquisition times: give them "
                         f"(--times, or {TIMES_FILE} in the case folder) to choose the early and late phase")
    t = np.asarray(times.post_s)
    early = int(np.argmin(np.abs(t - early_s)))
    if early == n_post - 1:
        return PhaseChoice(early, None, f"no post-contrast phase after the early one ({t[early]:.0f} s): no late "
                           "phase")
    late = early + 1 + int(np.argmin(np.abs(t[early + 1:] - late_s)))
    return PhaseChoice(early, late)
