"""`airlock run --attempts K`: K real runs at one task against one scripted model, which tells them apart by
the attempt number in their first message; the winner is chosen by the fresh-sandbox verify."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from helpers import PROJECT, airlock, airlock_env

from orchestrator.providers.scripted import Scripted, ScriptedModelServer, reply, text, tool_use

FIXED, WRONG = "def multiply(a, b):\n    return a * b", "def multiply(a, b):\n    return a - b"
BUGGY = "def multiply(a, b):\n    return a + b"
VERIFY = "grep -q 'a \\* b' calculator.py"
NOWHERE = "http://127.0.0.1:9"  # nothing listens: a model request would fail


def edit(new: str) -> Scripted:
    return reply(tool_use("edit_file", path="calculator.py", old_str=BUGGY, new_str=new))


def by_attempt(plans: dict[int, list[Any]]) -> dict[str, list[Any]]:
    """Each attempt's script, found by the attempt number in its first message."""
    return {f"attempt {number} of": plan for number, plan in plans.items()}


def attempts_of(result: Any) -> dict[int, dict[str, Any]]:
    return {a["number"]: a for a in result.record["attempts"]["attempts"]}


def test_the_attempt_whose_verify_passed_is_chosen_and_each_differs(run_scripted, calculator_repo: Path) -> None:
    plans = {1: [edit(WRONG), reply(text("done"))], 2: [edit(FIXED), reply(text("done"))], 3: [reply(text("nothing to do"))]}
    result, api = run_scripted(calculator_repo, by_attempt(plans), "--attempts", "3", "--verify", VERIFY)

    assert result.exit_code == 0, result.stdout + result.stderr
    chosen = result.record["attempts"]
    assert chosen["rule"] == "verify" and chosen["chosen"] == 2 and chosen["why"] == "the only attempt whose verify passed"
    listed = attempts_of(result)
    assert {n: (a["status"], a["verify"]) for n, a in listed.items()} == {1: ("verify_failed", False), 2: ("completed", True), 3: ("verify_failed", False)}
    assert listed[2]["changed_lines"] == 2 and listed[3]["changed_lines"] == 0
    assert result.patch == (result.out / "attempts" / "2" / "patch.diff").read_bytes() and b"+    return a * b" in result.patch
    assert result.record["verify"]["passed"] and result.record["patch"]["files_changed"] == 1
    assert result.record["cost_usd"] == round(sum(a["cost_usd"] for a in listed.values()), 6)
    for n in (1, 2, 3):
        own = json.loads((result.out / "attempts" / str(n) / "run.json").read_text())
        assert own["attempt"] == {"number": n, "of": 3, "temperature": None} and listed[n]["temperature"] is None
    # They differ in the first message (the Messages API takes no temperature), and share the prompt's cached prefix.
    firsts = [body for body in api.requests if len(body["messages"]) == 1]
    assert len({json.dumps(body["messages"]) for body in firsts}) == 3 and not any("temperature" in body for body in firsts)
    assert len({json.dumps(body["system"]) + json.dumps(body["tools"]) for body in firsts}) == 1
    assert "(chosen)" in result.stdout and "chosen: attempt 2: the only attempt whose verify passed" in result.stdout


def test_of_two_that_passed_the_smaller_patch_wins_and_an_openai_server_gets_temperatures(run_scripted, calculator_repo: Path) -> None:
    bigger = FIXED + "\n\n\ndef square(a):\n    return a * a"
    plans = {1: [edit(bigger), reply(text("done"))], 2: [edit(WRONG), reply(text("done"))], 3: [edit(FIXED), reply(text("done"))]}
    result, api = run_scripted(calculator_repo, by_attempt(plans), "--attempts", "3", "--jobs", "2", "--verify", VERIFY, provider="openai")

    assert result.exit_code == 0, result.stdout + result.stderr
    firsts = {json.dumps(body["messages"][1]): body["temperature"] for body in api.requests if len(body["messages"]) == 2}
    assert sorted(firsts.values()) == [0.5, 0.75, 1.0] and len(firsts) == 3
    assert [a["temperature"] for a in result.record["attempts"]["attempts"]] == [1.0, 0.75, 0.5]
    chosen = result.record["attempts"]
    assert chosen["chosen"] == 3 and chosen["why"] == "verify passed for 2 attempts; the smallest patch (2 changed lines)"
    assert result.patch == (result.out / "attempts" / "3" / "patch.diff").read_bytes()


def test_the_budget_covers_all_attempts_and_the_third_never_starts(run_scripted, calculator_repo: Path, tmp_path: Path) -> None:
    policy = tmp_path / "budget.toml"
    policy.write_text("[budget]\nmax_cost_usd = 0.0001\n")  # less than any one attempt's first reply
    plans = {n: [reply(text("done"))] for n in (1, 2)}
    result, api = run_scripted(calculator_repo, by_attempt(plans), "--attempts", "3", "--jobs", "2", "--pick", "first", "--policy", str(policy))

    listed = attempts_of(result)
    assert listed[3]["status"] == "not_started" and "the attempts together reached the budget" in listed[3]["stopped"], listed
    assert not (result.out / "attempts" / "3").exists() and len(api.requests) <= 2
    assert result.record["attempts"]["chosen"] in (1, 2)


def test_stop_at_first_pass_ends_the_others_and_keeps_their_work(run_scripted, calculator_repo: Path) -> None:
    busy = {n: threading.Event() for n in (2, 3)}  # set once the attempt's first tool call (a write) was answered

    def sleep_after_writing(number: int) -> Any:
        def answer(_request: dict[str, Any]) -> Scripted:
            busy[number].set()
            return reply(tool_use("run_bash", command="sleep 90"))

        return [reply(tool_use("write_file", path="notes.txt", content="started\n")), answer]

    def done_once_the_others_are_busy(_request: dict[str, Any]) -> Scripted:
        assert all(event.wait(120) for event in busy.values())
        return reply(text("done"))

    plans = {1: [edit(FIXED), done_once_the_others_are_busy], 2: sleep_after_writing(2), 3: sleep_after_writing(3)}
    result, _ = run_scripted(calculator_repo, by_attempt(plans), "--attempts", "3", "--verify", VERIFY, "--stop-at-first-pass")

    assert result.exit_code == 0, result.stdout + result.stderr
    listed = attempts_of(result)
    assert result.record["attempts"]["chosen"] == 1
    for n in (2, 3):
        assert listed[n]["status"] == "interrupted" and listed[n]["stopped"] == "stopped: attempt 1 passed verify (--stop-at-first-pass)", listed[n]
        assert b"+started" in (result.out / "attempts" / str(n) / "patch.diff").read_bytes()  # the work up to the stop is kept


def test_a_killed_run_of_attempts_leaves_its_record_and_each_attempt_resumes_as_itself(calculator_repo: Path, tmp_path: Path, docker_client) -> None:
    """SIGKILL of the whole process group (the host's OOM killer, a kill of the session) while both attempts
    wait for their first reply: run.json still says what was running; each attempt resumes with its number."""
    out, asked, never = tmp_path / "out", {n: threading.Event() for n in (1, 2)}, threading.Event()

    def hold(number: int) -> Any:
        def answer(_request: dict[str, Any]) -> Scripted:
            asked[number].set()
            never.wait(60)  # everything is dead before this answers
            return reply(text("too late"))

        return [answer]

    with ScriptedModelServer(by_attempt({1: hold(1), 2: hold(2)})) as api:
        command = [
            sys.executable,
            "-m",
            "orchestrator",
            "run",
            str(calculator_repo),
            "--task",
            "Fix multiply.",
            "--out",
            str(out),
            "--attempts",
            "2",
            "--pick",
            "first",
        ]
        proc = subprocess.Popen(
            command, env=airlock_env(api.base_url), cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            assert all(event.wait(120) for event in asked.values()), "the attempts never asked for their first step"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            never.set()
    left = json.loads((out / "run.json").read_text())
    assert left["status"] == "running" and [(a["number"], a["status"]) for a in left["attempts"]["attempts"]] == [(1, "running"), (2, "running")]
    refused = airlock("resume", str(out), env=airlock_env(NOWHERE))
    assert refused.returncode == 2 and "holds several attempts: resume an unfinished one" in refused.stderr and "Traceback" not in refused.stderr

    with ScriptedModelServer([reply(text("done"))]) as again:
        resumed = airlock("resume", str(out / "attempts" / "1"), env=airlock_env(again.base_url))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    first = again.requests[0]["messages"][0]["content"]
    assert "attempt 1 of 2" in json.dumps(first)  # still told it is the first of two
    assert json.loads((out / "attempts" / "1" / "run.json").read_text())["attempt"] == {"number": 1, "of": 2, "temperature": None}
    for n in (1, 2):  # the killed attempts' sandboxes stopped with their lifelines; nothing of them stays
        run_id = json.loads((out / "attempts" / str(n) / "run.json").read_text())["run_id"]
        for box in docker_client.containers.list(all=True, filters={"label": f"airlock.run-id={run_id}"}):
            box.wait(timeout=60)
            box.remove(force=True)
