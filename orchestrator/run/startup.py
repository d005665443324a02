"""A run's sandbox made ready in the background, while the model is asked for its first step.

The first model request needs nothing from the sandbox, so it does not wait for it: the container
starts, the history pack is made and the repo streams in on threads of their own, and the agent's
first tool call waits for the tool server instead. What decides whether the run can start at all
(the image exists, the repo fits the workspace) is checked before, synchronously, by the runner.

Copy-in says how it goes when it takes more than a second: on the trace, and in the trajectory for
the batch board.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from orchestrator.errors import SandboxError
from orchestrator.history import History
from orchestrator.policy.model import PROCESS_MEMORY
from orchestrator.run.trace import Trace
from orchestrator.run.trajectory import Trajectory
from orchestrator.sandbox.base import Backend
from orchestrator.sandbox.channel import ToolChannel, ToolReply
from orchestrator.sandbox.driver import Sandbox
from orchestrator.sandbox.repo_tar import CopyStats, Extra, RepoScan
from orchestrator.sandbox.spec import Layout, SandboxSpec
from orchestrator.sizes import human_size

SLOW_S = 1.0  # copy-in that takes longer than this shows its progress, about once a second
ABORT_GRACE_S = 1.0  # a preparation cut short ends by itself within this, or its sandbox is removed under it
ABORT_WAIT_S = 10.0


class _Aborted(Exception):
    """The run ended (Ctrl-C, an error) before its sandbox was ready."""


def git_files(history: History, layout: Layout) -> Extra:
    """The sandbox's `.git` and the history pack, as members of the copy-in archive."""
    if history.pack is None or history.index is None:
        return {}
    dot_git, pack = f"{layout.workspace}/.git", f"{layout.history_objects}/pack"
    files: dict[str, bytes | Path | None] = {dot_git: None, f"{dot_git}/refs": None, f"{dot_git}/objects": None}
    files |= {f"{dot_git}/{rel}": data for rel, data in history.dot_git(alternate=layout.history_objects).items()}
    return files | {layout.history_objects: None, pack: None, f"{pack}/history.pack": history.pack, f"{pack}/history.idx": history.index}


class Startup:
    """The sandbox being made ready; `call` is the agent's tool channel, waiting for it the first time."""

    def __init__(
        self, backend: Backend, spec: SandboxSpec, scan: RepoScan, history: Callable[[], History], trace: Trace, trajectory: Trajectory,
        host_work_after: Callable[[], None] = lambda: None,
    ) -> None:  # fmt: skip
        """`host_work_after`: what the host's share of the work (the history, then the copy-in) waits for: the
        model SDK's import, which they would slow down by sharing the interpreter with it, and which the first
        model request waits for. The container's start, the engine's work, goes on beside it."""
        self.backend, self.spec, self.scan, self.trace, self.trajectory = backend, spec, scan, trace, trajectory
        self.phase = "starting the sandbox"  # what it is doing, for the error that ends it
        self.sandbox: Sandbox | None = None
        self.stats: CopyStats | None = None
        self.history: History | None = None
        self._channel: ToolChannel | None = None
        self._error: BaseException | None = None
        self._abort = threading.Event()
        self._done = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="airlock-history")
        self._history: Future[History] = self._pool.submit(_after, host_work_after, history)  # beside the container's start
        self._thread = threading.Thread(target=self._prepare, name="airlock-startup", daemon=True)
        self._thread.start()

    # --- what the runner and the agent see ---------------------------------------------------------------

    def call(self, tool: str, args: dict[str, Any], timeout: float) -> ToolReply:
        return self.channel().call(tool, args, timeout)

    @property
    def ready(self) -> bool:
        return self._done.is_set() and self._error is None

    def channel(self) -> ToolChannel:
        """The tool server, once ready; raises what stopped the sandbox from getting ready."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._channel is not None
        return self._channel

    def settle(self, *, abort: bool) -> tuple[Sandbox | None, ToolChannel | None]:
        """Let the preparation end (cut short if `abort`); what it made, for the export and the clean-up."""
        if abort and not self._done.is_set():
            self._abort.set()  # the copy-in stops at its next chunk
            if not self._done.wait(ABORT_GRACE_S) and self.sandbox is not None:
                self.sandbox.remove()  # its streams end, so whatever the preparation waits for ends too
        self._done.wait(ABORT_WAIT_S if abort else None)
        self._pool.shutdown(wait=not abort, cancel_futures=True)
        return self.sandbox, self._channel

    # --- the preparation, on its own thread --------------------------------------------------------------

    def _prepare(self) -> None:
        started = time.monotonic()
        try:
            self.sandbox = Sandbox(self.backend.start(self.spec), self.spec)
            self.trajectory.write("phase", phase="sandbox_started", duration_s=round(time.monotonic() - started, 3))
            self._check_abort()
            history = self.history = self._history.result()
            self.trace.note(history.describe())
            self.trajectory.write("phase", phase="history_ready", history=history.record())
            self._check_fits(history)
            self.phase = "copying the repo in"
            layout = self.sandbox.layout
            objects = layout.history_objects if history.pack is not None else None
            pack = history.pack.stat().st_size if history.pack is not None else 0
            copying = _CopyProgress(self.scan, pack, self.trace, self.trajectory, self._check_abort)

            def sent(stats: CopyStats) -> None:
                copying.done(stats)
                self.phase = "recording the baseline"

            self.stats, self._channel = self.sandbox.start(
                self.scan, extra=git_files(history, layout), objects_from=objects, progress=copying.update, sent=sent
            )
            self.trajectory.write("phase", phase="tool_server_ready", duration_s=round(time.monotonic() - started, 3))
            if self.sandbox.editable_failed:
                self.trace.note("setup: the project could not be installed editable in the sandbox (offline); importing it may fail")
        except BaseException as exc:  # handed to whoever waits: the agent's first tool call, or the runner
            self._error = exc
        finally:
            self._done.set()

    def _check_abort(self) -> None:
        if self._abort.is_set():
            raise _Aborted("the run ended before its sandbox was ready")

    def _check_fits(self, history: History) -> None:
        """The work tree and the history pack both live in the sandbox's memory."""
        pack = history.pack.stat().st_size if history.pack is not None else 0
        room = self.spec.memory - PROCESS_MEMORY
        if self.scan.stats.bytes + pack > room:
            raise SandboxError(
                f"the repo ({human_size(self.scan.stats.bytes)}) and its git history ({human_size(pack)}) do not fit in the sandbox's "
                f"memory ({human_size(self.spec.memory)}, of which {human_size(PROCESS_MEMORY)} is kept for processes): "
                "choose less history (--git-history recent or none) or raise --memory"
            )


def _after(first: Callable[[], None], then: Callable[[], History]) -> History:
    first()
    return then()


class _CopyProgress:
    """Files, bytes and rate of the copy-in, shown about once a second once it has taken a second."""

    def __init__(self, scan: RepoScan, history_bytes: int, trace: Trace, trajectory: Trajectory, check_abort: Callable[[], None]) -> None:
        self.total_files, self.total_bytes = scan.stats.files, scan.stats.bytes + history_bytes
        self.trace, self.trajectory, self.check_abort = trace, trajectory, check_abort
        self.started = self.shown = time.monotonic()

    def update(self, files: int, size: int) -> None:
        self.check_abort()
        now = time.monotonic()
        if now - self.started < SLOW_S or now - self.shown < SLOW_S:
            return
        self.shown = now
        rate = size / (now - self.started)
        line = f"copying the repo in: {files:,} of {self.total_files:,} files, {_mib(size)} of {_mib(self.total_bytes)} ({_mib(rate)}/s)"
        self.trace.note(line)
        self.trajectory.write("copy_progress", files=files, bytes=size, total_files=self.total_files, total_bytes=self.total_bytes)

    def done(self, stats: CopyStats) -> None:
        took = time.monotonic() - self.started
        if took >= SLOW_S:
            self.trace.note(
                f"copied the repo in: {stats.files:,} files, {_mib(self.total_bytes)} with its history, in {took:.1f} s ({_mib(self.total_bytes / took)}/s)"
            )
        self.trajectory.write("phase", phase="repo_copied", files=stats.files, bytes=stats.bytes, duration_s=round(took, 3))


def _mib(size: float) -> str:
    return f"{size / 1024**2:.1f} MiB" if size < 10 * 1024**2 else f"{size / 1024**2:,.0f} MiB"
