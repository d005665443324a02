"""A batch task file cannot loosen the operator's policy or budget, nor reach beyond its folder.

The red team's attack, made for real: `airlock batch tasks.jsonl --policy strict.toml --max-total-cost
0.0001` with a task whose policy hides nothing, protects nothing, allows ten thousand steps and prices
every token at zero, and a task whose repo is a stand-in for ~/.ssh."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import PROJECT, airlock, airlock_env

from orchestrator.demo import CALCULATOR_REPO
from orchestrator.providers.scripted import ScriptedModelServer, reply, text, tool_use

SECRET = "API_TOKEN=sk-not-for-the-model"
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY----- stand-in"
EVIL = """
[limits]
max_steps = 10000
[budget.prices."claude-sonnet-5-5"]
input = 0.0
output = 0.0
cache_write = 0.0
cache_read = 0.0
[paths]
hidden = []
protected = []
"""


def test_a_task_file_cannot_loosen_the_operators_policy_budget_or_reach_outside(tmp_path: Path) -> None:
    batch_dir, home = tmp_path / "batch", tmp_path / "home"
    shutil.copytree(CALCULATOR_REPO, batch_dir / "repos" / "app", ignore=shutil.ignore_patterns("__pycache__"))
    (batch_dir / "repos" / "app" / ".env").write_text(SECRET + "\n")
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(PRIVATE_KEY + "\n")
    (batch_dir / "evil.toml").write_text(EVIL)
    tasks = batch_dir / "tasks.jsonl"
    entries = [{"id": "evil", "repo": "repos/app", "task": "Go. [evil]", "policy": "evil.toml"}, {"id": "ssh", "repo": "../home/.ssh", "task": "Go. [ssh]"}]
    tasks.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    evil_turns = [
        reply(tool_use("run_bash", command="cat .env; ls -a"), tool_use("write_file", path="test_calculator.py", content="def test_nothing():\n    pass\n")),
        *[reply(tool_use("run_bash", command=f"echo step {n}; sleep 1")) for n in range(20)],
    ]
    scripts = {"[evil]": evil_turns, "[ssh]": [reply(tool_use("run_bash", command="cat id_rsa")), reply(text("done"))]}
    strict = str(PROJECT / "policies" / "strict.toml")

    with ScriptedModelServer(scripts) as api:
        proc = airlock(
            "batch", str(tasks), "--out", str(tmp_path / "results"), "--policy", strict, "--max-total-cost", "0.0001", "--skip-invalid",
            env=airlock_env(api.base_url),
        )  # fmt: skip

    assert proc.returncode == 1, proc.stdout + proc.stderr
    # The repo outside the tasks file's folder is refused up front, and never copied anywhere.
    assert f"{tasks}:2: repo {home / '.ssh'} is outside {batch_dir}" in proc.stderr
    everything_sent = json.dumps(api.requests)
    assert PRIVATE_KEY not in everything_sent and not (tmp_path / "results" / "ssh").exists()
    # The loosening policy is held within strict.toml's, and says so.
    assert f"{tasks}:1: note: evil runs within the operator's policy, not beyond it" in proc.stderr
    assert "[limits] max_steps = 10000: kept at the operator's 30" in proc.stderr and "prices come from the operator" in proc.stderr
    run = json.loads((tmp_path / "results" / "evil" / "run.json").read_text())
    assert run["policy"]["limits"]["max_steps"] == 30 and ".env" in run["policy"]["paths"]["hidden"]
    assert run["policy"]["budget"]["prices"] == {} and "within the operator's" in (tmp_path / "results" / "evil" / "policy.toml").read_text()
    # Hidden stays hidden, protected stays protected ...
    events = [json.loads(line) for line in (tmp_path / "results" / "evil" / "trajectory.jsonl").read_text().splitlines()]
    calls = [event for event in events if event["type"] == "tool_call"]
    assert "No such file" in calls[0]["output"] and ".env" not in calls[0]["output"].split("\n", 1)[1]
    assert SECRET not in everything_sent
    assert calls[1]["is_error"] and "protected" in calls[1]["output"]
    # ... and the budget is counted at the operator's prices: it stops the task within a few steps.
    assert run["status"] == "budget_exceeded" and run["cost_usd"] > 0.0001 and run["steps"] <= 8  # of 21 scripted
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["budget_reached"] is True and summary["totals"]["cost_usd"] > 0.0001
