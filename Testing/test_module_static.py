"""The Slicer module without Slicer: the script compiles, the .ui and the code agree, the parameter node
holds every bound parameter, CMake names every file, the registry is well formed, and the background
process runner really kills a process tree."""

from __future__ import annotations

import ast
import json
import re
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from BreastCMSLLib import background, cli

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "BreastCMSL"
SCRIPT = MODULE / "BreastCMSL.py"
UI = MODULE / "Resources" / "UI" / "BreastCMSL.ui"


def cmake_items(path: Path) -> set[str]:
    """Words of a CMakeLists.txt with ${MODULE_NAME} expanded (comments dropped)."""
    text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
    return set(text.replace("${MODULE_NAME}", "BreastCMSL").split())


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def test_module_script_compiles_and_defines_the_template_classes():
    tree = ast.parse(SCRIPT.read_text(), filename=str(SCRIPT))
    compile(tree, str(SCRIPT), "exec")
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    bases = {name: {ast.unparse(b) for b in node.bases} for name, node in classes.items()}
    assert "ScriptedLoadableModule" in bases["BreastCMSL"]
    assert "ScriptedLoadableModuleWidget" in bases["BreastCMSLWidget"]
    assert "ScriptedLoadableModuleLogic" in bases["BreastCMSLLogic"]
    assert "ScriptedLoadableModuleTest" in bases["BreastCMSLTest"]
    decorators = {ast.unparse(d) for d in classes["BreastCMSLParameterNode"].decorator_list}
    assert decorators == {"parameterNodeWrapper"}
    module_init = ast.unparse(classes["BreastCMSL"])
    for needle in ("self.parent.title", "self.parent.categories", "self.parent.contributors", "self.parent.helpText",
                   "PAPER"):
        assert needle in module_init
    paper = next(ast.literal_eval(n.value) for n in tree.body
                 if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "PAPER")
    assert "Luo" in paper and "MICCAI 2019" in paper


def test_module_category_is_the_extension_category():
    tree = ast.parse(SCRIPT.read_text())
    categories = next(ast.literal_eval(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                      and ast.unparse(n.targets[0]) == "self.parent.categories")
    (extension,) = re.findall(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', (ROOT / "CMakeLists.txt").read_text())
    assert categories == [extension] == ["Quantification"]


def test_ui_parses_and_every_self_ui_name_exists():
    widgets = ui_widgets()
    assert ET.parse(UI).getroot().find("widget").get("class") == "qMRMLWidget"
    names = [w.get("name") for w in ET.parse(UI).getroot().iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"
    used = set(re.findall(r"self\.ui\.(\w+)", SCRIPT.read_text()))
    assert used, "the module reaches no widget through self.ui"
    assert sorted(used - set(widgets)) == []
    # every button in the panel is connected to something
    buttons = {n for n, w in widgets.items() if w.get("class") == "QPushButton"}
    assert sorted(buttons - used) == []


# calls in the panel that raise InputError for a user mistake (a bad pattern, an unwritable CSV, ...)
RAISING_CALLS = {"mrml.save_table_csv", "self.logic.rolePatterns", "mrml.centre_distances", "mrml.load_result_folder",
                 "self.logic.importModel", "self.logic.checkInputs", "mrml.assign_by_dicom",
                 "self.logic.importDemoModel"}


def test_the_panel_shows_every_input_error_instead_of_raising():
    tree = ast.parse(SCRIPT.read_text())
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BreastCMSLWidget")
    guarded, calls = set(), []
    for node in ast.walk(widget):
        if isinstance(node, ast.Try) and any("InputError" in ast.unparse(h.type) for h in node.handlers if h.type):
            guarded |= {id(n) for statement in node.body for n in ast.walk(statement)}
        if isinstance(node, ast.Call) and ast.unparse(node.func) in RAISING_CALLS:
            calls.append(node)
    assert {ast.unparse(c.func) for c in calls} == RAISING_CALLS
    assert sorted(f"line {c.lineno}: {ast.unparse(c.func)}" for c in calls if id(c) not in guarded) == []


def test_every_slicer_parameter_name_is_a_parameter_node_field():
    tree = ast.parse(SCRIPT.read_text())
    node_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BreastCMSLParameterNode")
    fields = {s.target.id for s in node_class.body if isinstance(s, ast.AnnAssign)}
    bound = {}
    for widget in ET.parse(UI).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[widget.get("name")] = prop.find("string").text
    assert len(bound) >= 10
    assert sorted(set(bound.values()) - fields) == []
    assert len(set(bound.values())) == len(bound), "two widgets bound to one parameter"


def test_cmake_names_every_script_and_resource_that_exists():
    module_items = cmake_items(MODULE / "CMakeLists.txt")
    module_files = {p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"
                    and p.suffix != ".md"}
    assert sorted(module_files - module_items) == []
    module_text = (MODULE / "CMakeLists.txt").read_text()
    for needle in ("slicerMacroBuildScriptedModule(", "WITH_GENERIC_TESTS",
                   "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)"):
        assert needle in module_text
    named = {i for i in module_items if "/" in i or i.endswith(".py")}
    assert sorted(i for i in named if not (MODULE / i).is_file()) == []

    top_items = cmake_items(ROOT / "CMakeLists.txt")
    lib_files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "BreastCMSLLib").glob("*.py")}
    assert sorted(lib_files - top_items) == [], "add new BreastCMSLLib files to the top-level CMakeLists.txt"
    listed = {i for i in top_items if i.startswith("BreastCMSLLib/")}
    assert sorted(i for i in listed if not (ROOT / i).is_file()) == []
    text = (ROOT / "CMakeLists.txt").read_text()
    for needle in ("project(BreastCMSL)", "find_package(Slicer REQUIRED)", "add_subdirectory(BreastCMSL)",
                   'set(EXTENSION_DEPENDS "PyTorch")', "Luo", "Slicer_EXTENSION_CPACK",
                   "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR"):
        assert needle in text


def test_model_registry_is_well_formed():
    registry = json.loads((MODULE / "Resources" / "Models.json").read_text())
    assert registry["format"] == "breastcmsl-model-registry" and registry["format_version"] == 1
    ids = [m["id"] for m in registry["models"]]
    assert len(ids) == len(set(ids))
    for entry in registry["models"]:
        assert {"id", "title", "version", "source", "url", "sha256", "in_channels", "synthetic",
                "for_diagnosis"} <= set(entry)
        assert entry["source"] in ("url", "build")
        if entry["source"] == "url":
            assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) and entry["url"].startswith("https://")
        else:
            assert entry["command"][:2] == ["-m", "Training.cli"]
    # no clinical model exists: nothing in the registry may claim to be for diagnosis
    assert not any(m["for_diagnosis"] for m in registry["models"])


def test_icon_is_a_128px_png():
    data = (MODULE / "Resources" / "Icons" / "BreastCMSL.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == 128 and int.from_bytes(data[20:24], "big") == 128


@pytest.mark.parametrize("kind", ["subtractions", "phases"])
def test_analyze_command_is_what_the_cli_parses(kind):
    series = ["a.nrrd", "b.nrrd", "c.nrrd"]
    command = background.analyze_command("python", "t1.nrrd", series, kind, "m.safetensors", "out", "cpu", 0.4)
    assert command[:3] == ["python", "-m", "BreastCMSLLib.cli"]
    args = cli.build_parser().parse_args(command[3:])
    assert (args.command, str(args.t1), str(args.model), str(args.out), args.device, args.label_fraction,
            args.progress) == ("analyze", "t1.nrrd", "m.safetensors", "out", "cpu", 0.4, True)
    if kind == "subtractions":
        assert [str(p) for p in args.sub] == series and args.pre is None
    else:
        assert str(args.pre) == "a.nrrd" and [str(p) for p in args.post] == series[1:] and args.sub is None


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(sys.platform == "win32", reason="the POSIX process-group path; Windows uses taskkill /T")
def test_cancel_kills_the_whole_process_tree(tmp_path):
    # a parent that starts a grandchild (like Slicer's PythonSlicer launcher starting python-real)
    script = ("import subprocess, sys, time; "
              "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "print(c.pid, flush=True); time.sleep(60)")
    job = background.BackgroundCommand([sys.executable, "-c", script], tmp_path / "job.log")
    job.start()
    deadline = time.monotonic() + 20
    text = ""
    while not text.strip() and time.monotonic() < deadline:
        time.sleep(0.05)
        text += job.read_output()
    child = int(text.split()[0])
    assert job.poll() is None and pid_alive(child)
    job.cancel()
    assert job.poll() is not None and job.cancelled
    deadline = time.monotonic() + 5
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child)
    job.cancel()  # a second cancel is harmless


def test_background_command_logs_and_returns_the_exit_code(tmp_path):
    job = background.BackgroundCommand([sys.executable, "-c", "print('one'); print('two'); raise SystemExit(2)"],
                                       tmp_path / "job.log")
    job.start()
    assert job.wait(30) == 2
    assert job.read_output().split() == ["one", "two"]
    assert job.read_output() == ""


def test_split_progress_separates_the_stage_lines_of_analyze():
    text = ("progress 0.00 read\nUsing CPU\nprogress 0.10 preprocess\r\nprogress 1.5 done\n"
            "the progress bar is a busy indicator\nprogress 0.4\n")
    assert background.split_progress(text) == (
        "Using CPU\nthe progress bar is a busy indicator\nprogress 0.4\n", (1.0, "done"))
    assert background.split_progress("no stages\n") == ("no stages\n", None)
    assert background.split_progress("progress 0 read\nprogress -0.2 read\n") == ("progress -0.2 read\n", (0.0, "read"))


def test_read_output_holds_back_a_line_still_being_written(tmp_path):
    script = ("import sys, time; sys.stdout.write('progress 0.10 prepro'); sys.stdout.flush(); time.sleep(1.0); "
              "print('cess', flush=True); time.sleep(60)")
    job = background.BackgroundCommand([sys.executable, "-c", script], tmp_path / "job.log")
    job.start()
    deadline = time.monotonic() + 20
    while (tmp_path / "job.log").stat().st_size == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.read_output() == ""  # half a line: not yet
    text = ""
    while not text and time.monotonic() < deadline:
        time.sleep(0.05)
        text = job.read_output()
    job.cancel()
    assert background.split_progress(text) == ("", (0.1, "preprocess"))
