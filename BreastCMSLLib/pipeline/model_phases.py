"""Which of a study's post-contrast phases a model takes.

A model takes ``in_channels`` subtraction channels: its post-contrast phases (``PreprocessConfig.phases``, numbers
from 1; None: every phase of the training studies) at its training times (``phase_times_s``). A study with as many
phases gives them all; one with more gives the phases nearest the model's times (each time its nearest phase not yet
taken, in order), or, without times on either side, the model's phase numbers; one with fewer is refused, naming what
the model needs and what the study has. A model that records no phases (older files) takes exactly its channel count.
"""

from __future__ import annotations

from dataclasses import dataclass

from BreastCMSLLib.config import PreprocessConfig
from BreastCMSLLib.errors import InputError


@dataclass(frozen=True)
class PhasesUsed:
    """The post-contrast phases taken (numbers from 1) of the study's ``of``, their times (s; None: unknown) and
    the ``rule`` that chose them: "all", "nearest time" or "phase number"."""

    phases: tuple[int, ...]
    of: int
    times_s: tuple[float, ...] | None
    rule: str


def phases_needed(cfg: PreprocessConfig, channels: int) -> str:
    """What a model needs, in words: ``2 post-contrast phases (1, 2 at 75, 150 s)``."""
    text = f"{channels} post-contrast phase{'s' if channels > 1 else ''}"
    if cfg.phases:
        times = f" at {', '.join(f'{t:.0f}' for t in cfg.phase_times_s)} s" if cfg.phase_times_s else ""
        text += f" ({', '.join(map(str, cfg.phases))}{times})"
    return text


def choose(n_study: int, times: tuple[float, ...] | None, cfg: PreprocessConfig, channels: int | None,
           source: str, model: str) -> PhasesUsed:
    """The phases a model (``channels`` inputs, ``cfg``) takes of a study's ``n_study`` with ``times``; ``channels``
    None (a training cache): ``cfg.phases`` by number, or every phase."""
    channels = channels or (len(cfg.phases) if cfg.phases else n_study)
    if cfg.phases is None and n_study != channels:  # a model that records no phases takes exactly its channels
        raise InputError(source, f"the model {model} takes {channels} subtraction channels, these inputs give "
                         f"{n_study}")
    if n_study < channels:
        raise InputError(source, f"the model {model} needs {phases_needed(cfg, channels)}; this study has "
                         f"{n_study}")
    if n_study == channels:
        return PhasesUsed(tuple(range(1, n_study + 1)), n_study, times, "all")
    if times is not None and cfg.phase_times_s is not None:
        left, taken = list(range(n_study)), []
        for t in cfg.phase_times_s:
            k = min(left, key=lambda n: abs(times[n] - t))
            taken.append(k)
            left.remove(k)
        taken.sort()
        return PhasesUsed(tuple(k + 1 for k in taken), n_study, tuple(times[k] for k in taken), "nearest time")
    if cfg.phases is not None and len(cfg.phases) == channels and max(cfg.phases) <= n_study:
        at = None if times is None else tuple(times[k - 1] for k in cfg.phases)
        return PhasesUsed(tuple(cfg.phases), n_study, at, "phase number")
    raise InputError(source, f"the model {model} takes {phases_needed(cfg, channels)}; this study has {n_study} and "
                     "no acquisition times to choose them by")
