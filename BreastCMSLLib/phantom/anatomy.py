"""The phantom's tissues and shapes: voxel values and enhancement of each tissue, and the signed distances and
points of the thorax, breasts and lesion in the patient frame (mm)."""

from __future__ import annotations

import math

import numpy as np

TISSUE_LABELS = {"air": 0, "fat": 1, "fibroglandular": 2, "skin": 3, "muscle": 4, "chest_wall": 5,
                 "lung": 6, "heart": 7, "vessel": 8, "lesion": 9}
BREAST_MASK_DEFINITION = ("body voxels (skin included) anterior to the anterior surface of the pectoral/"
                          "chest-wall muscle layer and to the coronal plane of the anterior axillary line")

# Voxel values of each tissue: (non-fat-suppressed T1, fat-suppressed pre-contrast).
T1_PRE = {"skin": (450, 330), "fat": (900, 110), "muscle": (300, 280), "chest_wall": (480, 200),
           "lung": (30, 20), "fibroglandular": (380, 300), "myocardium": (300, 290), "blood": (200, 240),
           "vessel": (260, 250), "lesion": (330, 270)}
# Relative enhancement amplitude of slowly enhancing tissues, curve 1 - exp(-t / 3 min).
SLOW = {"skin": 0.25, "fat": 0.03, "muscle": 0.35, "chest_wall": 0.2, "lung": 0.1}
# Fast (arterial) kinetics (A, tau_min, washout_per_min) of E(t) = A (1 - exp(-t/tau)) exp(-washout t).
FAST = {"blood": (2.8, 0.2, 0.12), "myocardium": (1.0, 0.4, 0.06), "vessel": (2.2, 0.25, 0.1)}


def soft(sd: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction of the inside of a surface given the signed distance (mm, < 0 inside)."""
    return np.clip(0.5 - sd / width, 0.0, 1.0)


def thorax_sd(p: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm) to the thorax skin surface: ellipse F / |grad F|."""
    a, b = p["a"], p["b"]
    u, v = x / a, (y - p["yc"]) / b
    f = u * u + v * v - 1.0
    grad = np.sqrt((2 * u / a) ** 2 + (2 * v / b) ** 2) + 1e-6
    return (f / grad).astype(np.float32)


def chest_surface(p: dict, x: np.ndarray | float) -> np.ndarray:
    """y (mm) of the anterior thorax skin surface above x, and its slope dy/dx."""
    a, b = p["a"], p["b"]
    s = np.sqrt(np.clip(1.0 - (np.asarray(x) / a) ** 2, 1e-3, None))
    return p["yc"] - b * s, b * np.asarray(x) / (a * a * s)


def breast_sd(p: dict, br: dict, x, y, z) -> tuple[np.ndarray, np.ndarray]:
    """Approximate signed distance (mm) to one breast surface, and the height h (mm) anterior to the
    chest skin surface. Shape: (u^2 + w^2) + (h/d)^p <= 1 over the chest surface (h >= 0)."""
    ys, slope = chest_surface(p, x)
    h = np.maximum(ys - y, 0.0)
    u, w, hv = (x - br["x"]) / br["rx"], (z - br["z"]) / br["rz"], h / br["d"]
    pw = br["p"]
    hp1 = hv ** (pw - 1)
    f = u * u + w * w + hv * hp1 - 1.0
    dfh = pw * hp1 / br["d"]
    gx = 2 * u / br["rx"] + dfh * slope
    grad = np.sqrt(gx * gx + dfh * dfh + (2 * w / br["rz"]) ** 2) + 1e-6
    return (f / grad).astype(np.float32), h.astype(np.float32)


def breast_point(p: dict, br: dict, rho: float, phi: float, hf: float) -> np.ndarray:
    """Patient-frame point inside a breast: footprint polar (rho, phi) at height fraction hf."""
    scale = math.sqrt(max(1.0 - hf ** br["p"], 0.0))
    x = br["x"] + rho * math.cos(phi) * br["rx"] * scale
    z = br["z"] + rho * math.sin(phi) * br["rz"] * scale
    ys, _ = chest_surface(p, x)
    return np.array([x, float(ys) - hf * br["d"], z])


def breast_bounds(p: dict, br: dict) -> tuple[np.ndarray, np.ndarray]:
    ys, _ = chest_surface(p, np.array([br["x"] - br["rx"], br["x"], br["x"] + br["rx"]]))
    lo = np.array([br["x"] - br["rx"] - 3, float(ys.min()) - br["d"] - 3, br["z"] - br["rz"] - 3])
    hi = np.array([br["x"] + br["rx"] + 3, float(ys.max()) + 3, br["z"] + br["rz"] + 3])
    return lo, hi


def rotation(quat) -> np.ndarray:
    w, x, y, z = quat
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def segment_distance(x, y, z, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / float(ab @ ab), 0, 1)
    return np.sqrt((x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2)
