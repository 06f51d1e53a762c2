"""Signal kinetics of a DCE series: PE and SER maps, the enhancement curve at a point with its BI-RADS classes, and
the functional tumour volume (FTV) of a region.

Definitions (sources in ``docs/kinetics.md``). ``S_pre``, ``S_early``, ``S_late``: signal of the pre-contrast, early
and late post-contrast phases (:mod:`.phase_times` chooses them).

* PE (percent enhancement, %) = 100 (S_early - S_pre) / S_pre; 0 where S_pre is below the background threshold.
* SER (signal enhancement ratio) = (S_early - S_pre) / (S_late - S_pre); 0 where the early enhancement is <= 0,
  :data:`SER_CAP` where the late enhancement is <= 0 while the early one is > 0 (complete washout).
* SER label: 1 persistent (SER < 0.9), 2 plateau (0.9 <= SER <= 1.1), 3 washout (SER > 1.1), only where
  PE >= the PE threshold (and the background threshold passes); 0 elsewhere.
* Background threshold: ``background`` % of the 95th percentile of S_pre inside the region (the whole volume for
  the maps without a region); ``background`` 0 turns it off.
* FTV: region voxels with PE >= threshold above the background threshold, of which at least ``min_neighbours``
  of their 26 neighbours pass too; in mL, split by SER label.
* Curve at a point: mean signal in a sphere (radius mm, LPS) at every phase; relative enhancement (%)
  100 (S_t - S_pre) / S_pre. Initial class from the early phase: slow < 50 %, medium 50-100 %, fast > 100 %.
  Delayed class from the change of the enhancement from the early to the late phase, (E_late - E_early) / E_early:
  persistent > +10 %, plateau within +/-10 %, washout < -10 %.

Arrays are SimpleITK's (K, J, I) order; every map lies on the reference grid (the first post-contrast phase's).
Phases on that grid are read through array views, never copied.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.errors import InputError
from BreastCMSLLib.pipeline.grids import resample, same_grid

SER_CAP = 5.0  # SER where the late enhancement is <= 0 while the early one is > 0
SER_LABELS = {1: "persistent", 2: "plateau", 3: "washout"}
# colour of each SER label (RGB in [0, 1]) and the legend line the faces show beside it
SER_COLOURS = {1: (0.16, 0.38, 1.0), 2: (1.0, 0.85, 0.1), 3: (0.92, 0.1, 0.1)}
SER_LEGEND = {1: "persistent: SER < 0.9 (late signal still rising)",
              2: "plateau: SER 0.9-1.1",
              3: "washout: SER > 1.1 (late signal falling)"}
INITIAL_LIMITS = (50.0, 100.0)  # %: slow below the first, fast above the second
DELAYED_LIMIT = 10.0  # %: change of the enhancement from the early to the late phase


@dataclass(frozen=True)
class KineticsConfig:
    """Thresholds: ``pe_threshold`` % enhancement; ``background`` % of the 95th percentile of the pre-contrast
    signal in the region (0: off); ``min_neighbours`` of 26; ``early_s``/``late_s`` target phase times (s after
    injection); ``radius_mm`` of the sphere a curve is averaged in."""

    pe_threshold: float = 70.0
    background: float = 60.0
    min_neighbours: int = 4
    early_s: float = 150.0
    late_s: float = 450.0
    radius_mm: float = 2.0

    def __post_init__(self) -> None:
        checks = {"--pe-threshold": self.pe_threshold >= 0, "--background": 0 <= self.background <= 100,
                  "--radius": self.radius_mm > 0, "--early-s": np.isfinite(self.early_s),
                  "--late-s": np.isfinite(self.late_s), "min_neighbours": 0 <= self.min_neighbours <= 26}
        for name, ok in checks.items():
            if not ok:
                raise InputError(name, "out of range (PE threshold >= 0, background 0-100 %, radius > 0, "
                                 "neighbours 0-26)")


def array_on(image: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """``image``'s values on ``grid`` as a float32 (K, J, I) array: a read-only view where the grids are the same
    (no copy of the phase), else SimpleITK's resampling (linear; 0 outside)."""
    if same_grid(image, grid) and image.GetPixelID() == sitk.sitkFloat32:
        return sitk.GetArrayViewFromImage(image)
    return sitk.GetArrayFromImage(resample(image, grid))


def image_like(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """A SimpleITK image of a (K, J, I) array with ``grid``'s geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.CopyInformation(grid)
    return image


def background_level(pre: np.ndarray, region: np.ndarray | None, percent: float) -> float:
    """The background threshold: ``percent`` % of the 95th percentile of ``pre`` in ``region``; 0 when ``percent``
    is 0. Without a region (the maps of a whole volume) the percentile is taken of every second voxel along each
    axis: an eighth of the work for the same level within the noise."""
    if percent <= 0:
        return 0.0
    values = pre[region] if region is not None else pre[::2, ::2, ::2]
    return float(percent / 100.0 * np.percentile(values, 95)) if values.size else 0.0


@dataclass
class KineticMaps:
    """PE (%), SER and the SER label as (K, J, I) arrays on the reference grid; ``background`` the signal level
    below which PE and SER are 0. ``ser`` and ``ser_label`` are None without a late phase."""

    pe: np.ndarray
    ser: np.ndarray | None
    ser_label: np.ndarray | None
    background: float

    def images(self, grid: sitk.Image) -> dict[str, sitk.Image]:
        """The maps as images on ``grid``, by output file stem (``pe_early``, ``ser``, ``ser_label``)."""
        maps = {"pe_early": self.pe, "ser": self.ser, "ser_label": self.ser_label}
        return {name: image_like(a, grid) for name, a in maps.items() if a is not None}


def enhancement_maps(pre: np.ndarray, early: np.ndarray, late: np.ndarray | None, cfg: KineticsConfig,
                     region: np.ndarray | None = None) -> KineticMaps:
    """PE, SER and SER-label maps of three (K, J, I) signal arrays (``late`` None: PE only); the background
    threshold from ``region`` (bool, same shape) or the whole volume."""
    level = background_level(pre, region, cfg.background)
    valid = (pre >= level) & (pre > 0)
    early_gain = np.subtract(early, pre, dtype=np.float32)
    pe = np.zeros(pre.shape, np.float32)
    np.divide(early_gain, pre, out=pe, where=valid)
    pe *= 100.0
    if late is None:
        return KineticMaps(pe, None, None, level)
    late_gain = np.subtract(late, pre, dtype=np.float32)
    ser = np.zeros(pre.shape, np.float32)
    rising = valid & (early_gain > 0)
    np.divide(early_gain, late_gain, out=ser, where=rising & (late_gain > 0))
    ser[rising & (late_gain <= 0)] = SER_CAP
    np.minimum(ser, SER_CAP, out=ser)
    del early_gain, late_gain
    label = ser_labels(ser, pe >= cfg.pe_threshold)
    return KineticMaps(pe, ser, label, level)


def ser_labels(ser: np.ndarray, enhancing: np.ndarray) -> np.ndarray:
    """uint8 SER label (:data:`SER_LABELS`) where ``enhancing``, 0 elsewhere."""
    label = enhancing.astype(np.uint8)
    label += enhancing & (ser >= 0.9)
    label += enhancing & (ser > 1.1)
    return label


# ------------------------------------------------------------------------------------------------ curve
def sphere_mean(image: sitk.Image, point_lps, radius_mm: float, source: str) -> float:
    """Mean of ``image`` over the voxels whose centres lie within ``radius_mm`` of ``point_lps`` (LPS mm); the
    nearest voxel where the sphere holds no centre. Raises :class:`InputError` naming ``source`` when the point
    lies outside the volume."""
    point = np.asarray(point_lps, float)
    centre = np.asarray(image.TransformPhysicalPointToContinuousIndex(point.tolist()))
    size = np.asarray(image.GetSize())
    if np.any(centre < -0.5) or np.any(centre > size - 0.5):
        raise InputError(source, f"the point {np.round(point, 2).tolist()} (LPS mm) lies outside the volume")
    spacing = np.asarray(image.GetSpacing())
    reach = np.ceil(radius_mm / spacing).astype(int)
    lo = np.maximum(np.floor(centre).astype(int) - reach, 0)
    hi = np.minimum(np.ceil(centre).astype(int) + reach, size - 1)
    axes = [np.arange(a, b + 1) for a, b in zip(lo, hi)]
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    matrix = np.reshape(image.GetDirection(), (3, 3)) * spacing
    distance = np.linalg.norm((ijk - centre) @ matrix.T, axis=1)
    inside = ijk[distance <= radius_mm]
    if not len(inside):
        inside = ijk[[int(np.argmin(distance))]]
    values = sitk.GetArrayViewFromImage(image)
    return float(values[inside[:, 2], inside[:, 1], inside[:, 0]].mean())


def initial_class(enhancement: float) -> str:
    """BI-RADS initial phase of the early relative enhancement (%): slow, medium or fast."""
    return "slow" if enhancement < INITIAL_LIMITS[0] else ("fast" if enhancement > INITIAL_LIMITS[1] else "medium")


def delayed_class(early: float, late: float) -> str | None:
    """BI-RADS delayed phase from the early and late relative enhancement (%): persistent, plateau or washout;
    None where the early phase does not enhance."""
    if early <= 0:
        return None
    change = 100.0 * (late - early) / early
    return "persistent" if change > DELAYED_LIMIT else ("washout" if change < -DELAYED_LIMIT else "plateau")


@dataclass
class Curve:
    """The enhancement curve at one point: ``signal`` mean signal per phase (pre first), ``percent`` relative
    enhancement per post-contrast phase (%), the classes (``delayed`` None without a late phase)."""

    lps: tuple[float, float, float]
    signal: list[float]
    percent: list[float]
    initial: str
    delayed: str | None
    change_percent: float | None

    def as_dict(self) -> dict:
        return {"lps": [round(v, 3) for v in self.lps], "signal": [round(v, 3) for v in self.signal],
                "curve_percent": [round(v, 2) for v in self.percent], "initial": self.initial,
                "delayed": self.delayed, "delayed_change_percent": None if self.change_percent is None
                else round(self.change_percent, 2)}


def curve_at(phases: list[sitk.Image], sources: list[str], point_lps, early: int, late: int | None,
             radius_mm: float = 2.0) -> Curve:
    """The curve at ``point_lps`` of ``phases`` (pre-contrast first, then the post-contrast phases; ``early`` and
    ``late`` index the post-contrast ones)."""
    signal = [sphere_mean(image, point_lps, radius_mm, source) for image, source in zip(phases, sources)]
    pre = signal[0]
    if pre <= 0:
        raise InputError(sources[0], f"no pre-contrast signal at {np.round(point_lps, 2).tolist()} (LPS mm)")
    percent = [100.0 * (s - pre) / pre for s in signal[1:]]
    e = percent[early]
    delayed = None if late is None else delayed_class(e, percent[late])
    change = None if late is None or e <= 0 else 100.0 * (percent[late] - e) / e
    return Curve(tuple(float(v) for v in point_lps), signal, percent, initial_class(e), delayed, change)


# -------------------------------------------------------------------------------------------------- FTV
def neighbour_count(passing: np.ndarray) -> np.ndarray:
    """How many of each voxel's 26 neighbours are True (outside the array counts as False): a 3x3x3
    convolution (SimpleITK, zero padding) minus the voxel itself."""
    kernel = sitk.Image([3, 3, 3], sitk.sitkFloat32) + 1.0
    image = sitk.GetImageFromArray(passing.astype(np.float32))
    summed = sitk.Convolution(image, kernel, normalize=False,
                              boundaryCondition=sitk.ConvolutionImageFilter.ZERO_PAD,
                              outputRegionMode=sitk.ConvolutionImageFilter.SAME)
    return np.rint(sitk.GetArrayViewFromImage(summed)).astype(np.int16) - passing


def _box(region: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """The bounding box of ``region`` grown by ``margin`` voxels, inside the array."""
    hits = np.nonzero(region)
    return tuple(slice(max(int(h.min()) - margin, 0), min(int(h.max()) + margin + 1, n))
                 for h, n in zip(hits, region.shape))


@dataclass
class FTV:
    """FTV in mL, the persistent/plateau/washout parts, the label (uint8 (K, J, I): SER label inside the FTV)
    and the thresholds used (``background_level`` in signal units)."""

    ftv_ml: float
    ser_volumes_ml: dict[str, float]
    label: np.ndarray
    background_level: float
    region_voxels: int


def functional_volume(pre: np.ndarray, maps_pe: np.ndarray, ser: np.ndarray | None, region: np.ndarray,
                      voxel_ml: float, cfg: KineticsConfig, source: str) -> FTV:
    """FTV of ``region`` (bool (K, J, I)) from the pre-contrast signal, the PE map and the SER map (None: no late
    phase, the FTV is not split). Raises :class:`InputError` naming ``source`` for an empty region."""
    if not region.any():
        raise InputError(source, "the region holds no voxel of the image")
    box = _box(region)
    pre_b, pe_b, region_b = pre[box], maps_pe[box], region[box]
    level = background_level(pre_b, region_b, cfg.background)
    passing = (pe_b >= cfg.pe_threshold) & (pre_b >= level) & (pre_b > 0)
    kept = passing & (neighbour_count(passing) >= cfg.min_neighbours) & region_b
    label = np.zeros(region.shape, np.uint8)
    if ser is not None:
        label[box] = np.where(kept, ser_labels(ser[box], kept), 0)
        volumes = {name: round(float((label[box] == k).sum() * voxel_ml), 4) for k, name in SER_LABELS.items()}
    else:
        label[box] = kept
        volumes = {name: None for name in SER_LABELS.values()}
    return FTV(round(float(kept.sum() * voxel_ml), 4), volumes, label, level, int(region.sum()))


def voxel_ml(image: sitk.Image) -> float:
    """Volume of one voxel of ``image`` in mL."""
    return float(np.prod(image.GetSpacing())) / 1000.0


def box_region(grid: sitk.Image, corner_a, corner_b, source: str) -> np.ndarray:
    """bool (K, J, I) of ``grid``: voxels whose centres lie in the axis-aligned LPS box of two corners (mm).
    Raises :class:`InputError` when the box lies outside the volume or holds no voxel centre."""
    a, b = np.asarray(corner_a, float), np.asarray(corner_b, float)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    corners = [grid.TransformPhysicalPointToContinuousIndex([float(v) for v in c])
               for c in itertools.product(*zip(lo, hi))]
    size = np.asarray(grid.GetSize())
    start = np.maximum(np.floor(np.min(corners, axis=0)).astype(int), 0)
    stop = np.minimum(np.ceil(np.max(corners, axis=0)).astype(int) + 1, size)
    region = np.zeros(grid.GetSize()[::-1], bool)
    if np.any(stop <= start):
        raise InputError(source, f"the box {lo.round(2).tolist()}..{hi.round(2).tolist()} (LPS mm) lies outside "
                         "the volume")
    axes = [np.arange(s, e) for s, e in zip(start, stop)]
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    matrix = np.reshape(grid.GetDirection(), (3, 3)) * np.asarray(grid.GetSpacing())
    lps = ijk @ matrix.T + np.asarray(grid.GetOrigin())
    inside = np.all((lps >= lo - 1e-6) & (lps <= hi + 1e-6), axis=-1)  # (I, J, K) of the sub-box
    region[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]] = inside.transpose(2, 1, 0)
    if not region.any():
        raise InputError(source, f"the box {lo.round(2).tolist()}..{hi.round(2).tolist()} (LPS mm) holds no "
                         "voxel centre of the volume")
    return region
