"""A missing optional extra is one line naming it (exit 2), for ``breastcmsl-train`` and ``breastcmsl-web``: the
package is hidden from a real subprocess by a ``sys.modules[name] = None`` entry, as if it were not installed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from Testing.conftest import ROOT


def executable(console: str, hidden: str, *argv: str) -> subprocess.CompletedProcess:
    code = f"import sys; sys.modules[{hidden!r}] = None; from {console} import main; main()"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("console, prog, extra, hidden", [
    ("Training.console", "breastcmsl-train", "train", "tqdm"),
    ("Training.console", "breastcmsl-train", "train", "monai"),
    ("BreastCMSLWeb.console", "breastcmsl-web", "web", "trame_slicer"),
    ("BreastCMSLWeb.console", "breastcmsl-web", "web", "aiohttp"),
])
def test_a_missing_extra_is_one_line_naming_it(console, prog, extra, hidden):
    done = executable(console, hidden, "--help")
    assert done.returncode == 2 and done.stdout == ""
    expected = f'{prog}: error: {hidden} not installed; install the extra: pip install "breastcmsl[{extra}]"\n'
    assert done.stderr == expected


def test_with_the_extra_installed_the_command_runs():
    done = executable("Training.console", "nothing_hidden", "--help")
    assert done.returncode == 0 and "breastcmsl-train" in done.stdout
