"""`airlock batch`: many tasks, each a real `airlock run` in its own process and sandbox, up to --jobs at once.

The scheduler is a poll loop: start runs while there are free slots, follow each run's trajectory for
the live display and the money spent, notice runs that ended, and apply the batch-wide rules:

- resume: a task whose run.json has a final status is not run again (unless --redo); an unfinished
  one (`running`: killed; `interrupted`: Ctrl-C; its engine lost) goes on with `airlock resume`, its
  recorded steps replayed (with --restart, or when its definition changed: it runs again from the start,
  its earlier folder moved to .previous/);
- the total cost budget: once reached, nothing new starts and every running task is asked, through
  its stop file, to stop after its current step (it ends `budget_exceeded`);
- the shared 429 backoff: while the API has asked to wait, no new task starts either (the runs
  themselves wait through orchestrator.providers.backoff);
- Ctrl-C: every run is interrupted (they save their patch and remove their sandbox), waited for within
  a bound, killed past it, and their sandboxes removed by label; the summary is still written;
- engines (orchestrator.batch.placement): each task runs on the engine with the most room; one that stops
  answering gets no new task, and its failed tasks are marked to run again on resume.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from orchestrator.batch.interrupts import counted_interrupts
from orchestrator.batch.job import ATTEMPTS_DIR, UNFINISHED, Job, read_record
from orchestrator.batch.placement import Engine, mark_lost, pick, room, was_lost
from orchestrator.batch.progress import BatchDisplay, Overview, Row, money
from orchestrator.batch.repo_source import CloneError, RepoCache
from orchestrator.batch.summary import print_table, task_row, totals, write_json, write_predictions
from orchestrator.batch.tasks import BatchTask, Defaults, load_tasks
from orchestrator.errors import SandboxError, UsageError
from orchestrator.policy.model import load_policy
from orchestrator.providers.backoff import SharedBackoff
from orchestrator.sandbox.backends import get_backend
from orchestrator.sandbox.spec import SandboxSpec
from orchestrator.sizes import plural
from orchestrator.terminal import safe

POLL_S = 0.3
INTERRUPT_GRACE_S = 30.0  # a run saves its patch and removes its sandbox within seconds of a Ctrl-C
ACTIVE = ("cloning", "running")


@dataclass(frozen=True)
class BatchOptions:
    out: Path
    jobs: int = 2
    max_total_cost: float | None = None
    redo: bool = False
    resume: bool = True  # unfinished tasks go on from their recorded steps; False: they start over
    cache: Path | None = None  # default: OUT/.cache/repos
    allowed_protocols: tuple[str, ...] = ("https",)
    engines: tuple[Engine, ...] = ()  # default: DOCKER_HOST's engine, --jobs tasks at once


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Batch:
    def __init__(self, tasks: list[BatchTask], options: BatchOptions, console: Console, invalid: list[str] | None = None) -> None:
        self.options = options
        self.jobs = [Job(task, options.out / task.id) for task in tasks]
        self.console = console
        self.display = BatchDisplay(console, live=console.is_terminal and not console.is_dumb_terminal)
        self.invalid = invalid or []
        self.cache = RepoCache(options.cache or options.out / ".cache" / "repos", options.allowed_protocols)
        self.interrupts = 0
        self.budget_reached = False
        self.notice: str | None = None
        self._backoff_seen: float | None = None
        self._started = time.monotonic()
        self.engines = list(options.engines) or [Engine("docker", None, options.jobs)]
        self._checks: dict[Engine, Future[str | None]] = {}  # engines being asked whether they still answer
        # Set by run(): the folder of task texts, stop files and the shared backoff file; the clone threads.
        self.coordination: Path
        self.backoff: SharedBackoff
        self.executor: ThreadPoolExecutor

    # --- the whole batch -------------------------------------------------------------------------------

    def run(self) -> int:
        """Run the batch; returns the exit code (0 all completed, 1 some did not, 130 interrupted)."""
        started_at = _now()
        with self._results_lock(), self._signals(), tempfile.TemporaryDirectory(prefix="airlock-batch-") as coordination:
            self.coordination = Path(coordination)  # task texts, stop files and the shared backoff file
            self.backoff = SharedBackoff(self.coordination / "rate-limit")
            workers = sum(engine.jobs for engine in self.engines) + len(self.engines)  # clones, and engine checks
            self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="airlock-batch")
            try:
                with self.display:
                    self._resume()
                    if any(job.state == "queued" for job in self.jobs):
                        self._prepare_engines()
                    try:
                        self._loop()
                    except BaseException:  # a bug of ours: never leave runs or sandboxes behind
                        self._stop_runs()
                        raise
            finally:
                self.cache.abort()
                self.executor.shutdown(wait=True, cancel_futures=True)
            return self._finish(started_at)

    def _loop(self) -> None:
        while True:
            self._poll()
            if self.interrupts:
                self._stop_runs()
                return
            self._apply_budget()
            self._start_more()
            if not any(job.state in ("queued", *ACTIVE) for job in self.jobs):
                return
            self.display.update(self._overview())
            time.sleep(POLL_S)

    def _finish(self, started_at: str) -> int:
        rows = [task_row(job) for job in self.jobs]
        sums = totals(rows, time.monotonic() - self._started)
        code = 130 if self.interrupts else (0 if all(job.succeeded for job in self.jobs) else 1)
        out = self.options.out
        write_json(out / "summary.json", {
            "tasks": rows, "totals": sums, "started_at": started_at, "finished_at": _now(), "exit_code": code,
            "interrupted": bool(self.interrupts), "max_total_cost": self.options.max_total_cost, "budget_reached": self.budget_reached,
            "invalid": self.invalid,
        })  # fmt: skip
        predictions = write_predictions(out / "predictions.jsonl", self.jobs)
        print_table(self.console, rows, sums)
        where = f"summary: {out / 'summary.json'} · predictions ({predictions}): {out / 'predictions.jsonl'}"
        self.console.print(where, markup=False, highlight=False, soft_wrap=True)
        return code

    # --- resume ----------------------------------------------------------------------------------------

    def _resume(self) -> None:
        """Tasks finished by an earlier invocation are kept as they are, unless --redo or their definition changed."""
        for job in self.jobs:
            record = read_record(job.out)
            if record is None or self.options.redo:
                continue
            if changed := job.changed_since_run():
                self.display.log(f"{safe(job.id).markup} runs again: its definition changed since its earlier run ({safe(', '.join(changed)).markup})")
                continue
            if record.get("status") in UNFINISHED or was_lost(job.out):
                # A run of several attempts starts over: `airlock resume` goes on with one run, not with attempts.
                job.resume_earlier = self.options.resume and job.task.attempts == 1 and (job.out / "trajectory.jsonl").is_file()
                continue
            job.state, job.record, job.status, job.error = "skipped", record, record.get("status"), record.get("error")
            self.display.log(f"{safe(job.id).markup} skipped: finished earlier ({safe(job.status).markup})")

    # --- one poll ------------------------------------------------------------------------------------------

    def _poll(self) -> None:
        for job in self.jobs:
            if job.state == "running":
                for step in job.read_progress():
                    self.display.step(job.id, step)
                if job.proc is not None and job.proc.poll() is not None:
                    job.finish(interrupted=bool(self.interrupts))
                    self._ended(job)
            elif job.state == "cloning" and job.clone is not None and job.clone.done():
                self._cloned(job)
        for engine, check in list(self._checks.items()):
            if check.done():
                del self._checks[engine]
                self._checked(engine, check.result())

    def _cloned(self, job: Job) -> None:
        try:
            repo = job.clone.result() if job.clone is not None else None
        except CloneError as exc:
            job.not_started(str(exc), status="clone_failed")
            self._ended(job)
            return
        if repo is None or self.interrupts or self.budget_reached:
            job.not_started(self._why_not_started())
            return
        self._launch(job, repo)

    def _start_more(self) -> None:
        if self.interrupts or self.budget_reached:
            return
        if (wait := self.backoff.remaining()) > 0:
            deadline = self.backoff.deadline()
            if deadline != self._backoff_seen:
                self._backoff_seen = deadline
                self.display.log(f"[yellow]rate limited by the API (429): no new task starts for {wait:.1f} s[/]")
            return
        busy = [job.engine for job in self.jobs if job.state in ACTIVE and job.engine is not None for _ in range(job.slots)]
        for job in [job for job in self.jobs if job.state == "queued"]:
            if all(engine.down for engine in self.engines):
                job.not_started("not started: every engine stopped answering")
                continue
            if (engine := pick(self.engines, busy)) is None:
                break
            slots = min(job.task.attempts, engine.jobs)  # a task of several attempts runs as many at once as its engine allows
            if room(engine, busy) < slots:
                break  # in order: it waits for the room, rather than be overtaken for ever
            busy += [engine] * slots
            job.engine, job.slots = engine, slots
            if job.task.url is not None:
                job.state = "cloning"
                job.clone = self.executor.submit(self.cache.fetch, job.task.url, job.task.ref)
                self.display.log(f"{safe(job.id).markup} cloning {safe(job.task.repo).markup}" + (f" at {safe(job.task.ref).markup}" if job.task.ref else ""))
            else:
                assert job.task.path is not None
                self._launch(job, job.task.path)

    def _launch(self, job: Job, repo: Path) -> None:
        try:
            job.start(repo, self.coordination, self.backoff.path, resume=job.resume_earlier)
        except OSError as exc:  # e.g. the results folder is not writable: this task fails, not the batch
            job.not_started(f"could not start the run: {exc}", status="crashed")
            self._ended(job)
            return
        moved = (
            f" (its earlier run is kept in {job.moved_to})" if job.moved_to else " (resuming its earlier run from its recorded steps)" if job.resumed else ""
        )
        where = f" on {job.engine.label}" if job.engine is not None and len(self.engines) > 1 else ""
        self.display.log(f"{safe(job.id).markup} started{safe(where + moved).markup}")

    def _ended(self, job: Job) -> None:
        record = job.record or {}
        verify = record.get("verify") or {}
        verdict = "" if not verify or verify.get("skipped") else f" (verify {'passed' if verify.get('passed') else 'failed'})"
        files = (record.get("patch") or {}).get("files_changed", 0)
        steps = record.get("steps", job.step)
        details = f"{plural(steps, 'step')}, {plural(files, 'file')}, {money(job.cost)}, {job.elapsed():.1f} s"
        style = "green" if job.succeeded else "red"
        error = f": {safe(job.error).markup}" if job.error and not job.succeeded else ""
        self.display.log(f"{safe(job.id).markup} [{style}]{safe(job.status).markup}[/]{verdict} · {details}{error}")
        if job.status == "crashed":  # a run that died uncleanly may have left its sandbox
            _remove_sandboxes_of([job])
        if job.status in ("sandbox_error", "crashed") and job.engine is not None:
            self._suspect(job.engine, job)
        self.display.progress(self._overview())

    # --- engines -----------------------------------------------------------------------------------------

    def _prepare_engines(self) -> None:
        """Fail the whole batch up front, with one line, when an engine does not answer; make each task's
        image present on each engine (a Docker engine that lacks it is sent this machine's)."""
        images = sorted({job.task.sandbox_image for job in self.jobs if job.state == "queued"})
        seen: dict[str, dict[str, str]] = {}  # image -> engine -> id
        for engine in self.engines:
            backend = get_backend(engine.backend, engine.location)
            backend.remove_stale()  # exit 3 with what to do when the engine does not answer
            for image in images:
                recorded = backend.prepare(SandboxSpec(image=image, run_id="batch"), lambda line: self.display.log(safe(line).markup))
                if "image_id" in recorded:
                    seen.setdefault(image, {})[engine.label] = recorded["image_id"]
        for image, ids in seen.items():
            if len(set(ids.values())) > 1:
                which = ", ".join(f"{where}: {image_id[7:19]}" for where, image_id in ids.items())
                self.display.log(f"[yellow]warning: the engines hold different images as {safe(image).markup} ({safe(which).markup})[/]")

    def _suspect(self, engine: Engine, job: Job) -> None:
        """A task failed on `engine`: if the engine itself stopped answering, the task is marked to run again."""
        if engine.down:
            self._lost(engine, job.out, job)
            return
        engine.suspects.append(job.out)
        if engine not in self._checks:
            self._checks[engine] = self.executor.submit(_why_down, engine)

    def _checked(self, engine: Engine, down: str | None) -> None:
        suspects, engine.suspects = engine.suspects, []
        if down is None:
            return
        engine.down = down
        running = sum(job.state == "running" and job.engine is engine for job in self.jobs)
        self.display.log(
            f"[red]engine {safe(engine.label).markup} stopped answering ({safe(down).markup})[/]: its {len(suspects) + running} task(s) fail "
            "and run again when the batch is resumed; the batch goes on on the other engines"
        )
        for out in suspects:
            self._lost(engine, out, next((job for job in self.jobs if job.out == out), None))

    def _lost(self, engine: Engine, out: Path, job: Job | None) -> None:
        mark_lost(out, engine)
        if job is not None:
            job.error = f"{job.error or job.status}; its engine {engine.label} stopped answering: a resumed batch runs it again"

    # --- batch-wide rules ------------------------------------------------------------------------------

    def _spent(self) -> float:
        return sum(job.cost or 0.0 for job in self.jobs if job.state in ("running", "done"))

    def _apply_budget(self) -> None:
        limit = self.options.max_total_cost
        if limit is None or self.budget_reached or (spent := self._spent()) < limit:
            return
        self.budget_reached = True
        reason = f"the batch's total cost ${spent:.4f} reached --max-total-cost ${limit:g}"
        self.notice = f"{reason}: no new task starts, running tasks stop after their current step"
        self.display.log(f"[yellow]{safe(self.notice).markup}[/]")
        for job in self.jobs:
            if job.state == "running":
                job.request_stop(self.coordination, reason)
            elif job.state in ("queued", "cloning"):
                if job.clone is not None:
                    job.clone.cancel()
                job.not_started(self._why_not_started())

    def _why_not_started(self) -> str:
        if self.interrupts:
            return "not started: the batch was interrupted"
        return f"not started: the batch reached --max-total-cost ${self.options.max_total_cost:g}"

    def _stop_runs(self) -> None:
        """Interrupt every run, wait for them to save their work (bounded), kill what is left, remove sandboxes."""
        self.interrupts = max(self.interrupts, 1)
        running = [job for job in self.jobs if job.state == "running"]
        self.display.log(f"[yellow]interrupted: stopping {len(running)} running task(s); each saves its patch and removes its sandbox[/]")
        self.cache.abort()
        for job in self.jobs:
            if job.state in ("queued", "cloning"):
                job.not_started(self._why_not_started())
        for job in running:
            job.interrupt()  # the process group may have had the Ctrl-C already: a second one is harmless
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        presses = self.interrupts
        while any(job.state == "running" for job in self.jobs) and time.monotonic() < deadline:
            if self.interrupts > presses:
                presses = self.interrupts
                self.display.log("[yellow]still finishing: the runs are saving their patches and removing their sandboxes[/]")
            time.sleep(POLL_S)
            self._poll()
        leftovers = [job for job in self.jobs if job.state == "running"]
        for job in leftovers:
            job.kill()
        for job in leftovers:
            job.finish(interrupted=True)
            job.error = f"killed after {INTERRUPT_GRACE_S:.0f} s: it did not stop after Ctrl-C"
            self._ended(job)
        _remove_sandboxes_of(leftovers)

    # --- plumbing ----------------------------------------------------------------------------------------

    def _overview(self) -> Overview:
        now = [job for job in self.jobs if job.state != "skipped"]
        finished = [job for job in now if job.state == "done" or job.status == "clone_failed"]
        view = Overview(
            total=len(self.jobs),
            finished=len(finished),
            failed=sum(not job.succeeded for job in finished),
            skipped=len(self.jobs) - len(now),
            running=sum(job.state in ACTIVE for job in now),
            queued=sum(job.state == "queued" for job in now),
            not_started=sum(job.state == "not_started" and job.status != "clone_failed" for job in now),
            elapsed=time.monotonic() - self._started,
            tokens=sum(job.usage.total() for job in now),
            cost=sum(job.cost or 0.0 for job in now),
            cost_unknown=any(job.cost is None and job.state in ("running", "done") for job in now),
            backoff=self.backoff.remaining(),
            notice=self.notice,
        )
        if finished and (left := view.queued + view.running) and not (self.interrupts or self.budget_reached):
            view.eta = view.elapsed / len(finished) * left  # throughput so far, parallelism included
        view.rows = [Row(job.id, job.state, job.step, job.activity, job.elapsed(), job.usage.total(), job.cost) for job in now if job.state in ACTIVE]
        return view

    def _signals(self) -> contextlib.AbstractContextManager[None]:
        """Ctrl-C (or SIGTERM) asks the loop to stop the runs cleanly instead of raising mid-way."""
        return counted_interrupts(self._interrupted)

    def _interrupted(self) -> None:
        self.interrupts += 1

    @contextlib.contextmanager
    def _results_lock(self) -> Iterator[None]:
        """One batch at a time per results folder: two would run the same tasks into the same folders."""
        out = self.options.out
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out must be a folder, not a file: {out}")
        out.mkdir(parents=True, exist_ok=True)
        with open(out / ".batch.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"another airlock batch is using {out}; wait for it or choose another --out") from None
            yield


def _why_down(engine: Engine) -> str | None:
    """None if the engine answers (tidying up its abandoned sandboxes on the way), else why not."""
    try:
        get_backend(engine.backend, engine.location).remove_stale()
    except SandboxError as exc:
        return getattr(exc, "cause", None) or str(exc)
    except Exception as exc:  # whatever the client raises for a half-dead engine
        return f"{type(exc).__name__}: {exc}"
    return None


def _remove_sandboxes_of(jobs: list[Job]) -> None:
    """Remove the sandboxes of runs that died or were killed, and any other abandoned one; never fails the batch."""
    by_engine: dict[Engine | None, list[str]] = {}
    for job in jobs:
        for folder in [job.out, *sorted((job.out / ATTEMPTS_DIR).glob("*/"))]:  # a task of several attempts: each is a run
            if (record := read_record(folder)) and "run_id" in record:
                by_engine.setdefault(job.engine, []).append(str(record["run_id"]))
    for engine, runs in by_engine.items():
        if engine is not None and engine.down:
            continue  # gone: `airlock gc` there removes them once it is back
        with contextlib.suppress(Exception):  # tidying up must never fail the batch; `airlock gc` can finish it
            backend = get_backend(engine.backend, engine.location) if engine is not None else get_backend()
            backend.remove_stale(runs=runs)


_PROTOCOL = re.compile(r"^[a-z][a-z0-9+.-]*$")


def check_protocols(names: list[str]) -> tuple[str, ...]:
    for name in names:
        if not _PROTOCOL.match(name):
            raise UsageError(f"--allow-protocol {name!r} is not a git protocol name (https, ssh, git, file, ...)")
        if name == "ext":  # ext:: runs any command the URL names, on the host
            raise UsageError("--allow-protocol ext is refused: an ext:: URL runs a command on this machine")
    return tuple(dict.fromkeys(names))


def run_batch(tasks_file: Path, defaults: Defaults, options: BatchOptions, *, skip_invalid: bool, console: Console, err_console: Console) -> int:
    """Check the whole tasks file, then run the batch; every problem is listed before anything starts."""
    if defaults.policy is not None:
        load_policy(defaults.policy)  # a bad --policy is one problem, not one per task
    loaded = load_tasks(tasks_file, defaults)
    for problem in loaded.problems:
        err_console.print(safe(problem), highlight=False)
    for task in loaded.tasks:
        if task.held:
            held = "; ".join(task.held)
            err_console.print(safe(f"{tasks_file}:{task.line}: note: {task.id} runs within the operator's policy, not beyond it: {held}"), highlight=False)
    if loaded.problems and not skip_invalid:
        n = len(loaded.problems)
        raise UsageError(f"{n} problem{'s' if n > 1 else ''} in {tasks_file}: nothing was run (fix them, or run the valid tasks with --skip-invalid)")
    if loaded.problems:
        err_console.print(f"airlock: warning: skipping the invalid entries above; running the {len(loaded.tasks)} valid task(s)", markup=False)
    if not loaded.tasks:
        raise UsageError(f"no valid task to run in {tasks_file}")
    return Batch(loaded.tasks, options, console, invalid=loaded.problems).run()
