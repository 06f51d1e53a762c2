"""The session's result as one typed record, kept on the module's parameter node under the ``Result.`` prefix.

Scalar fields are parameters ``Result.<field>`` (JSON values); nodes are references ``Result.<role>``: the
reference volume, the peaks point list and, for each map of :data:`~BreastCMSLLib.config.MAP_NAMES`, its heat
volume and its labelmap. Points are RAS mm (MRML). A new scalar field is one line in :class:`AnalysisResult`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

from BreastCMSLLib.config import MAP_NAMES
from BreastCMSLLib.mrml.nodes import lps_to_ras

PREFIX = "Result."
NODE_ROLES = ("reference", "peaks", *(f"{name}_{part}" for name in MAP_NAMES for part in ("volume", "label")))
MODEL_KEYS = ("name", "version", "sha256", "untrained", "synthetic")


@dataclass(frozen=True)
class AnalysisResult:
    """One analysis as the panel shows it. ``device`` is the device the analysis ran on (``cpu``, ``cuda:0``),
    not the panel's choice (``auto``); ``peaks_ras``: each map's peak, RAS mm; ``nodes``: node IDs by
    :data:`NODE_ROLES`."""

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

    @classmethod
    def from_output(cls, case: str, output: dict, nodes: dict[str, str | None]) -> AnalysisResult:
        """The record of an analysis output (result.json's dict) whose nodes were added as ``nodes``."""
        scalars = {f.name: output[f.name] for f in fields(cls) if f.name not in ("case", "model", "peaks_ras", "nodes")}
        peaks = {name: lps_to_ras(output[f"{name}_peak_lps"]) for name in MAP_NAMES}
        return cls(case=case, model={key: output["model"].get(key) for key in MODEL_KEYS}, peaks_ras=peaks,
                   nodes=dict(nodes), **scalars)

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
        """The record stored on ``parameter_node``, or None when there is none."""
        values = {}
        for f in fields(cls):
            if f.name != "nodes":
                text = parameter_node.GetParameter(PREFIX + f.name)
                if not text:
                    return None
                values[f.name] = json.loads(text)
        nodes = {role: parameter_node.GetNodeReferenceID(PREFIX + role) for role in NODE_ROLES}
        return cls(**values, nodes=nodes)

