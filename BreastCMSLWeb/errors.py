"""How the page reports failures: one line in ``#error``, and the tab keeps serving."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps

from BreastCMSLLib.errors import InputError

log = logging.getLogger(__name__)


def reports_errors(method: Callable, clear: bool = False) -> Callable:
    """Wrap a method of an object with ``state`` (trame), ``data`` (its typed state) and ``relative``: a user
    mistake shows as one line in ``#error``; anything else is logged with its traceback on the server and shown
    as one line too, and the server keeps serving. With ``clear``, the previous error line goes first."""

    @wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            with self.state:
                if clear:
                    self.data.error = ""
                return method(self, *args, **kwargs)
        except InputError as err:
            with self.state:
                self.data.error = self.relative(str(err))
        except Exception as err:  # the page must keep serving
            log.exception("unexpected error in %s", method.__name__)
            first = str(err).splitlines()[0] if str(err) else ""
            with self.state:
                self.data.error = self.relative(f"internal error ({type(err).__name__}: {first})")
        return None

    return guarded


def action(method: Callable) -> Callable:
    """A user's action: clears the error line, then reports its own errors."""
    return reports_errors(method, clear=True)
