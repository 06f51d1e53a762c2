"""The overview figure's panels: voxel (i, j) at panel pixel (column i, row j), the map blended at half opacity
with matplotlib's inferno, marks centred on their voxel; small grids enlarged by a whole factor."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from PIL import Image

from BreastCMSLLib.pipeline.figures import GAP, HEADER, TITLE_BAND, PanelRow, panel_figure, panel_rgb, save_figure


def test_panel_rgb_is_grey_blended_with_inferno_at_half_opacity():
    rng = np.random.default_rng(0)
    sub, overlay = rng.random((7, 5)), rng.random((7, 5))
    rgb = panel_rgb(sub, overlay)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8  # (J, I): j runs down the rows
    expected = 0.5 * sub.T[..., None] + 0.5 * matplotlib.colormaps["inferno"](overlay.T)[..., :3]
    assert np.abs(rgb.astype(float) - 255 * expected).max() <= 0.5 + 1e-9
    assert np.array_equal(panel_rgb(sub)[..., 0], np.round(sub.T * 255).astype(np.uint8))


@pytest.mark.parametrize(("size", "zoom"), [((340, 120), 1), ((64, 40), 5)])
def test_voxels_and_marks_land_on_their_pixels(size, zoom, tmp_path):
    sub = np.zeros(size)
    sub[5, 30] = 1.0  # one bright voxel: i = 5, j = 30
    row = PanelRow(sub, {"COAM": np.zeros(size)}, ["subtraction", "COAM"], {"true centre": (40.0, 20.0, True)})
    save_figure(panel_figure([row], "test"), tmp_path / "f.png")
    png = np.asarray(Image.open(tmp_path / "f.png").convert("RGB")).astype(int)
    w, h = size[0] * zoom, size[1] * zoom
    assert png.shape[:2] == (HEADER + TITLE_BAND + h + GAP, 2 * w + 3 * GAP)
    top, left = HEADER + TITLE_BAND, GAP  # the first panel's upper left pixel
    panel = png[top:top + h, left:left + w]
    bright = np.argwhere(panel.sum(axis=2) == 3 * 255)
    assert {(r // zoom, c // zoom) for r, c in bright} == {(30, 5)}  # row j, column i
    # the red circle is centred on voxel (40, 20): red pixels around it, none at its centre
    red = np.argwhere((panel[..., 0] > 150) & (panel[..., 1] < 100) & (panel[..., 2] < 100))
    centre = np.array([(20 + 0.5) * zoom, (40 + 0.5) * zoom])
    assert len(red) > 10 and np.abs(red.mean(axis=0) - centre).max() < 1.5
    assert np.linalg.norm(red - centre, axis=1).min() > 2
    second = png[top:top + h, 2 * GAP + w:2 * GAP + 2 * w]  # the COAM panel: map 0 blended over black
    dark = np.round(0.5 * 255 * np.array(matplotlib.colormaps["inferno"](0.0)[:3])).astype(int)
    assert np.array_equal(second[0, 0], dark)
