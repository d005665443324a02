"""`make bench`: airlock's speed and memory next to baselines measured in the same run, on this machine.

Every figure comes from the real CLI (`airlock run`, `airlock batch`) against the scripted model server,
which answers at once and says how long each answer took, so what remains is airlock's own time:

- start-up: CLI start to the first model request, and to the first tool result (the sandbox ready), on
  the calculator repo and on a synthetic repo of 5,000 files with a 500 MB history (bench/repos.py),
  its history pack made afresh and taken from the cache; baseline: `docker run --rm --network none IMAGE true`;
- the end: the last model reply to the CLI's exit (patch written, container gone);
- a step: the loop's own time per step (a model that answers at once, a trivial tool call), that is the
  step minus the server's answer and the command's own run time; baseline: one `docker exec`;
- what stands in the way of those two goals (bench/breakdown.py): the imports on the way to the first
  model request, and the model SDK's and HTTP's share of a step;
- the tool call round trip: the persistent tool server against one `docker exec` per call;
- memory: the history the sandbox holds for each --git-history, and the sandbox's peak memory;
- a batch: 8 tasks on the big repo with --jobs 4, its wall time and peak host and sandbox memory;
- the tool call and start-up under gVisor's runsc too, when it is registered;
- --image on an image without Python, git or tar (bench/foreign_image.py): adding the tool runtime once,
  and the start-up on it against the sandbox image;
- the setup phase (bench/setup_phase.py): building an environment from the real package index, a cache
  hit's start-up against the same run without setup, and the environment's size;
- tokens (bench/tokens.py): input billed per step, cached and trimmed, against a loop that does neither;
- the host side of a batch (bench/host.py): memory and CPU per concurrent task, against a fresh interpreter per run.

Numbers, not pass/fail: machines are noisy, so nothing here is asserted; the goals are printed beside them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

from bench import breakdown, foreign_image, host, setup_phase, tokens
from bench.repos import synthetic_repo, tree_bytes
from orchestrator.batch.job import DEFINITION_NAME
from orchestrator.demo import CALCULATOR_REPO
from orchestrator.providers.scripted import ScriptedModelServer, Turn, reply, text, tool_use
from orchestrator.run.config import new_run_id
from orchestrator.sandbox.docker_backend import DockerBackend
from orchestrator.sandbox.driver import Sandbox
from orchestrator.sandbox.repo_tar import scan_repo
from orchestrator.sandbox.spec import DEFAULT_IMAGE, SandboxSpec

CALLS = 60
STARTS = 3
STEPS = 60
BATCH_TASKS, BATCH_JOBS = 8, 4
LABEL = {"airlock.bench": "1"}
OWNER = f"bench-{os.getpid()}"
MiB = 1024**2


@dataclass
class Row:
    measure: str
    airlock: str
    baseline: str
    goal: str = ""


def _ms(seconds: list[float]) -> str:
    return f"{statistics.median(seconds) * 1000:.0f} ms"


def _s(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):.2f} s"


def _mib(size: float) -> str:
    return f"{size / MiB:,.0f} MiB" if size >= 10 * MiB else f"{size / MiB:.1f} MiB"


# --- one `airlock run`, timed from outside --------------------------------------------------------------------


@dataclass
class Timed:
    first_request: float  # CLI start -> the first model request reaching the server
    first_result: float  # CLI start -> the second request, which carries the first tool result
    exit: float  # the last answer sent -> the CLI gone
    peak_sandbox: int  # bytes, the sandbox's peak memory as its cgroup counted it (0 if unknown)
    history_bytes: int


def run_once(repo: Path, *extra: str, cache: Path, cwd: Path | None = None) -> Timed:
    """`airlock run` with a tool call then the end; the run must complete. `cwd`: where `python -m orchestrator` is found."""
    marks: dict[str, float] = {}

    def first(request: dict[str, Any]) -> Any:
        marks["first"] = time.monotonic()
        return reply(tool_use("run_bash", command="true"))

    def last(request: dict[str, Any]) -> Any:
        marks["second"] = time.monotonic()
        return reply(text("done"))

    with ScriptedModelServer([first, last]) as api, tempfile.TemporaryDirectory() as out, PeakMemory() as peak:
        run_env = {**os.environ, "ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": api.base_url, "AIRLOCK_CACHE": str(cache), "AIRLOCK_OWNER": OWNER}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", "run", str(repo), "--task", "bench", "--out", f"{out}/run", *extra],
            env=run_env, capture_output=True, text=True, timeout=900, cwd=cwd,
        )  # fmt: skip
        ended = time.monotonic()
        record = json.loads(Path(f"{out}/run/run.json").read_text()) if Path(f"{out}/run/run.json").exists() else {}
        if done.returncode != 0 or "second" not in marks:
            raise RuntimeError(f"the benchmark run failed ({done.returncode}): {(done.stdout + done.stderr)[-1500:]}")
        answered = marks["second"] + api.handling[-1]
    history = (record.get("snapshot") or {}).get("history") or {}
    return Timed(marks["first"] - started, marks["second"] - started, ended - answered, peak.bytes, int(history.get("pack_bytes") or 0))


class PeakMemory:
    """The highest memory any of the bench's sandboxes reached, read from its cgroup while it lives."""

    def __init__(self) -> None:
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._client = docker.from_env()

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            try:
                boxes = self._client.containers.list(filters={"label": f"airlock.owner={OWNER}"})
            except docker.errors.DockerException:
                continue
            for box in boxes:
                self.bytes = max(self.bytes, _cgroup_peak(box.id))


def _cgroup_peak(container_id: str) -> int:
    for path in (
        f"/sys/fs/cgroup/memory/docker/{container_id}/memory.max_usage_in_bytes",  # cgroup v1
        f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/memory.peak",  # cgroup v2, systemd
        f"/sys/fs/cgroup/docker/{container_id}/memory.peak",  # cgroup v2, cgroupfs
    ):
        try:
            return int(Path(path).read_text())
        except (OSError, ValueError):
            continue
    return 0


# --- the measures ---------------------------------------------------------------------------------------------


def bare_container_start(client: docker.DockerClient, runtime: str = "runc") -> list[float]:
    times = []
    for _ in range(STARTS):
        started = time.monotonic()
        client.containers.run(DEFAULT_IMAGE, ["true"], remove=True, network_mode="none", runtime=runtime, labels=LABEL)
        times.append(time.monotonic() - started)
    return times


def tool_round_trip(client: docker.DockerClient, runtime: str) -> tuple[list[float], list[float]]:
    spec = SandboxSpec(image=DEFAULT_IMAGE, run_id=f"bench-{new_run_id()}", runtime=runtime)
    box = DockerBackend(client=client).start(spec)
    sandbox = Sandbox(box, spec)
    try:
        _, channel = sandbox.start(scan_repo(CALCULATOR_REPO))
        server, per_exec = [], []
        for _ in range(CALLS):
            started = time.monotonic()
            channel.call("run_bash", {"command": "true"}, timeout=30)
            server.append(time.monotonic() - started)
            started = time.monotonic()
            box.container.exec_run(["bash", "-c", "true"], user="1000:1000", workdir="/workspace")
            per_exec.append(time.monotonic() - started)
        channel.close()
    finally:
        sandbox.remove()
    return server, per_exec


def time_to_first_request(repo: Path = CALCULATOR_REPO, *options: str) -> list[float]:
    times = []
    for _ in range(STARTS):
        first = threading.Event()

        def answer(request: dict, first: threading.Event = first) -> dict:
            first.set()
            return reply(text("done"))

        with ScriptedModelServer([answer]) as api, tempfile.TemporaryDirectory() as out:
            env = {**os.environ, "ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": api.base_url}
            started = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "run", str(repo), "--task", "bench", "--out", str(Path(out) / "run"), *options],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            first.wait(120)
            times.append(time.perf_counter() - started)
            proc.wait(120)
    return times


def step_overhead(call: Callable[[], dict[str, Any]], cache: Path) -> float:
    """Seconds per step that are airlock's own: the step, less the server's answer and the tool's own run."""
    turns: list[Turn] = [reply(call()) for _ in range(STEPS)] + [reply(text("done"))]
    with ScriptedModelServer(turns) as api, tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": api.base_url, "AIRLOCK_CACHE": str(cache), "AIRLOCK_OWNER": OWNER}
        policy = Path(out) / "policy.toml"  # the same call again and again is the point here, not a loop to stop
        policy.write_text(f"[limits]\nmax_repeated_calls = {STEPS + 5}\n")
        command = [
            sys.executable, "-m", "orchestrator", "run", str(CALCULATOR_REPO), "--task", "bench", "--out", f"{out}/run",
            "--max-steps", str(STEPS + 5), "--policy", str(policy),
        ]  # fmt: skip
        subprocess.run(command, env=env, capture_output=True, timeout=900, check=True)
        events = [json.loads(line) for line in Path(f"{out}/run/trajectory.jsonl").read_text().splitlines()]
        arrivals, handling = list(api.times), list(api.handling)
    skip = 5  # the first steps wait for the sandbox
    tools = [e["meta"].get("duration_ms", 0) / 1000 for e in events if e["type"] == "tool_call"][skip:]
    steps = len(arrivals) - 1 - skip
    per_step = (arrivals[-1] - arrivals[skip]) / steps
    return per_step - statistics.mean(handling[skip:-1]) - statistics.mean(tools)


@dataclass
class BatchTimes:
    wall: float
    host_peak: int
    sandbox_peak: int
    to_first_result: list[float]  # per task: the scheduler picking it -> its first tool result back on the host


def run_batch(repo: Path, history: str, cache: Path) -> BatchTimes:
    """Wall time, peak host memory (the batch and its runs) and peak sandbox memory of 8 tasks, 4 at a time,
    and each task's start: from the moment the scheduler picked it (it writes the task's batch-task.json then)
    to its first tool result reaching the host (the second model request, which carries it)."""
    with tempfile.TemporaryDirectory() as tmp:
        tasks = Path(tmp) / "tasks.jsonl"
        tasks.write_text("".join(json.dumps({"id": f"t{n}", "repo": str(repo), "task": f"bench [t{n}]"}) + "\n" for n in range(BATCH_TASKS)))
        scripts = {f"[t{n}]": [reply(tool_use("run_bash", command="git log --oneline | wc -l")), reply(text("done"))] for n in range(BATCH_TASKS)}
        with ScriptedModelServer(scripts) as api, PeakMemory() as sandboxes:
            env = {**os.environ, "ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": api.base_url, "AIRLOCK_CACHE": str(cache), "AIRLOCK_OWNER": OWNER}
            policy = Path(tmp) / "policy.toml"
            policy.write_text(f'[sandbox]\ngit_history = "{history}"\n')
            command = [sys.executable, "-m", "orchestrator", "batch", str(tasks), "--out", f"{tmp}/out", "--jobs", str(BATCH_JOBS), "--policy", str(policy),
                       "--repos-root", str(repo.parent)]  # fmt: skip
            started = time.monotonic()
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            host_peak = _tree_peak_rss(proc)
            wall = time.monotonic() - started
        if proc.returncode != 0:
            raise RuntimeError(f"the benchmark batch failed with exit code {proc.returncode}")
        wall_to_monotonic = time.time() - time.monotonic()  # one system-wide monotonic clock: the server's times are on it
        starts = []
        for n in range(BATCH_TASKS):
            picked = (Path(tmp) / "out" / f"t{n}" / DEFINITION_NAME).stat().st_mtime - wall_to_monotonic
            second = sorted(t for t, _ in api.for_marker(f"[t{n}]"))[1]
            starts.append(second - picked)
    return BatchTimes(wall, host_peak, sandboxes.bytes, starts)


def _tree_peak_rss(proc: subprocess.Popen[bytes]) -> int:
    """Wait for `proc`; the highest sum of the resident memory of it and its descendants, sampled."""
    peak = 0
    while proc.poll() is None:
        peak = max(peak, sum(_rss(pid) for pid in host.descendants(proc.pid)))
        time.sleep(0.1)
    return peak


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --- the table ------------------------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    widths = [max(len(getattr(row, name)) for row in rows) for name in ("measure", "airlock", "baseline")]
    header = Row("measure", "airlock", "baseline (same run)", "goal")
    for row in [header, *rows]:
        print(f"  {row.measure:<{widths[0]}}  {row.airlock:>{max(widths[1], 7)}}  {row.baseline:<{max(widths[2], 19)}}  {row.goal}")
    print()


def main() -> None:
    client = docker.from_env()
    print(f"airlock bench on {os.cpu_count()} cores, image {DEFAULT_IMAGE}; load average {os.getloadavg()[0]:.1f}\n")
    with tempfile.TemporaryDirectory(prefix="airlock-bench-") as tmp:
        work = Path(tmp)
        print("making the synthetic repo (5,000 files, 500 MB of history)…", flush=True)
        big = synthetic_repo(work / "big")
        tree, dot_git = tree_bytes(big)
        rows: list[Row] = []

        bare = bare_container_start(client)
        small = [run_once(CALCULATOR_REPO, cache=work / "cache") for _ in range(STARTS)]
        rows.append(
            Row(
                "small repo: CLI start -> first model request",
                _s([t.first_request for t in small]),
                f"docker run true {_s(bare)}",
                "<= 1.0 s, <= 3x docker run",
            )
        )
        rows.append(Row("small repo: CLI start -> first tool result", _s([t.first_result for t in small]), f"docker run true {_s(bare)}"))
        for module, what in (("anthropic", "the anthropic SDK"), ("docker", "docker-py"), ("orchestrator.cli", "airlock's CLI")):
            rows.append(Row(f"  on the way: importing {what}", f"{breakdown.import_seconds(module):.2f} s", "a fresh interpreter"))
        cold = [run_once(big, cache=work / f"cold-{n}") for n in range(3)]
        warm = [run_once(big, cache=work / "warm") for _ in range(STARTS)]
        rows.append(Row("big repo: CLI start -> first model request", _s([t.first_request for t in warm]), f"docker run true {_s(bare)}", "<= 2.0 s"))
        rows.append(Row("  on the way: walking its tree (what to copy, what is hidden)", f"{breakdown.scan_seconds(big):.2f} s", "in this process"))
        rows.append(Row("big repo: CLI start -> first tool result (history made)", _s([t.first_result for t in cold]), f"docker run true {_s(bare)}"))
        rows.append(Row("big repo: CLI start -> first tool result (history cached)", _s([t.first_result for t in warm[1:]]), f"docker run true {_s(bare)}"))
        rows.append(Row("last model reply -> CLI exit (small repo)", _s([t.exit for t in small]), "", "<= 0.4 s"))
        rows.append(Row("last model reply -> CLI exit (big repo)", _s([t.exit for t in warm]), ""))

        runtimes = ["runc", *(["runsc"] if "runsc" in (client.info().get("Runtimes") or {}) else [])]
        for runtime in runtimes:
            server, per_exec = tool_round_trip(client, runtime)
            rows.append(Row(f"tool call round trip (bash -c true), {runtime}", _ms(server), f"docker exec {_ms(per_exec)}"))
            if runtime == "runc":
                exec_s = statistics.median(per_exec)
            else:  # gVisor's cost at start-up, beside its own bare container
                gvisor = [run_once(CALCULATOR_REPO, "--runtime", runtime, cache=work / "cache") for _ in range(STARTS)]
                rows.append(
                    Row(
                        f"small repo, {runtime}: CLI start -> first tool result",
                        _s([t.first_result for t in gvisor]),
                        f"docker run true {_s(bare_container_start(client, runtime))}",
                    )
                )
        overheads = []
        for name, call in (("run_bash true", lambda: tool_use("run_bash", command="true")), ("read_file", lambda: tool_use("read_file", path="calculator.py"))):
            overheads.append(overhead := statistics.median(step_overhead(call, work / "cache") for _ in range(3)))
            rows.append(
                Row(
                    f"one step's own overhead ({name})",
                    f"{overhead * 1000:.1f} ms",
                    f"docker exec {exec_s * 1000:.0f} ms",
                    f"<= 5 ms, <= 0.10x docker exec ({overhead / exec_s:.2f}x)",
                )
            )
        sdk, http = breakdown.sdk_and_http_seconds(STEPS // 2)  # the middle of the step-overhead runs
        rows.append(Row(f"  of which the model SDK's own work per request ({STEPS // 2} steps in)", f"{sdk * 1000:.1f} ms", "messages.create less a POST"))
        rows.append(Row("  of which HTTP to the local server", f"{http * 1000:.1f} ms", "a POST less the server's time"))
        rows.append(Row("  airlock's own part of a step (run_bash true)", f"{(overheads[0] - sdk - http) * 1000:.1f} ms", "", "<= 5 ms"))

        for history in ("recent", "none", "full"):
            timed = run_once(big, "--git-history", history, cache=work / "warm")
            rows.append(Row(f"big repo, --git-history {history}: history in the sandbox", _mib(timed.history_bytes), f"its .git {_mib(dot_git)}"))
            rows.append(Row(f"big repo, --git-history {history}: peak sandbox memory", _mib(timed.peak_sandbox), f"tree {_mib(tree)}"))

        calculators = run_batch(CALCULATOR_REPO, "recent", work / "warm")
        what = f"small repo, batch of {BATCH_TASKS}, --jobs {BATCH_JOBS}"
        rows.append(
            Row(f"{what}: task picked -> first tool result", _s(calculators.to_first_result), f"docker run true {_s(bare)}", "<= 0.3 s (needs the warm pool)")
        )
        rows.append(Row(f"{what}: wall time", f"{calculators.wall:.1f} s", ""))
        for history in ("recent", "full"):
            times = run_batch(big, history, work / "warm")
            what = f"batch of {BATCH_TASKS}, --jobs {BATCH_JOBS}, --git-history {history}"
            rows.append(Row(f"{what}: wall time", f"{times.wall:.1f} s", ""))
            rows.append(Row(f"{what}: peak host memory", _mib(times.host_peak), ""))
            rows.append(Row(f"{what}: peak memory of one sandbox", _mib(times.sandbox_peak), ""))
        print_table(rows)
        print()
        foreign_image.main(run_once, work / "cache")
    setup_phase.main(time_to_first_request, _ms)
    tokens.main()
    host.main()


if __name__ == "__main__":
    main()
