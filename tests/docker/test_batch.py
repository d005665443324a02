"""`airlock batch`: the real CLI in a subprocess, real Docker, the real SDK against the scripted server.

The scripted server routes each request by a marker in the task text ("[fix-1]"), so concurrent runs
each follow their own script.
"""

from __future__ import annotations

import json
import os
import re
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

from orchestrator.demo import CALCULATOR_REPO
from orchestrator.patch.neutral_git import run_git
from orchestrator.providers.scripted import ApiError, Scripted, ScriptedModelServer, reply, text, tool_use

TEST_COMMAND = "python3 -m pytest -q -p no:cacheprovider"
FIX = tool_use("edit_file", path="calculator.py", old_str="def multiply(a, b):\n    return a + b", new_str="def multiply(a, b):\n    return a * b")
FIXED = b"+    return a * b\n"
SWE_BENCH_KEYS = {"instance_id", "model_name_or_path", "model_patch"}
NO_MODEL = "http://127.0.0.1:9"  # nothing listens: a request would fail the task


def calculator_copies(root: Path, *names: str) -> list[Path]:
    copies = []
    for name in names:
        shutil.copytree(CALCULATOR_REPO, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        copies.append(root / name)
    return copies


def write_jsonl(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return path


def batch(*args: str | Path, base_url: str = NO_MODEL, timeout: float = 240, **env: str) -> subprocess.CompletedProcess[str]:
    return airlock("batch", *map(str, args), env=airlock_env(base_url, **env), timeout=timeout)


def summary(out: Path) -> dict[str, Any]:
    data = json.loads((out / "summary.json").read_text())
    data["by_id"] = {row["id"]: row for row in data["tasks"]}
    return data


def record(out: Path, task_id: str) -> dict[str, Any]:
    return json.loads((out / task_id / "run.json").read_text())


def fix_then_stop(request: dict[str, Any]) -> Scripted:
    """A stateless script turn, for several runs sharing one task text: fix first, then stop."""
    return reply(text("Fixing multiply."), FIX) if len(request["messages"]) == 1 else reply(text("Fixed."))


def max_concurrent(log: str) -> int:
    """The most tasks running at once, from the scheduler's own (ordered) log lines."""
    running = peak = 0
    for line in log.splitlines():
        if re.search(r"\] \S+ started", line):
            running += 1
        elif re.search(r"\] \S+ (completed|verify_failed|model_error|max_steps|timeout|budget_exceeded|interrupted|sandbox_error|crashed)\b", line):
            running -= 1
        peak = max(peak, running)
    return peak


# --- the "done when": 6 repos, 3 jobs, a model error, a failed verify; resume; redo -----------------


def test_batch_runs_in_parallel_resumes_without_the_model_and_redoes(tmp_path: Path) -> None:
    calculator_copies(tmp_path / "repos", *(f"c{i}" for i in range(1, 7)))
    fixers = [f"fix-{i}" for i in range(1, 5)]
    entries = [{"id": name, "repo": f"repos/c{i}", "task": f"Fix multiply. [{name}]", "verify": TEST_COMMAND} for i, name in enumerate(fixers, 1)]
    entries += [
        {"id": "api-error", "repo": "repos/c5", "task": "Fix multiply. [api-error]", "verify": TEST_COMMAND},
        {"id": "bad-fix", "repo": "repos/c6", "task": "Fix multiply. [bad-fix]", "verify": TEST_COMMAND},
    ]
    tasks = write_jsonl(tmp_path / "tasks.jsonl", entries)
    out = tmp_path / "results"
    scripts = {f"[{name}]": [reply(text("Fixing multiply."), FIX), reply(text("Fixed."))] for name in fixers}
    scripts["[api-error]"] = [ApiError(400, "prompt is too long: 210000 tokens > 200000 maximum", "invalid_request_error")]
    scripts["[bad-fix]"] = [reply(text("I changed nothing."))]

    with ScriptedModelServer(scripts) as api:
        proc = batch(tasks, "--out", out, "--jobs", "3", base_url=api.base_url)
    log = proc.stdout
    assert proc.returncode == 1, log + proc.stderr
    assert "Traceback" not in log + proc.stderr
    assert max_concurrent(log) == 3, log  # parallel, and never more than --jobs
    assert len(api.requests) == 4 * 2 + 1 + 1

    data = summary(out)
    rows = data["by_id"]
    assert [row["id"] for row in data["tasks"]] == [entry["id"] for entry in entries]  # the file's order
    for name in fixers:
        row, rec = rows[name], record(out, name)
        assert (row["status"], rec["status"], row["verify_passed"], row["steps"], row["files_changed"]) == ("completed", "completed", True, 2, 1)
        assert FIXED in (out / name / "patch.diff").read_bytes()
        assert row["tokens"] == rec["usage"] and sum(rec["usage"].values()) > rec["usage"]["output_tokens"] > 0
        assert row["cost_usd"] == rec["cost_usd"] > 0  # the default model has a known price
        assert row["duration_s"] == rec["duration_s"] > 0 and row["error"] is None and not row["skipped"]
        assert (out / name / "trajectory.jsonl").exists() and "airlock run" in (out / name / "airlock.log").read_text()
        assert re.search(rf"\] {name} completed \(verify passed\) · 2 steps, 1 file, \$0\.\d{{4}}", log), log
    assert rows["api-error"]["status"] == record(out, "api-error")["status"] == "model_error"
    assert "prompt is too long" in rows["api-error"]["error"]
    assert rows["api-error"]["verify_passed"] is False  # verify still runs on the work so far; the status stays model_error
    assert rows["bad-fix"]["status"] == record(out, "bad-fix")["status"] == "verify_failed"
    assert rows["bad-fix"]["verify_passed"] is False and record(out, "bad-fix")["verify"]["exit_code"] == 1
    totals = data["totals"]
    assert (totals["tasks"], totals["completed"], totals["not_completed"], totals["files_changed"]) == (6, 4, 2, 4)
    assert totals["by_status"] == {"completed": 4, "model_error": 1, "verify_failed": 1}
    assert totals["cost_usd"] == pytest.approx(sum(row["cost_usd"] for row in data["tasks"]), abs=1e-6)
    summed = {key: sum(row["tokens"][key] for row in data["tasks"]) for key in totals["tokens"]}
    assert totals["tokens"] == summed and f"cache read {summed['cache_read_input_tokens']:,}" in log  # printed at the end too
    assert data["exit_code"] == 1 and data["interrupted"] is False and data["started_at"] <= data["finished_at"]
    assert re.search(r"total\s+│\s+4/6 succeeded", log), log  # the table, with its totals row
    assert "api-error: model API error 400: prompt is too long" in log

    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["instance_id"] for p in predictions] == [entry["id"] for entry in entries]
    for prediction in predictions:
        assert set(prediction) == SWE_BENCH_KEYS
        assert prediction["model_name_or_path"] == "claude-sonnet-5-5"
        assert prediction["model_patch"] == (out / prediction["instance_id"] / "patch.diff").read_text()
    assert "+    return a * b" in predictions[0]["model_patch"] and predictions[4]["model_patch"] == ""

    # The same command again: everything finished, so nothing runs and the model is never asked.
    before = {name: record(out, name) for name in rows}
    with ScriptedModelServer({}) as idle:
        again = batch(tasks, "--out", out, "--jobs", "3", base_url=idle.base_url)
    assert idle.requests == []
    assert again.returncode == 1, again.stdout + again.stderr  # the recorded failures still count
    for name, rec in before.items():
        assert f"{name} skipped: finished earlier ({rec['status']})" in again.stdout
        assert record(out, name) == rec  # untouched
    resumed = summary(out)
    assert all(row["skipped"] for row in resumed["tasks"])
    assert [(r["status"], r["cost_usd"], r["steps"]) for r in resumed["tasks"]] == [(r["status"], r["cost_usd"], r["steps"]) for r in data["tasks"]]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6

    # A task whose definition changed runs again on resume, and the log says why; the others stay as they were.
    edited = [{**entry, "verify": "true"} if entry["id"] == "bad-fix" else entry for entry in entries]
    write_jsonl(tmp_path / "tasks.jsonl", edited)
    with ScriptedModelServer({"[bad-fix]": [reply(text("Still nothing."))]}) as edit_api:
        rerun = batch(tasks, "--out", out, "--jobs", "3", base_url=edit_api.base_url)
    assert len(edit_api.requests) == 1, rerun.stdout
    assert "bad-fix runs again: its definition changed since its earlier run (verify)" in rerun.stdout
    assert record(out, "bad-fix")["status"] == "completed" and "fix-1 skipped: finished earlier (completed)" in rerun.stdout

    # --redo runs a finished task again; its earlier run is kept aside, not deleted.
    only_one = write_jsonl(tmp_path / "one.jsonl", entries[:1])
    with ScriptedModelServer({"[fix-1]": [reply(FIX), reply(text("Fixed again."))]}) as redo_api:
        redo = batch(only_one, "--out", out, "--redo", base_url=redo_api.base_url)
    assert redo.returncode == 0, redo.stdout + redo.stderr
    assert len(redo_api.requests) == 2
    assert record(out, "fix-1")["run_id"] != before["fix-1"]["run_id"]
    assert json.loads((out / ".previous" / "fix-1-1" / "run.json").read_text()) == before["fix-1"]
    assert f"fix-1 started (its earlier run is kept in {out / '.previous' / 'fix-1-1'})" in redo.stdout


# --- git URLs: the hardened clone ----------------------------------------------------------------------------


def git(repo: Path, *args: str) -> None:
    proc = run_git(list(args), git_dir=repo / ".git", work_tree=repo, cwd=repo)
    assert proc.returncode == 0, proc.stderr


def touch(markers: Path, name: str) -> str:
    return f"mkdir -p '{markers}' && touch '{markers}/{name}'"


def hook_dir(path: Path, markers: Path, prefix: str) -> Path:
    for name in ("post-checkout", "post-merge", "post-rewrite", "reference-transaction", "post-index-change", "pre-auto-gc"):
        hook = path / name
        hook.parent.mkdir(parents=True, exist_ok=True)
        hook.write_text(f"#!/bin/sh\n{touch(markers, f'{prefix}-{name}')}\nexit 0\n")
        hook.chmod(0o755)
    return path


def hostile_remote(tmp_path: Path, markers: Path) -> Path:
    """A repo to clone: `main` holds the calculator, `feature` adds REF.txt; armed hooks, config, filters, a submodule."""
    src = tmp_path / "remote"
    calculator_copies(tmp_path, "remote")
    (src / ".gitattributes").write_text("*.py filter=evil\n")
    (src / ".gitmodules").write_text(f'[submodule "sub"]\n\tpath = sub\n\turl = ext::sh -c {touch(markers, "submodule").replace(" ", "% ")}\n')
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    git(src, "init", "--quiet", "--template=", "--initial-branch=main")
    git(src, "add", "-A")
    git(src, "update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},sub")  # a gitlink: the submodule
    git(src, *identity, "commit", "--quiet", "-m", "main")
    git(src, "checkout", "--quiet", "-b", "feature")
    (src / "REF.txt").write_text("on the feature branch\n")
    git(src, "add", "REF.txt")
    git(src, *identity, "commit", "--quiet", "-m", "feature")
    git(src, "checkout", "--quiet", "main")
    hook_dir(src / ".git" / "hooks", markers, "remote-hook")
    with open(src / ".git" / "config", "a") as config:  # what the remote's own git would run
        config.write(
            f"[core]\n\thooksPath = {hook_dir(tmp_path / 'remote-traps', markers, 'remote-hookspath')}\n"
            f'\tfsmonitor = "{touch(markers, "remote-fsmonitor")}; exit 1 #"\n'
            f'[uploadpack]\n\tpackObjectsHook = "{touch(markers, "remote-packobjects")}; exit 1 #"\n'
            f'[filter "evil"]\n\tsmudge = "{touch(markers, "remote-smudge")}; cat"\n'
        )
    return src


def hostile_machine_config(tmp_path: Path, markers: Path) -> dict[str, str]:
    """Config the machine's own git would read (global file, HOME, templates, env): armed as well."""
    home = tmp_path / "home"
    home.mkdir()
    evil = (
        f"[core]\n\thooksPath = {hook_dir(tmp_path / 'machine-hooks', markers, 'machine-hookspath')}\n"
        f"[init]\n\ttemplateDir = {tmp_path / 'template'}\n"
        f'[filter "evil"]\n\tsmudge = "{touch(markers, "machine-smudge")}; cat"\n\trequired = true\n'
        f"[protocol]\n\tallow = always\n[submodule]\n\trecurse = true\n"
    )
    hook_dir(tmp_path / "template" / "hooks", markers, "template-hook")
    (home / ".gitconfig").write_text(evil)
    (tmp_path / "global.gitconfig").write_text(evil)
    return {"HOME": str(home), "GIT_CONFIG_GLOBAL": str(tmp_path / "global.gitconfig"),
            "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.hooksPath", "GIT_CONFIG_VALUE_0": str(tmp_path / "machine-hooks")}  # fmt: skip


def test_git_url_with_ref_is_cloned_by_a_hardened_git(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    url = hostile_remote(tmp_path, markers).as_uri()
    machine = hostile_machine_config(tmp_path, markers)
    verify = f"test -f REF.txt && ! test -e .git/hooks/post-checkout && {TEST_COMMAND}"  # the ref's tree, no hooks
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [
        {"id": "from-git", "repo": url, "ref": "feature", "task": "Fix multiply. [from-git]", "verify": verify},
        {"id": "no-such-ref", "repo": url, "ref": "no-such-branch", "task": "Fix multiply. [no-such-ref]"},
    ])  # fmt: skip
    out = tmp_path / "results"
    with ScriptedModelServer({"[from-git]": [reply(FIX), reply(text("Fixed."))]}) as api:
        proc = batch(tasks, "--out", out, "--allow-protocol", "file", base_url=api.base_url, **machine)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one task could not be cloned
    rows = summary(out)["by_id"]
    assert rows["from-git"]["status"] == "completed" and rows["from-git"]["verify_passed"] is True, proc.stdout
    assert (rows["from-git"]["repo"], rows["from-git"]["ref"]) == (url, "feature")
    assert FIXED in (out / "from-git" / "patch.diff").read_bytes()
    assert rows["no-such-ref"]["status"] == "clone_failed" and "no branch, tag or commit 'no-such-branch'" in rows["no-such-ref"]["error"]
    assert not (out / "no-such-ref").exists() and len(api.for_marker("[no-such-ref]")) == 0
    # The clone is cached by URL and ref, holds the commit's exact bytes (no smudge filter), and no hooks.
    [clone] = [p for p in (out / ".cache" / "repos").iterdir() if (p / "REF.txt").exists()]
    assert (clone / "calculator.py").read_bytes() == (CALCULATOR_REPO / "calculator.py").read_bytes()
    assert not (clone / ".git" / "hooks").exists() and not any((clone / "sub").iterdir())
    assert "evil" not in (clone / ".git" / "config").read_text()
    assert not markers.exists(), sorted(p.name for p in markers.iterdir())

    # The same URL and ref again: the cached clone is used (a moved remote cannot be cloned).
    shutil.move(tmp_path / "remote", tmp_path / "remote-moved")
    redo = write_jsonl(tmp_path / "again.jsonl", [{"id": "again", "repo": url, "ref": "feature", "task": "Stop. [again]"}])
    with ScriptedModelServer({"[again]": [reply(text("Nothing to do."))]}) as api:
        cached = batch(redo, "--out", out, "--allow-protocol", "file", base_url=api.base_url)
    assert cached.returncode == 0 and summary(out)["by_id"]["again"]["status"] == "completed", cached.stdout
    shutil.move(tmp_path / "remote-moved", tmp_path / "remote")

    # The traps are armed: the machine's own git, cloning the same URL, sets them off.
    env = {"PATH": os.environ["PATH"], **machine}
    subprocess.run(["git", "clone", "--quiet", url, str(tmp_path / "plain-clone")], env=env, capture_output=True, timeout=60)
    fired = {p.name for p in markers.iterdir()}
    assert {"machine-smudge", "machine-hookspath-post-checkout"} <= fired, fired


# --- bad input: every problem with its line, and nothing runs ------------------------------------------------


def test_invalid_tasks_are_all_reported_with_their_lines_and_nothing_runs(tmp_path: Path) -> None:
    calculator_copies(tmp_path, "good", "other")
    bad_policy = tmp_path / "bad.toml"
    bad_policy.write_text("[limits]\nmax_stepz = 3\n")
    lines = [
        '{"id": "ok", "repo": "good", "task": "Stop. [ok]"}',
        '{"id": "ok", "repo": "other", "task": "x"}',
        "{not json",
        '{"id": "gone", "repo": "no/such/repo", "task": "x"}',
        '{"id": "../escape", "repo": "other", "task": "x"}',
        '{"id": "policy", "repo": "other", "task": "x", "policy": "bad.toml"}',
        '{"id": "proto", "repo": "file:///srv/repo.git", "task": "x"}',
        "",
        '{"id": "typo", "repo": "other", "task": "x", "verfy": "make test"}',
        '{"id": "no-task", "repo": "other"}',
    ]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(lines) + "\n")
    out = tmp_path / "results"
    proc = batch(tasks, "--out", out)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    expected = [
        (2, "duplicate id 'ok', first used on line 1"),
        (3, "not valid JSON"),
        (4, f"repo not found: {tmp_path / 'no/such/repo'}"),
        (5, "id '../escape' is not safe as a folder name"),
        (6, f"policy: {tmp_path / 'bad.toml'}:2: [limits] max_stepz: unknown key (did you mean 'max_steps'?)"),
        (7, "the git protocol 'file' of file:///srv/repo.git is not allowed (allowed: https; see --allow-protocol)"),
        (9, "unknown key 'verfy' (did you mean 'verify'?)"),
        (10, "the task is empty"),
    ]
    problems = [line for line in proc.stderr.splitlines() if line.startswith(str(tasks))]
    assert len(problems) == len(expected), proc.stderr
    for (number, message), line in zip(expected, problems, strict=True):
        assert line.startswith(f"{tasks}:{number}: ") and message in line, (number, line)
    assert "8 problems" in proc.stderr and "nothing was run" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()

    # --skip-invalid: the valid task runs, the invalid entries are listed in the summary.
    with ScriptedModelServer({"[ok]": [reply(text("Nothing to do."))]}) as api:
        skipped = batch(tasks, "--out", out, "--skip-invalid", base_url=api.base_url)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "skipping the invalid entries above; running the 1 valid task(s)" in skipped.stderr
    data = summary(out)
    assert list(data["by_id"]) == ["ok"] and data["by_id"]["ok"]["status"] == "completed"
    assert len(data["invalid"]) == 8 and data["invalid"][0].startswith(f"{tasks}:2: duplicate id")


# --- other inputs: YAML and a plain list of repos with one --task -------------------------------------------


def test_yaml_and_plain_list_inputs(tmp_path: Path) -> None:
    calculator_copies(tmp_path / "repos", "alpha", "beta")
    listing = tmp_path / "repos.txt"
    listing.write_text("# the repos to fix\nrepos/alpha\n\n  repos/beta  \n")
    out = tmp_path / "plain"
    with ScriptedModelServer({"[shared]": [fix_then_stop] * 4}) as api:
        proc = batch(listing, "--out", out, "--task", "Fix multiply. [shared]", "--verify", TEST_COMMAND, base_url=api.base_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = summary(out)["by_id"]
    assert list(rows) == ["alpha", "beta"]  # ids from the folder names
    assert all(row["status"] == "completed" and row["verify_passed"] for row in rows.values())
    assert all(record(out, name)["task"] == "Fix multiply. [shared]" for name in rows)

    no_task = batch(listing, "--out", tmp_path / "x")
    assert no_task.returncode == 2 and f"{listing}: a list of repos needs the task they share: give it with --task" in no_task.stderr
    twice = tmp_path / "twice.txt"
    twice.write_text("repos/alpha\nrepos/alpha/\n")
    dup = batch(twice, "--out", tmp_path / "x", "--task", "x")
    assert dup.returncode == 2 and f"{twice}:2: duplicate id 'alpha', first used on line 1 (derived from the repo name" in dup.stderr

    yaml_file = tmp_path / "tasks.yaml"
    yaml_file.write_text(
        "# a repo alone takes --task; a mapping says more\n"
        "- repos/alpha\n"
        "- id: beta-custom\n"
        "  repo: repos/beta\n"
        "  task: Fix multiply. [beta-custom]\n"
        f"  verify: {TEST_COMMAND}\n"
        "  max_steps: 5\n"
    )
    out = tmp_path / "yaml"
    scripts = {"[shared]": [fix_then_stop] * 2, "[beta-custom]": [reply(FIX), reply(text("Fixed."))]}
    with ScriptedModelServer(scripts) as api:
        proc = batch(yaml_file, "--out", out, "--task", "Fix multiply. [shared]", base_url=api.base_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = summary(out)["by_id"]
    assert list(rows) == ["alpha", "beta-custom"] and rows["beta-custom"]["verify_passed"] is True
    assert record(out, "beta-custom")["policy"]["limits"]["max_steps"] == 5

    broken = tmp_path / "broken.yml"
    broken.write_text("- repos/alpha\n- id: [unclosed\n")
    bad = batch(broken, "--out", tmp_path / "x", "--task", "x")
    assert bad.returncode == 2 and re.search(rf"{re.escape(str(broken))}:\d: not valid YAML", bad.stderr), bad.stderr


# --- the batch-wide cost budget ------------------------------------------------------------------------------


def test_total_cost_budget_stops_running_tasks_and_starts_no_new_one(tmp_path: Path) -> None:
    calculator_copies(tmp_path, "r1", "r2", "r3")
    policy = tmp_path / "priced.toml"
    policy.write_text('[budget.prices."test-model"]\ninput = 1000.0\noutput = 1000.0\ncache_write = 1000.0\ncache_read = 1000.0\n')
    names = ["first", "second", "third"]
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"id": n, "repo": f"r{i}", "task": f"Work. [{n}]"} for i, n in enumerate(names, 1)])
    slow_steps = [reply(tool_use("run_bash", command="sleep 2")) for _ in range(5)] + [reply(text("done"))]
    out = tmp_path / "results"
    with ScriptedModelServer({f"[{n}]": list(slow_steps) for n in names}) as api:
        proc = batch(tasks, "--out", out, "--jobs", "2", "--model", "test-model", "--policy", policy, "--max-total-cost", "0.01", base_url=api.base_url)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = summary(out)
    rows = data["by_id"]
    assert data["budget_reached"] is True and data["max_total_cost"] == 0.01
    assert "reached --max-total-cost $0.01: no new task starts" in proc.stdout
    for name in ("first", "second"):
        rec = record(out, name)
        assert rec["status"] == rows[name]["status"] == "budget_exceeded"
        assert rec["steps"] <= 2 and len(api.for_marker(f"[{name}]")) <= 2  # stopped after the current step
        [event] = [e for e in rec["policy_events"] if e["rule"] == "batch.max_total_cost"]
        assert "reached --max-total-cost $0.01" in event["detail"]
    assert rows["third"]["status"] == "not_started" and "--max-total-cost" in rows["third"]["error"]
    assert not (out / "third").exists() and api.for_marker("[third]") == []
    assert data["totals"]["cost_usd"] >= 0.01

    # Without prices the batch's cost cannot be counted: refused up front.
    unpriced = batch(tasks, "--out", tmp_path / "x", "--model", "unpriced-model", "--max-total-cost", "1")
    assert unpriced.returncode == 2 and "--max-total-cost needs every task's cost, but there is no price for model 'unpriced-model'" in unpriced.stderr


# --- rate limits: one task's 429 pauses the others -----------------------------------------------------------


def test_a_429_backs_off_every_task(tmp_path: Path) -> None:
    calculator_copies(tmp_path, "r1", "r2")
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [
        {"id": "limited", "repo": "r1", "task": "Work. [limited]"},
        {"id": "other", "repo": "r2", "task": "Work. [other]"},
    ])  # fmt: skip
    other_asked, limited_answered = threading.Event(), threading.Event()
    sent: list[float] = []

    def rate_limited(request: dict[str, Any]) -> ApiError:
        other_asked.wait(90)  # both runs are under way before the 429
        sent.append(time.monotonic())
        limited_answered.set()
        return ApiError(429, "rate limited", "rate_limit_error", {"retry-after": "2"})

    def after_the_429(request: dict[str, Any]) -> dict[str, Any]:
        other_asked.set()
        limited_answered.wait(90)
        time.sleep(0.3)  # the 429 has reached its run, which has recorded the backoff
        return reply(tool_use("run_bash", command="true"))

    scripts = {"[limited]": [rate_limited, reply(text("done"))], "[other]": [after_the_429, reply(text("done"))]}
    with ScriptedModelServer(scripts) as api:
        proc = batch(tasks, "--out", tmp_path / "results", "--jobs", "2", base_url=api.base_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [(_, _), (limited_retry, _)] = api.for_marker("[limited]")
    [(other_first, _), (other_next, _)] = api.for_marker("[other]")
    assert limited_retry - sent[0] >= 1.9  # retry-after was honoured
    # Without the shared backoff the other run would have asked again about 0.3 s after the 429.
    assert other_next - sent[0] >= 1.9, other_next - sent[0]
    assert "rate limited by the API (429): no new task starts" in proc.stdout


# --- isolation: a run killed, a sandbox removed under its run; the other task does not notice ----------------


def sandboxes(client: docker.DockerClient, run_id: str) -> list:
    return client.containers.list(all=True, filters={"label": f"airlock.run-id={run_id}"}, ignore_removed=True)


def busy(client: docker.DockerClient, run_id: str) -> bool:
    for container in sandboxes(client, run_id):
        try:
            if any("sleep 300" in " ".join(row) for row in container.top().get("Processes") or []):
                return True
        except docker.errors.APIError:
            pass
    return False


def wait_until_busy(client: docker.DockerClient, out: Path, names: list[str], proc: subprocess.Popen, log: Path) -> dict[str, str]:
    """The run ids of `names` once each of their sandboxes runs `sleep 300`."""
    run_ids: dict[str, str] = {}
    deadline = time.monotonic() + 90
    while len(run_ids) < len(names) or not all(busy(client, run_id) for run_id in run_ids.values()):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        for name in names:
            if name not in run_ids and (out / name / "run.json").exists():
                run_ids[name] = json.loads((out / name / "run.json").read_text())["run_id"]
        time.sleep(0.2)
    return run_ids


def start_batch(tasks: Path, out: Path, base_url: str, log: Path, *extra: str) -> subprocess.Popen:
    with open(log, "wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "batch", str(tasks), "--out", str(out), *extra],
            env=airlock_env(base_url), cwd=PROJECT, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )  # fmt: skip


def test_a_crashed_run_or_sandbox_does_not_affect_the_other_tasks(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    names = ["killed", "sandbox-gone", "fine"]
    calculator_copies(tmp_path, *names)
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"id": n, "repo": n, "task": f"Work. [{n}]"} for n in names])
    out, log = tmp_path / "results", tmp_path / "batch.log"
    sleeper = [reply(tool_use("run_bash", command="sleep 300")), reply(text("never reached"))]
    waiting = threading.Event()

    def after_the_crashes(request: dict[str, Any]) -> dict[str, Any]:
        waiting.wait(90)
        return reply(FIX)

    scripts = {"[killed]": list(sleeper), "[sandbox-gone]": list(sleeper), "[fine]": [after_the_crashes, reply(text("Fixed."))]}
    with ScriptedModelServer(scripts) as api:
        proc = start_batch(tasks, out, api.base_url, log, "--jobs", "3")
        try:
            run_ids = wait_until_busy(docker_client, out, names[:2], proc, log)
            [killed_box] = sandboxes(docker_client, run_ids["killed"])
            os.kill(int(killed_box.labels["airlock.pid"]), signal.SIGKILL)  # the run's own process dies at once
            [gone] = sandboxes(docker_client, run_ids["sandbox-gone"])
            gone.remove(force=True)  # the sandbox vanishes under its run
            waiting.set()
            code = proc.wait(timeout=120)
        finally:
            waiting.set()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    output = log.read_text()
    assert code == 1, output
    rows = summary(out)["by_id"]
    assert rows["fine"]["status"] == "completed" and FIXED in (out / "fine" / "patch.diff").read_bytes(), output
    assert rows["killed"]["status"] == "crashed" and "exited with status -9 without a final run.json" in rows["killed"]["error"]
    assert record(out, "killed")["status"] == "running"  # so a resumed batch runs it again
    assert rows["sandbox-gone"]["status"] == record(out, "sandbox-gone")["status"] == "sandbox_error"
    assert sandboxes(docker_client, run_ids["killed"]) == []  # the killed run's sandbox was removed by the batch


# --- Ctrl-C: every run interrupted with its work kept, nothing left behind, and a resume finishes -------------


@pytest.mark.parametrize("target", ["group", "parent"])
def test_ctrl_c_interrupts_every_task_and_a_rerun_resumes(tmp_path: Path, docker_client: docker.DockerClient, target: str) -> None:
    names = ["a", "b", "c", "queued"]
    calculator_copies(tmp_path, *names)
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"id": n, "repo": n, "task": f"Work. [{n}]"} for n in names])
    out = tmp_path / "results"
    work = [reply(tool_use("write_file", path="notes.txt", content="written before the interrupt\n"), tool_use("run_bash", command="sleep 300"))]
    log = tmp_path / "batch.log"
    with ScriptedModelServer({f"[{n}]": list(work) for n in names}) as api:
        proc = start_batch(tasks, out, api.base_url, log, "--jobs", "3")
        try:
            run_ids = wait_until_busy(docker_client, out, names[:3], proc, log)
            started = time.monotonic()
            if target == "group":
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at a terminal: the batch and every run get it
            else:
                proc.send_signal(signal.SIGINT)  # only the batch: it passes the interrupt on
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    output = log.read_text()
    assert code == 130 and time.monotonic() - started < 30, output
    assert "Traceback" not in output
    for run_id in run_ids.values():
        assert sandboxes(docker_client, run_id) == []
    data = summary(out)
    assert data["interrupted"] is True and data["exit_code"] == 130
    for name in names[:3]:
        rec = record(out, name)
        assert rec["status"] == data["by_id"][name]["status"] == "interrupted"
        assert rec["patch"]["files_changed"] == 1 and b"+written before the interrupt" in (out / name / "patch.diff").read_bytes()
    assert data["by_id"]["queued"]["status"] == "not_started" and "interrupted" in data["by_id"]["queued"]["error"]
    assert api.for_marker("[queued]") == []

    if target == "parent":
        return
    # The same command again: the interrupted tasks are resumed in their folders (their one step was cut
    # short, so it is asked again), and the one never started runs.
    with ScriptedModelServer({f"[{n}]": [reply(text("done"))] for n in names}) as api:
        again = batch(tasks, "--out", out, "--jobs", "3", base_url=api.base_url)
    assert again.returncode == 0, again.stdout + again.stderr
    assert all(row["status"] == "completed" and not row["skipped"] for row in summary(out)["tasks"])
    assert sorted(set(api.markers)) == sorted(f"[{n}]" for n in names)
    for name in names[:3]:
        resumed = record(out, name)
        assert resumed["run_id"] == run_ids[name] and resumed["resumes"][0]["previous_status"] == "interrupted"
        assert (out / name / "trajectory.resume-1.jsonl").is_file()
        assert f"{name} started (resuming its earlier run from its recorded steps)" in again.stdout


def test_a_task_of_several_attempts_takes_its_slots_gives_the_chosen_patch_and_is_reviewed_side_by_side(tmp_path: Path) -> None:
    calculator_copies(tmp_path, "multi", "single")
    verify = "grep -q 'a \\* b' calculator.py"
    entries = [
        {"id": "multi", "repo": "multi", "task": "Fix multiply. [multi]", "verify": verify, "attempts": 3},
        {"id": "single", "repo": "single", "task": "Fix multiply. [single]"},
    ]
    tasks, out = write_jsonl(tmp_path / "tasks.jsonl", entries), tmp_path / "results"
    wrong = tool_use("edit_file", path="calculator.py", old_str="def multiply(a, b):\n    return a + b", new_str="def multiply(a, b):\n    return a - b")
    scripts = {  # each attempt is told apart by the attempt number in its first message
        "attempt 1 of": [reply(wrong), reply(text("done"))],
        "attempt 2 of": [reply(FIX), reply(text("done"))],
        "attempt 3 of": [reply(text("nothing to do"))],
        "[single]": [reply(FIX), reply(text("done"))],
    }
    with ScriptedModelServer(scripts) as api:
        proc = batch(tasks, "--out", out, "--jobs", "2", base_url=api.base_url)
    log = proc.stdout
    assert proc.returncode == 0, log + proc.stderr
    assert summary(out)["by_id"]["multi"]["status"] == "completed" and record(out, "multi")["attempts"]["chosen"] == 2
    assert "3 attempts, 2 at a time" in (out / "multi" / "airlock.log").read_text()
    # Its attempts took both of --jobs 2: the next task started only once it ended.
    assert log.index("single started") > log.index("multi completed"), log
    predictions = {p["instance_id"]: p["model_patch"] for p in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert predictions["multi"] == (out / "multi" / "attempts" / "2" / "patch.diff").read_text() and FIXED.decode() in predictions["multi"]

    report = airlock("review", str(out), env=airlock_env(NO_MODEL))
    assert report.returncode == 0, report.stderr
    html = (out / "report.html").read_text()
    attempts = html[html.index("<h3>Attempts</h3>") : html.index("</table>", html.index("<h3>Attempts</h3>"))]
    rows = attempts.split("<tr>")[2:]  # after the header row: the chosen one first, then by number
    assert [row.split("</td>")[0].removeprefix("<td>") for row in rows] == ["2 <b>chosen</b>", "1", "3"]
    assert "✗ failed" in rows[1] and 'href="#' in rows[1] and "~a1~changes" in rows[1] and "Attempt 1: changes" in html
    assert "Chosen: the only attempt whose verify passed" in attempts
