"""One run from start to end: sandbox up, repo in, agent loop, patch out, verify, records, sandbox gone.

Whatever ends the run (the model finishing, a limit, a model or sandbox error, Ctrl-C), the work done so
far is exported to patch.diff and recorded in run.json, and the container is removed. That final stage
runs with Ctrl-C deferred, and each of its steps is time-bounded, so it always completes in seconds.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import traceback
import time
from collections.abc import Iterator
from datetime import datetime, timezone

from rich.console import Console

from orchestrator.agent import Agent, Limits
from orchestrator.channel import ToolChannel
from orchestrator.config import RunConfig
from orchestrator.docker_client import docker_client
from orchestrator.errors import ModelError, SandboxError
from orchestrator.model import AnthropicModel
from orchestrator.patch import check_patch
from orchestrator.record import PatchRecord, RunRecord, VerifyRecord
from orchestrator.sandbox import Sandbox, SandboxSpec, remove_stale
from orchestrator.trace import Trace
from orchestrator.trajectory import FORMAT_VERSION, Trajectory

EXPORT_TIMEOUT_S = 120.0
VERIFY_TAIL_CHARS = 4000


@contextlib.contextmanager
def interrupts_deferred(console: Console) -> Iterator[None]:
    """Ignore further Ctrl-C while the patch is saved and the sandbox removed (each step is time-bounded)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(*_: object) -> None:
        console.print("[yellow]finishing: saving the patch and removing the sandbox (a few seconds)…[/]")

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Run:
    def __init__(self, config: RunConfig, model: AnthropicModel, console: Console) -> None:
        self.config = config
        self.model = model
        self.trace = Trace(console)
        self.console = console
        self.spec = SandboxSpec(
            image=config.image, run_id=config.run_id, cpus=config.cpus, memory=config.memory,
            disk=config.disk, pids=config.pids, command_timeout=config.command_timeout,
        )  # fmt: skip
        self.record = RunRecord(
            run_id=config.run_id, repo=str(config.repo), task=config.task, model=config.model,
            started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), sandbox=self.spec.record(),
            verify=VerifyRecord(command=config.verify) if config.verify else None,
        )  # fmt: skip
        self.agent: Agent | None = None

    def execute(self, banner: str | None = None) -> RunRecord:
        out = self.config.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "patch.diff").write_bytes(b"")
        self.record.save(out)
        self.trace.header(self.record, banner)
        trajectory = Trajectory(out / "trajectory.jsonl")
        trajectory.write("run_start", version=FORMAT_VERSION, run_id=self.config.run_id, model=self.config.model, task=self.config.task, sandbox=self.spec.record())
        started = time.monotonic()
        sandbox: Sandbox | None = None
        channel: ToolChannel | None = None
        try:
            client = docker_client()
            for stale in remove_stale(client):
                self.trace.note(f"removed sandbox {stale} left by an airlock process that is gone")
            sandbox = Sandbox(client, self.spec)
            sandbox.start()
            snapshot = sandbox.copy_in(self.config.repo, exclude=self.config.out)
            self.record.snapshot = {"files": snapshot.files, "bytes": snapshot.bytes, "skipped": snapshot.skipped}
            sandbox.install_tools()
            sandbox.record_baseline()
            channel = sandbox.start_tool_server()
            limits = Limits(self.config.max_steps, self.config.command_timeout, deadline=started + self.config.timeout)
            self.agent = Agent(self.model, channel, limits, self.trace, trajectory)
            self.record.status = self.agent.run(self.config.task)
        except KeyboardInterrupt:
            self._fail("interrupted", "interrupted by the user (Ctrl-C)")
        except ModelError as exc:
            self._fail("model_error", str(exc))
        except SandboxError as exc:
            self._fail("sandbox_error", str(exc))
        except Exception as exc:  # a bug of ours: record it rather than lose the run
            trajectory.write("error", error=traceback.format_exc())
            self._fail("sandbox_error", f"internal error: {type(exc).__name__}: {exc}")
        finally:
            with interrupts_deferred(self.console):
                if sandbox is not None:
                    self._finish(sandbox, channel)
                self._close_record(started)
                trajectory.write("run_end", status=self.record.status, error=self.record.error)
                trajectory.close()
        self.trace.summary(self.record)
        return self.record

    def _fail(self, status: str, error: str) -> None:
        self.record.status = status  # type: ignore[assignment]
        self.record.error = error

    def _finish(self, sandbox: Sandbox, channel: ToolChannel | None) -> None:
        try:
            if sandbox.ready:
                self._export(sandbox)
            if channel is not None and self.record.verify is not None:
                self._verify(channel)
        except SandboxError as exc:
            if self.record.error is None:
                self._fail("sandbox_error", str(exc))
        finally:
            if channel is not None:
                channel.close()
            try:
                sandbox.remove()
            except SandboxError as exc:
                self.record.error = self.record.error or str(exc)

    def _export(self, sandbox: Sandbox) -> None:
        checked = check_patch(sandbox.export_patch(timeout=EXPORT_TIMEOUT_S))
        (self.config.out / "patch.diff").write_bytes(checked.patch)
        details = checked.to_record()
        self.record.patch = PatchRecord(**checked.stats(), changes=details["changes"], refused=details["refused"], exported=True)
        for refusal in checked.refused:
            self.console.print(f"[red]refused from the patch:[/] {refusal.path}: {refusal.reason}")

    def _verify(self, channel: ToolChannel) -> None:
        verify = self.record.verify
        assert verify is not None
        if self.record.status not in ("completed", "max_steps", "model_error"):
            verify.skipped = f"not run: the run ended with {self.record.status}"
            return
        self.trace.note(f"verify: {verify.command}")
        timeout = self.config.command_timeout
        reply = channel.call("run_bash", {"command": verify.command, "timeout": timeout}, timeout=timeout + 15)
        verify.exit_code = reply.meta.get("exit_code")
        verify.passed = verify.exit_code == 0
        verify.output_tail = reply.output[-VERIFY_TAIL_CHARS:]
        if self.record.status == "completed" and not verify.passed:
            self.record.status = "verify_failed"

    def _close_record(self, started: float) -> None:
        record = self.record
        if record.status == "running":  # an exception we did not expect: still record what we know
            self._fail("sandbox_error", "the run stopped unexpectedly")
        record.duration_s = round(time.monotonic() - started, 2)
        if self.agent is not None:
            record.steps, record.tool_calls = self.agent.steps, self.agent.tool_calls
        record.usage = record.usage.model_validate(vars(self.model.usage))
        record.save(self.config.out)
