"""The warm analysis worker: one background process that keeps the model loaded between analyses.

The session starts ``python -m BreastCMSLLib.panel.worker`` in its own process group (:class:`.jobs.Worker`) and
talks to it in the typed messages of :mod:`.protocol`, one JSON line each: an ``ANALYZE`` message carries an
:class:`~BreastCMSLLib.run.AnalyzeRequest`, which the worker runs with :func:`~BreastCMSLLib.run.run_analysis`
(the command line's one analysis path; inputs and maps as memory-mapped arrays where the message names them,
:mod:`.exchange`), answering ``PROGRESS`` lines, then ``DONE``, ``USER_ERROR`` (a user
mistake, or a malformed request) or ``CRASH`` (a traceback). A ``PREPARE`` message reads and preprocesses its
inputs ahead of their ``ANALYZE`` (:func:`~BreastCMSLLib.run.prepare_inputs`), which then goes straight to the
network; the worker keeps one preparation, for the next ``ANALYZE`` only, and answers ``PREPARED``. Everything
else the Lib prints goes to stderr (the session's log file), so stdout carries the protocol alone.

The model stays loaded, with its inference module built, keyed by the model file's sha256 and the device:
the sha256 is hashed again only when the file's path, size or modification time change. The worker exits
when stdin closes (the session closed or died) or after ``--idle-timeout`` seconds without a request.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import queue
import sys
import threading
import traceback
from pathlib import Path


class ModelCache:
    """The last model loaded, reused while the file (by sha256) stays the same."""

    def __init__(self) -> None:
        self.stat_key: tuple | None = None  # (path, size, mtime_ns) of the file last hashed
        self.sha256: str | None = None
        self.loaded = None

    def load(self, path: str | Path):
        from BreastCMSLLib.network.header import file_sha256
        from BreastCMSLLib.network.modelfile import load_model

        path = Path(path).resolve()
        try:
            stat = path.stat()
        except OSError:
            return load_model(path)  # the usual "no such model file" message
        stat_key = (str(path), stat.st_size, stat.st_mtime_ns)
        if stat_key != self.stat_key:
            self.stat_key, self.sha256 = stat_key, file_sha256(path)
        if self.loaded is None or self.loaded.sha256 != self.sha256:
            self.loaded = None  # free the previous model's memory before loading the next one
            self.loaded = load_model(path)
        return self.loaded


def serve(requests, send, idle_timeout_s: float, pending=lambda: False) -> None:
    """Answer requests until stdin closes or ``idle_timeout_s`` pass without one. A ``PREPARE`` is skipped when
    another message already waits (``pending()``): the inputs it names were replaced, or their ``ANALYZE`` came."""
    from BreastCMSLLib.errors import InputError, user_error
    from BreastCMSLLib.panel.exchange import case_inputs, write_result
    from BreastCMSLLib.panel.protocol import Kind, Message
    from BreastCMSLLib.run import AnalyzeRequest, load_for_request, prepare_inputs, run_analysis

    cache = ModelCache()
    ahead: tuple[str, object] | None = None  # (the PREPARE's key, its PreparedInputs)
    while True:
        line = requests(idle_timeout_s)
        if not line:
            return
        message = None
        try:
            message = Message.parse(line)
            if message.kind not in (Kind.ANALYZE, Kind.PREPARE):
                raise InputError("worker message", f"expected {Kind.ANALYZE.value}, got {message.kind.value}")
            request = AnalyzeRequest.from_dict(message.request)
            arrays = message.volumes is not None
            kind = "subtractions" if request.sub else "phases"
            given = functools.partial(case_inputs, message.volumes, kind) if arrays else None
            key = preparation_key(request, message.volumes)
            if message.kind is Kind.PREPARE:
                ahead = None  # the memory of an earlier preparation goes first
                if pending() or not arrays:
                    send(Message(Kind.PREPARED, text="skipped: a newer message waits" if arrays else "no arrays"))
                    continue
                ahead = (key, prepare_inputs(request, given))
                load_for_request(request, cache.load)  # a new worker's model too: its first ANALYZE is warm
                send(Message(Kind.PREPARED))
                continue
            hit, ahead = (ahead[1] if ahead is not None and ahead[0] == key else None), None
            summary = run_analysis(request, load=cache.load, given=given, write=write_result if arrays else None,
                                   report=lambda f, stage: send(Message(Kind.PROGRESS, fraction=f, stage=stage)),
                                   ahead=hit)
        except Exception as err:
            if message is not None and message.kind is Kind.PREPARE:  # its ANALYZE tries again, and reports it
                print(f"preparing ahead failed: {traceback.format_exc()}", file=sys.stderr)
                send(Message(Kind.PREPARED, text=f"failed: {err}"))
            elif isinstance(err, (InputError, OSError)):
                send(Message(Kind.USER_ERROR, text=user_error(err)))
            else:  # a bug, not a user mistake: the session shows the traceback
                send(Message(Kind.CRASH, text=traceback.format_exc()))
        else:
            send(Message(Kind.DONE, summary=summary))


def preparation_key(request, volumes: list | None) -> str:
    """What a ``PREPARE`` and an ``ANALYZE`` must share for the preparation to serve the analysis: the volumes
    (files and geometry), the model file (path, size, modification time) and the preprocessing settings."""
    try:
        stat = Path(request.model).stat()
        model = [str(Path(request.model).resolve()), stat.st_size, stat.st_mtime_ns]
    except OSError:
        model = None
    return json.dumps([volumes, model, request.label_fraction, [str(p) for p in (request.t1, request.pre,
                                                                                   *request.post, *request.sub)]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m BreastCMSLLib.panel.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--idle-timeout", type=float, default=600.0, help="seconds without a request before exit")
    args = parser.parse_args(argv)
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints of any library go to the log, not the protocol
    lines: queue.Queue[str] = queue.Queue()

    def read_stdin() -> None:  # a thread, not select(): select() does not take pipes on Windows
        for line in sys.stdin:
            lines.put(line)
        lines.put("")  # end of input: the session closed

    threading.Thread(target=read_stdin, daemon=True).start()

    def requests(timeout: float) -> str:
        try:
            return lines.get(timeout=timeout)
        except queue.Empty:
            return ""

    def send(message) -> None:
        protocol.write(message.line())
        protocol.flush()

    from BreastCMSLLib.panel.protocol import Kind, Message

    send(Message(Kind.READY))
    serve(requests, send, args.idle_timeout, pending=lambda: not lines.empty())


if __name__ == "__main__":
    main()
