"""The random parameters of a phantom case (label, anatomy, lesion appearance, BI-RADS; patient frame, mm),
drawn from its seed independently of the grid, and the lesion's kinetic curve."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from BreastCMSLLib.phantom.grid import IDENTITY

PHASE_TIMES_MIN = (1.25, 2.5, 3.75, 5.0, 6.25, 7.5)  # post-contrast acquisition times, minutes
DEFAULT_DIFFICULTY = 0.5
# Where the lesion goes: "tissue" in the first large fibroglandular blob deep enough in the breast (the
# original rule, so often near the breast's middle); "spread" at the first of 8 drawn points (footprint
# radius sqrt(u) x 0.8, any angle, height fraction 0.1-0.85) clear of skin and chest wall, else as "tissue".
LESION_PLACEMENTS = ("tissue", "spread")


@dataclass(frozen=True)
class PhantomConfig:
    """Grid and case parameters. ``shape`` (i, j, k) voxels, ``spacing`` mm, ``origin`` LPS mm of voxel
    (0, 0, 0), ``direction`` 3x3 row-major (SimpleITK order; columns are the i, j, k axes in LPS).

    Missing ``shape``/``spacing`` keep the field of view :data:`.grid.FOV_MM`; a missing ``origin`` centres
    the grid on the LPS point (0, 0, 0). ``label`` 0/1 fixes the class, None draws it with
    ``malignant_fraction``.
    """

    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    origin: tuple[float, float, float] | None = None
    direction: tuple[float, ...] = IDENTITY
    difficulty: float = DEFAULT_DIFFICULTY
    label: int | None = None
    malignant_fraction: float = 0.5
    lesion_placement: str = "tissue"  # see LESION_PLACEMENTS


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def enhancement_curve(a: float, tau: float, washout: float, t: np.ndarray) -> np.ndarray:
    """Relative enhancement E(t) = A (1 - exp(-t / tau)) exp(-washout t); t, tau in minutes."""
    return a * (1.0 - np.exp(-t / tau)) * np.exp(-washout * t)


def kinetic_type(curve: np.ndarray) -> str:
    """BI-RADS kinetic curve type from relative enhancement at :data:`PHASE_TIMES_MIN`: late phase vs
    the initial peak (max of the phases within 2.5 min): > +10 % "I", < -10 % "III", else "II"."""
    initial = float(np.max(curve[:2]))
    change = (float(curve[-1]) - initial) / max(initial, 1e-6)
    return "I" if change > 0.1 else ("III" if change < -0.1 else "II")


def draw(rng: np.random.Generator, difficulty: float, label: int | None, malignant_fraction: float) -> dict:
    """All random case parameters (patient frame, mm). Independent of the grid."""
    p: dict = {}
    p["label"] = int(rng.random() < malignant_fraction) if label is None else int(label)
    # Thorax: ellipse in x-y (constant along z); layers below the skin: fat, muscle, ribs, cavity.
    p["a"], p["b"] = rng.uniform(158, 170), rng.uniform(95, 110)
    p["yc"] = rng.uniform(-22, -12) + p["b"]
    p["skin"], p["t_fat"] = rng.uniform(1.5, 2.2), rng.uniform(4, 8)
    p["t_muscle"], p["t_ribs"] = rng.uniform(9, 14), rng.uniform(8, 12)
    z0 = rng.uniform(-8, 8)
    depth = rng.uniform(55, 95)
    breasts = []
    for side in (-1.0, 1.0):  # right (-x) then left (+x)
        b = {"side": side, "x": side * rng.uniform(78, 95), "z": z0 + rng.uniform(-4, 4),
             "rx": rng.uniform(55, 68), "rz": rng.uniform(48, 60), "d": depth * rng.uniform(0.92, 1.08),
             "p": rng.uniform(1.6, 2.2)}
        blobs = []
        for n_blobs, sig in ((rng.integers(5, 13), (8.0, 16.0)), (rng.integers(10, 31), (2.5, 5.5))):
            for _ in range(int(n_blobs)):
                rho, phi, hf = math.sqrt(rng.random()) * 0.65, rng.uniform(0, 2 * math.pi), rng.uniform(0.12, 0.8)
                blobs.append({"rho": rho, "phi": phi, "hf": hf, "sigma": rng.uniform(*sig),
                              "amp": rng.uniform(0.6, 1.0)})
        b["blobs"] = blobs
        b["threshold"] = rng.uniform(0.3, 0.8)  # density: higher is fattier
        b["vessels"] = [{"foot": (rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.7)), "tip_hf": rng.uniform(0.55, 0.85),
                         "wiggle": rng.normal(0, 6, size=(2, 3)), "radius": rng.uniform(1.0, 2.0)}
                        for _ in range(int(rng.integers(3, 6)))]
        breasts.append(b)
    p["breasts"] = breasts
    p["bpe_level"], p["bpe_tau"] = rng.uniform(0.05, 0.45), rng.uniform(2.5, 5.0)
    p["heart"] = {"x": rng.uniform(10, 30), "z": rng.uniform(-30, -10), "gap": rng.uniform(6, 10),
                  "axes": (rng.uniform(55, 65), rng.uniform(40, 48), rng.uniform(45, 55))}
    p["ima_x"] = rng.uniform(22, 30)
    p["noise_sigma"] = rng.uniform(8, 14)
    p["bias"] = rng.normal(0, 0.08, size=5).tolist()

    # Lesion appearance: suspicion scores, blended by difficulty.
    d = float(difficulty)
    appearance = 1 - p["label"] if rng.random() < 0.12 * d else p["label"]
    scores = {}
    for name in ("shape", "kinetics", "rim", "size"):
        stray = abs(rng.normal(0, 0.45 * d)) if d > 0 else 0.0
        scores[name] = float(np.clip(appearance + (1 - 2 * appearance) * stray, 0, 1))
    p["scores"] = scores
    zs, zk = scores["shape"], scores["kinetics"]
    lesion = {"side_index": int(rng.integers(0, 2))}
    lesion["diameter"] = float(np.clip(_lerp(12, 22, scores["size"]) + rng.normal(0, 3.5), 8, 30))
    lesion["ratios"] = (1.0, _lerp(rng.uniform(0.65, 0.85), 0.92, zs), _lerp(rng.uniform(0.5, 0.7), 0.85, zs))
    q = rng.standard_normal(4)
    lesion["quat"] = (q / np.linalg.norm(q)).tolist()
    lesion["lobes"] = {"dirs": _unit(rng, 5).tolist(), "amp": 0.45 * zs ** 1.5, "kappa": 6.0}
    lesion["bumps"] = {"dirs": _unit(rng, 12).tolist(), "amp": 0.25 * zs ** 2, "kappa": 20.0}
    n_spic = round(12 * float(np.clip((zs - 0.45) / 0.55, 0, 1)))
    lesion["spicules"] = [{"dir": v.tolist(), "length": rng.uniform(0.5, 1.3), "width": rng.uniform(0.8, 1.6)}
                          for v in _unit(rng, max(n_spic, 1))][:n_spic]
    lesion["rim"] = bool(rng.random() < _lerp(0.05, 0.65, scores["rim"]))
    lesion["rim_depth"] = rng.uniform(0.5, 0.8)
    lesion["tau"] = math.exp(_lerp(math.log(3.5), math.log(0.5), zk)) * rng.uniform(0.85, 1.15)
    lesion["washout"] = _lerp(-0.03, 0.085, zk) + rng.normal(0, 0.008)
    lesion["amplitude"] = _lerp(0.9, 1.7, zk) * rng.uniform(0.85, 1.15)
    lesion["offset"] = rng.uniform(-0.5, 0.5, size=3).tolist()  # fallback position jitter
    suspicion = 0.4 * zk + 0.35 * zs + 0.15 * scores["rim"] + 0.1 * scores["size"]
    lesion["birads"] = 3 if suspicion < 0.35 else (5 if suspicion > 0.7 else 4)
    lesion["suspicion"] = suspicion
    lesion["spread"] = rng.random((8, 3)).tolist()  # drawn last: the parameters above stay those of the seed
    p["lesion"] = lesion
    return p


def streams(seed: int) -> list[np.random.SeedSequence]:
    """Independent random streams of one seed: anatomy/lesion parameters, then noise."""
    return np.random.SeedSequence(int(seed)).spawn(2)


def draw_parameters(seed: int, cfg: PhantomConfig = PhantomConfig()) -> dict:
    """The random parameters of case ``seed`` (label, anatomy, lesion appearance, BI-RADS; patient
    frame, mm), without rendering: cheap, and the same for every grid."""
    p = draw(np.random.default_rng(streams(seed)[0]), cfg.difficulty, cfg.label, cfg.malignant_fraction)
    p["lesion"]["placement"] = cfg.lesion_placement
    return p
