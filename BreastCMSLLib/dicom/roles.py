"""Series role assignment for a DCE-MRI study: which series is the non-fat-suppressed T1, which phases
are pre- and post-contrast (in time order), or which are the scanner's subtractions.

Rules (each assigned role carries a confidence and the reason):

1. Series are sorted into candidate pools by header facts: excluded first (never a role, even named in
   ROLES.json: SEG, SR, PR and other non-MR-image objects, ImageType DERIVED\\SECONDARY maps, localizers,
   MIPs and reformats, see :func:`BreastCMSLLib.dicom.series.exclusion`; by wording, for the rules only: T2,
   diffusion, parametric maps ...), subtraction (ImageType SUB/SUBTRACT/SUBTRACTION or a ``sub``
   description), non-fat-suppressed T1 (one phase, ``t1`` or ``non fs`` wording, no fat-suppression hint
   in ScanOptions or the description, no dynamic wording), dynamic (several phases, or dynamic/pre/post
   wording).
2. T1 (optional): one candidate is the T1; none means no T1 (the breast mask then comes from the
   pre-contrast phase, ``mask_source`` ``"pre"``); two or more are an error listing the candidates. A
   non-fat-suppressed T1 acquired after contrast (a contrast marker such as ``+c``, ``c``, ``post``, ``gad`` in
   its description, or acquired after the dynamic series began) is set aside: neither the mask T1 nor a
   dynamic phase; the inventory lists it with the reason.
3. Dynamic phases must share one slice orientation, else an error listing them by plane.
   Pre-contrast: the one phase whose description says pre-contrast; if none does, the earliest
   dynamic phase (confidence medium). Two pre-contrast candidates are an error. Post-contrast: the
   other dynamic phases in acquisition-time order (trigger time within a multi-phase series).
4. Phases are preferred when complete; scanner subtractions are used when the phases are absent or
   incomplete. When the model needs N channels, any other count is an error (never truncated).

Every ambiguity is an :class:`InputError` that lists the candidate series; ``--roles ROLES.json``
(:func:`BreastCMSLLib.dicom.study.load_overrides`) fixes roles by SeriesInstanceUID or series number (``"7"``,
or ``"7:2"`` for phase 2 of a multi-phase series; ``"t1": null`` for no T1) and the rules fill in the rest. Where a
series' name and its acquisition time disagree (a series named pre-contrast acquired after other
dynamic phases), the reason or the error says so.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import numpy as np

from BreastCMSLLib.dicom.series import SUBTRACTION_IMAGE_TYPES, Phase, Series
from BreastCMSLLib.errors import InputError

ROLE_KEYS = ("t1", "pre", "post", "sub")


@dataclass(frozen=True)
class RolePatterns:
    """Case-insensitive regular expressions matched against SeriesDescription (ScanOptions for
    ``scan_options_fat_sat``); defaults cover usual Siemens, GE and Philips wording."""

    # the non-fat-suppressed T1 and fat suppression (a T1 with a fat-suppression hint is no mask T1)
    t1: str = r"(?<![a-z0-9])t1"
    non_fat_sat: str = r"non[-_ ]?(fs|fat|sat|spair)|(?<![a-z])(nfs|no[-_ ]?fs|wo[-_ ]?fs)(?![a-z])"
    fat_sat: str = (r"(?<![a-z])(fs|fat[-_ ]?sat\w*|fatsup\w*|spair|spir|stir|water|dixon[-_ ]?w)(?![a-z])"
                    r"|vibrant|thrive")
    scan_options_fat_sat: str = r"(?<![a-z])(fs|sfs|fat[-_]?sat\w*|spair|spir)(?![a-z])"
    # the dynamic series and its phases: pre-contrast, post-contrast, scanner subtractions
    dynamic: str = (r"dyn|vibrant|thrive|twist|views|multi[-_ ]?phase|(?<![a-z])ph(ase)?[-_ ]?\d"
                    r"|(?<![a-z])(pass|dce)(?![a-z])")
    pre: str = r"(?<![a-z])(pre|pre[-_ ]?contrast|nativ\w*|unenhanced)(?![a-z])"
    post: str = (r"(?<![a-z])post|\d+(st|nd|rd|th)[-_ ]?pass|(?<![a-z])ph(ase)?[-_ ]?[1-9]|\+c(?![a-z])"
                 r"|(?<![a-z])(c\+|gd|gad\w*|contrast)(?![a-z])")
    subtraction: str = r"(?<![a-z])sub(s|tract\w*)?(?![a-z])"
    # a contrast marker on a T1: acquired after contrast, so neither the mask T1 nor a dynamic phase
    after_contrast: str = (r"\+c(?![a-z])|(?<![a-z0-9])(c\+?|post\w*|gd|gad\w*)(?![a-z0-9])"
                           r"|(?<!non[-_ ])(?<!wo[-_ ])(?<!without )(?<!w/o )contrast")
    # series that never take a role (T2, diffusion, localizers, reformats, parametric maps)
    exclude: str = (r"(?<![a-z0-9])t2|dwi|diff|adc|(?<![a-z])(stir|tirm|loc|localizer|survey|scout|mip|mpr|"
                    r"cad|perfusion|map|ser|pe\d*)(?![a-z])")

    def match(self, name: str, text: str) -> bool:
        return re.search(getattr(self, name), text, flags=re.IGNORECASE) is not None

    @classmethod
    def from_overrides(cls, overrides: dict, source) -> RolePatterns:
        """The defaults with fields replaced by ``overrides`` ({"field": "regular expression"}, e.g. a site's
        wording); an unknown field or an invalid expression is an :class:`InputError` naming ``source``."""
        fields = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(overrides, dict) or not set(overrides) <= set(fields):
            raise InputError(source, f"expected a JSON object with keys among {', '.join(fields)}")
        for key, value in overrides.items():
            try:
                re.compile(value)
            except (re.error, TypeError) as err:
                raise InputError(source, f"{key}: not a regular expression ({err})") from None
        return dataclasses.replace(cls(), **overrides)


@dataclass(frozen=True)
class RoleEntry:
    """One filled role: ``t1``, ``pre``, ``post_k`` or ``sub_k`` (k from 1, time order)."""

    role: str
    phase: Phase
    confidence: str  # "high", "medium" (a rule, not the wording, decided) or "user" (--roles)
    reason: str

    def as_dict(self) -> dict:
        return {"role": self.role, **self.phase.describe(), "confidence": self.confidence, "reason": self.reason}


MASK_SOURCES = {"t1": "breast mask from the non-fat-suppressed T1",
                "pre": "breast mask from the fat-suppressed pre-contrast phase (no T1)",
                "sub": "no breast mask: subtractions without a T1 (analyze refuses; name a T1 in ROLES.json)"}


def _columns(rows: list[tuple[str, ...]]) -> str:
    """Rows as left-aligned columns, the last column unpadded."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(v.ljust(w) for v, w in zip(r[:-1], widths, strict=True)), r[-1]]).rstrip()
                     for r in rows)


def inventory(series: list[Series], patterns: RolePatterns | None = None) -> list[dict]:
    """Every series of a study as JSON-ready dicts: number, UID, description, ImageType, ScanOptions,
    phases, images, orientation, problem (no usable volume), excluded (why it never takes a role) and
    set_aside (why the rules give it no role: a non-fat-suppressed T1 after contrast)."""
    patterns = patterns or RolePatterns()
    late = _Pools(series, patterns).late
    return [{"series_uid": s.uid, "series_number": s.number, "description": s.description,
             "image_type": "\\".join(s.image_type), "scan_options": s.scan_options, "phases": len(s.phases),
             "images": s.n_images, "orientation": s.plane, "problem": s.problem,
             "excluded": excluded_reason(s, patterns), "set_aside": late.get(s.uid)} for s in series]


def inventory_table(series: list[Series], patterns: RolePatterns | None = None) -> str:
    """The study's series as a plain-text table (what a ROLES.json can name)."""
    rows = [("series", "description", "image_type", "phases", "orientation", "problem")]
    rows += [(str(d["series_number"]), d["description"], d["image_type"], str(d["phases"]), d["orientation"],
              d["problem"] or (f"excluded: {d['excluded']}" if d["excluded"] else "")
              or (f"set aside: {d['set_aside']}" if d["set_aside"] else "")) for d in inventory(
                  series, patterns)]
    return _columns(rows)


@dataclass
class RoleAssignment:
    """The roles of one study; ``kind`` is ``"phases"`` ([t1], pre, post_k) or ``"subtractions"`` ([t1], sub_k).
    The t1 entry, first when present, is absent when the study has no non-fat-suppressed T1."""

    kind: str
    entries: list[RoleEntry]
    series: list[Series] = field(default_factory=list)
    patterns: RolePatterns | None = None

    @property
    def t1(self) -> RoleEntry | None:
        return self.entries[0] if self.entries and self.entries[0].role == "t1" else None

    @property
    def mask_source(self) -> str:
        """Where the breast mask comes from: ``"t1"``, ``"pre"`` (no T1) or ``"sub"`` (no T1, no phases)."""
        return "t1" if self.t1 else ("pre" if self.kind == "phases" else "sub")

    @property
    def reference(self) -> RoleEntry:
        """The entry whose grid every output map lands on: first post-contrast phase, or first subtraction."""
        return next(e for e in self.entries if e.role in ("post_1", "sub_1"))

    def phases(self) -> list[Phase]:
        """The T1 (when there is one), then the series volumes in the order of :class:`CaseInputs`."""
        return [e.phase for e in self.entries]

    def as_dict(self) -> dict:
        return {"kind": self.kind, "mask_source": self.mask_source, "roles": [e.as_dict() for e in self.entries],
                "series": inventory(self.series, self.patterns)}

    def table(self) -> str:
        """A plain-text table: role, series number, phase, description, confidence, reason; then the mask
        source."""
        rows = [("role", "series", "phase", "description", "confidence", "reason")]
        rows += [(e.role, str(e.phase.series.number),
                  f"{e.phase.index}/{len(e.phase.series.phases)}" if len(e.phase.series.phases) > 1 else "-",
                  e.phase.series.description, e.confidence, e.reason) for e in self.entries]
        used = {e.phase.series.uid for e in self.entries}
        aside = [f"\nseries {d['series_number']} '{d['description']}' set aside: {d['set_aside']}"
                 for d in inventory(self.series, self.patterns) if d["set_aside"] and d["series_uid"] not in used]
        return (_columns(rows) + f"\n{MASK_SOURCES[self.mask_source]} (mask_source {self.mask_source})"
                + "".join(aside))


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "time unknown"
    seconds = seconds % 86400
    return f"{int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}:{seconds % 60:04.1f}"


def describe_candidates(phases: list[Phase]) -> str:
    """``series 300 'ax dyn pre' (axial, 08:01:00.0), ...`` for error messages."""
    return "; ".join(f"series {p.label} '{p.series.description}' ({p.series.plane}, {_clock(p.time_s)})"
                     for p in phases)


def _time_key(phase: Phase):
    return (phase.time_s if phase.time_s is not None else np.inf, phase.series.number, phase.index)


def fat_suppression(s: Series, patterns: RolePatterns = RolePatterns()) -> tuple[bool | None, str]:
    """Whether ``s`` is fat-suppressed (True/False, None when nothing says) and the hint that says so:
    ScanOptions first, then the description."""
    if re.search(patterns.scan_options_fat_sat, s.scan_options, flags=re.IGNORECASE):
        return True, f"ScanOptions {s.scan_options}"
    if patterns.match("non_fat_sat", s.description):
        return False, "description says not fat-suppressed"
    if patterns.match("fat_sat", s.description):
        return True, "description says fat-suppressed"
    if s.scan_options:
        return False, f"no fat suppression in ScanOptions {s.scan_options}"
    return None, ""


def excluded_reason(s: Series, patterns: RolePatterns) -> str | None:
    """Why the rules leave ``s`` out: its header (:attr:`Series.excluded`, final) or its wording (T2,
    diffusion, maps ...: a ROLES.json may still name it)."""
    if s.excluded:
        return s.excluded
    if patterns.match("exclude", s.description):
        return f"description '{s.description}' says it is no T1 or DCE volume (RolePatterns.exclude)"
    return None


class _Pools:
    """Candidate phases of a study by header facts; ``late`` names (by UID) the non-fat-suppressed T1 series
    acquired after contrast, with the reason, that take no role."""

    def __init__(self, series: list[Series], patterns: RolePatterns):
        self.patterns = patterns
        self.t1, self.dynamic, self.subtractions = [], [], []
        self.hints: dict[str, str] = {}
        self.late: dict[str, str] = {}
        for s in series:
            pool = self._pool(s)
            if pool is not None:
                pool.extend(s.phases)
        times = [p.time_s for p in self.dynamic + self.subtractions if p.time_s is not None]
        if times:  # contrast is given during the dynamic series: a T1 acquired after it began is post-contrast
            start = min(times)
            for p in [p for p in self.t1 if p.time_s is not None and p.time_s > start]:
                self.t1.remove(p)
                self.late[p.series.uid] = (f"non-fat-suppressed T1 acquired after contrast ({_clock(p.time_s)}, "
                                           f"after the dynamic series began at {_clock(start)}): neither the mask "
                                           "T1 nor a dynamic phase")

    def _pool(self, s: Series) -> list | None:
        p, d = self.patterns, s.description
        if excluded_reason(s, p):
            return None  # before subtractions: a MIP of a subtraction is no subtraction volume
        if SUBTRACTION_IMAGE_TYPES & set(s.image_type) or p.match("subtraction", d):
            return self.subtractions
        if (len(s.phases) == 1 and (p.match("t1", d) or p.match("non_fat_sat", d))
                and not (p.match("dynamic", d) or p.match("pre", d))):
            suppressed, hint = fat_suppression(s, p)
            if suppressed is not True:
                if p.match("after_contrast", d):
                    self.late[s.uid] = (f"non-fat-suppressed T1 after contrast (description '{d}' carries a "
                                        "contrast marker): neither the mask T1 nor a dynamic phase")
                    return None
                if not p.match("post", d):  # other post wording ("1st pass", "ph2"): a dynamic phase
                    if hint:
                        self.hints[s.uid] = hint
                    return self.t1
        if len(s.phases) > 1 or p.match("dynamic", d) or p.match("pre", d) or p.match("post", d):
            return self.dynamic
        return None


def _check_orientation(phases: list[Phase], source: str, what: str) -> None:
    normals = [p.normal for p in phases]
    if any(abs(float(np.dot(normals[0], n))) < 0.999 for n in normals[1:]):
        raise InputError(source, f"the {what} mix slice orientations: {describe_candidates(phases)}; "
                         "choose one set with --roles ROLES.json")


def _resolve(key: str, ident, series: list[Series], source: str) -> list[Phase]:
    """Phases named for role ``key`` by a SeriesInstanceUID, a series number, or ``"number:phase"``."""
    text = str(ident).strip()
    base, _, phase = text.partition(":")  # UIDs hold digits and dots only
    hits = [s for s in series if s.uid == base or str(s.number) == base]
    if len(hits) != 1:
        known = ", ".join(f"{s.number} '{s.description}'" for s in series)
        raise InputError(source, f"{key}: names series {text!r}, which matches {len(hits)} series of the study "
                         f"(series: {known})")
    named = hits[0]
    if named.excluded:
        raise InputError(source, f"{key}: names series {text!r}, which never takes a role ({named.excluded})")
    if named.problem:
        raise InputError(source, f"{key}: names series {text!r}, which holds no usable volume ({named.problem})")
    if phase:
        if not phase.isdigit() or not 1 <= int(phase) <= len(named.phases):
            raise InputError(source, f"{key}: names phase {text!r}; series {base} has {len(named.phases)} phase(s)")
        return [named.phases[int(phase) - 1]]
    return list(named.phases)


def _named_roles(overrides: dict, series: list[Series], source: str) -> dict[str, list[Phase]]:
    """The phases ROLES.json names per role. A whole multi-phase series named for a later role leaves out
    the phases named for an earlier one; a volume named twice, or a role left without a volume, is an
    :class:`InputError` naming the key."""
    named: dict[str, list[Phase]] = {}
    for key in ROLE_KEYS:
        if key not in overrides or overrides[key] is None:
            continue
        idents = [overrides[key]] if isinstance(overrides[key], (str, int)) else overrides[key]
        chosen: list[Phase] = []
        for ident in idents:
            phases = _resolve(key, ident, series, source)
            explicit = len(phases) == 1  # "N:k" or a one-phase series: exactly this volume is meant
            for phase in phases:
                owner = next((k for k, ps in [*named.items(), (key, chosen)] if any(phase is q for q in ps)), None)
                if owner is None:
                    chosen.append(phase)
                elif explicit:
                    raise InputError(source, f"{key}: names {phase.label} '{phase.series.description}', which is "
                                     f"already named for {owner}; a volume takes one role")
        if not chosen:
            raise InputError(source, f"{key}: names {idents}, whose phases are all named for other roles")
        if key in ("t1", "pre") and len(chosen) != 1:
            raise InputError(source, f"{key}: must name one volume (a series of one phase, or \"N:phase\"); "
                             f"{idents} names {len(chosen)}")
        named[key] = chosen
    return named


def _entries(role: str, phases: list[Phase], confidence: str, reasons) -> list[RoleEntry]:
    if role in ("t1", "pre"):
        return [RoleEntry(role, phases[0], confidence, reasons[0])]
    return [RoleEntry(f"{role}_{k}", p, confidence, r) for k, (p, r) in enumerate(zip(phases, reasons, strict=True), 1)]


def _auto_t1(pools: _Pools, source: str) -> RoleEntry | None:
    """The one T1 candidate, None when there is none (the mask then comes from the pre-contrast phase)."""
    if not pools.t1:
        return None
    if len(pools.t1) > 1:
        raise InputError(source, f"{len(pools.t1)} candidates for the non-fat-suppressed T1 "
                         f"({describe_candidates(pools.t1)}); name one with --roles ROLES.json, e.g. "
                         "{\"t1\": \"SERIES_NUMBER\"}, or none with {\"t1\": null}")
    phase = pools.t1[0]
    hint = pools.hints.get(phase.series.uid, "no fat-suppression hint")
    confidence = "high" if phase.series.uid in pools.hints else "medium"
    return RoleEntry("t1", phase, confidence, f"single T1 series without dynamic wording; {hint}")


def _auto_phases(dynamic: list[Phase], pre: list[Phase] | None, posts: list[Phase] | None, n_post: int | None,
                 patterns: RolePatterns, source: str) -> list[RoleEntry]:
    """pre + post_k entries; ``pre``/``posts`` given by the user are kept as they are."""
    dynamic = sorted(dynamic, key=_time_key)
    taken = {id(p) for p in (pre or []) + (posts or [])}
    free = [p for p in dynamic if id(p) not in taken]
    entries = []
    if pre is None:
        if posts is None:
            _check_orientation(free, source, "dynamic series")
        worded = [p for p in free if patterns.match("pre", p.series.description) and len(p.series.phases) == 1]
        if len(worded) > 1:
            raise InputError(source, f"{len(worded)} candidate pre-contrast series ({describe_candidates(worded)})"
                             f"{_name_time_note(worded, free)}; name one with --roles ROLES.json, e.g. "
                             "{\"pre\": \"SERIES_NUMBER\"}")
        if worded:
            pre = worded
            entries += _entries("pre", pre, "high", ["description says pre-contrast"])
        elif free and not patterns.match("post", free[0].series.description):
            pre = free[:1]
            entries += _entries("pre", pre, "medium", [f"earliest dynamic phase ({_clock(pre[0].time_s)})"])
        else:
            raise InputError(source, "no pre-contrast candidate among the dynamic series "
                             f"({describe_candidates(free) or 'none'}); name it with --roles ROLES.json")
    else:
        entries += _entries("pre", pre, "user", ["--roles"])
    # a second pre-contrast series (a repeat) is never a post-contrast phase
    free = [p for p in free if p is not pre[0] and not (
        patterns.match("pre", p.series.description) and len(p.series.phases) == 1)]
    if posts is None:
        start = pre[0].time_s
        early = [p for p in free if start is not None and p.time_s is not None and p.time_s < start]
        if early:
            note = ("; its name says pre-contrast but its acquisition time does not: name and time disagree"
                    if patterns.match("pre", pre[0].series.description) else "")
            raise InputError(source, f"dynamic series acquired before the pre-contrast phase "
                             f"{describe_candidates(pre)}: {describe_candidates(early)}{note}; name the roles "
                             "with --roles ROLES.json")
        if not free or (n_post is not None and len(free) != n_post):
            want = f"{n_post}" if n_post is not None else "at least 1"
            raise InputError(source, f"expected {want} post-contrast phases after pre-contrast "
                             f"{describe_candidates(pre)}, found {len(free)}: {describe_candidates(free) or 'none'}; "
                             "a phase may be missing or mis-named; list them with --roles ROLES.json")
        reasons = [f"dynamic phase {k} after pre-contrast, {_clock(p.time_s)}" for k, p in enumerate(free, 1)]
        entries += _entries("post", free, "high" if entries[0].confidence == "high" else "medium", reasons)
    else:
        if n_post is not None and len(posts) != n_post:
            raise InputError(source, f"--roles names {len(posts)} post-contrast phases; the model takes {n_post}")
        entries += _entries("post", posts, "user", ["--roles"] * len(posts))
    _check_orientation([e.phase for e in entries], source, "pre- and post-contrast phases")
    return entries


def _name_time_note(worded: list[Phase], dynamic: list[Phase]) -> str:
    """Where series named pre-contrast were acquired after other dynamic phases (as in Duke studies whose
    post-contrast series are labelled ``pre``): which ones, since their names and times disagree."""
    first = min(dynamic, key=_time_key)
    late = [p for p in worded if p is not first and first.time_s is not None and p.time_s is not None
            and p.time_s > first.time_s]
    if not late:
        return ""
    return (f"; by acquisition time series {first.label} '{first.series.description}' ({_clock(first.time_s)}) "
            f"comes first, and {', '.join(p.label for p in late)} named pre-contrast came after it: "
            "name and acquisition time disagree")


def _auto_subtractions(subs: list[Phase], n_sub: int | None, source: str, why: str) -> list[RoleEntry]:
    subs = sorted(subs, key=_time_key)
    if not subs or (n_sub is not None and len(subs) != n_sub):
        raise InputError(source, f"expected {n_sub or 'at least 1'} subtraction series, found {len(subs)}: "
                         f"{describe_candidates(subs) or 'none'} ({why})")
    _check_orientation(subs, source, "subtraction series")
    return _entries("sub", subs, "high", [f"scanner subtraction {k} in time order, {_clock(p.time_s)}; {why}"
                                          for k, p in enumerate(subs, 1)])


def assign_roles(series: list[Series], overrides: dict | None = None, n_channels: int | None = None,
                 patterns: RolePatterns = RolePatterns(), source: str = "study",
                 overrides_source: str | None = None) -> RoleAssignment:
    """Assign roles to the series of one study (see the module docstring for the rules).

    ``overrides``: {"t1": id or None, "pre": id, "post": [ids], "sub": [ids]} as read by
    :func:`~BreastCMSLLib.dicom.study.load_overrides`; errors in them name ``overrides_source`` (the ROLES.json)
    and the key.
    ``n_channels``: the number of subtraction channels the model takes (None: any number).
    """
    if overrides:
        check_overrides(overrides, overrides_source or source)
    overrides = overrides or {}
    pools = _Pools(series, patterns)
    named = _named_roles(overrides, series, overrides_source or source)
    if "t1" in named:
        t1 = RoleEntry("t1", named["t1"][0], "user", "--roles")
    elif "t1" in overrides:  # "t1": null, no T1 wanted
        t1 = None
    else:
        t1 = _auto_t1(pools, source)
    head = [t1] if t1 else []

    def assignment(kind: str, entries: list[RoleEntry]) -> RoleAssignment:
        return RoleAssignment(kind, [*head, *entries], series, patterns)

    if "sub" in named:
        if n_channels is not None and len(named["sub"]) != n_channels:
            raise InputError(overrides_source or source, f"sub: names {len(named['sub'])} subtractions; the model "
                             f"takes {n_channels}")
        _check_orientation(named["sub"], source, "subtraction series")
        return assignment("subtractions", _entries("sub", named["sub"], "user", ["--roles"] * len(named["sub"])))
    dynamic = [p for p in pools.dynamic if not (t1 and p is t1.phase)]
    if "pre" in named or "post" in named:
        return assignment("phases", _auto_phases(dynamic, named.get("pre"), named.get("post"), n_channels, patterns,
                                                 source))
    if not dynamic:
        return assignment("subtractions", _auto_subtractions(pools.subtractions, n_channels, source,
                                                             "no dynamic phases in the study"))
    try:
        return assignment("phases", _auto_phases(dynamic, None, None, n_channels, patterns, source))
    except InputError as err:
        if not pools.subtractions:
            raise
        why = f"dynamic phases unusable: {err.problem}"
        return assignment("subtractions", _auto_subtractions(pools.subtractions, n_channels, source, why))


def _phase_number(text: str) -> int:
    """The last number in a name ("post_3" -> 3, "5: ax dyn 2nd pass" -> 2); 0 when there is none."""
    numbers = re.findall(r"\d+", text)
    return int(numbers[-1]) if numbers else 0


def assign_by_name(names: list[str], inputs: str, n_channels: int, patterns: RolePatterns = RolePatterns()) -> dict:
    """Roles from volume names alone with the same :class:`RolePatterns`, for volumes that carry no DICOM
    headers (the Slicer module passes its node names).

    Returns {"inputs": inputs, "t1": index or None, "series": [index or None, ...], "notes": [...]} with
    ``n_channels`` subtractions, or pre + ``n_channels`` posts for phases; posts and subtractions are
    ordered by the last number in their name. The user can override any of it.
    """
    p = patterns
    usable = [i for i, name in enumerate(names) if not p.match("exclude", name)]
    subs = [i for i in usable if p.match("subtraction", names[i])]
    rest = [i for i in usable if i not in subs]
    t1 = [i for i in rest if p.match("non_fat_sat", names[i]) or (
        p.match("t1", names[i]) and not any(p.match(k, names[i]) for k in ("fat_sat", "dynamic", "pre", "post")))]
    pre = [i for i in rest if i not in t1 and p.match("pre", names[i])]
    post = sorted((i for i in rest if i not in t1 and i not in pre and p.match("post", names[i])),
                  key=lambda i: _phase_number(names[i]))
    subs.sort(key=lambda i: _phase_number(names[i]))

    def padded(found: list[int]) -> list[int | None]:
        return found[:n_channels] + [None] * (n_channels - len(found[:n_channels]))

    series = [pre[0] if pre else None, *padded(post)] if inputs == "phases" else padded(subs)
    notes = [f"{len(found)} {what} candidates ({', '.join(names[i] for i in found)}); took the first"
             for what, found in (("T1", t1), ("pre-contrast", pre)) if len(found) > 1]
    if None in series or not t1:
        notes.append("some inputs were not recognized by name; choose them by hand")
    return {"inputs": inputs, "t1": t1[0] if t1 else None, "series": series, "notes": notes}


def check_overrides(data, source) -> dict:
    """The role overrides' shape, wherever they come from (ROLES.json, the session, the web page's form): a
    non-empty object with keys among :data:`ROLE_KEYS`, never ``sub`` together with ``pre``/``post``, each value
    a series id or a list of them (``t1`` may be null). Returns ``data``; an :class:`InputError` names
    ``source``."""
    if not isinstance(data, dict) or not set(data) <= set(ROLE_KEYS) or not data:
        raise InputError(source, f"expected a JSON object with keys among {', '.join(ROLE_KEYS)}")
    if "sub" in data and ("pre" in data or "post" in data):
        raise InputError(source, "give either sub or pre/post roles, not both")
    for key, value in data.items():
        if key == "t1" and value is None:
            continue
        values = [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value
        if not isinstance(values, list) or not values or not all(
                isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
            raise InputError(source, f"{key}: expected a series id or a list of series ids")
    return data
