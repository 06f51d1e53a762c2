"""The warm worker's protocol: typed messages, one JSON object per line, each with a ``kind``.

The session sends ``ANALYZE`` (``request``: an :class:`~BreastCMSLLib.run.AnalyzeRequest` as a dict; ``volumes``:
the inputs as memory-mapped arrays, :func:`~BreastCMSLLib.panel.exchange.write_inputs`, or None for the request's
files); the worker answers ``READY`` once started, then for each request ``PROGRESS`` messages (``fraction``,
``stage``) and one ending message: ``DONE`` (``summary``), ``USER_ERROR`` (``text``: one line naming the file and
the problem) or ``CRASH`` (``text``: a traceback, a bug). ``EXITED`` is made by the session when the process ends
unasked. ``PREPARE`` (``request``, ``volumes``, as ``ANALYZE``) asks the worker to read and preprocess those inputs
ahead of an ``ANALYZE`` of the same volumes and model; the worker answers ``PREPARED`` (``text`` empty when the
inputs are ready, else why not: a newer message was waiting, or the error, which that ``ANALYZE`` then reports).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum

from BreastCMSLLib.errors import InputError

PROTOCOL_VERSION = 4


class Kind(str, Enum):
    READY = "ready"
    ANALYZE = "analyze"
    PREPARE = "prepare"
    PREPARED = "prepared"
    PROGRESS = "progress"
    DONE = "done"
    USER_ERROR = "user_error"
    CRASH = "crash"
    EXITED = "exited"


ENDINGS = (Kind.DONE, Kind.USER_ERROR, Kind.CRASH, Kind.EXITED)  # the messages that end a request


@dataclass(frozen=True)
class Message:
    kind: Kind
    request: dict | None = None  # ANALYZE, PREPARE
    volumes: list | None = None  # ANALYZE, PREPARE
    fraction: float = 0.0  # PROGRESS
    stage: str = ""  # PROGRESS
    summary: dict = field(default_factory=dict)  # DONE
    text: str = ""  # USER_ERROR, CRASH, EXITED, PREPARED
    version: int = PROTOCOL_VERSION  # READY

    def line(self) -> str:
        return json.dumps({**asdict(self), "kind": self.kind.value}) + "\n"

    @classmethod
    def parse(cls, line: str | bytes) -> Message:
        """A message from one line; anything else is an :class:`InputError`."""
        try:
            data = json.loads(line)
            return cls(**{**data, "kind": Kind(data["kind"])})
        except (ValueError, TypeError, KeyError) as err:
            raise InputError("worker message", f"is not a protocol message ({err})") from None
