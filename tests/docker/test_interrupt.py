"""Ctrl-C and killed orchestrators: the real CLI in a subprocess, a real sandbox busy with `sleep 300`.

Ctrl-C (once, twice, or hammered) must end the run with exit 130 within seconds, the work done so far
in patch.diff, run.json saying `interrupted`, and no container left. A SIGKILLed orchestrator cannot
clean up: its container stays, and `airlock gc` or the next `airlock run` removes it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from helpers import PROJECT, airlock, airlock_env

from orchestrator.providers.scripted import ScriptedModelServer, reply, text, tool_use

CHANGE = "written before the interrupt\n"
BUSY = "sleep 300"


@dataclass
class LiveRun:
    proc: subprocess.Popen
    out: Path
    log: Path
    run_id: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def record(self) -> dict:
        return json.loads((self.out / "run.json").read_text())


def run_containers(client: docker.DockerClient, run_id: str) -> list:
    return client.containers.list(all=True, filters={"label": f"airlock.run-id={run_id}"}, ignore_removed=True)


def processes_in(container) -> list[list[str]]:
    try:
        return container.top().get("Processes") or []
    except docker.errors.APIError:  # not running yet, or already gone
        return []


def remove_run_containers(client: docker.DockerClient, run_id: str | None) -> None:
    for container in run_containers(client, run_id) if run_id else []:
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:  # 409: airlock is removing it right now
            if exc.status_code != 409:
                raise


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "hello.txt").write_text("hello\n")
    return root


@pytest.fixture
def busy_run(repo: Path, tmp_path: Path, docker_client: docker.DockerClient) -> Iterator:
    """Start `airlock run` whose first turn writes a file and then runs `sleep 300`; returns once the sleep runs.

    Whatever happens, the process is killed and its sandbox removed (by label) at the end.
    """
    procs: list[subprocess.Popen] = []
    run_ids: list[str] = []
    turns = [reply(tool_use("write_file", path="notes.txt", content=CHANGE), tool_use("run_bash", command=BUSY))]
    with ScriptedModelServer(turns) as api:

        def start() -> LiveRun:
            out, log = tmp_path / "out", tmp_path / "airlock.log"
            with open(log, "wb") as sink:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "orchestrator", "run", str(repo), "--task", "Do the task.", "--out", str(out)],
                    env=airlock_env(api.base_url), cwd=PROJECT, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, like a foreground job Ctrl-C is sent to
                )  # fmt: skip
            procs.append(proc)
            deadline = time.monotonic() + 60
            run_id = None
            while True:
                assert proc.poll() is None, f"airlock exited early ({proc.returncode}): {log.read_text()}"
                assert time.monotonic() < deadline, f"the sandbox never ran {BUSY!r}: {log.read_text()}"
                if run_id is None and (out / "run.json").exists():
                    record = json.loads((out / "run.json").read_text())
                    assert record["status"] == "running"  # written at the start, before any sandbox exists
                    run_id = record["run_id"]
                    run_ids.append(run_id)
                for container in run_containers(docker_client, run_id) if run_id else []:
                    if any(BUSY in " ".join(row) for row in processes_in(container)):
                        return LiveRun(proc, out, log, run_id)
                time.sleep(0.1)

        try:
            yield start
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            for run_id in run_ids:
                remove_run_containers(docker_client, run_id)


def crashes(output: str) -> list[str]:
    """The final line of every traceback in `output` that does not end in KeyboardInterrupt."""
    lines = output.splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
                j += 1
            last = lines[j] if j < len(lines) else "(cut off)"
            if not last.startswith("KeyboardInterrupt"):
                found.append(last)
    return found


def assert_interrupted_cleanly(live: LiveRun, docker_client: docker.DockerClient, *, started: float, late_presses: bool) -> None:
    code = live.proc.wait(timeout=15)
    elapsed = time.monotonic() - started
    assert run_containers(docker_client, live.run_id) == []  # checked right after exit: nothing left
    output = live.output()
    # No crash of ours, whatever the timing: the only exception a Ctrl-C may show is KeyboardInterrupt.
    assert crashes(output) == [] and "internal error" not in output, output
    assert code == 130 and "Traceback" not in output, (code, output)
    if not late_presses:
        assert re.search(r"^■ interrupted · 1 step · 2 tool calls .* 1 file changed, \+1 -0", output, flags=re.M), output
        assert "outputs: " in output
    assert elapsed < 15, elapsed
    record = live.record()
    assert record["status"] == "interrupted", record
    assert record["error"] == "interrupted by the user (Ctrl-C)"
    assert record["patch"]["exported"] is True and record["patch"]["files_changed"] == 1
    patch = (live.out / "patch.diff").read_bytes()
    assert b"+++ b/notes.txt\n" in patch and b"+written before the interrupt\n" in patch
    events = [json.loads(line) for line in (live.out / "trajectory.jsonl").read_text().splitlines()]
    assert events[-1]["type"] == "run_end" and events[-1]["status"] == "interrupted"
    [write] = [e for e in events if e["type"] == "tool_call"]  # the sleep never returned a result
    assert write["name"] == "write_file" and not write["is_error"]


@pytest.mark.parametrize("presses", ["once", "twice", "hammered"])
def test_ctrl_c_keeps_the_work_and_removes_the_sandbox(busy_run, docker_client, presses: str) -> None:
    live = busy_run()
    started = time.monotonic()
    os.killpg(live.proc.pid, signal.SIGINT)
    if presses == "twice":
        time.sleep(0.3)
        os.killpg(live.proc.pid, signal.SIGINT)
    elif presses == "hammered":  # every 20 ms until it is gone: no window may skip the cleanup
        while live.proc.poll() is None and time.monotonic() - started < 15:
            time.sleep(0.02)
            try:
                os.killpg(live.proc.pid, signal.SIGINT)
            except ProcessLookupError:
                break
    assert_interrupted_cleanly(live, docker_client, started=started, late_presses=presses != "once")
    if presses == "hammered":  # some presses did land while the patch was saved and the sandbox removed
        assert "finishing: saving the patch and removing the sandbox" in live.output()


def kill_orchestrator(live: LiveRun, docker_client: docker.DockerClient) -> str:
    """SIGKILL airlock mid-command: its sandbox stops by itself (its lifeline closed) but stays behind. Returns its short id."""
    os.killpg(live.proc.pid, signal.SIGKILL)
    live.proc.wait(timeout=15)
    deadline = time.monotonic() + 15
    while (left := run_containers(docker_client, live.run_id)) and left[0].status == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    [stopped] = left
    assert stopped.status == "exited" and stopped.labels["airlock.pid"] == str(live.proc.pid)
    assert processes_in(stopped) == []  # the agent's command went with it
    assert live.record()["status"] == "running"  # nobody could finish the record
    return stopped.short_id


def test_killed_orchestrator_leaves_a_sandbox_that_gc_removes(busy_run, docker_client) -> None:
    live = busy_run()
    short_id = kill_orchestrator(live, docker_client)
    gc = airlock("gc", timeout=60)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert short_id in gc.stdout and "removed" in gc.stdout
    assert run_containers(docker_client, live.run_id) == []


def test_killed_orchestrator_sandbox_is_removed_by_the_next_run(busy_run, docker_client, repo: Path, tmp_path: Path) -> None:
    live = busy_run()
    short_id = kill_orchestrator(live, docker_client)
    with ScriptedModelServer([reply(text("nothing to do"))]) as api:
        nxt = airlock("run", str(repo), "--task", "Do the task.", "--out", str(tmp_path / "next"), env=airlock_env(api.base_url), timeout=120)
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    assert f"removed sandbox {short_id} left by an airlock process that is gone" in nxt.stdout
    assert run_containers(docker_client, live.run_id) == []
