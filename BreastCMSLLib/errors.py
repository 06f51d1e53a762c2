"""User mistakes: the one exception type (bad files, bad models), its one-line report, a missing optional extra.

CLIs map each to one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path


class InputError(Exception):
    """A problem with something the user gave us, named by its file (or node, or argument)."""

    def __init__(self, source: str | Path | None, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


def user_error(err: InputError | OSError) -> str:
    """The one line a user mistake is reported by: the file (or node, argument) and the problem."""
    if isinstance(err, InputError):
        return str(err)
    return f"{err.filename or ''}: {err.strerror or err}"


# the top-level import names each optional extra of pyproject.toml brings
EXTRAS = {"train": ("monai", "sklearn", "scipy", "tqdm", "tensorboard"),
          "web": ("trame", "trame_client", "trame_server", "trame_slicer", "wslink", "aiohttp", "slicer", "vtk")}


def run_with_extra(prog: str, extra: str, module: str) -> None:
    """The executable ``prog``: exit with ``module``'s ``main()``'s code. When a package of ``extra`` is not
    installed, one line names the extra to install instead, and the exit code is 2."""
    import importlib
    import importlib.util

    missing = [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]
    if missing:
        print(f"{prog}: error: {', '.join(missing)} not installed; install the extra: "
              f'pip install "breastcmsl[{extra}]"', file=sys.stderr)
        sys.exit(2)
    sys.exit(importlib.import_module(module).main())
