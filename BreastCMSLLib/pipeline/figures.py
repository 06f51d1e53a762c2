"""Figures in the spirit of the paper's Fig. 3: subtraction slice, CAM, COAM (and the fine map), through the peaks.

Axial slices of the canonical input grid shown in radiological convention: patient right on the
image's left (i, towards patient left, runs rightwards), anterior at the top (j runs downwards).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def axial_row(axes, subtraction, overlays: dict, k: int, marks: dict) -> None:
    """Draw one row [subtraction, *overlays] at slice k; ``overlays`` maps a title to an (I, J, K) map in [0, 1]
    (e.g. CAM, COAM, fine), ``marks`` a label to an (i, j, k) index."""
    styles = {"COAM peak": ("c", "+"), "CAM peak": ("y", "x"), "fine peak": ("lime", "*"), "true centre": ("r", "o")}
    for ax, (title, overlay) in zip(axes, [("subtraction", None), *overlays.items()], strict=True):
        ax.imshow(subtraction[:, :, k].T, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if overlay is not None:
            ax.imshow(overlay[:, :, k].T, cmap="inferno", vmin=0, vmax=1, alpha=0.5, interpolation="bilinear")
        for label, ijk in marks.items():
            colour, marker = styles[label]
            on_slice = abs(ijk[2] - k) <= 1
            ax.plot(ijk[0], ijk[1], marker=marker, color=colour, markersize=10, markerfacecolor="none",
                    alpha=1.0 if on_slice else 0.4, label=label, linestyle="none")
        # a text, not set_title: with the axes hidden a title still lays out their ticks (half the drawing time)
        ax.text(0.5, 1.02, f"{title}, slice k={k}", transform=ax.transAxes, ha="center", va="bottom", fontsize=8)
        ax.set_axis_off()


def overview_figure(analysis, centre_lps=None):
    """A matplotlib figure of an :class:`~BreastCMSLLib.pipeline.analyze.Analysis`: one row per distinct slice
    through the COAM, CAM and fine peaks and (when known) the true lesion centre (LPS mm)."""
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
    height = 2.6 * len(slices)  # inches; fixed margins (in inches) instead of tight_layout's measuring pass
    fig, axes = plt.subplots(len(slices), 1 + len(overlays), figsize=(3 * (1 + len(overlays)), height), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.1 / height, top=1 - 0.45 / height, wspace=0.04,
                        hspace=0.3 / 2.6)
    for row, k in zip(axes, slices):
        axial_row(row, prep.array[0], overlays, k, marks)
    axes[0, -1].legend(loc="lower right", fontsize=6)
    fig.suptitle(f"p(malignant) = {analysis.probability:.3f} ({analysis.prediction}); "
                 f"model {analysis.model['name']}", fontsize=9)
    return fig


def save_figure(fig, path) -> None:
    fig.savefig(path, dpi=100, pil_kwargs={"compress_level": 1})  # zlib's fastest level: 3x less time
    plt.close(fig)
