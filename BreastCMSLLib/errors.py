"""The one exception type for user mistakes (bad files, bad models); CLIs map it to exit code 2."""

from __future__ import annotations

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
