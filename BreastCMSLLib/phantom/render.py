"""Rendering a phantom case on a grid: partial-volume painting of the tissues, the lesion, the phases, bias
field and Rician noise, and the truth dictionary."""

from __future__ import annotations

import itertools
import math

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.phantom.anatomy import (
    BREAST_MASK_DEFINITION,
    FAST,
    SLOW,
    T1_PRE,
    TISSUE_LABELS,
    breast_bounds,
    breast_point,
    breast_sd,
    chest_surface,
    rotation,
    segment_distance,
    soft,
    thorax_sd,
)
from BreastCMSLLib.phantom.case import PhantomCase
from BreastCMSLLib.phantom.grid import Box, Grid, canonical_normal, intersect, local
from BreastCMSLLib.phantom.parameters import PHASE_TIMES_MIN, enhancement_curve, kinetic_type


class _Canvas:
    """Partial-volume painter: channels t1, pre, slow (pre x slow amplitude), bpe (pre x BPE amplitude),
    the tissue labels, and "fast" terms (box, pre-weighted amount, kinetic parameters) added per phase."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.ch = {n: np.zeros(grid.shape, np.float32) for n in ("t1", "pre", "slow", "bpe")}
        self.labels = np.zeros(grid.shape, np.uint8)
        self.fast: list[tuple[Box, np.ndarray, tuple]] = []

    def paint(self, box: Box, frac: np.ndarray, tissue: str, label: int, bpe: np.ndarray | float = 0.0,
              kinetics: tuple | None = None, amount_scale: np.ndarray | float = 1.0) -> None:
        frac = np.broadcast_to(frac, tuple(s.stop - s.start for s in box))
        t1, pre = T1_PRE[tissue]
        values = {"t1": t1, "pre": pre, "slow": pre * SLOW.get(tissue, 0.0), "bpe": bpe}
        for name, arr in self.ch.items():
            view = arr[box]
            view += frac * (values[name] - view)
        self.labels[box][frac >= 0.5] = label
        for fbox, amount, _ in self.fast:
            inter = intersect(fbox, box)
            if inter is not None:
                amount[local(inter, fbox)] *= 1.0 - frac[local(inter, box)]
        if kinetics is not None:
            self.fast.append((box, (frac * pre * amount_scale).astype(np.float32), kinetics))



def render(p: dict, grid: Grid, noise_rng: np.random.Generator) -> PhantomCase:
    width = float(np.mean(grid.spacing))  # partial-volume ramp, mm
    canvas = _Canvas(grid)
    full = grid.full
    x, y, _ = grid.coords(full)
    sd_t = thorax_sd(p, x, y)

    # Body = thorax U breasts; breast signed distances are evaluated in their boxes only.
    sd_body = np.array(np.broadcast_to(sd_t, grid.shape))
    breast_boxes = []
    for br in p["breasts"]:
        box = grid.box(*breast_bounds(p, br))
        breast_boxes.append(box)
        if box is None:
            continue
        bx, by, bz = grid.coords(box)
        sd_b, _ = breast_sd(p, br, bx, by, bz)
        np.minimum(sd_body[box], sd_b, out=sd_body[box])

    tf, tm, tr = p["t_fat"], p["t_muscle"], p["t_ribs"]
    canvas.paint(full, soft(sd_body, width), "skin", TISSUE_LABELS["skin"])
    canvas.paint(full, soft(sd_body + p["skin"], width), "fat", TISSUE_LABELS["fat"])
    canvas.paint(full, soft(sd_t + tf, width), "muscle", TISSUE_LABELS["muscle"])
    canvas.paint(full, soft(sd_t + tf + tm, width), "chest_wall", TISSUE_LABELS["chest_wall"])
    cavity_sd = sd_t + (tf + tm + tr)
    canvas.paint(full, soft(cavity_sd, width), "lung", TISSUE_LABELS["lung"])
    breast_truth = (sd_body <= 0) & (sd_t > -tf) & (y < p["yc"] - p["b"] / 2)
    del sd_body

    # Heart (myocardium shell, blood pool) in the thoracic cavity; internal mammary arteries.
    hp = p["heart"]
    axes = np.array(hp["axes"])
    cav_front, _ = chest_surface(p, hp["x"])
    centre = np.array([hp["x"], float(cav_front) + tf + tm + tr + hp["gap"] + axes[1], hp["z"]])
    box = grid.box(centre - axes - 2, centre + axes + 2)
    if box is not None:
        hx, hy, hz = grid.coords(box)
        u = np.sqrt(((hx - centre[0]) / axes[0]) ** 2 + ((hy - centre[1]) / axes[1]) ** 2
                    + ((hz - centre[2]) / axes[2]) ** 2)
        inside_cavity = soft(np.broadcast_to(cavity_sd, grid.shape)[box], width)
        for tissue, scale in (("myocardium", 1.0), ("blood", 0.78)):
            frac = soft((u - scale) * axes.min() * scale, width) * inside_cavity
            canvas.paint(box, frac, tissue, TISSUE_LABELS["heart"], kinetics=FAST[tissue])
    for side in (-1.0, 1.0):
        xi = side * p["ima_x"]
        yi = float(chest_surface(p, xi)[0]) + tf + tm + tr + 2.5
        box = grid.box(np.array([xi - 5, yi - 5, -1e3]), np.array([xi + 5, yi + 5, 1e3]))
        if box is not None:
            vx, vy, _ = grid.coords(box)
            frac = soft(np.sqrt((vx - xi) ** 2 + (vy - yi) ** 2) - 1.6, width)
            canvas.paint(box, frac, "vessel", TISSUE_LABELS["vessel"], kinetics=FAST["vessel"])

    # Breasts: fibroglandular blobs with background parenchymal enhancement (BPE), vessels.
    lesion_p = p["lesion"]
    radius = lesion_p["diameter"] / 2
    lesion_centre = None
    for index, (br, bbox) in enumerate(zip(p["breasts"], breast_boxes)):
        blobs = [(breast_point(p, br, b["rho"], b["phi"], b["hf"]), b["sigma"], b["amp"]) for b in br["blobs"]]
        if index == lesion_p["side_index"]:
            lesion_centre = _lesion_centre(p, br, blobs, radius, lesion_p)
            blobs.append((lesion_centre, radius + 4.0, 1.3))
        if bbox is None:
            continue
        bx, by, bz = grid.coords(bbox)
        field_ = np.zeros(tuple(s.stop - s.start for s in bbox), np.float32)
        for c, sigma, amp in blobs:
            box = intersect(grid.box(c - 3 * sigma, c + 3 * sigma) or bbox, bbox)
            if box is None:
                continue
            gx, gy, gz = grid.coords(box)
            r2 = (gx - c[0]) ** 2 + (gy - c[1]) ** 2 + (gz - c[2]) ** 2
            field_[local(box, bbox)] += amp * np.exp(r2 * np.float32(-0.5 / sigma ** 2))
        sd_b, h = breast_sd(p, br, bx, by, bz)
        keep = soft(sd_b + p["skin"] + 2.0, width) * np.clip((h - 8.0) / 4.0, 0, 1)
        frac = np.clip((field_ - br["threshold"]) / 0.15 + 0.5, 0, 1) * keep
        bpe = T1_PRE["fibroglandular"][1] * p["bpe_level"] * np.clip(field_ / (1.0 + field_), 0, 1) * 1.6
        canvas.paint(bbox, frac, "fibroglandular", TISSUE_LABELS["fibroglandular"], bpe=bpe)
        for v in br["vessels"]:
            foot = breast_point(p, br, math.hypot(*v["foot"]), math.atan2(v["foot"][1], v["foot"][0]), 0.0)
            tip = breast_point(p, br, 0.1, math.atan2(v["foot"][1], v["foot"][0]), v["tip_hf"])
            knots = [foot, foot + (tip - foot) / 3 + v["wiggle"][0], foot + 2 * (tip - foot) / 3 + v["wiggle"][1], tip]
            for a, b in itertools.pairwise(knots):
                box = intersect(grid.box(np.minimum(a, b) - 4, np.maximum(a, b) + 4) or bbox, bbox)
                if box is None:
                    continue
                vx, vy, vz = grid.coords(box)
                frac = soft(segment_distance(vx, vy, vz, a, b) - v["radius"], width)
                frac = frac * (soft(sd_b[local(box, bbox)] + p["skin"], width))
                canvas.paint(box, frac, "vessel", TISSUE_LABELS["vessel"], kinetics=FAST["vessel"])

    lesion_mask = np.zeros(grid.shape, np.uint8)
    _paint_lesion(canvas, grid, lesion_p, lesion_centre, width, lesion_mask)
    return _finish(p, grid, canvas, noise_rng, lesion_mask, breast_truth, lesion_centre)


def _lesion_centre(p: dict, br: dict, blobs: list, radius: float, lp: dict) -> np.ndarray:
    """Centre of the lesion (:data:`LESION_PLACEMENTS`): a point deep enough inside the breast (clear of
    skin and chest wall by the lesion radius + 6 mm), else a point in the middle of the breast."""
    spread = [breast_point(p, br, 0.8 * math.sqrt(u), 2 * math.pi * v, 0.1 + 0.75 * w) for u, v, w in lp["spread"]]
    tissue = [c for c, sigma, _ in blobs if sigma >= 8.0]
    for c in (spread if lp.get("placement") == "spread" else []) + tissue:
        sd_b, h = breast_sd(p, br, *(np.array([v]) for v in c))
        if sd_b[0] <= -(radius + 6.0) and h[0] >= radius + 8.0:
            return c
    offset = lp["offset"]
    return breast_point(p, br, 0.15 + 0.1 * offset[0], math.pi * (1 + offset[1]), 0.4 + 0.1 * offset[2])


def _paint_lesion(canvas: _Canvas, grid: Grid, lp: dict, c: np.ndarray, width: float,
                  mask: np.ndarray) -> None:
    """Paint the lesion: rotated ellipsoid with outward lobulation and spicules; rim enhancement."""
    radius = lp["diameter"] / 2
    semi = np.maximum(radius * np.array(lp["ratios"]), 4.0)
    reach = radius * (1 + lp["lobes"]["amp"] + lp["bumps"]["amp"]) + max(
        [radius * s["length"] + 3 for s in lp["spicules"]] + [0.0]) + 2 * width
    box = grid.box(c - reach, c + reach)
    if box is None:
        return
    lx, ly, lz = grid.coords(box)
    rot = rotation(lp["quat"])
    d = [lx - c[0], ly - c[1], lz - c[2]]
    dist = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) + 1e-6
    u = [di / dist for di in d]
    local = [rot[0, a] * u[0] + rot[1, a] * u[1] + rot[2, a] * u[2] for a in range(3)]
    r = 1.0 / np.sqrt(sum((local[a] / semi[a]) ** 2 for a in range(3)))
    for kind in ("lobes", "bumps"):
        spec = lp[kind]
        if spec["amp"] > 0:
            bump = sum(np.exp(spec["kappa"] * (u[0] * v[0] + u[1] * v[1] + u[2] * v[2] - 1.0)) for v in spec["dirs"])
            r = r * (1.0 + spec["amp"] * np.minimum(bump, 1.0))
    frac = soft(dist - r, width)
    for s in lp["spicules"]:
        v = np.array(s["dir"])
        t = d[0] * v[0] + d[1] * v[1] + d[2] * v[2]
        length = radius * (1 + s["length"])
        perp = np.sqrt(np.maximum(dist ** 2 - t ** 2, 0))
        half = s["width"] * np.clip(1 - t / length, 0, 1) * (t > 0)
        frac = np.maximum(frac, soft(perp - half, width) * min(1.0, 2 * s["width"] / width) * (half > 0))
    rho = np.clip(dist / r, 0, 1)
    spatial = 1.0 - (lp["rim_depth"] * (1 - rho) if lp["rim"] else 0.0)
    kinetics = (lp["amplitude"], lp["tau"], lp["washout"])
    canvas.paint(box, frac, "lesion", TISSUE_LABELS["lesion"], kinetics=kinetics, amount_scale=spatial)
    mask[box][frac >= 0.5] = 1
    centre_voxel = grid.index_of(c)
    if centre_voxel is not None:
        mask[centre_voxel] = 1
        canvas.labels[centre_voxel] = TISSUE_LABELS["lesion"]


def _finish(p: dict, grid: Grid, canvas: _Canvas, noise_rng: np.random.Generator, lesion_mask: np.ndarray,
            breast_truth: np.ndarray, lesion_centre: np.ndarray) -> PhantomCase:
    """Phases from the channels, bias field, Rician noise, int16 images and the truth dictionary."""
    x, y, z = grid.coords(grid.full)
    c = p["bias"]
    bias = np.exp(np.float32(c[0]) * x / 180 + np.float32(c[1] - 0.12) * y / 116 + np.float32(c[2]) * z / 72
                  + np.float32(c[3]) * (x / 180) ** 2 + np.float32(c[4]) * (y / 116) ** 2)
    sigma = np.float32(p["noise_sigma"])

    def finish(signal: np.ndarray) -> sitk.Image:
        signal *= bias
        n1 = canonical_normal(noise_rng, grid)
        signal += sigma * n1
        np.square(signal, out=signal)
        n2 = canonical_normal(noise_rng, grid)
        signal += (sigma * n2) ** 2
        np.sqrt(signal, out=signal)
        return grid.image(np.rint(np.clip(signal, 0, 32767)).astype(np.int16))

    t = np.array(PHASE_TIMES_MIN)
    ch = canvas.ch
    images = {"t1": finish(ch["t1"].copy()), "pre": finish(ch["pre"].copy())}
    for k, tk in enumerate(t, start=1):
        post = ch["pre"] + ch["slow"] * np.float32(1 - math.exp(-tk / 3.0))
        post += ch["bpe"] * np.float32(1 - math.exp(-tk / p["bpe_tau"]))
        for box, amount, kin in canvas.fast:
            post[box] += amount * np.float32(enhancement_curve(*kin, np.array([tk]))[0])
        images[f"post_{k}"] = finish(post)

    lp = p["lesion"]
    curve = enhancement_curve(lp["amplitude"], lp["tau"], lp["washout"], t)
    zs = p["scores"]["shape"]
    margin = "circumscribed oval" if zs < 0.33 else ("irregular" if zs < 0.66 or not lp["spicules"] else "spiculated")
    centre_lps = (lesion_centre + grid.centre).tolist()
    truth = {
        "label": p["label"], "center_lps": [round(v, 4) for v in centre_lps], "birads": lp["birads"],
        "diameter_mm": round(lp["diameter"], 3), "side": "right" if p["breasts"][lp["side_index"]]["side"] < 0
        else "left", "margin": margin, "rim_enhancement": lp["rim"], "kinetic_type": kinetic_type(curve),
        "enhancement_curve": [round(float(v), 4) for v in curve], "phase_times_min": list(PHASE_TIMES_MIN),
        "suspicion": round(lp["suspicion"], 4), "scores": {k: round(v, 4) for k, v in p["scores"].items()},
        "shape": list(grid.size), "spacing": grid.spacing.tolist(), "origin": grid.origin.tolist(),
        "direction": grid.direction.ravel().tolist(), "tissue_labels": TISSUE_LABELS,
        "breast_mask_definition": BREAST_MASK_DEFINITION, "generator": "BreastCMSL phantom v1",
    }
    return PhantomCase(images=images, lesion_mask=grid.image(lesion_mask),
                       breast_mask=grid.image(np.ascontiguousarray(breast_truth, dtype=np.uint8)),
                       tissue=grid.image(canvas.labels), truth=truth)
