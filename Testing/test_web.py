"""The browser face end to end: ``breastcmsl-web`` serving phantom cases, driven in Debian's chromium by Playwright.

Each test opens real tabs (each its own server process, scene and session) and checks what the page shows
against the command line (``breastcmsl analyze``) and against pixels. Screenshots are kept in the artifacts
folder printed at the start (``BREASTCMSL_ARTIFACTS``, default ``test-artifacts/web``).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from BreastCMSLLib.network.calibration import Calibration, OperatingPoint, ScoreMetrics, operating_line
from BreastCMSLLib.network.modelfile import load_model, save_model
from Testing.conftest import ROOT, run_cli
from Testing.dicomsynth import write_study

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SHAPE, SPACING = ("96", "64", "40"), ("3.5", "3.5", "3.5")
POSTS = [f"post_{k}" for k in range(1, 7)]
SWAPPED = ["400", "300", "500", "600", "700", "800"]  # the siemens study's post-contrast series, first two swapped
ARTIFACTS = Path(os.environ.get("BREASTCMSL_ARTIFACTS", ROOT / "test-artifacts" / "web"))
TIMEOUT_MS = 90_000
CALIBRATION = Calibration(temperature=2.0, fitted=True, n_val=40, n_val_malignant=20,
                          before=ScoreMetrics(0.2, 0.4, 0.2, 0.9), after=ScoreMetrics(0.04, 0.1, 0.15, 0.45),
                          operating_point=OperatingPoint("sensitivity=0.9", 0.3, 0.9, (0.75, 1.0), 0.7, (0.5, 0.85)))


# ---- data, CLI reference results, server, browser


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict:
    """--data with two phantom cases, a truncated one and a symlink out of the root; --models with a tiny model;
    the CLI's result.json for each phantom."""
    base = tmp_path_factory.mktemp("web")
    data, models, outside = base / "data", base / "models", base / "outside"
    for folder in (data, models, outside):
        folder.mkdir()
    for name, seed, label in (("phantom1", "1", "--malignant"), ("phantom2", "2", "--benign")):
        done = run_cli("synth", "--out", data / name, "--seed", seed, label, "--shape", *SHAPE, "--spacing", *SPACING)
        assert done.returncode == 0, done.stderr
    shutil.copytree(data / "phantom1", data / "truncated")
    broken = data / "truncated" / "post_3.nrrd"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    shutil.copytree(data / "phantom1", outside / "secret_case")
    (data / "escape").symlink_to(outside / "secret_case")
    done = run_cli("init-model", "--out", models / "tiny.safetensors", "--input-size", "64", "48", "32",
                   "--width-factor", "0.125")
    assert done.returncode == 0, done.stderr
    (models / "elsewhere.safetensors").symlink_to(models / "tiny.safetensors")  # resolves inside: listed
    loaded = load_model(models / "tiny.safetensors")  # the same weights with a temperature and an operating point
    save_model(models / "tiny_calibrated.safetensors", loaded.model, loaded.config, loaded.provenance, CALIBRATION)
    images = {n: sitk.ReadImage(str(data / "phantom1" / f"{n}.nrrd")) for n in ("t1", "pre", *POSTS)}
    write_study(data / "study", "siemens", images["t1"], images["pre"], [images[p] for p in POSTS])
    (base / "swap.json").write_text(json.dumps({"post": SWAPPED}))
    cli = {}
    for name, inputs in (("phantom1", [data / "phantom1"]), ("phantom2", [data / "phantom2"]),
                         ("study", ["--dicom", data / "study"]),
                         ("swapped", ["--dicom", data / "study", "--roles", base / "swap.json"]),
                         ("calibrated", [data / "phantom1"])):
        model = models / ("tiny_calibrated.safetensors" if name == "calibrated" else "tiny.safetensors")
        done = run_cli("analyze", *inputs, "--model", model, "--out", base / f"cli_{name}")
        assert done.returncode == 0, done.stderr
        cli[name] = json.loads((base / f"cli_{name}" / "result.json").read_text())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nweb screenshots: {ARTIFACTS}")
    return {"data": data, "models": models, "cli": cli}


def start_server(roots: dict, *extra: str) -> tuple[subprocess.Popen, str]:
    """``breastcmsl-web`` on a free port; returns the process and the address it printed."""
    env = {**os.environ, "VTK_DEFAULT_OPENGL_WINDOW": "vtkEGLRenderWindow"}
    process = subprocess.Popen([sys.executable, "-m", "BreastCMSLWeb.app", "--data", str(roots["data"]), "--models",
                                str(roots["models"]), "--port", "0", "--device", "cpu", *extra],
                               stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    line = process.stdout.readline()
    match = re.search(r"serving (http://\S+)", line)
    assert match, f"no address printed: {line!r}"
    return process, match.group(1)


@pytest.fixture(scope="module")
def front(roots):
    """The module's server process and its address."""
    process, url = start_server(roots)
    yield process, url.rstrip("/")
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(front) -> str:
    return front[1]


def descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (tab processes and their analysis workers), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is missing: run scripts/browser.sh (scripts/test.sh does)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# ---- page helpers


def view_pixels(page, element_id: str = "view-axial") -> np.ndarray:
    """The element's pixels as an (H, W, 3) uint8 array."""
    return np.asarray(Image.open(io.BytesIO(page.locator(f"#{element_id}").screenshot())).convert("RGB"))


def coloured(pixels: np.ndarray) -> float:
    """Fraction of clearly non-grey pixels (the heat overlay and the outline are coloured, the MRI is grey)."""
    p = pixels.astype(int)
    return float(((p.max(axis=2) - p.min(axis=2)) > 40).mean())


def shows_greyscale_image(pixels: np.ndarray) -> bool:
    """A plausible MRI frame: a good part lit, nearly all of it grey (garbage frames are coloured noise)."""
    lit = pixels.max(axis=2) > 30
    return lit.mean() > 0.10 and coloured(pixels) < 0.01


def shows_case(page, seconds: float = 40.0) -> bool:
    """Wait until the axial view shows a plausible frame of the case."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if shows_greyscale_image(view_pixels(page)):
            return True
        time.sleep(0.5)
    page.screenshot(path=str(ARTIFACTS / f"bad_frame_{int(time.time())}.png"))
    return False


def open_tab(browser, url: str, case: str | None = "phantom1", token: str | None = None):
    """A new tab on ``url``; waits until the axial view shows the case (reopened once on a bad first frame)."""
    page = browser.new_page(viewport={"width": 1400, "height": 820})
    page.set_default_timeout(TIMEOUT_MS)
    query = urllib.parse.urlencode({k: v for k, v in (("case", case), ("token", token)) if v})
    for _ in range(2):
        page.goto(f"{url}/?{query}")
        page.wait_for_selector("#case-select")
        if case is None or shows_case(page):
            return page
    raise AssertionError("the axial view never showed the case")


def analyze(page) -> float:
    """Click Analyze, wait for the probability, return it."""
    page.click("#analyze")
    page.wait_for_function("document.querySelector('#probability')?.textContent.trim().length > 0")
    return float(page.inner_text("#probability"))


def settle(page, seconds: float = 1.5) -> None:
    """Let the streamed views catch up with the last action."""
    page.wait_for_timeout(int(seconds * 1000))


def changed(page, element_id: str, before: np.ndarray, seconds: float = 15.0) -> np.ndarray:
    """The element's pixels once they differ from ``before`` (mean absolute difference above 1), or as they are
    after ``seconds`` (a loaded machine streams a new frame late)."""
    deadline = time.monotonic() + seconds
    while True:
        pixels = view_pixels(page, element_id)
        if np.abs(pixels.astype(int) - before).mean() > 1.0 or time.monotonic() > deadline:
            return pixels
        time.sleep(0.5)


def volume_box(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the grey lit pixels: the volume when its window makes every voxel above the
    minimum bright (the views' background is black; overlays, markers and their labels are coloured)."""
    p = pixels.astype(int)
    rows, cols = np.nonzero((p.max(axis=2) > 60) & (p.max(axis=2) - p.min(axis=2) < 40))
    return rows.min(), rows.max(), cols.min(), cols.max()


def assert_framed(page, element_id: str, aspect: float) -> None:
    """The whole reference volume in the view, centred: its box on screen has the volume's aspect (width /
    height, so nothing of it is cut off), fills the view along one axis (fitted) and is centred within 2 %."""
    pixels = view_pixels(page, element_id)
    Image.fromarray(pixels).save(ARTIFACTS / f"framed_{element_id}.png")
    h, w = pixels.shape[:2]
    top, bottom, left, right = volume_box(pixels)
    height, width = bottom - top + 1, right - left + 1
    assert width / height == pytest.approx(aspect, rel=0.04), (element_id, (top, bottom, left, right), (h, w))
    assert max(width / w, height / h) > 0.97, (element_id, (top, bottom, left, right), (h, w))
    assert abs((top + bottom) / 2 - (h - 1) / 2) <= 0.02 * h, (element_id, (top, bottom), h)
    assert abs((left + right) / 2 - (w - 1) / 2) <= 0.02 * w, (element_id, (left, right), w)


# ---- tests


def test_analyze_in_page_equals_cli_and_overlay_shows(server, browser, roots):
    page = open_tab(browser, server)
    assert "not for diagnosis" in page.inner_text("#disclaimer")
    assert "untrained" in page.inner_text("#model-select")
    probability = analyze(page)
    assert re.fullmatch(r"\d\.\d{3}", page.inner_text("#probability"))
    assert probability == pytest.approx(roots["cli"]["phantom1"]["probability"], abs=1e-3)
    # the panel layer's text, as the Slicer module shows it
    assert page.inner_text("#prediction") == f"{roots['cli']['phantom1']['prediction']} (breast mask from the " \
        "non-fat-suppressed T1)"
    assert page.inner_text("#calibration") == "uncalibrated"  # the tiny model holds no temperature
    assert page.inner_text("#operating-line") == roots["cli"]["phantom1"]["operating_line"]
    assert page.inner_text("#operating-line").startswith("uncalibrated")
    assert page.locator("#map-select option").all_inner_texts() == ["COAM", "CAM", "fine"]
    assert page.input_value("#map-select") == "coam"
    settle(page)
    with_overlay = view_pixels(page)
    page.uncheck("#show-overlay")
    settle(page)
    without = view_pixels(page)
    Image.fromarray(with_overlay).save(ARTIFACTS / "axial_overlay_on.png")
    Image.fromarray(without).save(ARTIFACTS / "axial_overlay_off.png")
    assert coloured(with_overlay) > 0.02, "no heat overlay in the axial view"
    assert coloured(without) < 0.01  # the peaks' markers and their labels only
    assert shows_greyscale_image(without)
    page.check("#show-overlay")
    page.select_option("#map-select", "fine")
    settle(page)
    page.screenshot(path=str(ARTIFACTS / "web.png"))  # the page with the fine map shown
    fine = view_pixels(page)
    Image.fromarray(fine).save(ARTIFACTS / "axial_fine.png")
    assert coloured(fine) > 0.02 and np.abs(fine.astype(int) - with_overlay).mean() > 1.0, "fine looks like COAM"
    assert "fine" in page.inner_text("#view-axial")
    page.select_option("#map-select", "cam")
    settle(page)
    cam = view_pixels(page)
    assert coloured(cam) > 0.02 and np.abs(cam.astype(int) - with_overlay).mean() > 1.0, "CAM looks like COAM"
    box = page.locator("#view-axial").bounding_box()
    middle = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.move(*middle)
    for _ in range(4):
        page.mouse.wheel(0, 120)  # scroll: another slice
    scrolled = changed(page, "view-axial", cam)
    assert np.abs(scrolled.astype(int) - cam).mean() > 1.0, "the scroll wheel did not move the slice"
    page.fill("#window", page.get_attribute("#window", "max"))  # the widest window: a flatter image
    settle(page)
    levelled = view_pixels(page)
    Image.fromarray(levelled).save(ARTIFACTS / "axial_window_level.png")
    assert np.abs(levelled.astype(int) - scrolled).mean() > 1.0, "the window slider did not change the image"
    assert (page.input_value("#compare-left"), page.input_value("#compare-right")) == ("coam", "fine")
    page.click("#compare")
    settle(page, 2.5)
    page.screenshot(path=str(ARTIFACTS / "web-compare.png"))  # COAM | fine
    coam_side, fine_side = view_pixels(page, "view-left"), view_pixels(page, "view-axial")
    assert coloured(coam_side) > 0.02 and coloured(fine_side) > 0.02
    assert "COAM" in page.inner_text("#view-left") and "fine" in page.inner_text("#view-axial")
    page.select_option("#compare-left", "cam")  # the paper's pair, CAM | COAM, stays reachable
    page.select_option("#compare-right", "coam")
    settle(page, 2.0)
    page.screenshot(path=str(ARTIFACTS / "compare.png"))
    cam_side, coam_side = view_pixels(page, "view-left"), view_pixels(page, "view-axial")
    assert coloured(cam_side) > 0.02 and coloured(coam_side) > 0.02
    assert np.abs(coam_side.astype(int) - fine_side).mean() > 1.0, "the right view still shows the fine map"
    box = page.locator("#view-axial").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(3):
        page.mouse.wheel(0, 120)  # scroll the COAM side: the CAM side follows
    assert np.abs(changed(page, "view-axial", coam_side).astype(int) - coam_side).mean() > 1.0
    assert np.abs(changed(page, "view-left", cam_side).astype(int) - cam_side).mean() > 1.0, "CAM did not move in step"
    page.close()


def test_views_are_framed_on_the_volume_at_load_after_analyze_and_on_reset(server, browser):
    """Pixels: the 96 x 64 x 40 voxel phantom (3.5 mm, isotropic) fills each view whole and centred, at load,
    once the result arrives (the views move to the peak's slices, not off the volume), after Jump to peak and
    Reset views, and in the compare view; each peak's marker is drawn on every view."""
    page = open_tab(browser, server)
    page.add_style_tag(content="[id^=view-] > div:first-child { visibility: hidden }")  # the views' name tags
    page.fill("#window", "1")  # every voxel above the minimum bright: the volume's extent on screen
    page.fill("#level", page.get_attribute("#level", "min"))
    settle(page)
    aspects = {"view-axial": 96 / 64, "view-coronal": 96 / 40, "view-sagittal": 64 / 40}
    for element_id, aspect in aspects.items():
        assert_framed(page, element_id, aspect)
    analyze(page)
    page.uncheck("#show-overlay")
    settle(page)
    for element_id, aspect in aspects.items():
        assert_framed(page, element_id, aspect)
        markers = view_pixels(page, element_id).astype(int)
        assert ((markers[..., 0] > 180) & (markers[..., 1] < 150)).sum() > 20, f"no peak marker in {element_id}"
    page.click("#jump-peak")  # the peak to the views' centres: the volume moves
    settle(page)
    page.click("#reset-views")
    settle(page)
    for element_id, aspect in aspects.items():
        assert_framed(page, element_id, aspect)
    page.click("#compare")
    settle(page, 2.5)
    for element_id in ("view-left", "view-axial"):
        assert_framed(page, element_id, aspects["view-axial"])
    page.close()


def test_calibrated_model_shows_its_probability_and_operating_line(server, browser, roots):
    page = open_tab(browser, server)
    page.select_option("#model-select", "tiny_calibrated.safetensors")
    expected = roots["cli"]["calibrated"]
    assert analyze(page) == pytest.approx(expected["probability"], abs=1e-3)
    uncalibrated = roots["cli"]["phantom1"]["probability"]  # the same weights without a temperature
    assert expected["probability_uncalibrated"] == pytest.approx(uncalibrated, abs=1e-6)
    z = np.log(uncalibrated / (1 - uncalibrated))
    assert expected["probability"] == pytest.approx(1 / (1 + np.exp(-z / 2.0)), abs=1e-5)
    assert page.inner_text("#calibration") == f"calibrated (uncalibrated {expected['probability_uncalibrated']:.3f})"
    assert page.inner_text("#operating-line") == operating_line(CALIBRATION) == (
        "at this model's threshold 0.3: sensitivity 0.90, specificity 0.70 on 40 validation cases")
    page.close()


def test_click_places_centre_and_table_distances(server, browser, roots):
    page = open_tab(browser, server)
    analyze(page)
    settle(page)
    page.click("#jump-peak")  # centres the axial view on the COAM peak
    settle(page)
    box = page.locator("#view-axial").bounding_box()
    dx, dy = 40, -30
    page.click("#place-centre")
    page.mouse.click(box["x"] + box["width"] / 2 + dx, box["y"] + box["height"] / 2 + dy)
    page.wait_for_function("document.querySelector('#centre')?.textContent.includes(',')")
    page.click("#evaluate")
    page.wait_for_selector("#evaluation-table tr:nth-child(2)")
    settle(page)
    page.screenshot(path=str(ARTIFACTS / "centre_evaluated.png"))
    cells = page.locator("#evaluation-table tr:nth-child(2) td").all_inner_texts()
    # by hand: the view fits the 96 x 64 voxel (3.5 mm) axial extent; screen right = patient left (-x RAS),
    # screen down = posterior (-y RAS); the view is centred on the COAM peak, in its axial slice
    mm_per_pixel = max(96 * 3.5 / box["width"], 64 * 3.5 / box["height"])
    cli = roots["cli"]["phantom1"]
    coam = np.array([-cli["coam_peak_lps"][0], -cli["coam_peak_lps"][1], cli["coam_peak_lps"][2]])
    cam = np.array([-cli["cam_peak_lps"][0], -cli["cam_peak_lps"][1], cli["cam_peak_lps"][2]])
    centre = coam + np.array([-dx * mm_per_pixel, -dy * mm_per_pixel, 0.0])
    shown = np.array([float(v) for v in page.inner_text("#centre").split(":")[1].split(",")])
    assert np.abs(shown - centre).max() <= 3.5, (shown, centre)
    assert "phantom1" in cells[0]
    assert float(cells[1]) == pytest.approx(cli["probability"], abs=1e-3)
    assert float(cells[2]) == pytest.approx(np.linalg.norm(centre - coam), abs=3.5)
    assert float(cells[3]) == pytest.approx(np.linalg.norm(centre - cam), abs=3.5)
    fine = np.array([-cli["fine_peak_lps"][0], -cli["fine_peak_lps"][1], cli["fine_peak_lps"][2]])
    assert page.locator("#evaluation-table th").all_inner_texts() == [
        "case", "probability", "COAM mm", "CAM mm", "fine mm", "initial rise", "delayed phase", "PE %", "FTV mL"]
    assert page.inner_text("#error") == "" and cells[5:] == ["–"] * 4  # a centre outside the volume: no kinetics
    assert float(cells[4]) == pytest.approx(np.linalg.norm(centre - fine), abs=3.5)
    assert "fine" in page.inner_text("#evaluation-summary")
    assert "n = 1" in page.inner_text("#evaluation-summary")
    with page.expect_download() as download:
        page.click("#download-csv")
    csv = Path(download.value.path()).read_text()
    assert "COAM mm" in csv and f"{float(cells[2]):.2f}"[:4] in csv
    header, values = (line.replace('"', "").split(",") for line in csv.splitlines()[:2])
    fine_column = header.index("fine mm")
    assert float(values[fine_column]) == pytest.approx(float(cells[4]), abs=0.05)
    page.close()


def test_dicom_study_role_table_and_overrides(server, browser, roots):
    page = open_tab(browser, server, "study")
    rows = page.locator("#role-table tr").all_inner_texts()
    assert [row.split()[:2] for row in rows[1:]] == [["t1", "100"], ["pre", "200"],
                                                    *[[p, f"{k + 2}00"] for k, p in enumerate(POSTS, 1)]]
    assert analyze(page) == pytest.approx(roots["cli"]["study"]["probability"], abs=1e-3)
    page.fill("#role-post", " ".join(SWAPPED))
    page.click("#apply-roles")
    page.wait_for_function("document.querySelector('#role-table tr:nth-child(4)')?.textContent.includes('400')")
    assert page.inner_text("#probability") == ""  # the earlier result is not shown for the new inputs
    swapped = analyze(page)
    assert swapped == pytest.approx(roots["cli"]["swapped"]["probability"], abs=1e-3)
    assert swapped != pytest.approx(roots["cli"]["study"]["probability"], abs=1e-4)
    page.fill("#role-sub", "400 500")  # subtractions with pre/post: refused in the CLI's words
    page.click("#apply-roles")
    page.wait_for_function("document.querySelector('#error')?.textContent.includes('not both')")
    assert page.inner_text("#error") == "roles: give either sub or pre/post roles, not both"
    page.fill("#role-sub", "")
    page.fill("#role-pre", "999")
    page.click("#apply-roles")
    page.wait_for_function("document.querySelector('#error')?.textContent.includes('999')")
    error = page.inner_text("#error")
    assert "study" in error and "\n" not in error.strip() and "/tmp" not in error
    assert page.locator("#analyze").is_disabled()
    page.screenshot(path=str(ARTIFACTS / "dicom_roles_error.png"))
    page.close()


def test_cancel_leaves_no_result(server, browser):
    page = open_tab(browser, server)
    page.click("#analyze")
    page.wait_for_function("document.querySelector('#cancel')?.disabled === false")
    page.screenshot(path=str(ARTIFACTS / "analyzing.png"))
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#stage')?.textContent.includes('cancelled')")
    page.wait_for_timeout(6000)  # longer than the analysis takes: nothing arrives late
    assert page.inner_text("#probability") == ""
    assert page.inner_text("#error") == ""
    assert coloured(view_pixels(page)) < 0.005
    assert analyze(page) > 0.0  # and the next analysis works
    page.close()


def test_truncated_file_shows_error_and_next_analysis_works(server, browser, roots):
    page = open_tab(browser, server, case=None)
    page.select_option("#case-select", "truncated")
    page.wait_for_function("document.querySelector('#error')?.textContent.length > 0")
    error = page.inner_text("#error")
    assert "post_3.nrrd" in error and "\n" not in error.strip() and "Traceback" not in error
    page.screenshot(path=str(ARTIFACTS / "truncated_error.png"))
    page.select_option("#case-select", "phantom1")
    page.wait_for_function("document.querySelector('#error')?.textContent.length === 0")
    assert analyze(page) == pytest.approx(roots["cli"]["phantom1"]["probability"], abs=1e-3)
    page.close()


def test_two_tabs_analyze_at_once(front, server, browser, roots):
    first, second = open_tab(browser, server, "phantom1"), open_tab(browser, server, "phantom2")
    first.click("#analyze")
    second.click("#analyze")
    for page, name in ((first, "phantom1"), (second, "phantom2")):
        page.wait_for_function("document.querySelector('#probability')?.textContent.trim().length > 0")
        assert float(page.inner_text("#probability")) == pytest.approx(roots["cli"][name]["probability"], abs=1e-3)
    assert first.inner_text("#probability") != second.inner_text("#probability")
    running = descendants(front[0].pid)
    assert len(running) >= 4, "expected two tab processes, each with its analysis worker"
    first.close()
    second.close()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in running) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [pid for pid in running if alive(pid)], "closed tabs left processes behind"


def test_paths_outside_the_roots_are_refused(server, browser):
    page = open_tab(browser, server, case=None)
    listed = page.locator("#case-select option").all_inner_texts()
    assert any("phantom1" in name for name in listed) and not any("escape" in name for name in listed)
    for case in ("../..", "escape", "%2e%2e%2f%2e%2e%2fetc"):
        page.goto(f"{server}/?case={case}")
        page.wait_for_function("document.querySelector('#error')?.textContent.includes('refused')")
        assert page.inner_text("#probability") == ""
    page.close()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{server}/s/not-a-tab/ws")
    assert refused.value.code == 404


def test_reload_opens_a_new_tab_on_the_same_case(server, browser):
    page = open_tab(browser, server)
    first = page.url
    page.reload()
    page.wait_for_url(re.compile(r".*/s/\w+/.*"))
    page.wait_for_function("document.querySelector('#case-select')?.value === 'phantom1'")
    assert page.url.split("/s/")[1].split("/")[0] != first.split("/s/")[1].split("/")[0]
    assert shows_case(page, 60.0)
    page.close()


def test_token_required_on_other_hosts(roots, browser):
    process, url = start_server(roots, "--host", "127.0.0.2")  # a loopback address, but not 127.0.0.1
    try:
        token = re.search(r"\?token=(\S+)", url)
        assert token, f"no token printed with {url}"
        bare = url.split("?")[0]
        for attempt in (bare, f"{bare}?token=wrong", f"{bare}s/x/"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(attempt)
            assert refused.value.code == 403
        request = urllib.request.Request(f"{bare}?token={token.group(1)}", method="GET")
        opener = urllib.request.build_opener(NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as redirected:
            opener.open(request)
        assert redirected.value.code == 302 and "breastcmsl_token=" in redirected.value.headers["Set-Cookie"]
        page = open_tab(browser, bare.rstrip("/"), token=token.group(1))
        assert "untrained" in page.inner_text("#model-select")  # assets and websocket passed with the cookie
        page.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_tab_limit(roots):
    process, url = start_server(roots, "--max-tabs", "1")
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with pytest.raises(urllib.error.HTTPError) as first:
            opener.open(url)
        assert first.value.code == 302  # a tab process started (no browser attaches to it here)
        with pytest.raises(urllib.error.HTTPError) as second:
            opener.open(url)
        assert second.value.code == 503 and b"all 1 tabs are in use" in second.value.read()
    finally:
        process.terminate()
        process.wait(timeout=30)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_kinetics_section_draws_the_curve_its_class_the_legend_and_the_ftv_of_a_box(server, browser, roots,
                                                                                     tmp_path):
    """The Kinetics section: the curve at the fine peak equals `breastcmsl kinetics --point` there (class in words,
    the drawn polyline an affine image of its values), a clicked point gives its own curve, the SER legend shows,
    and a box drawn on the axial view gives an FTV."""
    page = open_tab(browser, server)
    analyze(page)
    page.click("#kinetics summary")
    page.select_option("#kinetics-peak-map", "fine")
    page.click("#kinetics-peak")
    page.wait_for_function("document.querySelector('#kinetics-class')?.textContent.includes('initial rise')")
    peak = roots["cli"]["phantom1"]["fine_peak_lps"]
    done = run_cli("kinetics", roots["data"] / "phantom1", "--point", *map(str, peak), "--out", tmp_path / "k")
    assert done.returncode == 0, done.stderr
    point = json.loads((tmp_path / "k" / "kinetics.json").read_text())["point"]
    words = page.inner_text("#kinetics-class")
    assert words.startswith(f"{point['initial']} initial rise") and point["delayed"] in words
    assert page.inner_text("#kinetics-source") == "fine peak"
    xy = np.array([[float(v) for v in pair.split(",")]
                   for pair in page.get_attribute("#kinetics-chart polyline", "points").split()])
    assert len(xy) == len(point["curve_percent"]) == 6
    slope, offset = np.polyfit(point["curve_percent"], xy[:, 1], 1)  # y down: higher enhancement, smaller y
    assert slope < 0 and np.abs(slope * np.array(point["curve_percent"]) + offset - xy[:, 1]).max() < 0.2
    assert np.all(np.diff(xy[:, 0]) > 0)  # time runs left to right
    legend = page.inner_text("#kinetics-legend")
    assert all(name in legend for name in ("persistent", "plateau", "washout"))
    page.select_option("#map-select", "fine")
    page.click("#jump-peak")  # the views centred on the fine peak (near the phantom's lesion)
    settle(page)
    box = page.locator("#view-axial").bounding_box()
    page.click("#kinetics-point")
    page.mouse.click(box["x"] + box["width"] / 2 + 10, box["y"] + box["height"] / 2)
    page.wait_for_function("document.querySelector('#kinetics-source')?.textContent.startsWith('point')")
    assert "initial rise" in page.inner_text("#kinetics-class")
    page.click("#kinetics-box")
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # a box around the fine peak
    page.wait_for_function("document.querySelector('#kinetics-ftv')?.textContent.length > 0 || "
                           "document.querySelector('#error')?.textContent.length > 0")
    settle(page)
    page.screenshot(path=str(ARTIFACTS / "kinetics.png"))
    assert page.inner_text("#error") == ""
    corners = [str(v + side * 15.0) for side in (-1, 1) for v in peak]  # the CLI's FTV of the same 30 mm box
    done = run_cli("kinetics", roots["data"] / "phantom1", "--roi-box", *corners, "--out", tmp_path / "box")
    assert done.returncode == 0, done.stderr
    ftv_ml = json.loads((tmp_path / "box" / "kinetics.json").read_text())["ftv_ml"]
    shown = re.fullmatch(r"FTV (\S+) mL \(persistent \S+, plateau \S+, washout \S+ mL\)",
                         page.inner_text("#kinetics-ftv"))
    assert shown and ftv_ml > 0.5 and float(shown.group(1)) == pytest.approx(ftv_ml, rel=0.2)  # the click: ±1 pixel
    assert coloured(view_pixels(page)) > 0.002  # the FTV label drawn over the axial view
    page.click("#place-centre")  # the evaluation row: the classes at the centre and the box's FTV
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("document.querySelector('#centre')?.textContent.includes(',')")
    page.click("#evaluate")
    page.wait_for_selector("#evaluation-table tr:nth-child(2)")
    cells = page.locator("#evaluation-table tr:nth-child(2) td").all_inner_texts()
    assert cells[5:7] == [point["initial"], point["delayed"]] and cells[8] == shown.group(1)
    assert float(cells[7]) == pytest.approx(point["curve_percent"][1], abs=15)  # PE at 150 s, within a voxel
    page.close()
