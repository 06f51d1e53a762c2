"""Synthetic bilateral breast DCE-MRI phantom with known truth (the test bed and the demo).

Frames. Images are SimpleITK images in LPS millimetres. The anatomy is built in a patient frame whose
axes are the LPS axes (x: patient Left, y: Posterior, z: Superior) and whose origin is the physical
centre of the requested grid, so the same seed gives the same anatomy on any grid: another size or
spacing, an oblique/flipped/permuted ``direction`` or another ``origin``. With the default identity
direction, i -> +x, j -> +y, k -> +z: the breasts are at small j (anterior), the chest wall, pectoral
muscle and heart posterior to them.

Default grid: 360 x 232 x 120 voxels at 1.0 x 1.0 x 1.2 mm (field of view 360 x 232 x 144 mm, a
bilateral axial exam). Against the default network input 340 x 220 x 128 it is cropped along i and j
and padded along k. A grid given only by ``shape`` (or only by ``spacing``) keeps that field of view,
so ``shape=(96, 64, 40)`` is the same exam at 3.75 x 3.625 x 3.6 mm.

Series: ``t1`` (non-fat-suppressed T1, fat bright), ``pre`` (fat-suppressed pre-contrast) and
``post_1..post_6`` at :data:`PHASE_TIMES_MIN`; int16 voxel values (scanner-like units), Rician noise
and one smooth multiplicative bias field (receive coil) shared by all series.

Lesion. One per case, centred in fibroglandular tissue of one breast; diameter 8-30 mm. Its
appearance is driven by suspicion scores in [0, 1] (margin, kinetics, rim, size): a malignant case
scores near 1 (irregular/spiculated margin, type III wash-in/wash-out kinetics, often rim
enhancement), a benign one near 0 (oval smooth margin, slow persistent type I kinetics).
``difficulty`` in [0, 1] makes the classes overlap: each score strays from its class by a
half-normal of scale ``0.45 * difficulty``, and with probability ``0.12 * difficulty`` a case takes
the appearance of the other class. BI-RADS (3/4/5) follows the appearance, not the label. The
appearance score itself (an oracle) separates the classes with ROC AUC 1.0 at difficulty 0, 0.97 at
0.25, 0.94 at the default 0.5, 0.90 at 0.75 and 0.81 at 1 (2000 seeds each).

Breast mask truth: voxels whose centre lies in the body (skin included) and anterior to the anterior
surface of the pectoral/chest-wall muscle layer, limited laterally by the coronal plane of the anterior
axillary line (modelled halfway between the anterior chest surface and the thorax centre). The heart and
everything deeper than the muscle are outside.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.atomic import replace_folder, staging_folder
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.pipeline.volumes import VOLUME_SUFFIXES

FOV_MM = (360.0, 232.0, 144.0)  # default field of view (x, y, z), mm
DEFAULT_SHAPE = (360, 232, 120)  # default grid, voxels (i, j, k): 1.0 x 1.0 x 1.2 mm
PHASE_TIMES_MIN = (1.25, 2.5, 3.75, 5.0, 6.25, 7.5)  # post-contrast acquisition times, minutes
DEFAULT_DIFFICULTY = 0.5
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
TISSUE_LABELS = {"air": 0, "fat": 1, "fibroglandular": 2, "skin": 3, "muscle": 4, "chest_wall": 5,
                 "lung": 6, "heart": 7, "vessel": 8, "lesion": 9}
# Where the lesion goes: "tissue" in the first large fibroglandular blob deep enough in the breast (the
# original rule, so often near the breast's middle); "spread" at the first of 8 drawn points (footprint
# radius sqrt(u) x 0.8, any angle, height fraction 0.1-0.85) clear of skin and chest wall, else as "tissue".
LESION_PLACEMENTS = ("tissue", "spread")
BREAST_MASK_DEFINITION = ("body voxels (skin included) anterior to the anterior surface of the pectoral/"
                          "chest-wall muscle layer and to the coronal plane of the anterior axillary line")

# Voxel values of each tissue: (non-fat-suppressed T1, fat-suppressed pre-contrast).
_T1_PRE = {"skin": (450, 330), "fat": (900, 110), "muscle": (300, 280), "chest_wall": (480, 200),
           "lung": (30, 20), "fibroglandular": (380, 300), "myocardium": (300, 290), "blood": (200, 240),
           "vessel": (260, 250), "lesion": (330, 270)}
# Relative enhancement amplitude of slowly enhancing tissues, curve 1 - exp(-t / 3 min).
_SLOW = {"skin": 0.25, "fat": 0.03, "muscle": 0.35, "chest_wall": 0.2, "lung": 0.1}
# Fast (arterial) kinetics (A, tau_min, washout_per_min) of E(t) = A (1 - exp(-t/tau)) exp(-washout t).
_FAST = {"blood": (2.8, 0.2, 0.12), "myocardium": (1.0, 0.4, 0.06), "vessel": (2.2, 0.25, 0.1)}


@dataclass(frozen=True)
class PhantomConfig:
    """Grid and case parameters. ``shape`` (i, j, k) voxels, ``spacing`` mm, ``origin`` LPS mm of voxel
    (0, 0, 0), ``direction`` 3x3 row-major (SimpleITK order; columns are the i, j, k axes in LPS).

    Missing ``shape``/``spacing`` keep the field of view :data:`FOV_MM`; a missing ``origin`` centres
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


@dataclass
class PhantomCase:
    """One synthesized case: ``images`` t1, pre, post_1..post_6 (int16), truth masks (uint8) and
    ``tissue`` (uint8, :data:`TISSUE_LABELS`) on the same grid, and ``truth`` (the case.json dict)."""

    images: dict[str, sitk.Image]
    lesion_mask: sitk.Image
    breast_mask: sitk.Image
    tissue: sitk.Image
    truth: dict = field(default_factory=dict)

    def series(self, inputs: str = "phases", with_t1: bool = True) -> dict[str, sitk.Image]:
        """The input volumes by file stem: t1, pre, post_1..post_6 (``"phases"``) or t1, sub_1..sub_6
        with sub_k = post_k - pre in int16 (``"subtractions"``). ``with_t1=False``: the fat-suppressed,
        T1-less mode (only the fat-suppressed dynamic series, as many DCE protocols and cohorts hold)."""
        _check_output(inputs)
        posts = sorted((n for n in self.images if n.startswith("post_")), key=lambda n: int(n[5:]))
        t1 = {"t1": self.images["t1"]} if with_t1 else {}
        if inputs == "phases":
            return {**t1, "pre": self.images["pre"], **{n: self.images[n] for n in posts}}
        pre = self.images["pre"]
        return {**t1, **{f"sub_{n[5:]}": sitk.Subtract(self.images[n], pre) for n in posts}}


# ---------------------------------------------------------------------------------------------- grid
Box = tuple[slice, slice, slice]  # numpy (k, j, i) slices of the SimpleITK array order


@dataclass(frozen=True)
class _Grid:
    size: tuple[int, int, int]  # (I, J, K)
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray  # 3x3, columns = index axes in LPS

    @property
    def matrix(self) -> np.ndarray:
        """Index (i, j, k) -> LPS mm offset from the origin."""
        return self.direction * self.spacing[None, :]

    @property
    def centre(self) -> np.ndarray:
        return self.origin + self.matrix @ ((np.array(self.size) - 1) / 2.0)

    @property
    def full(self) -> Box:
        return (slice(0, self.size[2]), slice(0, self.size[1]), slice(0, self.size[0]))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size[2], self.size[1], self.size[0])

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient-frame coordinates (mm from the grid centre) of the voxels of ``box``, float32.

        Each is broadcastable to the box shape; terms with a zero direction entry are left out, so an
        axis-aligned grid yields 1D-like arrays and the cost of full 3D arrays is paid only when needed.
        """
        idx = [np.arange(box[2 - n].start, box[2 - n].stop, dtype=np.float64) for n in range(3)]
        shapes = [(1, 1, -1), (1, -1, 1), (-1, 1, 1)]
        base = self.origin - self.centre
        out = []
        for a in range(3):
            value: np.ndarray | float = np.float32(base[a])
            for n in range(3):
                if self.matrix[a, n] != 0.0:
                    value = value + (self.matrix[a, n] * idx[n]).astype(np.float32).reshape(shapes[n])
            out.append(np.asarray(value, dtype=np.float32))
        return out[0], out[1], out[2]

    def box(self, lo: np.ndarray, hi: np.ndarray) -> Box | None:
        """The smallest index box covering the patient-frame box [lo, hi] (mm), None if outside."""
        corners = np.array(list(itertools.product(*zip(lo, hi))))
        cont = np.linalg.solve(self.matrix, (corners + self.centre - self.origin).T)
        start = np.maximum(np.floor(cont.min(axis=1)).astype(int) - 1, 0)
        stop = np.minimum(np.ceil(cont.max(axis=1)).astype(int) + 2, np.array(self.size))
        if np.any(stop <= start):
            return None
        return (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0]))

    def index_of(self, point: np.ndarray) -> tuple[int, int, int] | None:
        """Numpy (k, j, i) index of the voxel containing the patient-frame ``point``, None outside."""
        ijk = np.rint(np.linalg.solve(self.matrix, point + self.centre - self.origin)).astype(int)
        if np.any(ijk < 0) or np.any(ijk >= np.array(self.size)):
            return None
        return (int(ijk[2]), int(ijk[1]), int(ijk[0]))

    def image(self, array: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(self.spacing.tolist())
        img.SetOrigin(self.origin.tolist())
        img.SetDirection(self.direction.ravel().tolist())
        return img


def _resolve_grid(cfg: PhantomConfig) -> _Grid:
    """Apply the defaults of :class:`PhantomConfig` and check the geometry."""
    fov = np.array(FOV_MM)
    if cfg.spacing is not None:
        spacing = np.array(cfg.spacing, dtype=float)
        if spacing.shape != (3,) or np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
            raise InputError("--spacing", f"expected three positive numbers (mm), got {cfg.spacing}")
    if cfg.shape is not None:
        size = np.array(cfg.shape, dtype=int)
    else:
        size = np.array(DEFAULT_SHAPE) if cfg.spacing is None else np.rint(fov / spacing).astype(int)
    if size.shape != (3,) or np.any(size < 4):
        raise InputError("--shape", f"expected three sizes of at least 4 voxels, got {tuple(size.tolist())}")
    if cfg.spacing is None:
        spacing = fov / size
    direction = np.array(cfg.direction, dtype=float)
    if direction.shape != (9,):
        raise InputError("direction", "expected 9 numbers (3x3 row-major)")
    direction = direction.reshape(3, 3)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise InputError("direction", "the direction matrix is not orthonormal")
    grid = _Grid(tuple(int(s) for s in size), spacing, np.zeros(3), direction)
    origin = -grid.centre if cfg.origin is None else np.array(cfg.origin, dtype=float)
    return _Grid(grid.size, spacing, origin, direction)


def _canonical_normal(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
    """Standard normal noise drawn in the order of the nearest axial LPS grid, returned in storage
    (k, j, i) order: the same physical voxel gets the same value however a grid is flipped/permuted."""
    axis = np.abs(grid.direction).argmax(axis=0)  # physical axis of each index axis
    sign = np.sign(grid.direction[axis, [0, 1, 2]])
    if len(set(axis.tolist())) < 3:
        return rng.standard_normal(grid.shape, dtype=np.float32)
    canon_shape = [0, 0, 0]
    for n in range(3):
        canon_shape[2 - axis[n]] = grid.size[n]
    noise = rng.standard_normal(tuple(canon_shape), dtype=np.float32)
    noise = noise.transpose([2 - axis[2 - a] for a in range(3)])
    flips = tuple(a for a in range(3) if sign[2 - a] < 0)
    return np.flip(noise, axis=flips) if flips else noise


# -------------------------------------------------------------------------------------- parameters
def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _curve(a: float, tau: float, washout: float, t: np.ndarray) -> np.ndarray:
    """Relative enhancement E(t) = A (1 - exp(-t / tau)) exp(-washout t); t, tau in minutes."""
    return a * (1.0 - np.exp(-t / tau)) * np.exp(-washout * t)


def kinetic_type(curve: np.ndarray) -> str:
    """BI-RADS kinetic curve type from relative enhancement at :data:`PHASE_TIMES_MIN`: late phase vs
    the initial peak (max of the phases within 2.5 min): > +10 % "I", < -10 % "III", else "II"."""
    initial = float(np.max(curve[:2]))
    change = (float(curve[-1]) - initial) / max(initial, 1e-6)
    return "I" if change > 0.1 else ("III" if change < -0.1 else "II")


def _draw(rng: np.random.Generator, difficulty: float, label: int | None, malignant_fraction: float) -> dict:
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


# ------------------------------------------------------------------------------------------ shapes
def _soft(sd: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction of the inside of a surface given the signed distance (mm, < 0 inside)."""
    return np.clip(0.5 - sd / width, 0.0, 1.0)


def _thorax_sd(p: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm) to the thorax skin surface: ellipse F / |grad F|."""
    a, b = p["a"], p["b"]
    u, v = x / a, (y - p["yc"]) / b
    f = u * u + v * v - 1.0
    grad = np.sqrt((2 * u / a) ** 2 + (2 * v / b) ** 2) + 1e-6
    return (f / grad).astype(np.float32)


def _chest_surface(p: dict, x: np.ndarray | float) -> np.ndarray:
    """y (mm) of the anterior thorax skin surface above x, and its slope dy/dx."""
    a, b = p["a"], p["b"]
    s = np.sqrt(np.clip(1.0 - (np.asarray(x) / a) ** 2, 1e-3, None))
    return p["yc"] - b * s, b * np.asarray(x) / (a * a * s)


def _breast_sd(p: dict, br: dict, x, y, z) -> tuple[np.ndarray, np.ndarray]:
    """Approximate signed distance (mm) to one breast surface, and the height h (mm) anterior to the
    chest skin surface. Shape: (u^2 + w^2) + (h/d)^p <= 1 over the chest surface (h >= 0)."""
    ys, slope = _chest_surface(p, x)
    h = np.maximum(ys - y, 0.0)
    u, w, hv = (x - br["x"]) / br["rx"], (z - br["z"]) / br["rz"], h / br["d"]
    pw = br["p"]
    hp1 = hv ** (pw - 1)
    f = u * u + w * w + hv * hp1 - 1.0
    dfh = pw * hp1 / br["d"]
    gx = 2 * u / br["rx"] + dfh * slope
    grad = np.sqrt(gx * gx + dfh * dfh + (2 * w / br["rz"]) ** 2) + 1e-6
    return (f / grad).astype(np.float32), h.astype(np.float32)


def _breast_point(p: dict, br: dict, rho: float, phi: float, hf: float) -> np.ndarray:
    """Patient-frame point inside a breast: footprint polar (rho, phi) at height fraction hf."""
    scale = math.sqrt(max(1.0 - hf ** br["p"], 0.0))
    x = br["x"] + rho * math.cos(phi) * br["rx"] * scale
    z = br["z"] + rho * math.sin(phi) * br["rz"] * scale
    ys, _ = _chest_surface(p, x)
    return np.array([x, float(ys) - hf * br["d"], z])


def _breast_bounds(p: dict, br: dict) -> tuple[np.ndarray, np.ndarray]:
    ys, _ = _chest_surface(p, np.array([br["x"] - br["rx"], br["x"], br["x"] + br["rx"]]))
    lo = np.array([br["x"] - br["rx"] - 3, float(ys.min()) - br["d"] - 3, br["z"] - br["rz"] - 3])
    hi = np.array([br["x"] + br["rx"] + 3, float(ys.max()) + 3, br["z"] + br["rz"] + 3])
    return lo, hi


def _rotation(quat) -> np.ndarray:
    w, x, y, z = quat
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


# ----------------------------------------------------------------------------------------- render
class _Canvas:
    """Partial-volume painter: channels t1, pre, slow (pre x slow amplitude), bpe (pre x BPE amplitude),
    the tissue labels, and "fast" terms (box, pre-weighted amount, kinetic parameters) added per phase."""

    def __init__(self, grid: _Grid):
        self.grid = grid
        self.ch = {n: np.zeros(grid.shape, np.float32) for n in ("t1", "pre", "slow", "bpe")}
        self.labels = np.zeros(grid.shape, np.uint8)
        self.fast: list[tuple[Box, np.ndarray, tuple]] = []

    def paint(self, box: Box, frac: np.ndarray, tissue: str, label: int, bpe: np.ndarray | float = 0.0,
              kinetics: tuple | None = None, amount_scale: np.ndarray | float = 1.0) -> None:
        frac = np.broadcast_to(frac, tuple(s.stop - s.start for s in box))
        t1, pre = _T1_PRE[tissue]
        values = {"t1": t1, "pre": pre, "slow": pre * _SLOW.get(tissue, 0.0), "bpe": bpe}
        for name, arr in self.ch.items():
            view = arr[box]
            view += frac * (values[name] - view)
        self.labels[box][frac >= 0.5] = label
        for fbox, amount, _ in self.fast:
            inter = _intersect(fbox, box)
            if inter is not None:
                amount[_local(inter, fbox)] *= 1.0 - frac[_local(inter, box)]
        if kinetics is not None:
            self.fast.append((box, (frac * pre * amount_scale).astype(np.float32), kinetics))


def _intersect(a: Box, b: Box) -> Box | None:
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return None if any(s.stop <= s.start for s in out) else out


def _local(inner: Box, outer: Box) -> Box:
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))


def _segment_distance(x, y, z, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / float(ab @ ab), 0, 1)
    return np.sqrt((x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2)


def _render(p: dict, grid: _Grid, noise_rng: np.random.Generator) -> PhantomCase:
    width = float(np.mean(grid.spacing))  # partial-volume ramp, mm
    canvas = _Canvas(grid)
    full = grid.full
    x, y, _ = grid.coords(full)
    sd_t = _thorax_sd(p, x, y)

    # Body = thorax U breasts; breast signed distances are evaluated in their boxes only.
    sd_body = np.array(np.broadcast_to(sd_t, grid.shape))
    breast_boxes = []
    for br in p["breasts"]:
        box = grid.box(*_breast_bounds(p, br))
        breast_boxes.append(box)
        if box is None:
            continue
        bx, by, bz = grid.coords(box)
        sd_b, _ = _breast_sd(p, br, bx, by, bz)
        np.minimum(sd_body[box], sd_b, out=sd_body[box])

    tf, tm, tr = p["t_fat"], p["t_muscle"], p["t_ribs"]
    canvas.paint(full, _soft(sd_body, width), "skin", TISSUE_LABELS["skin"])
    canvas.paint(full, _soft(sd_body + p["skin"], width), "fat", TISSUE_LABELS["fat"])
    canvas.paint(full, _soft(sd_t + tf, width), "muscle", TISSUE_LABELS["muscle"])
    canvas.paint(full, _soft(sd_t + tf + tm, width), "chest_wall", TISSUE_LABELS["chest_wall"])
    cavity_sd = sd_t + (tf + tm + tr)
    canvas.paint(full, _soft(cavity_sd, width), "lung", TISSUE_LABELS["lung"])
    breast_truth = (sd_body <= 0) & (sd_t > -tf) & (y < p["yc"] - p["b"] / 2)
    del sd_body

    # Heart (myocardium shell, blood pool) in the thoracic cavity; internal mammary arteries.
    hp = p["heart"]
    axes = np.array(hp["axes"])
    cav_front, _ = _chest_surface(p, hp["x"])
    centre = np.array([hp["x"], float(cav_front) + tf + tm + tr + hp["gap"] + axes[1], hp["z"]])
    box = grid.box(centre - axes - 2, centre + axes + 2)
    if box is not None:
        hx, hy, hz = grid.coords(box)
        u = np.sqrt(((hx - centre[0]) / axes[0]) ** 2 + ((hy - centre[1]) / axes[1]) ** 2
                    + ((hz - centre[2]) / axes[2]) ** 2)
        inside_cavity = _soft(np.broadcast_to(cavity_sd, grid.shape)[box], width)
        for tissue, scale in (("myocardium", 1.0), ("blood", 0.78)):
            frac = _soft((u - scale) * axes.min() * scale, width) * inside_cavity
            canvas.paint(box, frac, tissue, TISSUE_LABELS["heart"], kinetics=_FAST[tissue])
    for side in (-1.0, 1.0):
        xi = side * p["ima_x"]
        yi = float(_chest_surface(p, xi)[0]) + tf + tm + tr + 2.5
        box = grid.box(np.array([xi - 5, yi - 5, -1e3]), np.array([xi + 5, yi + 5, 1e3]))
        if box is not None:
            vx, vy, _ = grid.coords(box)
            frac = _soft(np.sqrt((vx - xi) ** 2 + (vy - yi) ** 2) - 1.6, width)
            canvas.paint(box, frac, "vessel", TISSUE_LABELS["vessel"], kinetics=_FAST["vessel"])

    # Breasts: fibroglandular blobs with background parenchymal enhancement (BPE), vessels.
    lesion_p = p["lesion"]
    radius = lesion_p["diameter"] / 2
    lesion_centre = None
    for index, (br, bbox) in enumerate(zip(p["breasts"], breast_boxes)):
        blobs = [(_breast_point(p, br, b["rho"], b["phi"], b["hf"]), b["sigma"], b["amp"]) for b in br["blobs"]]
        if index == lesion_p["side_index"]:
            lesion_centre = _lesion_centre(p, br, blobs, radius, lesion_p)
            blobs.append((lesion_centre, radius + 4.0, 1.3))
        if bbox is None:
            continue
        bx, by, bz = grid.coords(bbox)
        field_ = np.zeros(tuple(s.stop - s.start for s in bbox), np.float32)
        for c, sigma, amp in blobs:
            box = _intersect(grid.box(c - 3 * sigma, c + 3 * sigma) or bbox, bbox)
            if box is None:
                continue
            gx, gy, gz = grid.coords(box)
            r2 = (gx - c[0]) ** 2 + (gy - c[1]) ** 2 + (gz - c[2]) ** 2
            field_[_local(box, bbox)] += amp * np.exp(r2 * np.float32(-0.5 / sigma ** 2))
        sd_b, h = _breast_sd(p, br, bx, by, bz)
        keep = _soft(sd_b + p["skin"] + 2.0, width) * np.clip((h - 8.0) / 4.0, 0, 1)
        frac = np.clip((field_ - br["threshold"]) / 0.15 + 0.5, 0, 1) * keep
        bpe = _T1_PRE["fibroglandular"][1] * p["bpe_level"] * np.clip(field_ / (1.0 + field_), 0, 1) * 1.6
        canvas.paint(bbox, frac, "fibroglandular", TISSUE_LABELS["fibroglandular"], bpe=bpe)
        for v in br["vessels"]:
            foot = _breast_point(p, br, math.hypot(*v["foot"]), math.atan2(v["foot"][1], v["foot"][0]), 0.0)
            tip = _breast_point(p, br, 0.1, math.atan2(v["foot"][1], v["foot"][0]), v["tip_hf"])
            knots = [foot, foot + (tip - foot) / 3 + v["wiggle"][0], foot + 2 * (tip - foot) / 3 + v["wiggle"][1], tip]
            for a, b in itertools.pairwise(knots):
                box = _intersect(grid.box(np.minimum(a, b) - 4, np.maximum(a, b) + 4) or bbox, bbox)
                if box is None:
                    continue
                vx, vy, vz = grid.coords(box)
                frac = _soft(_segment_distance(vx, vy, vz, a, b) - v["radius"], width)
                frac = frac * (_soft(sd_b[_local(box, bbox)] + p["skin"], width))
                canvas.paint(box, frac, "vessel", TISSUE_LABELS["vessel"], kinetics=_FAST["vessel"])

    lesion_mask = np.zeros(grid.shape, np.uint8)
    _paint_lesion(canvas, grid, lesion_p, lesion_centre, width, lesion_mask)
    return _finish(p, grid, canvas, noise_rng, lesion_mask, breast_truth, lesion_centre)


def _lesion_centre(p: dict, br: dict, blobs: list, radius: float, lp: dict) -> np.ndarray:
    """Centre of the lesion (:data:`LESION_PLACEMENTS`): a point deep enough inside the breast (clear of
    skin and chest wall by the lesion radius + 6 mm), else a point in the middle of the breast."""
    spread = [_breast_point(p, br, 0.8 * math.sqrt(u), 2 * math.pi * v, 0.1 + 0.75 * w) for u, v, w in lp["spread"]]
    tissue = [c for c, sigma, _ in blobs if sigma >= 8.0]
    for c in (spread if lp.get("placement") == "spread" else []) + tissue:
        sd_b, h = _breast_sd(p, br, *(np.array([v]) for v in c))
        if sd_b[0] <= -(radius + 6.0) and h[0] >= radius + 8.0:
            return c
    offset = lp["offset"]
    return _breast_point(p, br, 0.15 + 0.1 * offset[0], math.pi * (1 + offset[1]), 0.4 + 0.1 * offset[2])


def _paint_lesion(canvas: _Canvas, grid: _Grid, lp: dict, c: np.ndarray, width: float,
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
    rot = _rotation(lp["quat"])
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
    frac = _soft(dist - r, width)
    for s in lp["spicules"]:
        v = np.array(s["dir"])
        t = d[0] * v[0] + d[1] * v[1] + d[2] * v[2]
        length = radius * (1 + s["length"])
        perp = np.sqrt(np.maximum(dist ** 2 - t ** 2, 0))
        half = s["width"] * np.clip(1 - t / length, 0, 1) * (t > 0)
        frac = np.maximum(frac, _soft(perp - half, width) * min(1.0, 2 * s["width"] / width) * (half > 0))
    rho = np.clip(dist / r, 0, 1)
    spatial = 1.0 - (lp["rim_depth"] * (1 - rho) if lp["rim"] else 0.0)
    kinetics = (lp["amplitude"], lp["tau"], lp["washout"])
    canvas.paint(box, frac, "lesion", TISSUE_LABELS["lesion"], kinetics=kinetics, amount_scale=spatial)
    mask[box][frac >= 0.5] = 1
    centre_voxel = grid.index_of(c)
    if centre_voxel is not None:
        mask[centre_voxel] = 1
        canvas.labels[centre_voxel] = TISSUE_LABELS["lesion"]


def _finish(p: dict, grid: _Grid, canvas: _Canvas, noise_rng: np.random.Generator, lesion_mask: np.ndarray,
            breast_truth: np.ndarray, lesion_centre: np.ndarray) -> PhantomCase:
    """Phases from the channels, bias field, Rician noise, int16 images and the truth dictionary."""
    x, y, z = grid.coords(grid.full)
    c = p["bias"]
    bias = np.exp(np.float32(c[0]) * x / 180 + np.float32(c[1] - 0.12) * y / 116 + np.float32(c[2]) * z / 72
                  + np.float32(c[3]) * (x / 180) ** 2 + np.float32(c[4]) * (y / 116) ** 2)
    sigma = np.float32(p["noise_sigma"])

    def finish(signal: np.ndarray) -> sitk.Image:
        signal *= bias
        n1 = _canonical_normal(noise_rng, grid)
        signal += sigma * n1
        np.square(signal, out=signal)
        n2 = _canonical_normal(noise_rng, grid)
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
            post[box] += amount * np.float32(_curve(*kin, np.array([tk]))[0])
        images[f"post_{k}"] = finish(post)

    lp = p["lesion"]
    curve = _curve(lp["amplitude"], lp["tau"], lp["washout"], t)
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


# -------------------------------------------------------------------------------------------- API
def _streams(seed: int) -> list[np.random.SeedSequence]:
    """Independent random streams of one seed: anatomy/lesion parameters, then noise."""
    return np.random.SeedSequence(int(seed)).spawn(2)


def draw_parameters(seed: int, cfg: PhantomConfig = PhantomConfig()) -> dict:
    """The random parameters of case ``seed`` (label, anatomy, lesion appearance, BI-RADS; patient
    frame, mm), without rendering: cheap, and the same for every grid."""
    p = _draw(np.random.default_rng(_streams(seed)[0]), cfg.difficulty, cfg.label, cfg.malignant_fraction)
    p["lesion"]["placement"] = cfg.lesion_placement
    return p


def make_case(seed: int, cfg: PhantomConfig = PhantomConfig()) -> PhantomCase:
    """Synthesize one case, deterministic per ``seed`` (same anatomy on every grid of ``cfg``)."""
    if not 0.0 <= cfg.difficulty <= 1.0:
        raise InputError("difficulty", f"must lie in [0, 1], got {cfg.difficulty}")
    if cfg.label not in (None, 0, 1):
        raise InputError("label", f"must be 0 (benign), 1 (malignant) or None, got {cfg.label}")
    if cfg.lesion_placement not in LESION_PLACEMENTS:
        raise InputError("lesion_placement", f"expected one of {', '.join(LESION_PLACEMENTS)}, "
                         f"got {cfg.lesion_placement!r}")
    grid = _resolve_grid(cfg)
    case = _render(draw_parameters(seed, cfg), grid, np.random.default_rng(_streams(seed)[1]))
    case.truth.update(seed=int(seed), difficulty=float(cfg.difficulty), lesion_placement=cfg.lesion_placement)
    return case


def _check_output(inputs: str, suffix: str | None = None) -> None:
    """Raise :class:`InputError` for an unknown input kind or volume file suffix."""
    if inputs not in ("phases", "subtractions"):
        raise InputError("--inputs", f"expected 'phases' or 'subtractions', got {inputs!r}")
    if suffix is not None and (suffix not in VOLUME_SUFFIXES or suffix == ".nhdr"):
        raise InputError("suffix", f"expected one of {', '.join(VOLUME_SUFFIXES)} (not .nhdr), got {suffix!r}")


def write_case(case: PhantomCase, out_dir: str | Path, inputs: str = "phases", suffix: str = ".nrrd",
               overwrite: bool = False, with_t1: bool = True) -> dict:
    """Write a case folder atomically (temporary folder, then rename) and return its case.json dict.

    ``inputs="phases"``: t1, pre, post_1..post_6; ``"subtractions"``: t1, sub_k = post_k - pre (int16);
    ``with_t1=False`` leaves the T1 out (fat-suppressed series only).
    Truth: truth/lesion_mask, truth/breast_mask, truth/tissue (labels in case.json).
    """
    _check_output(inputs, suffix)
    volumes = case.series(inputs, with_t1)
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir.is_dir() and (overwrite or not any(out_dir.iterdir()))):
        raise InputError(out_dir, "already exists and is not an empty folder")
    with staging_folder(out_dir) as tmp:
        (tmp / "truth").mkdir()
        volumes.update({"truth/lesion_mask": case.lesion_mask, "truth/breast_mask": case.breast_mask,
                        "truth/tissue": case.tissue})
        for name, image in volumes.items():
            sitk.WriteImage(image, str(tmp / f"{name}{suffix}"), useCompression=suffix.endswith(".gz"))
        truth = dict(case.truth, inputs=inputs, files=sorted(f"{n}{suffix}" for n in volumes))
        (tmp / "case.json").write_text(json.dumps(truth, indent=1))
        replace_folder(tmp, out_dir)
    return truth


def synth_case(out_dir: str | Path, seed: int = 0, label: int | None = None,
               shape: tuple[int, int, int] | None = None, spacing: tuple[float, float, float] | None = None,
               inputs: str = "phases", difficulty: float = DEFAULT_DIFFICULTY, malignant_fraction: float = 0.5,
               origin: tuple[float, float, float] | None = None, direction: tuple[float, ...] = IDENTITY,
               suffix: str = ".nrrd", overwrite: bool = False, lesion_placement: str = "tissue") -> dict:
    """``breastcmsl synth``: synthesize one case and write its folder; returns the case.json dict.

    A plain top-level function of plain arguments, so cohorts can call it from worker processes.
    """
    _check_output(inputs, suffix)
    cfg = PhantomConfig(shape=None if shape is None else tuple(shape),
                        spacing=None if spacing is None else tuple(spacing),
                        origin=None if origin is None else tuple(origin), direction=tuple(direction),
                        difficulty=difficulty, label=label, malignant_fraction=malignant_fraction,
                        lesion_placement=lesion_placement)
    return write_case(make_case(seed, cfg), out_dir, inputs=inputs, suffix=suffix, overwrite=overwrite)
