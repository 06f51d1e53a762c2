"""The browser face's pieces that need no browser: path confinement, the case list, the role fields, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from BreastCMSLLib.errors import InputError
from BreastCMSLLib.panel.roles import role_overrides
from BreastCMSLWeb.catalog import Catalog, confined
from Testing.conftest import ROOT, run_cli


@pytest.fixture
def roots(tmp_path):
    data, models, outside = tmp_path / "data", tmp_path / "models", tmp_path / "outside"
    for folder in (data / "case1", data / "study1" / "S100", models, outside / "case"):
        folder.mkdir(parents=True)
    (data / "case1" / "t1.nrrd").write_bytes(b"")
    (data / "study1" / "S100" / "1.dcm").write_bytes(b"")
    (data / "escape").symlink_to(outside / "case")
    (data / "inside").symlink_to(data / "case1")
    (models / "m.safetensors").write_bytes(b"")
    (models / "out.safetensors").symlink_to(outside / "case")
    return Catalog(data, models)


@pytest.mark.parametrize("name", ["../..", "..", ".", "", "/etc", "escape", "case1/../../outside/case",
                                  "../outside/case"])
def test_names_outside_the_data_root_are_refused(roots, name):
    with pytest.raises(InputError, match="refused"):
        roots.case(name)


def test_names_inside_the_roots_resolve(roots):
    assert roots.case("case1") == (roots.data.resolve() / "case1", "case")
    assert roots.case("study1") == (roots.data.resolve() / "study1", "dicom")
    assert roots.case("inside") == (roots.data.resolve() / "case1", "case")  # a symlink that stays inside
    assert roots.model("m.safetensors") == roots.models.resolve() / "m.safetensors"
    with pytest.raises(InputError, match="refused"):
        roots.model("out.safetensors")
    with pytest.raises(InputError, match="no such case"):
        roots.case("nothing")
    assert confined(roots.data, "case1/t1.nrrd", "file") == roots.data.resolve() / "case1" / "t1.nrrd"


def test_case_list_leaves_out_what_escapes(roots):
    assert roots.cases() == [{"name": "case1", "kind": "case"}, {"name": "inside", "kind": "case"},
                             {"name": "study1", "kind": "dicom"}]


def test_role_overrides_from_the_page_fields():
    assert role_overrides({"t1": "", "pre": " ", "post": "", "sub": ""}) is None
    assert role_overrides({"t1": "None", "pre": "200:1", "post": "300, 400 500"}) == {
        "t1": None, "pre": "200:1", "post": ["300", "400", "500"]}
    assert role_overrides({"sub": "901,902", "t1": "1.2.840.1"}) == {"t1": "1.2.840.1", "sub": ["901", "902"]}
    assert role_overrides({"post": 300}) == {"post": ["300"]}
    assert role_overrides({"pre": "200 300"}) == {"pre": ["200", "300"]}  # the role rules say "one volume"
    with pytest.raises(InputError, match="override fields"):
        role_overrides(["t1"])


def test_the_page_refuses_subtractions_with_phases_in_the_words_of_the_cli(tmp_path):
    """``sub`` with ``pre``/``post``: ``breastcmsl roles --roles ROLES.json`` and the page's role fields are
    refused by the same rule, in the same words."""
    roles = tmp_path / "ROLES.json"
    roles.write_text(json.dumps({"pre": "200", "post": ["300", "400"], "sub": ["901", "902"]}))
    (tmp_path / "study").mkdir()
    done = run_cli("roles", tmp_path / "study", "--roles", roles)
    assert done.returncode == 2 and done.stdout == ""
    prefix = f"breastcmsl roles: error: {roles}: "
    assert done.stderr.startswith(prefix) and done.stderr.count("\n") == 1
    with pytest.raises(InputError) as page:
        role_overrides({"t1": "", "pre": "200", "post": "300 400", "sub": "901, 902"})
    assert page.value.problem == done.stderr[len(prefix):].strip() == "give either sub or pre/post roles, not both"
    assert str(page.value) == f"roles: {page.value.problem}"


def test_cli_refuses_a_missing_folder_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "BreastCMSLWeb.app", "--data", str(tmp_path / "none"), "--models",
                           str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == f"breastcmsl-web: --data {tmp_path / 'none'}: no such folder"
