"""The README's pictures, ``docs/web.png`` and ``docs/web-compare.png``, from a trained demo model on a phantom case.

A small CMSL model is trained on a phantom cohort (width 0.25, input 64 x 48 x 32, a few minutes on 2 CPU cores)
unless ``WORK/models/demo-cmsl.safetensors`` exists already; the first malignant case of its test split that the
model calls malignant is served;
``breastcmsl-web`` serves both, and Debian's chromium (``scripts/browser.sh``), driven by Playwright, analyzes
the case, shows the fine map and takes the page, then the compare view (COAM | fine).

    python scripts/screenshots.py [--work screenshots-work] [--out docs]      (scripts/screenshots.sh runs it)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
SHAPE, INPUT = ("96", "64", "40"), ("64", "48", "32")
MODEL = "demo-cmsl.safetensors"
CASE = "phantom"


def run(*args: str, module: str) -> None:
    """A project command in a fresh interpreter; stops the script when it fails."""
    print("+", module, *args, flush=True)
    subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, check=True)


def trained_model(work: Path) -> Path:
    """The demo model: a CMSL run on a small phantom cohort, exported (reused when already there)."""
    model = work / "models" / MODEL
    if model.is_file():
        return model
    train = "Training.cli"
    run("synth", "--n", "120", "--out", str(work / "cohort"), "--shape", *SHAPE, "--difficulty", "0.3",
        "--workers", "2", module=train)
    run("preprocess", "--manifest", str(work / "cohort" / "manifest.csv"), "--cache", str(work / "cache"),
        "--input-size", *INPUT, "--workers", "2", module=train)
    shutil.rmtree(work / "run", ignore_errors=True)
    run("fit", "--cache", str(work / "cache"), "--method", "cmsl", "--out", str(work / "run"), "--epochs", "12",
        "--batch-size", "4", "--width-factor", "0.25", "--device", "cpu", module=train)
    run("export", "--run", str(work / "run"), "--out", str(model), "--name", "demo-cmsl", "--synthetic",
        module=train)
    return model


def phantom_case(work: Path, model: Path) -> Path:
    """The served case: the first malignant case of the cohort's test split (never seen in training) that the
    model calls malignant (a true positive, as the localization study scores), copied."""
    folder = work / "data" / CASE
    if folder.is_dir():
        return folder
    with open(work / "cache" / "manifest.csv", newline="") as f:
        malignant = [r["subject_id"] for r in csv.DictReader(f) if r["split"] == "test" and r["label"] == "1"]
    for subject in malignant:
        case, out = work / "cohort" / "cases" / subject, work / "analyzed" / subject
        run("analyze", str(case), "--model", str(model), "--out", str(out), "--no-fine-map", module="BreastCMSLLib.cli")
        if json.loads((out / "result.json").read_text())["prediction"] == "malignant":
            shutil.copytree(case, folder)
            return folder
    raise SystemExit("the model calls no malignant test case malignant; train it again (remove WORK/models)")


def screenshots(work: Path, out: Path) -> None:
    """Serve the case and the model, analyze in chromium, take the two pictures."""
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "VTK_DEFAULT_OPENGL_WINDOW": "vtkEGLRenderWindow"}
    server = subprocess.Popen([sys.executable, "-m", "BreastCMSLWeb.app", "--data", str(work / "data"), "--models",
                               str(work / "models"), "--port", "0", "--device", "cpu"], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT, env=env)
    try:
        url = re.search(r"serving (http://\S+)", server.stdout.readline()).group(1).rstrip("/")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 820})
            page.set_default_timeout(120_000)
            page.goto(f"{url}/?case={CASE}")
            page.wait_for_selector("#case-select")
            page.wait_for_function("document.querySelector('#model-select')?.value.length > 0")
            page.wait_for_timeout(3000)  # the views' first frames
            page.click("#analyze")
            page.wait_for_function("document.querySelector('#probability')?.textContent.trim().length > 0")
            page.select_option("#map-select", "fine")
            page.wait_for_timeout(3000)
            page.screenshot(path=str(out / "web.png"))
            page.click("#compare")
            page.wait_for_timeout(4000)
            page.screenshot(path=str(out / "web-compare.png"))
            print(f"probability {page.inner_text('#probability')}; pictures in {out}", flush=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "screenshots-work", help="model, cohort and case")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where web.png and web-compare.png go")
    args = parser.parse_args()
    phantom_case(args.work, trained_model(args.work))
    screenshots(args.work, args.out)


if __name__ == "__main__":
    main()
