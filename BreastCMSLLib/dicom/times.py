"""The post-contrast phase times of a DICOM study, from the headers :mod:`.series` parsed.

A phase's time is its clock time (AcquisitionTime, else ContentTime; TriggerTime added within a multi-phase series
whose phases share one clock time: :func:`BreastCMSLLib.dicom.series._series_from`). Where those do not order
the phases (no time tags, or equal times), TemporalPositionIdentifier x TemporalResolution gives them when the
series holds both. The injection is ContrastBolusStartTime where a post-contrast header carries it, else it is
assumed at the first post-contrast phase (:class:`~BreastCMSLLib.pipeline.phase_times.PhaseTimes`).
"""

from __future__ import annotations

import itertools

from BreastCMSLLib.dicom.roles import RoleAssignment
from BreastCMSLLib.dicom.series import Phase, _seconds, read_dataset
from BreastCMSLLib.pipeline.phase_times import PhaseTimes


def _header(phase: Phase):
    return read_dataset(phase.frames[0].path, stop_before_pixels=True)


def _temporal_times(posts: list[Phase]) -> list[float | None]:
    """TemporalPositionIdentifier x TemporalResolution (s) of each phase; None where a phase lacks either."""
    times = []
    for phase in posts:
        position = phase.frames[0].temporal_position
        resolution = _header(phase).get("TemporalResolution")
        times.append(None if position is None or resolution in (None, "") else
                     (int(position) - 1) * float(resolution) / 1000.0)
    return times


def study_times(assignment: RoleAssignment, source: str) -> PhaseTimes:
    """The post-contrast phase times of a study whose roles are ``assignment`` (``kind`` phases)."""
    posts = [e.phase for e in assignment.entries if e.role.startswith("post_")]
    clock = [p.time_s for p in posts]
    ordered = None not in clock and all(b > a for a, b in itertools.pairwise(clock))
    if not ordered:
        clock = _temporal_times(posts)
        if None in clock or not all(b > a for a, b in itertools.pairwise(clock)):
            return PhaseTimes(None, f"{source} (no acquisition, content, trigger or temporal-position times)")
        return PhaseTimes.from_clock(clock, None, f"{source} (TemporalPositionIdentifier x TemporalResolution)")
    bolus = _seconds(_header(posts[0]).get("ContrastBolusStartTime")) if posts else None
    injection = bolus if bolus is not None and bolus <= clock[0] else None
    return PhaseTimes.from_clock(clock, injection, f"{source} (DICOM acquisition times)")
