"""A sandbox lives exactly as long as its owner, and no read from it can block the host.

- A finished run lets go of its sandbox, which stops by itself and is then removed: nothing is killed, under
  runc or gVisor (killing a running gVisor box can hang Debian's containerd shim, and the engine with it).
- The agent's command stops the tool server (SIGSTOP): the run ends as a clean sandbox_error within the
  command's time limit and the channel's grace, with the patch exported and the container gone.
- Two owners share one engine, one of them in another PID namespace (as on a CI runner, a remote engine or
  a Kubernetes node, where process ids say nothing): neither removes the other's live sandbox, and a killed
  owner's sandbox stops by itself and is then removed by the other.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker
import pytest
from helpers import PROJECT, airlock_env

from orchestrator.providers.scripted import ScriptedModelServer, reply, text, tool_use

FIX = tool_use("edit_file", path="calculator.py", old_str="def multiply(a, b):\n    return a + b", new_str="def multiply(a, b):\n    return a * b")


def test_a_finished_run_removes_its_sandbox_without_killing_it(run_scripted, calculator_repo: Path, docker_client: docker.DockerClient, runtime: str) -> None:
    since = int(time.time()) - 1
    result, _ = run_scripted(
        calculator_repo, [reply(FIX), reply(tool_use("run_bash", command="sleep 600 & echo started")), reply(text("done"))], "--runtime", runtime
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    run_id = result.record["run_id"]
    events = docker_client.events(since=since, until=int(time.time()) + 1, filters={"type": "container", "label": f"airlock.run-id={run_id}"}, decode=True)
    actions = [event["Action"] for event in events]
    assert "start" in actions and "destroy" in actions, actions
    assert "kill" not in actions and actions.index("die") < actions.index("destroy"), actions


def test_a_stopped_tool_server_ends_the_run_within_the_command_timeout(run_scripted, calculator_repo: Path) -> None:
    turns = [reply(FIX), reply(tool_use("run_bash", command="kill -STOP $PPID")), reply(text("never asked"))]
    started = time.monotonic()
    result, api = run_scripted(calculator_repo, turns, "--command-timeout", "3")
    assert time.monotonic() - started < 3 + 15 + 20  # the command's limit, the channel's grace, start and finish
    assert result.exit_code == 3, result.stdout + result.stderr
    record = result.record
    assert record["status"] == "sandbox_error" and "did not answer run_bash in time" in record["error"]
    assert record["patch"]["exported"] and b"+    return a * b" in result.patch
    assert len(api.requests) == 2 and "Traceback" not in result.stdout + result.stderr
    assert result.events()[-1]["type"] == "run_end"


def sandboxes_of(client: docker.DockerClient, run_id: str) -> list:
    return client.containers.list(all=True, filters={"label": f"airlock.run-id={run_id}"}, ignore_removed=True)


def run_id_of(out: Path, proc: subprocess.Popen, deadline: float) -> str:
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended early"
        try:
            return json.loads((out / "run.json").read_text())["run_id"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.1)
    raise AssertionError("the run did not start")


def elsewhere(*args: str) -> subprocess.CompletedProcess[str]:
    """`airlock ARGS` as another owner would run it: in its own PID namespace, where our pids do not exist."""
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "orchestrator", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=airlock_env(), cwd=PROJECT, timeout=120)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="a second PID namespace needs root and unshare")
def test_two_owners_on_one_engine_leave_each_others_live_sandboxes_alone(calculator_repo: Path, tmp_path: Path, docker_client: docker.DockerClient) -> None:
    release = threading.Event()

    def wait_for_release(request: dict) -> dict:
        release.wait(120)
        return reply(text("done"))

    with ScriptedModelServer([reply(FIX), wait_for_release]) as api, ScriptedModelServer([reply(FIX), wait_for_release]) as doomed_api:
        owners = {}
        for name, server in (("live", api), ("doomed", doomed_api)):
            out = tmp_path / name
            owners[name] = (out, subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "run", str(calculator_repo), "--task", "t", "--out", str(out)],
                env=airlock_env(server.base_url), cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            ))  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            run_ids = {name: run_id_of(out, proc, deadline) for name, (out, proc) in owners.items()}
            while len(api.requests) < 2 or len(doomed_api.requests) < 2:  # both are in their second step
                assert time.monotonic() < deadline
                time.sleep(0.1)
            doomed_proc = owners["doomed"][1]
            os.killpg(doomed_proc.pid, signal.SIGKILL)
            doomed_proc.wait(timeout=15)
            while sandboxes_of(docker_client, run_ids["doomed"])[0].status == "running":  # its lifeline is closed
                assert time.monotonic() < deadline
                time.sleep(0.1)

            other = elsewhere("gc")  # another owner tidies up the shared engine

            assert other.returncode == 0, other.stdout + other.stderr
            assert sandboxes_of(docker_client, run_ids["doomed"]) == []
            [live] = sandboxes_of(docker_client, run_ids["live"])
            assert live.status == "running"
            release.set()
            out, proc = owners["live"]
            assert proc.wait(timeout=120) == 0
            assert "+    return a * b" in (out / "patch.diff").read_text()
        finally:
            release.set()
            for _, proc in owners.values():
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            for run_id in locals().get("run_ids", {}).values():
                for container in sandboxes_of(docker_client, run_id):
                    container.remove(force=True)
