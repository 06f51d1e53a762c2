"""The preprocessed cohort cache: one memory-mappable uint8 ``.npy`` per case plus a commit marker.

Layout of ``CACHE_DIR``::

    cache.json            format, PreprocessConfig JSON and the stored dtype; a cache holds one config
    manifest.csv          the cohort (splits assigned), case_dir relative to CACHE_DIR
    entries/<id>.npy      uint8 (C, I, J, K), value = round(255 * preprocessed intensity in [0, 1])
    entries/<id>.json     commit marker, written last: label, shape, config hash, and the study's geometry
                          (:class:`~BreastCMSLLib.network.domain.StudyGeometry`: the training-domain envelope's input)
    failures.json         cases that failed in the last run, with their reasons

Both entry files are written to a temporary name and moved into place with ``os.replace``; the marker
goes last, so an entry is trusted only when its marker exists, names the cache's config and matches
the ``.npy`` header. A killed run therefore leaves at worst an orphan ``.npy`` that is redone.
Why uint8: see Training/README.md (half the bytes of float16 per volume at the paper's size, 57 MB
instead of 115 MB, and a quantization step of 1/255 of the clipped range, below the images' noise).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from BreastCMSLLib.atomic import atomic_write, atomic_write_text
from BreastCMSLLib.cohort.manifest import Case, read_manifest, write_manifest
from BreastCMSLLib.config import PreprocessConfig, from_dict
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.domain import StudyGeometry

FORMAT = "breastcmsl-cache"
DTYPE = np.uint8
SCALE = 255.0  # stored value = round(SCALE * intensity)


def config_hash(cfg: PreprocessConfig) -> str:
    """Short hash of a PreprocessConfig's canonical JSON."""
    return hashlib.sha256(config_json(cfg).encode()).hexdigest()[:16]


def config_json(cfg: PreprocessConfig) -> str:
    """Canonical JSON of a PreprocessConfig."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def quantize(array: np.ndarray) -> np.ndarray:
    """float intensities in [0, 1] -> the stored uint8 values."""
    return np.clip(np.rint(np.asarray(array, dtype=np.float32) * SCALE), 0, SCALE).astype(DTYPE)


@dataclass
class Cache:
    """An opened cache folder with its preprocessing config and cohort."""

    root: Path
    preprocess: PreprocessConfig
    cases: list[Case]

    def entry_path(self, subject_id: str) -> Path:
        return self.root / "entries" / f"{subject_id}.npy"

    def marker_path(self, subject_id: str) -> Path:
        return self.root / "entries" / f"{subject_id}.json"

    def is_done(self, subject_id: str) -> bool:
        """True when the entry's marker exists, names this config and matches the .npy header."""
        try:
            marker = json.loads(self.marker_path(subject_id).read_text())
            arr = np.load(self.entry_path(subject_id), mmap_mode="r")
        except (OSError, ValueError):
            return False
        return (marker.get("config_hash") == config_hash(self.preprocess)
                and list(arr.shape) == marker.get("shape") and arr.dtype == DTYPE)

    def write_entry(self, case: Case, array: np.ndarray, study: StudyGeometry | None = None) -> None:
        """Store one preprocessed case (float (C, I, J, K) in [0, 1], or already quantized uint8) and its
        ``study`` geometry atomically, marker last."""
        data = array if array.dtype == DTYPE else quantize(array)

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, data)

        atomic_write(self.entry_path(case.subject_id), save)
        marker = {"subject_id": case.subject_id, "label": case.label, "shape": list(data.shape),
                  "dtype": "uint8", "config_hash": config_hash(self.preprocess),
                  "study": None if study is None else study.to_dict()}
        atomic_write_text(self.marker_path(case.subject_id), json.dumps(marker))

    def study(self, subject_id: str) -> StudyGeometry | None:
        """The study geometry a finished entry was stored with (None: a cache written without it)."""
        marker = json.loads(self.marker_path(subject_id).read_text())
        return None if marker.get("study") is None else StudyGeometry.from_dict(marker["study"])

    def load(self, subject_id: str) -> np.ndarray:
        """The stored uint8 (C, I, J, K) array of one case, memory-mapped."""
        return np.load(self.entry_path(subject_id), mmap_mode="r")

    def split(self, name: str) -> list[Case]:
        """The finished cases of one split (train, val, test)."""
        return [c for c in self.cases if c.split == name and self.is_done(c.subject_id)]


def create_cache(root: str | Path, cfg: PreprocessConfig, cases: list[Case]) -> Cache:
    """Create (or reopen) a cache for ``cfg``; refuse a folder that holds another config."""
    root = Path(root)
    header = root / "cache.json"
    if header.is_file():
        existing = open_cache(root).preprocess
        if config_json(existing) != config_json(cfg):
            raise InputError(header, "this cache holds another preprocessing config "
                             f"({config_json(existing)}); use a new --cache folder for {config_json(cfg)}")
    else:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(header, json.dumps({"format": FORMAT, "version": 1, "dtype": "uint8",
                                              "scale": SCALE, "preprocess": json.loads(config_json(cfg))},
                                             indent=1))
    (root / "entries").mkdir(exist_ok=True)
    write_manifest(root / "manifest.csv", cases)
    return Cache(root, cfg, cases)


def open_cache(root: str | Path) -> Cache:
    """Open an existing cache folder."""
    root = Path(root)
    header = root / "cache.json"
    if not header.is_file():
        raise InputError(root, "not a BreastCMSL cache (no cache.json); run `breastcmsl-train preprocess`")
    try:
        meta = json.loads(header.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError("format is not breastcmsl-cache")
        cfg = from_dict(PreprocessConfig, meta["preprocess"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(header, f"unreadable cache header ({err})") from None
    cases = read_manifest(root / "manifest.csv") if (root / "manifest.csv").is_file() else []
    return Cache(root, cfg, cases)


def _preprocess_one(root: str, case: Case, cfg_json: str, threads: int) -> tuple[str, str | None, float]:
    """Worker: preprocess one case into the cache; returns (subject_id, error or None, seconds)."""
    import SimpleITK as sitk

    from BreastCMSLLib.pipeline.preprocess import load_case, prepare

    if threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    t0 = time.perf_counter()
    cfg = from_dict(PreprocessConfig, json.loads(cfg_json))
    cache = Cache(Path(root), cfg, [])
    try:
        prep = prepare(load_case(case.case_dir), cfg, "this cache (--phases)")
        cache.write_entry(case, prep.array, prep.study)
    except InputError as err:
        return case.subject_id, str(err), time.perf_counter() - t0
    except Exception as err:  # a broken case must not stop the cohort: report it with its reason
        return case.subject_id, f"{case.case_dir}: {type(err).__name__}: {err}", time.perf_counter() - t0
    return case.subject_id, None, time.perf_counter() - t0


@dataclass
class PreprocessReport:
    done: list[str]
    skipped: list[str]
    failed: dict[str, str]
    seconds: float


def preprocess_cohort(manifest: str | Path, cache_dir: str | Path, cfg: PreprocessConfig,
                      workers: int = 1, seed: int = 0, progress: bool = True) -> PreprocessReport:
    """Preprocess every case of ``manifest`` not yet in the cache, ``workers`` processes in parallel."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    cache = create_cache(cache_dir, cfg, read_manifest(manifest, seed=seed))
    todo = [c for c in cache.cases if not cache.is_done(c.subject_id)]
    skipped = [c.subject_id for c in cache.cases if c not in todo]
    done: list[str] = []
    failed: dict[str, str] = {}
    bar = tqdm(total=len(todo), desc="preprocess", unit="case", disable=not progress, mininterval=2.0)
    args = [(str(cache.root), c, config_json(cfg), 1 if workers > 1 else 0) for c in todo]
    if workers > 1 and len(todo) > 1:
        _run_pool(args, workers, done, failed, bar)
    else:
        _collect((_preprocess_one(*a) for a in args), done, failed, bar)
    bar.close()
    atomic_write_text(cache.root / "failures.json", json.dumps(failed, indent=1, sort_keys=True))
    return PreprocessReport(done, skipped, failed, time.perf_counter() - t0)


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _run_pool(args: list[tuple], workers: int, done: list[str], failed: dict[str, str], bar) -> None:
    """Run ``args`` in a pool of ``workers`` processes. A worker that dies (a crash in native code, the
    out-of-memory killer) breaks the whole pool: the cases it may have held, the first still unfinished
    ones (the pool hands cases out in order, at most two per worker ahead), are then run one process
    each, where a death fails only that case; the others go on in a new pool."""
    pending = list(args)
    while pending:
        finished: set[str] = set()
        try:
            with _pool(workers) as pool:
                futures = {pool.submit(_preprocess_one, *a): a[1].subject_id for a in pending}
                for future in as_completed(futures):
                    _collect([future.result()], done, failed, bar)
                    finished.add(futures[future])
            pending = []
        except BrokenProcessPool:
            left = [a for a in pending if a[1].subject_id not in finished]
            suspects, pending = left[:2 * workers], left[2 * workers:]
            _collect((_alone(a) for a in suspects), done, failed, bar)


def _alone(args: tuple) -> tuple[str, str | None, float]:
    """One case in a process of its own; its death is that case's failure."""
    try:
        with _pool(1) as pool:
            return pool.submit(_preprocess_one, *args).result()
    except BrokenProcessPool:
        case = args[1]
        return case.subject_id, f"{case.case_dir}: the preprocessing process died (a crash or out of memory)", 0.0


def _collect(results, done: list[str], failed: dict[str, str], bar) -> None:
    for sid, error, _ in results:
        if error is None:
            done.append(sid)
        else:
            failed[sid] = error
            bar.write(f"FAILED {error}")
        bar.update(1)


def synthetic_cache(root: str | Path, n: int, shape: tuple[int, int, int, int], seed: int = 0,
                    cfg: PreprocessConfig | None = None) -> Cache:
    """A cache of random volumes (a bright blob in the malignant half) for benchmarks of the data path.

    Not a phantom: only the array sizes and the labels are meaningful. Splits: 90/5/5 % (at least one
    val and one test case).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    cfg = cfg or PreprocessConfig(input_size=tuple(shape[1:]))
    cases = []
    held = max(1, round(0.05 * n))  # val and test cases each
    for n_case in range(n):
        split = "train" if n_case < n - 2 * held else ("val" if n_case < n - held else "test")
        cases.append(Case(f"syn{n_case:04d}", n_case % 2, split, root / "no_case_folder", 4 if n_case % 2 else 3))
    cache = create_cache(root, cfg, cases)
    grid = [np.linspace(-1, 1, s).astype(np.float32) for s in shape[1:]]
    for case in cache.cases:
        if cache.is_done(case.subject_id):
            continue
        c = rng.uniform(-0.5, 0.5, 3)
        blob = np.exp(-((grid[0] - c[0])[:, None, None] ** 2 + (grid[1] - c[1])[None, :, None] ** 2
                        + (grid[2] - c[2])[None, None, :] ** 2) / 0.05)
        vol = rng.integers(0, 77, shape, dtype=DTYPE)
        vol += (blob * (153 if case.label else 77)).astype(DTYPE)[None]
        cache.write_entry(case, vol)
    return cache
