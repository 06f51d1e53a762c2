"""What a session runs in the background and a face polls: the :class:`WarmWorker` (the analysis worker over its
life), its :class:`Worker` process, one :class:`AnalysisJob` in it, and a :class:`DemoBuild` (training the synthetic
demo model).

A face polls a job (``progress``, ``done``, ``poll()``, ``cancel()``) from its event loop; a job's result is handed
to its ``completed`` callback (the session adds it to the scene) by ``poll``/``wait`` in the calling thread (MRML is
not thread-safe), all or nothing.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from BreastCMSLLib.errors import InputError
from BreastCMSLLib.memory import malloc_environment
from BreastCMSLLib.panel.processes import BackgroundCommand, kill_group, start_group
from BreastCMSLLib.panel.protocol import ENDINGS, Kind, Message
from BreastCMSLLib.run import AnalyzeRequest


class Worker:
    """One ``python -m BreastCMSLLib.panel.worker`` process in its own process group; a thread reads its messages."""

    def __init__(self, python: str, env: dict, idle_timeout_s: float, log_path: Path):
        self.idle_timeout_s = idle_timeout_s
        self.log_path = log_path
        self.listener: AnalysisJob | None = None
        self.ahead_done = threading.Event()  # set when the worker has answered the last PREPARE
        self.last_used = time.monotonic()
        with open(log_path, "ab") as log:
            self.process = start_group([python, "-m", "BreastCMSLLib.panel.worker",
                                        "--idle-timeout", repr(idle_timeout_s)],
                                       stdout=subprocess.PIPE, stdin=subprocess.PIPE, stderr=log,
                                       env={**malloc_environment(), **env})  # values already in env win
        threading.Thread(target=self._read, daemon=True, name="breastcmsl-worker-reader").start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def usable(self) -> bool:
        """Alive, idle, and not about to exit for idleness (a margin against sending into its exit)."""
        margin = min(5.0, self.idle_timeout_s / 2)
        return (self.process.poll() is None and self.listener is None
                and time.monotonic() - self.last_used < self.idle_timeout_s - margin)

    def submit(self, job: AnalysisJob, request: AnalyzeRequest, volumes: list | None = None) -> None:
        self.listener = job
        self._send(Message(Kind.ANALYZE, request=request.to_dict(), volumes=volumes))

    def send_ahead(self, request: AnalyzeRequest, volumes: list) -> None:
        """Ask for ``request``'s inputs to be read and preprocessed ahead of its analysis (``PREPARE``, unanswered)."""
        self.ahead_done.clear()
        self._send(Message(Kind.PREPARE, request=request.to_dict(), volumes=volumes))

    def _send(self, message: Message) -> None:
        self.last_used = time.monotonic()
        self.process.stdin.write(message.line().encode())
        self.process.stdin.flush()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                message = Message.parse(line)
            except InputError:
                continue
            if message.kind is Kind.PREPARED:
                self.ahead_done.set()
                continue
            job = self.listener
            if job is not None and message.kind is not Kind.READY:
                if message.kind in ENDINGS:
                    self.listener = None
                    self.last_used = time.monotonic()
                job.receive(message)
        code = self.process.wait()
        job, self.listener = self.listener, None
        if job is not None:
            # not a bug to show as a traceback: the process was killed (out of memory, by the system) or crashed
            job.receive(Message(Kind.EXITED, text=f"the analysis worker exited with code {code}; its log: "
                                                  f"{self.log_path}"))

    def stop(self, graceful: bool) -> None:
        """End the worker and its process group: at once, or (``graceful``, when idle) by closing its input
        so that it exits by itself, killed after 2 s if it has not."""
        if graceful:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=2.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
        kill_group(self.process)


class WarmWorker:
    """The session's analysis worker over its life, in the shape of MONAIAuto3DSeg's
    ``BackgroundProcess(completedCallback)``: :meth:`prepare` starts a :class:`Worker` unless a usable one is warm,
    :meth:`submit` runs one analysis in it and returns its :class:`AnalysisJob`, whose output goes to the
    ``completed`` callback; a cancelled job stops the worker (the next analysis starts a new one); :meth:`close`
    stops it and waits for the removal of finished jobs' folders. ``python``/``env``: the worker's interpreter and
    environment; ``temp_dir``: where the worker's log goes (None: the system's temporary folder)."""

    def __init__(self, python: str, env: dict, idle_timeout_s: float, temp_dir: Path | None):
        self.python, self.env, self.idle_timeout_s, self.temp_dir = python, env, idle_timeout_s, temp_dir
        self.worker: Worker | None = None
        self._removals: list[threading.Thread] = []
        self._log_dir: Path | None = None

    @property
    def log_path(self) -> Path:
        """The workers' log (their stderr), created with the first worker."""
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="BreastCMSL-log-", dir=self.temp_dir))
        return self._log_dir / "worker.log"

    def prepare(self) -> None:
        """Start a worker unless a usable one is warm (called before the inputs are exported, so that a new
        worker imports torch meanwhile)."""
        if self.worker is None or not self.worker.usable():
            self._start()

    def prepare_ahead(self, request: AnalyzeRequest, volumes: list) -> None:
        """Have the warm worker (started if none is usable) read and preprocess ``request``'s inputs (``volumes``,
        as :meth:`submit` takes them) before their analysis is asked for; a worker that cannot take the message is
        left to :meth:`submit` to replace."""
        self.prepare()
        with contextlib.suppress(OSError):
            self.worker.send_ahead(request, volumes)

    def wait_ahead(self, timeout: float | None = None) -> bool:
        """Wait until the worker has answered the last :meth:`prepare_ahead` (inputs ready, or not); False when
        ``timeout`` seconds pass first or there is no worker."""
        return self.worker is not None and self.worker.ahead_done.wait(timeout)

    def submit(self, request: AnalyzeRequest, work: Path, case: str, reference, names: dict[str, str],
               completed: Callable[[str, object, Path], object], volumes: list | None = None) -> AnalysisJob:
        """Send ``request`` to the worker; a worker that died since it was last used (its stdin is a broken pipe)
        is replaced once. ``completed(case, reference, output folder)`` turns the output into the job's result;
        ``volumes``: the inputs as memory-mapped arrays (:func:`~BreastCMSLLib.panel.exchange.write_inputs`)."""
        for attempt in range(2):
            job = AnalysisJob(self, self.worker, work, case, reference, names, completed)
            try:
                self.worker.submit(job, request, volumes)
                return job
            except OSError:
                if attempt == 0:
                    self._start()
        shutil.rmtree(work, ignore_errors=True)
        raise InputError("Analyze", f"the analysis worker could not be started; see {self.log_path}")

    def _start(self) -> None:
        self.stop(self.worker)
        self.worker = Worker(self.python, self.env, self.idle_timeout_s, self.log_path)

    def stop(self, worker: Worker | None, graceful: bool = False) -> None:
        """Stop ``worker`` (see :meth:`Worker.stop`); the next analysis starts a new one if it was the warm one."""
        if worker is not None:
            worker.stop(graceful)
        if worker is self.worker:
            self.worker = None

    def remove_later(self, folder: Path) -> None:
        """Remove a finished job's folder in a background thread: the user sees the result without waiting for
        the unlinking of its volumes (``benchmarks/README.md``); :meth:`close` waits for it."""
        self._removals = [thread for thread in self._removals if thread.is_alive()]
        thread = threading.Thread(target=shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True},
                                  name="breastcmsl-cleanup")
        thread.start()
        self._removals.append(thread)

    def close(self) -> None:
        """Stop the worker (gracefully), wait for the folder removals and remove the log."""
        self.stop(self.worker, graceful=True)
        for thread in self._removals:
            thread.join()
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None


class AnalysisJob:
    """One Analyze in the warm worker. ``progress`` is (fraction, stage) from the worker's stages; ``completed``
    (case, reference, output folder) makes the result once the worker is done."""

    def __init__(self, owner: WarmWorker, worker: Worker, work: Path, case: str, reference, names: dict[str, str],
                 completed: Callable[[str, object, Path], object]):
        self.owner = owner
        self.completed = completed
        self.worker = worker
        self.work = work
        self.case = case
        self.reference = reference
        self.names = names  # exported file -> node name, to name nodes in the worker's messages
        self.progress: tuple[float, str] = (0.0, "queued")
        self.stages: list[tuple[float, str]] = []  # every (fraction, stage) reported, in order
        self._logged = 0  # stages already given by read_log
        self.cancelled = False
        self._messages: queue.Queue[Message] = queue.Queue()
        self._final: Message | None = None
        self._result = None
        self._error: Exception | None = None
        self._applied = False

    @property
    def worker_pid(self) -> int:
        return self.worker.pid

    @property
    def done(self) -> bool:
        """True once the worker has answered (or the job was cancelled)."""
        return self.cancelled or self._final is not None or not self._messages.empty()

    def receive(self, message: Message) -> None:
        """Called by the worker's reader thread."""
        if message.kind is Kind.PROGRESS:
            self.progress = (float(message.fraction), message.stage)
            self.stages.append(self.progress)
        else:
            self._messages.put(message)

    def read_log(self) -> str:
        """The stages reported since the previous call, one line each (what the module's Log box shows)."""
        new = self.stages[self._logged:]
        self._logged += len(new)
        return "".join(f"{stage} ({fraction:.0%})\n" for fraction, stage in new)

    def _named(self, text: str) -> str:
        for path, name in self.names.items():
            text = text.replace(path, name)
        return text

    def poll(self):
        """None while running; once finished, the :class:`~BreastCMSLLib.panel.state.AnalysisResult` (its nodes
        added to the scene on the first call).
        Raises :class:`InputError` (one line naming the node or file) when the analysis failed."""
        if self.cancelled:
            raise InputError(self.case, "the analysis was cancelled")
        if self._final is None:
            try:
                self._final = self._messages.get_nowait()
            except queue.Empty:
                return None
        return self._finish()

    def wait(self, timeout: float | None = None):
        """Block until the analysis ends; return :meth:`poll`'s result or raise its error. ``TimeoutError``
        when ``timeout`` seconds pass first."""
        if self.cancelled:
            raise InputError(self.case, "the analysis was cancelled")
        if self._final is None:
            try:
                self._final = self._messages.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"the analysis of {self.case} did not finish in {timeout} s") from None
        return self._finish()

    def _finish(self):
        """Add the result to the scene on the first call; later calls return it, or raise the same error."""
        if not self._applied:
            self._applied = True
            try:
                if self._final.kind is Kind.DONE:
                    self.progress = (1.0, "done")
                    self._result = self.completed(self.case, self.reference, self.work / "out")
                elif self._final.kind is Kind.CRASH:  # a bug: the traceback is what a developer needs
                    self._error = RuntimeError(f"the analysis of {self.case} failed:\n{self._final.text}")
                else:
                    self._error = InputError(None, self._named(self._final.text))
            except InputError as err:  # the output could not be read back
                self._error = err
            finally:
                self.owner.remove_later(self.work)
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self) -> None:
        """Kill the worker's process group (the next analysis starts a new worker); nothing is added to the
        scene and the job's temporary folder is removed. Safe to call after the job has ended."""
        if self._applied or self.cancelled:
            return
        self.cancelled = True
        self.owner.stop(self.worker)
        shutil.rmtree(self.work, ignore_errors=True)


class DemoBuild:
    """Building the synthetic demo model in the background, polled like an :class:`AnalysisJob`;
    ``completed(out_dir)`` imports the built model and returns its path."""

    def __init__(self, command: BackgroundCommand, out_dir: Path, completed: Callable[[Path], Path]):
        self.command, self.out_dir, self.completed = command, out_dir, completed
        self.progress: tuple[float, str] = (0.0, "training the demo model")

    @property
    def done(self) -> bool:
        return self.command.poll() is not None

    def poll(self) -> Path | None:
        """None while building; then the imported model file. Raises :class:`InputError` if the build failed."""
        code = self.command.poll()
        if code is None:
            return None
        if code != 0:
            raise InputError(self.command.log_path, f"building the demo model failed (exit code {code})")
        return self.completed(self.out_dir)

    def read_log(self) -> str:
        """The build's output lines since the previous call (what the module's Log box shows)."""
        return self.command.read_output()

    def cancel(self) -> None:
        self.command.cancel()


# ---- the poll/cancel cycle both faces run

POLL_INTERVAL_S = 0.2  # how often a face polls a running job


@dataclass(frozen=True)
class JobStatus:
    """One poll of a job as a face shows it: progress (fraction, stage); once ``finished``, either ``value`` (an
    :class:`~BreastCMSLLib.panel.state.AnalysisResult`, or the demo model's path) or ``error`` (one line)."""

    fraction: float
    stage: str
    finished: bool = False
    value: object = None
    error: str = ""
    log: str = ""  # the job's log lines since the previous poll (``read_log``)


def check(job: AnalysisJob | DemoBuild) -> JobStatus:
    """Poll ``job`` once (in the thread that owns the scene): a user mistake is a finished status with its line
    as ``error``; a bug (``RuntimeError`` with the worker's traceback) propagates."""
    fraction, stage = job.progress
    try:
        value = job.poll()
    except InputError as err:
        return JobStatus(fraction, "failed", finished=True, error=str(err), log=job.read_log())
    if value is None:
        return JobStatus(fraction, stage, log=job.read_log())
    return JobStatus(1.0, "done", finished=True, value=value, log=job.read_log())
