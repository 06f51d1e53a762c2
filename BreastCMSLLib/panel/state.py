"""The session's result as one typed record, kept on the module's parameter node under the ``Result.`` prefix.

Scalar fields are parameters ``Result.<field>`` (JSON values); nodes are references ``Result.<role>``: the
reference volume, the peaks point list and, for each map of :data:`~BreastCMSLLib.config.MAP_NAMES` the result
has, its heat volume and its labelmap. Points are RAS mm (MRML). A new scalar field is one line in
:class:`AnalysisResult`; a field with a default reads from scenes saved before it existed.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields

from BreastCMSLLib.config import MAP_NAMES
from BreastCMSLLib.mrml.nodes import lps_to_ras

PREFIX = "Result."
NODE_ROLES = ("reference", "peaks", *(f"{name}_{part}" for name in MAP_NAMES for part in ("volume", "label")))
MODEL_KEYS = ("name", "version", "sha256", "untrained", "synthetic")
CALIBRATION_KEYS = ("probability_uncalibrated", "threshold", "calibrated", "operating_point", "operating_line")


@dataclass(frozen=True)
class AnalysisResult:
    """One analysis as the panel shows it. ``device`` is the device the analysis ran on (``cpu``, ``cuda:0``),
    not the panel's choice (``auto``); ``peaks_ras``: the peak of each map the result has (RAS mm; a result
    made without the fine map has COAM and CAM only); ``nodes``: node IDs by :data:`NODE_ROLES` (None for a
    map the result lacks).

    ``probability`` is the calibrated probability sigmoid(z / T) when the model file holds a temperature T
    (``calibrated``), ``probability_uncalibrated`` sigmoid(z); ``threshold`` the model's operating point on the
    calibrated probability, ``operating_point`` its validation figures (``rule``, ``sensitivity``,
    ``specificity`` with 95 % CIs, ``n_validation``; None where uncalibrated) and ``operating_line`` the one
    line the faces show (made by :func:`BreastCMSLLib.network.calibration.operating_line`); empty in results
    made before calibration existed. ``applicability``: whether the study lies inside the model's training domain
    (:func:`BreastCMSLLib.network.domain.applicability`); empty in results made before the check existed."""

    case: str
    probability: float
    cos_theta: float
    prediction: str
    label_fraction: float
    mask_source: str
    device: str
    precision: str
    model: dict  # MODEL_KEYS
    peaks_ras: dict[str, list[float]]
    nodes: dict[str, str | None]
    probability_uncalibrated: float | None = None
    threshold: float = 0.5
    calibrated: bool = False
    operating_point: dict = field(default_factory=dict)
    operating_line: str = ""
    applicability: dict = field(default_factory=dict)  # result.json's: in_domain, score, threshold, reasons
    breasts: dict = field(default_factory=dict)  # a per-breast model's: each breast's probability, prediction, peaks

    @property
    def maps(self) -> tuple[str, ...]:
        """The maps this result has, in :data:`MAP_NAMES` order."""
        return tuple(name for name in MAP_NAMES if name in self.peaks_ras)

    @classmethod
    def from_output(cls, case: str, output: dict, nodes: dict[str, str | None]) -> AnalysisResult:
        """The record of an analysis output (result.json's dict) whose nodes were added as ``nodes``."""
        special = ("case", "model", "peaks_ras", "nodes")
        scalars = {f.name: output[f.name] for f in fields(cls)
                   if f.name not in special and (f.name in output or _required(f))}
        peaks = {name: lps_to_ras(output[f"{name}_peak_lps"]) for name in MAP_NAMES if f"{name}_peak_lps" in output}
        return cls(case=case, model={key: output["model"].get(key) for key in MODEL_KEYS}, peaks_ras=peaks,
                   nodes={role: nodes.get(role) for role in NODE_ROLES}, **scalars)

    def write(self, parameter_node) -> None:
        """Store on ``parameter_node`` (one Modified event)."""
        was = parameter_node.StartModify()
        for f in fields(self):
            if f.name != "nodes":
                parameter_node.SetParameter(PREFIX + f.name, json.dumps(getattr(self, f.name)))
        for role in NODE_ROLES:
            parameter_node.SetNodeReferenceID(PREFIX + role, self.nodes.get(role))
        parameter_node.EndModify(was)

    @classmethod
    def read(cls, parameter_node) -> AnalysisResult | None:
        """The record stored on ``parameter_node``, or None when there is none. Fields with a default that
        the node lacks (a scene saved by an earlier version) take their default."""
        values = {}
        for f in fields(cls):
            if f.name != "nodes":
                text = parameter_node.GetParameter(PREFIX + f.name)
                if text:
                    values[f.name] = json.loads(text)
                elif _required(f):
                    return None
        nodes = {role: parameter_node.GetNodeReferenceID(PREFIX + role) for role in NODE_ROLES}
        return cls(**values, nodes=nodes)


def _required(f) -> bool:
    """A field without a default (every record holds it)."""
    return f.default is MISSING and f.default_factory is MISSING
