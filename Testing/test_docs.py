"""The documentation cannot rot silently: every relative link resolves (file and heading), and every fenced
``bash``/``python`` example marked ``runnable`` (```` ```bash runnable ````) runs as written, at its small size.

Runnable examples of one page share one temporary folder, in page order (a later example may use what an earlier
one wrote); they run with the repository's environment and ``REPO`` set to the repository root.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *ROOT.glob("*/README.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (letters, digits, "_" and "-" kept), spaces to
    hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(h) for h in re.findall(r"^#+\s+(.+?)\s*$", text, re.M)}


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    return [a or b for a, b in LINK.findall(text)]


def examples(page: Path) -> list[tuple[str, str]]:
    return [(lang, body) for lang, info, body in FENCE.findall(page.read_text())
            if lang in ("bash", "python") and "runnable" in info.split()]


def test_pages_exist():
    assert ROOT / "README.md" in PAGES and len(PAGES) >= 2


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve(page: Path):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked (no network here)
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no such heading in {file.relative_to(ROOT)}")
    assert broken == [], f"{page.relative_to(ROOT)}: {broken}"


def test_slug_matches_github():
    assert slug("Using it in 3D Slicer") == "using-it-in-3d-slicer"
    assert slug("`breastcmsl analyze`: one case") == "breastcmsl-analyze-one-case"
    assert slug("CAM, COAM and the fine map") == "cam-coam-and-the-fine-map"
    assert slug("Throughput (`benchmarks/train_throughput.py`)") == "throughput-benchmarkstrain_throughputpy"


def test_link_checker_finds_a_broken_link(tmp_path: Path):
    page = tmp_path / "p.md"
    page.write_text("# Title\n[ok](#title) [bad](#nope) [gone](missing.md)\n```bash\n[not a link](x.md)\n```\n")
    assert links(page) == ["#title", "#nope", "missing.md"]
    assert anchors(page) == {"title"}


RUNNABLE = [(page, i, lang, body) for page in PAGES for i, (lang, body) in enumerate(examples(page))]


@pytest.mark.parametrize("page", sorted({p for p, *_ in RUNNABLE}), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_runnable_examples(page: Path, tmp_path: Path):
    env = {**os.environ, "REPO": str(ROOT), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MPLBACKEND": "Agg"}
    for _, i, lang, body in (r for r in RUNNABLE if r[0] == page):
        command = ["bash", "-euo", "pipefail", "-c", body] if lang == "bash" else [sys.executable, "-c", body]
        run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"example {i} ({lang}) of {page.relative_to(ROOT)}:\n{body}\n{run.stderr[-3000:]}"
