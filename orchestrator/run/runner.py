"""One run from start to end: sandbox up, repo in, agent loop, patch out, verify, records, sandbox gone.

What would stop the run from starting (an unknown image, a repo too big for the workspace) is checked
before any output exists. Then the model is asked for its first step while the sandbox is made ready
beside it (orchestrator.run.startup).

Whatever ends the run (the model finishing, a limit, a model or sandbox error, Ctrl-C), the work done so
far is exported to patch.diff and recorded in run.json, and the container is removed. That final stage
runs with Ctrl-C deferred, and each of its steps is time-bounded, so it always completes in seconds.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone

from rich.console import Console

from orchestrator.errors import ModelError, SandboxError, UsageError
from orchestrator.history import prepare_history, promise
from orchestrator.patch.check import Refusal, check_patch
from orchestrator.policy.guard import PolicyGuard
from orchestrator.policy.model import Policy
from orchestrator.providers.base import Provider
from orchestrator.run.agent import Agent, Limits
from orchestrator.run.checkpoint import Continuation, ReplayDiverged
from orchestrator.run.config import RunConfig
from orchestrator.run.context import DEFAULT_WINDOWS
from orchestrator.run.image_phase import prepare_image
from orchestrator.run.project_image import ProjectImage, project_image
from orchestrator.run.record import PatchRecord, RunRecord, Status, VerifyRecord
from orchestrator.run.resume import hold_run_lock
from orchestrator.run.setup import SetupFailed, SetupPhase
from orchestrator.run.startup import Startup
from orchestrator.run.trace import Trace
from orchestrator.run.trajectory import FORMAT_VERSION, Trajectory
from orchestrator.run.verify import verify_patch
from orchestrator.sandbox.backends import get_backend
from orchestrator.sandbox.base import OUT_OF_MEMORY, Backend
from orchestrator.sandbox.channel import ToolChannel
from orchestrator.sandbox.driver import Sandbox
from orchestrator.sandbox.repo_tar import CopyStats, RepoScan, scan_repo
from orchestrator.sandbox.spec import OUTPUT_MARKER_ROOM, SandboxSpec
from orchestrator.sizes import human_size
from orchestrator.terminal import safe

EXPORT_TIMEOUT_S = 120.0
# The agent's work can still be judged after these endings; the others leave nothing worth verifying.
VERIFIABLE = ("completed", "max_steps", "budget_exceeded", "stuck", "model_error")
# Beyond the run's own time limit: the export, verify and clean-up, before others may remove the sandbox.
LIFETIME_MARGIN_S = 1800.0


def sandbox_spec(policy: Policy, run_id: str) -> SandboxSpec:
    """The sandbox a policy asks for (the sandbox layer never sees the policy itself)."""
    limits, kubernetes = policy.limits, policy.kubernetes
    return SandboxSpec(
        image=policy.sandbox.image, run_id=run_id, cpus=limits.cpus, memory=limits.memory, disk=limits.disk,
        pids=limits.pids, command_timeout=limits.command_timeout, runtime=policy.sandbox.runtime, user=policy.sandbox.user,
        max_output_bytes=limits.max_output_chars - OUTPUT_MARKER_ROOM, lifetime_s=limits.timeout + LIFETIME_MARGIN_S,
        runtime_class=kubernetes.runtime_class, node_selector=dict(kubernetes.node_selector), egress_probe=tuple(kubernetes.egress_probe),
    )  # fmt: skip


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


def _unrecorded_refusals(messages: list[str]) -> list[Refusal]:
    """One refusal per path git could not record, named from git's messages ("invalid path 'x'")."""
    by_path: dict[str, str] = {}
    for message in messages:
        quoted = re.search(r"'([^']*)'", message)
        by_path.setdefault(quoted.group(1) if quoted else message, message)
    return [Refusal(path=path, reason="git cannot record this path in a patch", detail=detail) for path, detail in by_path.items()]


class Run:
    def __init__(
        self, config: RunConfig, provider: Provider, console: Console, backend: Backend | None = None, continuation: Continuation | None = None
    ) -> None:  # fmt: skip
        """`continuation`: the recorded steps a resumed or forked run replays before it goes on live."""
        self.config = config
        self.continuation = continuation
        self.provider = provider
        self.backend = backend or get_backend(config.backend, config.location)
        self.trace = Trace(console)
        self.console = console
        self.spec = sandbox_spec(config.policy, config.run_id)
        self.guard = PolicyGuard(config.policy, config.model, notify=self.trace.policy_event, stop_file=config.stop_file)
        self.record = RunRecord(
            run_id=config.run_id, repo=str(config.repo), task=config.task, model=config.model, provider=provider.name,
            started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), sandbox=self.spec.record() | self.backend.describe(),
            verify=VerifyRecord(command=config.verify) if config.verify else None, policy=config.policy.to_record(),
        )  # fmt: skip
        if config.attempt is not None:
            self.record.attempt = config.attempt
            provider.temperature = config.attempt.temperature
        if continuation is not None:
            self.record = RunRecord.model_validate(self.record.model_dump() | continuation.record)
        self.agent: Agent | None = None
        self.startup: Startup | None = None
        self.project: ProjectImage | None = None  # the environment the repo describes (a devcontainer, a Dockerfile)
        self._phase = "starting"  # what the run was doing, for the error that ends it (once its sandbox is ready)

    @property
    def context_window(self) -> int:
        return self.config.policy.limits.context_window or DEFAULT_WINDOWS[self.provider.name]

    def execute(self, banner: str | None = None) -> RunRecord:
        scan = self.scan = self._check_before_start()
        out = self.config.out
        out.mkdir(parents=True, exist_ok=True)
        self._lock = hold_run_lock(out)
        if self.continuation is not None and self.continuation.keep_trajectory_as:
            os.replace(out / "trajectory.jsonl", out / self.continuation.keep_trajectory_as)
        (out / "patch.diff").write_bytes(b"")
        self.record.snapshot = vars(scan.stats)
        self.record.save(out)
        self.trace.header(self.record, banner)
        self.trace.hidden(scan.stats.hidden)
        trajectory = Trajectory(out / "trajectory.jsonl")
        trajectory.write(
            "run_start", version=FORMAT_VERSION, run_id=self.config.run_id, provider=self.provider.name, model=self.config.model,
            context_window=self.context_window, task=self.config.task, sandbox=self.spec.record(), text_tool_calls=self.provider.text_tool_calls,
            **self._continues(), **({"attempt": self.config.attempt.model_dump()} if self.config.attempt else {}),
        )  # fmt: skip
        started = time.monotonic()
        spent = self.continuation.elapsed_s if self.continuation is not None else 0.0
        try:
            if self._image_phase(trajectory) and self._setup_phase(trajectory):
                self._agent_phase(trajectory, deadline=time.monotonic() + self.config.policy.limits.timeout - spent)
            self._verify_phase(trajectory)
        finally:
            with interrupts_deferred(self.console):
                try:
                    self._close_record(started)
                finally:  # the trajectory ends even when run.json cannot be written
                    trajectory.write("run_end", status=self.record.status, error=self.record.error)
                    trajectory.close()
                    self._lock.close()
                self.trace.summary(self.record)
        return self.record

    def _continues(self) -> dict[str, object]:
        """For run_start: the run this one resumes or forks, and how many steps it replays."""
        if self.continuation is None:
            return {}
        record, resuming = self.record, self.continuation.keep_trajectory_as is not None  # a fork has no trajectory of its own yet
        kind = {"kind": "resume", **record.resumes[-1].model_dump()} if resuming else {"kind": "fork", **(record.forked_from or {})}
        return {"continues": kind | {"replay_steps": self.continuation.replay.last}}

    def _check_before_start(self) -> RepoScan:
        """What would make the run fail for certain, said before any output exists (exit 2): an unknown
        image, a repo that cannot fit the workspace. The walk of the repo is the copy-in's first half."""
        policy = self.config.policy
        self.project = project_image(self.config.repo, policy.setup.commands, list(policy.paths.hidden))
        image = self.project.image if self.project is not None else None
        self.backend.check(replace(self.spec, image=image) if image else self.spec)
        scan = scan_repo(self.config.repo, exclude=self.config.out, hidden=policy.paths.hidden)
        if scan.stats.bytes > policy.limits.disk:
            raise UsageError(
                f"the repo ({human_size(scan.stats.bytes)} in {scan.stats.files:,} files) does not fit in the sandbox workspace "
                f"({human_size(policy.limits.disk)}): raise --disk (and --memory, which it counts toward)"
            )
        return scan

    def _image_phase(self, trajectory: Trajectory) -> bool:
        """The sandbox's image with airlock's tool runtime in it (added to an --image once); False if that failed."""
        config = self.config
        try:
            self.spec, recorded = prepare_image(
                self.backend, self.spec, self.project, self.scan, list(config.policy.paths.hidden), config.policy.setup, config.out, self.trace
            )  # fmt: skip
        except SetupFailed as exc:
            self._fail("setup_failed", str(exc))
            self.trace.note(f"setup failed: {exc}")
            return False
        except BaseException as exc:
            self._record_failure(exc, None, trajectory)
            return False
        self.record.sandbox |= recorded
        return True

    def _setup_phase(self, trajectory: Trajectory) -> bool:
        """Find or build the environment the agent and verify start from (see orchestrator.run.setup); False if it failed."""
        config = self.config
        if not config.policy.setup.commands:
            return True
        phase = SetupPhase(
            self.backend, self.spec, config.policy.setup, config.repo, list(config.policy.paths.hidden), config.out, self.trace,
            self._copy_repo, self.scan, config.setup_secrets, rebuild=config.rebuild_env, finishing=lambda: interrupts_deferred(self.console),
            project=self.project,
        )  # fmt: skip
        self.record.setup = phase.record
        try:
            env = phase.run()
        except SetupFailed as exc:
            self._fail("setup_failed", str(exc))
            self.trace.note(f"setup failed: {exc}")
            if tail := [line for line in phase.record.log_tail.splitlines() if line.strip()][-15:]:
                self.trace.note("setup log (last lines):\n" + "\n".join(tail))
        except BaseException as exc:
            self._record_failure(exc, None, trajectory)
        else:
            if env is not None:
                self.spec = replace(self.spec, image=env.image, environment=True)
                self.record.sandbox["environment"] = env.image
        trajectory.write("setup", **phase.record.model_dump())
        return self.record.status == "running"

    def _agent_phase(self, trajectory: Trajectory, deadline: float) -> None:
        """The agent's sandbox, made ready in the background while the model is asked for its first step,
        from start to removal, with the patch exported on every path."""
        try:
            self.startup = self._start_sandbox(trajectory)
            if self.backend.ready_before_model:
                self.startup.channel()
            self._phase = "running the agent's tools"
            self._run_agent(self.startup, trajectory, deadline)
            self.startup.channel()  # a run without a tool call still needs its sandbox, for the export
        except BaseException as exc:
            self._record_failure(exc, self.startup.sandbox if self.startup is not None else None, trajectory)
        finally:
            with interrupts_deferred(self.console):
                sandbox, channel = self._settle_startup()
                if sandbox is not None:
                    self._finish(sandbox, channel, trajectory)

    def _verify_phase(self, trajectory: Trajectory) -> None:
        """Run --verify in a fresh sandbox on the pristine repo plus patch.diff (see orchestrator.run.verify)."""
        verify = self.record.verify
        if verify is None:
            return
        if self.record.status not in VERIFIABLE:
            verify.skipped = f"not run: the run ended with {self.record.status}"
            return
        self.trace.note(f"verify: {verify.command} (in a fresh sandbox: the pristine repo plus patch.diff)")
        started = time.monotonic()
        sandbox: Sandbox | None = None
        try:
            sandbox = Sandbox(self.backend.start(self.spec), self.spec)
            verify_patch(sandbox, self._copy_repo, (self.config.out / "patch.diff").read_bytes(), verify, self.config.policy.limits.command_timeout)
        except BaseException as exc:
            self._record_failure(exc, sandbox, trajectory)
            verify.skipped = f"not run to the end: {self.record.error}"
        finally:
            verify.duration_s = round(time.monotonic() - started, 2)
            with interrupts_deferred(self.console):
                self._remove(sandbox)
        trajectory.write("verify", **verify.model_dump())
        if self.record.status == "completed" and not verify.passed:
            self.record.status = "verify_failed"

    def _record_failure(self, exc: BaseException, sandbox: Sandbox | None, trajectory: Trajectory) -> None:
        """What ended a phase, as the run's status and error; anything but our own errors is a bug, recorded whole."""
        if isinstance(exc, KeyboardInterrupt):
            self._fail("interrupted", "interrupted by the user (Ctrl-C)")
        elif isinstance(exc, ReplayDiverged):
            self._fail("replay_diverged", str(exc))
        elif isinstance(exc, ModelError):
            self._fail("model_error", str(exc))
        elif isinstance(exc, SandboxError):
            self._fail("sandbox_error", self._with_cause(str(exc), sandbox))
        elif isinstance(exc, Exception):  # a bug of ours: record it rather than lose the run
            trajectory.write("error", error=traceback.format_exc())
            self._fail("sandbox_error", f"internal error: {type(exc).__name__}: {exc}")
        else:
            raise exc  # SystemExit and the like are not ours to record

    def _start_sandbox(self, trajectory: Trajectory) -> Startup:
        """Begin making the sandbox ready in the background; the agent's first tool call waits for it."""
        policy = self.config.policy
        threading.Thread(target=self._remove_stale, name="airlock-tidy", daemon=True).start()
        self.record.sandbox |= self.backend.prepare(self.spec, self.trace.note)  # e.g. the image sent to a remote engine
        history = functools.partial(prepare_history, self.config.repo, policy.sandbox.history_depth, policy.paths.hidden)
        return Startup(self.backend, self.spec, self.scan, history, self.trace, trajectory, host_work_after=self.provider.wait_until_loaded)

    def _remove_stale(self) -> None:
        try:  # tidying up after others must never end this run
            for stale in self.backend.remove_stale():
                self.trace.note(f"removed sandbox {stale} left by an airlock process that is gone")
        except Exception as exc:
            self.trace.note(f"could not remove stale sandboxes: {exc}")

    def _copy_repo(self, sandbox: Sandbox) -> CopyStats:
        """The repo's working tree into the sandbox, without hidden paths and the run's own output folder, plus
        what the setup phase created in it (when the sandbox starts from an environment)."""
        stats = sandbox.copy_in(self.scan)
        sandbox.restore_environment_files()
        return stats

    @property
    def phase(self) -> str:
        """What the run was doing: the startup's step until the sandbox is ready, then the run's own."""
        return self.startup.phase if self.startup is not None and not self.startup.ready else self._phase

    def _settle_startup(self) -> tuple[Sandbox | None, ToolChannel | None]:
        """The sandbox the startup made (cut short when the run failed or was interrupted), and what it copied in."""
        startup = self.startup
        if startup is None:
            return None, None
        sandbox, channel = startup.settle(abort=self.record.status in ("interrupted", "sandbox_error"))
        if startup.stats is not None:
            self.record.snapshot = vars(startup.stats)
        if startup.history is not None:
            self.record.snapshot["history"] = startup.history.record()
        return sandbox, channel

    def _with_cause(self, error: str, sandbox: Sandbox | None) -> str:
        """The error, with why the sandbox stopped working when the backend can tell: memory, removed, ..."""
        cause = sandbox.box.failure() if sandbox is not None else None
        if not cause or cause in error:
            return error
        if cause.startswith(OUT_OF_MEMORY):
            return f"{cause} while {self.phase}: raise --memory (the workspace of {human_size(self.spec.disk)} counts toward it)"
        return f"{error}: {cause}"

    def _sandbox_notes(self) -> str:
        """What the model is told about its sandbox, from what is known before it is ready."""
        policy = self.config.policy
        notes = [promise(self.config.repo, policy.sandbox.history_depth)]
        if self.record.snapshot.get("hidden"):
            count = len(self.record.snapshot["hidden"])
            notes.append(
                f"{count} file{'s' if count != 1 else ''} matching the policy's hidden paths ({', '.join(policy.paths.hidden)}) "
                "were withheld from this sandbox; a test that needs them may fail for that reason alone."
            )
        return "\n".join(f"- {note}" for note in notes)

    def _run_agent(self, startup: Startup, trajectory: Trajectory, deadline: float) -> None:
        limits = self.config.policy.limits
        agent_limits = Limits(
            limits.max_steps, limits.command_timeout, deadline, self.context_window, limits.max_output_chars,
            limits.max_reply_tokens or self.provider.default_reply_tokens, limits.max_repeated_calls,
        )  # fmt: skip
        replay = self.continuation.replay if self.continuation is not None else None
        self.agent = Agent(self.provider, startup, agent_limits, self.trace, trajectory, self.guard, sandbox_notes=self._sandbox_notes(), replay=replay)
        self.record.status = self.agent.run(self._first_message())
        if self.record.status == "max_steps":
            self.guard.record("limits.max_steps", f"the run reached max_steps = {limits.max_steps}")
        elif self.record.status == "timeout":
            self.guard.record("limits.timeout", f"the run reached its wall-clock limit of {limits.timeout:g} s")

    def _first_message(self) -> str:
        """The task; for one attempt of several, with its number, so attempts that share a cached prefix still differ."""
        attempt = self.config.attempt
        if attempt is None:
            return self.config.task
        return f"{self.config.task}\n\n(This is attempt {attempt.number} of {attempt.of} at this task, each in its own sandbox.)"

    def _fail(self, status: Status, error: str) -> None:
        self.record.status = status
        self.record.error = error

    def _finish(self, sandbox: Sandbox, channel: ToolChannel | None, trajectory: Trajectory) -> None:
        """Export the patch (when the baseline exists) and remove the agent's sandbox; whatever fails, the run's
        first error stays its error."""
        try:
            if sandbox.ready:
                self._export(sandbox)
        except Exception as exc:  # a bug of ours on a patch nobody foresaw included: recorded, never raised
            if self.record.error is None:
                self._record_failure(exc, sandbox, trajectory)
            else:  # the run keeps its first error, but an empty patch must not be a mystery
                why = str(exc) if isinstance(exc, SandboxError) else f"internal error: {type(exc).__name__}: {exc}"
                trajectory.write("export_failed", error=why)
                self.trace.note(f"the patch could not be exported either: {why}")
        finally:
            if channel is not None:
                channel.close()
            self._remove(sandbox)

    def _remove(self, sandbox: Sandbox | None) -> None:
        try:
            if sandbox is not None:
                sandbox.remove()
        except SandboxError as exc:
            self.record.error = self.record.error or str(exc)

    def _export(self, sandbox: Sandbox) -> None:
        self._phase = "exporting the patch"
        try:
            raw, unrecorded = sandbox.export_patch(timeout=EXPORT_TIMEOUT_S)
        except SandboxError as exc:
            raise SandboxError(self._with_cause(str(exc), sandbox)) from None
        checked = check_patch(raw, refuse=self.guard.refuse_change)
        checked.refused += _unrecorded_refusals(unrecorded)
        details = checked.to_record()
        self.record.patch = PatchRecord(**checked.stats(), changes=details["changes"], refused=details["refused"], exported=True)
        for refusal in checked.refused:
            self.console.print("[red]refused from the patch:[/]", safe(f"{refusal.path}: {refusal.reason}"))
        if too_large := self._over_patch_limits(checked.patch, len(checked.changes)):
            # Kept for inspection, but not handed out as the run's patch.
            (self.config.out / "patch.rejected.diff").write_bytes(checked.patch)
            self.guard.record("limits.patch", f"{too_large}; kept as patch.rejected.diff, patch.diff left empty")
            self._fail("patch_rejected", too_large)
            return
        (self.config.out / "patch.diff").write_bytes(checked.patch)

    def _over_patch_limits(self, patch: bytes, files: int) -> str | None:
        limits = self.config.policy.limits
        if len(patch) > limits.max_patch_bytes:
            return f"the patch is {len(patch):,} bytes, over the policy's max_patch_bytes of {limits.max_patch_bytes:,}"
        if files > limits.max_patch_files:
            return f"the patch changes {files} files, over the policy's max_patch_files of {limits.max_patch_files}"
        return None

    def _close_record(self, started: float) -> None:
        record = self.record
        if record.status == "running":  # an exception we did not expect: still record what we know
            self._fail("sandbox_error", "the run stopped unexpectedly")
        record.duration_s = round(time.monotonic() - started + (self.continuation.elapsed_s if self.continuation is not None else 0.0), 2)
        if self.agent is not None:
            record.steps, record.tool_calls = self.agent.steps, self.agent.tool_calls
        record.usage = self.provider.usage.model_copy()
        record.served_model = self.provider.served_model()
        record.cost_usd = self.guard.cost(self.provider.usage)
        record.policy_events = self.guard.events
        record.save(self.config.out)
