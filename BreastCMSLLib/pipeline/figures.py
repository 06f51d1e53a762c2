"""Figures in the spirit of the paper's Fig. 3: subtraction slice, CAM, COAM (and the fine map), through the peaks.

Axial slices of the canonical input grid shown in radiological convention: patient right on the
image's left (i, towards patient left, runs rightwards), anterior at the top (j runs downwards). Each panel is
one image pixel per voxel (small grids are enlarged by a whole factor), the map blended at half opacity over the
grey subtraction; the panels are placed on a matplotlib figure without axes, which draws in a fraction of the
time a grid of axes takes.

    >>> import numpy as np
    >>> row = PanelRow(np.zeros((64, 48)), {"COAM": np.ones((64, 48))}, ["subtraction", "COAM"],
    ...                {"COAM peak": (10.0, 20.0, True)})
    >>> save_figure(panel_figure([row], "one row"), "/tmp/row.png")
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import IdentityTransform

__all__ = ["MARK_STYLES", "PanelRow", "overview_figure", "panel_figure", "panel_rgb", "save_figure"]

MARK_STYLES = {"COAM peak": ("c", "+"), "CAM peak": ("y", "x"), "fine peak": ("lime", "*"), "true centre": ("r", "o")}
MIN_PANEL_PX = 300  # grids narrower than this (voxels along i) are enlarged by a whole factor
GAP, TITLE_BAND, HEADER = 8, 18, 34  # pixels: between panels, above each row for the panel titles, figure title


@dataclass
class PanelRow:
    """One row of panels through one axial slice: ``subtraction`` and each of ``overlays`` (title -> map) are
    (I, J) arrays in [0, 1]; ``titles`` names every panel, the subtraction's first; ``marks`` maps a label of
    :data:`MARK_STYLES` to (i, j, on this slice) in voxel indices (a mark off the slice is drawn faint)."""

    subtraction: np.ndarray
    overlays: dict[str, np.ndarray]
    titles: list[str]
    marks: dict[str, tuple[float, float, bool]]


def panel_rgb(subtraction: np.ndarray, overlay: np.ndarray | None = None) -> np.ndarray:
    """uint8 (J, I, 3) image of an (I, J) slice in [0, 1]: grey, with ``overlay`` (in [0, 1], inferno colour
    map) blended at half opacity."""
    grey = np.clip(subtraction.T, 0.0, 1.0)[..., None]
    rgb = np.repeat(grey, 3, axis=2)
    if overlay is not None:
        colour = matplotlib.colormaps["inferno"](np.clip(overlay.T, 0.0, 1.0))[..., :3]
        rgb = 0.5 * rgb + 0.5 * colour
    return np.round(rgb * 255).astype(np.uint8)


def panel_figure(rows: list[PanelRow], title: str) -> Figure:
    """A figure of ``rows`` of panels, ``title`` on top and a legend of the marks used."""
    size_i, size_j = rows[0].subtraction.shape
    zoom = max(1, math.ceil(MIN_PANEL_PX / size_i))
    w, h = size_i * zoom, size_j * zoom
    columns = len(rows[0].titles)
    width, height = columns * w + (columns + 1) * GAP, HEADER + len(rows) * (TITLE_BAND + h) + GAP
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    FigureCanvasAgg(fig)
    used = {}
    for r, row in enumerate(rows):
        y0 = height - HEADER - (r + 1) * (TITLE_BAND + h)  # the row's panels' lower edge, pixels from the bottom
        images = [panel_rgb(row.subtraction), *(panel_rgb(row.subtraction, m) for m in row.overlays.values())]
        for c, (image, name) in enumerate(zip(images, row.titles, strict=True)):
            x0 = GAP + c * (w + GAP)
            fig.figimage(np.kron(image, np.ones((zoom, zoom, 1), np.uint8)) if zoom > 1 else image, x0, y0,
                         origin="upper")
            fig.text(x0 / width, (y0 + h + 3) / height, name, ha="left", va="bottom", fontsize=8)
            for label, (i, j, on_slice) in row.marks.items():
                colour, marker = MARK_STYLES[label]
                used[label] = Line2D([], [], marker=marker, color=colour, markerfacecolor="none", linestyle="none",
                                     markersize=8, label=label)
                fig.add_artist(Line2D([x0 + (i + 0.5) * zoom], [y0 + h - (j + 0.5) * zoom], marker=marker,
                                      color=colour, markersize=10, markerfacecolor="none", linestyle="none",
                                      alpha=1.0 if on_slice else 0.4, transform=IdentityTransform()))
    fig.text(GAP / width, 1 - 8 / height, title, ha="left", va="top", fontsize=9)
    if used:
        fig.legend(handles=list(used.values()), loc="upper right", ncols=len(used), fontsize=7, frameon=False)
    return fig


def overview_figure(analysis, centre_lps=None) -> Figure:
    """The figure of an :class:`~BreastCMSLLib.pipeline.maps.Analysis`: one row per distinct slice through
    the COAM, CAM and fine peaks and (when known) the true lesion centre (LPS mm)."""
    prep = analysis.prep
    grid = prep.input_grid
    points = {"COAM peak": analysis.coam_peak_lps, "CAM peak": analysis.cam_peak_lps}
    overlays = {"CAM": analysis.cam_input, "COAM": analysis.coam_input}
    if analysis.fine is not None:
        points["fine peak"] = analysis.fine_peak_lps
        overlays["fine"] = analysis.fine_input
    if centre_lps is not None:
        points["true centre"] = tuple(float(v) for v in centre_lps)
    marks = {k: np.array(grid.TransformPhysicalPointToContinuousIndex(p)) for k, p in points.items()}
    slices = list(dict.fromkeys(int(np.clip(round(m[2]), 0, grid.GetSize()[2] - 1)) for m in marks.values()))
    rows = [PanelRow(prep.array[0][:, :, k], {t: m[:, :, k] for t, m in overlays.items()},
                     [f"{t}, slice k={k}" for t in ("subtraction", *overlays)],
                     {label: (m[0], m[1], abs(m[2] - k) <= 1) for label, m in marks.items()}) for k in slices]
    return panel_figure(rows, f"p(malignant) = {analysis.probability:.3f} ({analysis.prediction}); "
                              f"model {analysis.model['name']}")


def save_figure(fig: Figure, path) -> None:
    """Write ``fig`` as PNG at its own pixel size (zlib's fastest level: 3x less time)."""
    fig.savefig(path, format="png", dpi=fig.dpi, pil_kwargs={"compress_level": 1})
