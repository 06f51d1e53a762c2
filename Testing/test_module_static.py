"""The Slicer module without Slicer: the script compiles, the .ui and the code agree, the parameter node
holds every bound parameter, CMake names every file, the registry is well formed, and the background
process runner really kills a process tree."""

from __future__ import annotations

import ast
import copy
import inspect
import json
import re
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from BreastCMSLLib.panel import jobs
from BreastCMSLLib.panel import processes as background
from BreastCMSLLib.panel.models import downloadable
from BreastCMSLLib.panel.packages import has_pip_ensure, install_packages
from BreastCMSLLib.panel.session import Session

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
    init = next(f for f in classes["BreastCMSL"].body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    assigned = {target.attr for node in ast.walk(init) if isinstance(node, ast.Assign) for target in node.targets
                if isinstance(target, ast.Attribute) and ast.unparse(target.value) == "self.parent"}
    assert {"title", "categories", "contributors", "helpText", "acknowledgementText"} <= assigned
    paper = next(ast.literal_eval(n.value) for n in tree.body
                 if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "PAPER")
    assert paper.startswith("L. Luo, H. Chen") and "MICCAI 2019" in paper


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
    used = {node.attr for node in ast.walk(ast.parse(SCRIPT.read_text()))
            if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "self.ui"}
    assert used, "the module reaches no widget through self.ui"
    assert sorted(used - set(widgets)) == []
    # every button in the panel is connected by an explicit call in setup (as TemplateKey.py does) to a slot
    widget = widget_class(ast.parse(SCRIPT.read_text()))
    setup = next(f for f in widget.body if isinstance(f, ast.FunctionDef) and f.name == "setup")
    slots = {f.name for f in widget.body if isinstance(f, ast.FunctionDef)}
    connected = {}
    for call in (n for n in ast.walk(setup) if isinstance(n, ast.Call) and ast.unparse(n.func).endswith(".connect")):
        target, (signal, slot) = ast.unparse(call.func.value), call.args
        if target.startswith("self.ui.") and ast.literal_eval(signal) == "clicked(bool)":
            connected[target.removeprefix("self.ui.")] = ast.unparse(slot).removeprefix("self.")
    buttons = {n for n, w in widgets.items() if w.get("class") == "QPushButton"}
    assert sorted(buttons - set(connected)) == [] and sorted(set(connected) - buttons) == []
    assert sorted(slot for slot in connected.values() if slot not in slots) == []


def widget_class(tree: ast.Module) -> ast.ClassDef:
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BreastCMSLWidget")


def logic_signatures(tree: ast.Module) -> dict[str, inspect.Signature]:
    """Signatures of the session's methods and of the module Logic's own (read from the script: it needs Slicer)."""
    def bound(signature: inspect.Signature) -> inspect.Signature:  # as called on an instance: without self
        parameters = list(signature.parameters.values())
        return signature.replace(parameters=parameters[1:] if parameters[:1] and parameters[0].name == "self"
                                 else parameters)

    signatures = {name: bound(inspect.signature(member)) for name, member in inspect.getmembers(Session)
                  if callable(member) and not name.startswith("__")}
    logic = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BreastCMSLLogic")
    for function in (f for f in logic.body if isinstance(f, ast.FunctionDef)):
        arguments = copy.deepcopy(function.args)
        for argument in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs):
            argument.annotation = None  # the stub needs the parameters only
        stub = ast.Module([ast.FunctionDef(name=function.name, args=arguments, body=[ast.Pass()], decorator_list=[])],
                          type_ignores=[])
        namespace: dict = {}
        exec(compile(ast.fix_missing_locations(stub), "stub", "exec"), namespace)
        signatures[function.name] = bound(inspect.signature(namespace[function.name]))
    return signatures


HOOKS = ("__init__", "setup", "cleanup", "enter", "exit", "onSceneStartClose", "onSceneEndClose",
         "initializeParameterNode", "setParameterNode")


def test_the_widget_follows_the_template():
    """Slicer's TemplateKey.py: each hook has a one-line docstring; the wrapper holds GUI settings only (no
    input volumes, nothing the session keeps as its result)."""
    tree = ast.parse(SCRIPT.read_text())
    functions = {f.name: f for f in widget_class(tree).body if isinstance(f, ast.FunctionDef)}
    for hook in HOOKS:
        docstring = ast.get_docstring(functions[hook])
        assert docstring and "\n" not in docstring, hook
    node_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BreastCMSLParameterNode")
    fields = {s.target.id for s in node_class.body if isinstance(s, ast.AnnAssign)}
    assert not fields & {"t1Volume", "seriesVolumes", "probability", "case", "prediction"}
    assert not any(field.startswith("Result") for field in fields)


def test_the_widget_only_binds_widgets_to_the_session():
    """No process handling, node creation or JSON parsing; every session call (direct, or through
    ``self.attempt(call, *args)``) names an existing method and binds to its signature."""
    tree = ast.parse(SCRIPT.read_text())
    widget = widget_class(tree)
    names = {node.id for node in ast.walk(widget) if isinstance(node, ast.Name)}
    attributes = {node.attr for node in ast.walk(widget) if isinstance(node, ast.Attribute)}
    assert not names & {"subprocess", "os", "json", "BackgroundCommand"}
    assert not attributes & {"Popen", "kill", "killpg", "AddNewNodeByClass", "AddNode", "CreateNodeByClass"}
    made = [ast.unparse(node.func) for node in ast.walk(widget) if isinstance(node, ast.Call)
            and ast.unparse(node.func).split(".")[-1].startswith("vtkMRML")]
    assert made == []  # no MRML node made here
    signatures = logic_signatures(tree)
    calls = []
    for node in ast.walk(widget):
        if not isinstance(node, ast.Call):
            continue
        target, args = ast.unparse(node.func), node.args
        if target == "self.attempt":
            target, args = ast.unparse(args[0]), args[1:]
        if target.startswith("self.logic."):
            calls.append((target.removeprefix("self.logic."), len(args), [k.arg for k in node.keywords], node.lineno))
    assert len(calls) >= 15
    for name, n_args, keywords, line in calls:
        assert name in signatures, f"line {line}: the session has no {name}"
        signatures[name].bind(*range(n_args), **dict.fromkeys(keywords))  # raises TypeError when incompatible


def test_the_panel_shows_every_input_error_instead_of_raising():
    """Session calls that raise InputError for a user mistake go through ``self.attempt`` or a try/except."""
    raising = {"auto_assign", "autoAssign", "checkInputsFrom", "import_model", "download_model", "evaluate",
               "save_table_csv", "demoQuestion"}
    widget = widget_class(ast.parse(SCRIPT.read_text()))
    guarded, direct = set(), []
    for node in ast.walk(widget):
        if isinstance(node, ast.Try) and any("InputError" in ast.unparse(h.type) for h in node.handlers if h.type):
            guarded |= {id(n) for statement in node.body for n in ast.walk(statement)}
        if isinstance(node, ast.Call) and ast.unparse(node.func).removeprefix("self.logic.") in raising:
            direct.append(node)
    assert sorted(f"line {c.lineno}: {ast.unparse(c.func)}" for c in direct if id(c) not in guarded) == []


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

    # The Lib's whole package tree, layer subpackages included, is compiled and installed by one recursive glob.
    text = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"file\(GLOB_RECURSE BREASTCMSLLIB_PYTHON_SCRIPTS RELATIVE \$\{CMAKE_CURRENT_SOURCE_DIR\}"
                     r" CONFIGURE_DEPENDS\s+\$\{CMAKE_CURRENT_SOURCE_DIR\}/BreastCMSLLib/\*\.py\)", text)
    assert 'SCRIPTS "${BREASTCMSLLIB_PYTHON_SCRIPTS}"' in text
    assert all((p.parent / "__init__.py").is_file() for p in (ROOT / "BreastCMSLLib").rglob("*.py"))
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
    assert text == "progress 0.10 preprocess\n"


def test_the_map_choices_are_bound_to_the_session():
    """The overlay's map and the compare pair are combo boxes bound to parameters (COAM; COAM | fine at first)
    that the session's ``map_choices`` keeps within the result's maps (its behaviour: test_session.py); the old
    CAM-instead-of-COAM checkbox is gone."""
    widgets = ui_widgets()
    bound = {name: w.find("property[@name='SlicerParameterName']/string").text for name, w in widgets.items()
             if w.find("property[@name='SlicerParameterName']") is not None}
    combos = {"mapComboBox": "overlayMap", "compareLeftComboBox": "compareLeft",
              "compareRightComboBox": "compareRight"}
    for name, parameter in combos.items():
        assert widgets[name].get("class") == "QComboBox" and bound[name] == parameter
    assert widgets["operatingLineLabel"].get("class") == "QLabel"
    assert "showCamCheckBox" not in widgets and "showCam" not in bound.values()
    tree = ast.parse(SCRIPT.read_text())
    node_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BreastCMSLParameterNode")
    defaults = {s.target.id: ast.literal_eval(s.value) for s in node_class.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.value, ast.Constant)}
    assert [defaults[parameter] for parameter in combos.values()] == ["coam", "coam", "fine"]
    widget = widget_class(tree)
    called = {ast.unparse(node.func) for node in ast.walk(widget) if isinstance(node, ast.Call)}
    assert "self.logic.map_choices" in called


def test_the_registry_offers_the_entries_that_can_be_downloaded():
    """The Download button fetches the entry chosen among :func:`downloadable`'s (a url and a sha256)."""
    registry = json.loads((MODULE / "Resources" / "Models.json").read_text())
    assert downloadable(registry) == []  # no model can be downloaded today: the demo model is built
    entry = {"id": "m", "title": "M", "version": "1", "source": "url", "url": "https://example.org/m.safetensors",
             "sha256": "0" * 64}
    both = {"models": [*registry["models"], entry, {**entry, "id": "n", "sha256": None}]}
    assert downloadable(both) == [entry]
    assert ui_widgets()["registryComboBox"].get("class") == "QComboBox"


def test_packages_are_installed_with_what_the_slicer_at_hand_offers():
    """``slicer.packaging.pip_ensure`` on Slicer 5.12 and later; before it (the slicer-core 5.11 wheel here has
    none), ``slicer.util.pip_install`` after the user agrees."""
    import slicer

    assert not has_pip_ensure(slicer) and callable(slicer.util.pip_install)
    calls = []
    modern = SimpleNamespace(packaging=SimpleNamespace(pip_ensure=lambda reqs, requester: calls.append(
        ("pip_ensure", reqs, requester))))
    assert has_pip_ensure(modern)
    assert install_packages(modern, ("safetensors>=0.4",), requester="BreastCMSL")
    answers = []

    def older(agrees: bool) -> SimpleNamespace:
        def confirm(text):
            answers.append(text)
            return agrees

        return SimpleNamespace(util=SimpleNamespace(confirmOkCancelDisplay=confirm,
                                                    pip_install=lambda reqs: calls.append(("pip_install", reqs))))

    assert install_packages(older(True), ["safetensors>=0.4", "matplotlib>=3.7"])
    assert not install_packages(older(False), ["safetensors>=0.4"])
    assert calls == [("pip_ensure", ["safetensors>=0.4"], "BreastCMSL"),
                     ("pip_install", ["safetensors>=0.4", "matplotlib>=3.7"])]
    assert len(answers) == 2 and "safetensors>=0.4, matplotlib>=3.7" in answers[0]


def test_the_log_box_gets_a_builds_output_line_by_line(tmp_path):
    """What the module's Log box shows while the demo model builds: each poll's status carries the build's new output
    lines, and the finished status its result."""
    script = "import time\nfor n in range(3):\n    print('epoch', n, flush=True)\n    time.sleep(0.2)\n"
    command = background.BackgroundCommand([sys.executable, "-c", script], tmp_path / "build.log")
    command.start()
    build = jobs.DemoBuild(command, tmp_path, completed=lambda out: out / "model.safetensors")
    log, deadline = "", time.monotonic() + 30
    while not (status := jobs.check(build)).finished and time.monotonic() < deadline:
        log += status.log
        time.sleep(0.05)
    log += status.log
    assert log.splitlines() == ["epoch 0", "epoch 1", "epoch 2"]
    assert status.value == tmp_path / "model.safetensors" and status.stage == "done"
