"""`airlock resume` and `airlock fork`: the real CLI killed with SIGKILL mid-run, then continued from its
trajectory in a new sandbox, with the recorded steps replayed and no model request made for them.
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
from typing import Any

import docker
import pytest
from helpers import PROJECT, airlock, airlock_env

from orchestrator.providers.scripted import Scripted, ScriptedModelServer, reply, text, tool_use

FIX = tool_use("edit_file", path="calculator.py", old_str="def multiply(a, b):\n    return a + b", new_str="def multiply(a, b):\n    return a * b")
# Six steps: five with a tool call each (step 2 reads a file of the repo), then the summary.
STEPS = [
    reply(text("Noting the plan."), tool_use("write_file", path="notes/plan.txt", content="fix multiply\n")),
    reply(tool_use("read_file", path="calculator.py")),
    reply(FIX),
    reply(tool_use("run_bash", command="python3 -c 'import calculator; print(calculator.multiply(3, 4))'")),
    reply(tool_use("write_file", path="notes/done.txt", content="multiply fixed\n")),
    reply(text("Fixed multiply.")),
]


def uninterrupted(repo: Path, out: Path) -> bytes:
    with ScriptedModelServer(STEPS) as api:
        done = airlock("run", str(repo), "--task", "Fix multiply.", "--out", str(out), env=airlock_env(api.base_url))
    assert done.returncode == 0, done.stdout + done.stderr
    return (out / "patch.diff").read_bytes()


def killed_after_step(repo: Path, out: Path, steps_done: int) -> None:
    """Run the six steps, and SIGKILL the CLI once it asks for step `steps_done + 1`: steps 1..N are complete."""
    asked = threading.Event()
    never = threading.Event()

    def hold(request: dict[str, Any]) -> Scripted:
        asked.set()
        never.wait(60)  # the CLI is dead before this answers
        return STEPS[steps_done]

    turns = [*STEPS[:steps_done], hold]
    with ScriptedModelServer(turns) as api:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", str(repo), "--task", "Fix multiply.", "--out", str(out)],
            env=airlock_env(api.base_url), cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            assert asked.wait(120), "the run never asked for the step after the kill point"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            never.set()
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # what a killed run leaves


def stopped_sandbox(client: docker.DockerClient, run_id: str) -> Any:
    """The killed CLI's sandbox: its lifeline closed, so it stops by itself, and keeps nothing of the repo."""
    deadline = time.monotonic() + 30
    while True:
        [box] = client.containers.list(all=True, filters={"label": f"airlock.run-id={run_id}"})
        if box.status == "exited" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert box.status == "exited", box.status
    changed = [change["Path"] for change in box.diff() or []]
    assert not [path for path in changed if path.startswith(("/workspace/", "/var/lib/airlock/"))], changed  # mount points only: the files were memory
    return box


def requests_tool_results(body: dict[str, Any]) -> list[str]:
    return [block.get("content") for m in body["messages"] for block in m["content"] if isinstance(block, dict) and block.get("type") == "tool_result"]


def test_a_run_killed_after_step_3_resumes_to_the_same_patch_without_asking_for_steps_1_to_3(
    calculator_repo: Path, tmp_path: Path, docker_client: docker.DockerClient
) -> None:  # fmt: skip
    expected = uninterrupted(calculator_repo, tmp_path / "whole")
    out = tmp_path / "killed"
    killed_after_step(calculator_repo, out, steps_done=3)
    box = stopped_sandbox(docker_client, json.loads((out / "run.json").read_text())["run_id"])

    with ScriptedModelServer(STEPS[3:]) as api:
        resumed = airlock("resume", str(out), env=airlock_env(api.base_url))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"removed sandbox {box.short_id}" in resumed.stdout  # the next airlock command swept it
    assert "Traceback" not in resumed.stdout + resumed.stderr
    assert (out / "patch.diff").read_bytes() == expected
    # Only steps 4 to 6 were asked, and step 4's request already held the three recorded results.
    assert len(api.requests) == 3
    assert len(requests_tool_results(api.requests[0])) == 3
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed" and record["steps"] == 6
    [resume] = record["resumes"]
    assert resume["previous_status"] == "running" and resume["replayed_steps"] == 3 and resume["from_step"] == 4
    assert (out / resume["trajectory"]).is_file()
    events = [json.loads(line) for line in (out / "trajectory.jsonl").read_text().splitlines()]
    replayed = [e["step"] for e in events if e["type"] == "model_response" and e.get("replayed")]
    live = [e["step"] for e in events if e["type"] == "model_response" and not e.get("replayed")]
    assert replayed == [1, 2, 3] and live == [4, 5, 6]
    assert events[0]["continues"]["kind"] == "resume" and events[-1]["type"] == "run_end"
    assert "replayed from the recording" in resumed.stdout and "RESUME of run" in resumed.stdout

    shown = airlock("show", str(out))
    assert shown.returncode == 0 and "resumed" in shown.stdout, shown.stdout + shown.stderr


def test_a_resume_after_the_repo_changed_stops_at_the_step_that_read_it(calculator_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    killed_after_step(calculator_repo, out, steps_done=3)
    source = calculator_repo / "calculator.py"
    source.write_text(source.read_text() + "\n# edited after the run was killed\n")

    with ScriptedModelServer(STEPS[3:]) as api:
        resumed = airlock("resume", str(out), env=airlock_env(api.base_url))
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    assert "Traceback" not in resumed.stdout + resumed.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "replay_diverged"
    assert record["error"].startswith("replay diverged at step 2: the tool call of step 2 (read_file)"), record["error"]
    assert api.requests == []  # nothing was asked of the model
    assert b"notes/plan.txt" in (out / "patch.diff").read_bytes()  # step 1's work, replayed, is still exported


def test_fork_at_step_2_goes_on_with_a_different_script_and_new_instructions(calculator_repo: Path, tmp_path: Path) -> None:
    source = tmp_path / "whole"
    uninterrupted(calculator_repo, source)
    fork_out = tmp_path / "fork"
    other = [reply(tool_use("write_file", path="notes/other.txt", content="another way\n")), reply(text("Done differently."))]
    with ScriptedModelServer(other) as api:
        forked = airlock("fork", str(source), "--at-step", "2", "--out", str(fork_out), "--task", "Leave calculator.py alone.", env=airlock_env(api.base_url))
    assert forked.returncode == 0, forked.stdout + forked.stderr
    patch = (fork_out / "patch.diff").read_bytes()
    assert b"notes/plan.txt" in patch and b"notes/other.txt" in patch  # step 1's work, then the new continuation
    assert b"calculator.py" not in patch and b"notes/done.txt" not in patch  # nothing of the source's steps 3 to 6
    assert len(api.requests) == 2
    last = api.requests[0]["messages"][-1]["content"]
    assert last[-1]["type"] == "text" and last[-1]["text"] == "Leave calculator.py alone.", last  # after step 2's result
    record = json.loads((fork_out / "run.json").read_text())
    assert record["forked_from"]["at_step"] == 2 and record["forked_from"]["task"] == "Leave calculator.py alone."
    assert record["run_id"] != json.loads((source / "run.json").read_text())["run_id"]
    assert record["steps"] == 4 and record["status"] == "completed"
    start = json.loads((fork_out / "trajectory.jsonl").read_text().splitlines()[0])
    assert start["continues"]["kind"] == "fork" and start["continues"]["replay_steps"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["resume", "{missing}"], "run folder not found"),
        (["resume", "{done}"], "ended with completed: there is nothing to resume"),
        (["fork", "{done}", "--at-step", "9"], "has 6 complete steps: it cannot be forked at step 9"),
        (["fork", "{done}", "--at-step", "1", "--task", " "], "--task is empty"),
    ],
)
def test_what_cannot_be_continued_is_refused_in_one_line(calculator_repo: Path, tmp_path: Path, args: list[str], message: str) -> None:
    done = tmp_path / "done"
    uninterrupted(calculator_repo, done)
    argv = [arg.format(missing=tmp_path / "nowhere", done=done) for arg in args]
    refused = airlock(*argv, env=airlock_env("http://127.0.0.1:9"))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert message in refused.stderr and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_a_batch_killed_mid_run_resumes_each_task_from_its_recorded_steps(calculator_repo: Path, tmp_path: Path) -> None:
    expected = uninterrupted(calculator_repo, tmp_path / "whole")
    names = ["a", "b"]
    for name in names:
        shutil.copytree(calculator_repo, tmp_path / name)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": n, "repo": n, "task": f"Fix multiply. [{n}]"}) + "\n" for n in names))
    out = tmp_path / "results"
    asked = {name: threading.Event() for name in names}
    never = threading.Event()

    def hold(name: str) -> Any:
        def turn(request: dict[str, Any]) -> Scripted:
            asked[name].set()
            never.wait(60)
            return STEPS[3]

        return turn

    with ScriptedModelServer({f"[{n}]": [*STEPS[:3], hold(n)] for n in names}) as api:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "batch", str(tasks), "--out", str(out), "--jobs", "2"],
            env=airlock_env(api.base_url), cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            assert all(event.wait(120) for event in asked.values()), "the tasks never reached step 4"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the batch and every run of it, at once
            proc.wait(timeout=30)
            never.set()

    with ScriptedModelServer({f"[{n}]": STEPS[3:] for n in names}) as api:
        again = airlock("batch", str(tasks), "--out", str(out), "--jobs", "2", env=airlock_env(api.base_url))
    assert again.returncode == 0, again.stdout + again.stderr
    for name in names:
        assert len(api.for_marker(f"[{name}]")) == 3  # steps 4 to 6 only
        assert (out / name / "patch.diff").read_bytes() == expected
        record = json.loads((out / name / "run.json").read_text())
        assert record["resumes"][0]["previous_status"] == "running" and record["resumes"][0]["replayed_steps"] == 3
        assert f"{name} started (resuming its earlier run from its recorded steps)" in again.stdout
