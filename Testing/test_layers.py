"""The import direction, read from the source (AST): the Lib's layers import only downward, only the MRML and panel
layers touch Slicer/VTK/Qt, the faces reach the Lib only through the panel layer, Training never through a face, and
no modules import each other in a circle (imports inside functions count).

Layers of ``BreastCMSLLib``, lowest first: foundation (``errors``, ``config``, ``atomic``, ``distributed``,
``memory``, ``command``) < ``network/`` < ``pipeline/`` < ``dicom/``, ``phantom/`` < application (``run``,
``cohort/``, ``cli``) < ``mrml/`` < ``panel/``.
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"errors": 0, "config": 0, "atomic": 0, "distributed": 0, "memory": 0, "command": 0, "__init__": 0,
          "network": 1, "pipeline": 2, "dicom": 3, "phantom": 3, "run": 4, "cohort": 4, "cli": 4, "mrml": 5, "panel": 6}
GUI = {"slicer", "vtk", "qt", "ctk", "vtkmodules"}
GUI_LAYERS = {"mrml"}
FACES = ("BreastCMSL", "BreastCMSLWeb")
FACE_MAY_IMPORT = ("BreastCMSLLib.panel", "BreastCMSLLib.errors")
TRAINING_MAY_NOT_IMPORT = (*FACES, "BreastCMSLLib.panel", "BreastCMSLLib.mrml")


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, inside functions too; relative ones resolved."""
    package = module_name(root, path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            # ``from package import module`` names a module too
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def within(name: str, prefixes) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def lib_layer(name: str) -> str | None:
    """The layer key of a ``BreastCMSLLib`` module name (None for the package itself)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def violations(root: Path) -> list[str]:
    """Every import that breaks the direction, as ``file:line: module (rule)``."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        top = path.relative_to(root).parts[0]
        if top not in ("BreastCMSLLib", *FACES, "Training"):
            continue
        where = f"{path.relative_to(root)}"
        own = lib_layer(module_name(root, path)) if top == "BreastCMSLLib" else None
        own = own or ("__init__" if top == "BreastCMSLLib" else None)
        for line, name in imports(root, path):
            first = name.split(".")[0]
            if top == "BreastCMSLLib":
                if first in GUI and own not in GUI_LAYERS:
                    bad.append(f"{where}:{line}: {name} (Slicer/VTK/Qt only in mrml/)")
                if first in (*FACES, "Training"):
                    bad.append(f"{where}:{line}: {name} (the Lib imports no face and no Training)")
                if first == "BreastCMSLLib" and (layer := lib_layer(name)) and LAYERS[layer] > LAYERS[own]:
                    bad.append(f"{where}:{line}: {name} ({own} may not import the higher layer {layer})")
            elif top in FACES:
                if first == "BreastCMSLLib" and name != "BreastCMSLLib" and not within(name, FACE_MAY_IMPORT):
                    bad.append(f"{where}:{line}: {name} (a face imports only {', '.join(FACE_MAY_IMPORT)})")
                other = [face for face in FACES if face != top]
                if within(name, other):
                    bad.append(f"{where}:{line}: {name} (a face does not import the other face)")
            elif within(name, TRAINING_MAY_NOT_IMPORT):
                bad.append(f"{where}:{line}: {name} (Training imports no face, no panel and no MRML layer)")
    return bad


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module name -> the modules of the tree it imports (a ``from module import name`` counts as the module)."""
    paths = {module_name(root, path): path for top in ("BreastCMSLLib", *FACES, "Training")
             for path in sorted((root / top).rglob("*.py"))}
    graph = {}
    for name, path in paths.items():
        graph[name] = set()
        for _, imported in imports(root, path):
            parts = imported.split(".")
            target = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in paths),
                          None)
            if target is not None and target != name:
                graph[name].add(target)
    return graph


def circle(root: Path) -> list[str]:
    """One circle of imports between modules (``a -> b -> a``), or [] when there is none."""
    try:
        graphlib.TopologicalSorter(import_graph(root)).prepare()
    except graphlib.CycleError as err:
        return list(err.args[1])
    return []


def test_the_tree_imports_only_downward():
    assert violations(ROOT) == []


def test_no_import_circle():
    assert circle(ROOT) == []


def test_a_planted_circle_is_found(tmp_path):
    """Two modules that import each other, one of them only inside a function, and a third outside the circle."""
    package = tmp_path / "Training"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "first.py").write_text("from Training.second import helper\n")
    (package / "second.py").write_text("def helper():\n    from . import first\n")
    (package / "third.py").write_text("import Training.first\n")
    found = circle(tmp_path)
    assert found[0] == found[-1] and sorted(set(found)) == ["Training.first", "Training.second"]
    (package / "second.py").write_text("def helper():\n    pass\n")
    assert circle(tmp_path) == []


def test_every_lib_module_has_a_layer():
    for path in (ROOT / "BreastCMSLLib").rglob("*.py"):
        parts = path.relative_to(ROOT / "BreastCMSLLib").with_suffix("").parts
        assert parts[0] in LAYERS, f"{path}: not in a known layer"


PLANTED = {
    "BreastCMSLLib/network/bad.py": ("from BreastCMSLLib.panel.session import Session\n",
                                     "network may not import the higher layer panel"),
    "BreastCMSLLib/pipeline/bad.py": ("def f():\n    import slicer\n", "Slicer/VTK/Qt only in mrml/"),
    "BreastCMSLLib/panel/bad.py": ("import vtk\n", "Slicer/VTK/Qt only in mrml/"),
    "BreastCMSLLib/dicom/bad.py": ("from ..mrml import nodes\n", "dicom may not import the higher layer mrml"),
    "BreastCMSLLib/bad.py": ("from BreastCMSLLib import cli\n", "__init__ may not import the higher layer cli"),
    "BreastCMSLLib/cli.py": ("from BreastCMSLLib.mrml import nodes\n", "cli may not import the higher layer mrml"),
    "BreastCMSLWeb/bad.py": ("from BreastCMSLLib.pipeline.volumes import VOLUME_SUFFIXES\n", "a face imports only"),
    "BreastCMSL/bad.py": ("import BreastCMSLWeb.page\n", "a face does not import the other face"),
    "Training/bad.py": ("from BreastCMSLLib.panel import session\n", "Training imports no face"),
}


@pytest.mark.parametrize("relative", sorted(PLANTED))
def test_a_planted_bad_import_is_found(tmp_path, relative):
    source, rule = PLANTED[relative]
    path = tmp_path / relative
    path.parent.mkdir(parents=True)
    path.write_text(source)
    (found,) = violations(tmp_path)
    assert found.startswith(f"{relative}:") and rule in found


def test_the_cohort_workers_start_without_torch(tiny_model_path):
    """A cohort worker process reads, preprocesses, draws and writes without torch (its import is most of a
    worker's start-up), and the cohort plans its run and the model store lists models from a model file's header
    before torch loads: importing all of that, and reading a header, leaves torch unimported."""
    code = ("import sys; import BreastCMSLLib.cohort.workers, BreastCMSLLib.pipeline.output, "
            "BreastCMSLLib.pipeline.figures, BreastCMSLLib.dicom.study, BreastCMSLLib.dicom.seg, "
            "BreastCMSLLib.cohort.runner, BreastCMSLLib.panel.models; "
            "from BreastCMSLLib.network.header import read_model_file_metadata as read; "
            f"read({str(tiny_model_path)!r}); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert proc.stdout.strip() == "[]"
