"""What every command line shares (``breastcmsl``, ``python -m BreastCMSLLib.cohort``, ``breastcmsl-train``): run the
parsed command, print its summary as JSON, and report a user mistake as one line and exit code 2; the executable's
process wrapper."""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Callable

from BreastCMSLLib.errors import InputError, user_error


def dispatch(prog: str, parser: argparse.ArgumentParser, commands: dict[str, Callable], argv: list[str] | None) -> int:
    """Parse ``argv`` and run ``commands[args.command]``; its summary (if any) is printed as JSON. A user mistake
    (:class:`InputError`, or a file the system refuses) is one line on stderr and exit code 2."""
    args = parser.parse_args(argv)
    try:
        summary = commands[args.command](args)
    except (InputError, OSError) as err:
        print(f"{prog} {args.command}: error: {user_error(err)}", file=sys.stderr)
        return 2
    if summary is not None:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def run_console(main: Callable[[], int]) -> None:
    """An executable: ``main()`` in a process that ends with it.

    Python's cyclic garbage collector is switched off and what survives is frozen before exit: a
    command creates few reference cycles, while each collection, and the interpreter's last one at
    exit, walks the ~300k objects that importing torch, SimpleITK and matplotlib leaves behind (timings:
    ``benchmarks/README.md``).
    """
    gc.disable()
    code = main()
    gc.freeze()
    sys.exit(code)
