"""`airlock replay`: recorded model responses played back against a fresh sandbox; real CLI, real Docker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import Result, airlock, airlock_env

from orchestrator.demo import CALCULATOR_REPO, TEST_COMMAND, calculator_script
from orchestrator.providers.scripted import ScriptedModelServer

TIMINGS = "in [0-9.]+s"  # pytest's "4 passed in 0.01s" differs from run to run


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Result:
    """The calculator exercise, recorded once for the module (replays never change it)."""
    root = tmp_path_factory.mktemp("recorded")
    repo = root / "calculator"
    shutil.copytree(CALCULATOR_REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    with ScriptedModelServer(calculator_script()) as api:
        proc = airlock("run", str(repo), "--task", "Do the task.", "--out", str(root / "out"), "--verify", TEST_COMMAND, env=airlock_env(api.base_url))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return Result(proc.returncode, proc.stdout, proc.stderr, root / "out")


def _replay(*args: str) -> tuple[Result, dict]:
    """`airlock replay` with no API key at all and ANTHROPIC_BASE_URL on a trap server that must stay unused."""
    out = Path(args[args.index("--out") + 1])
    env = airlock_env()
    del env["ANTHROPIC_API_KEY"]
    with ScriptedModelServer([]) as trap:
        proc = airlock("replay", *args, env={**env, "ANTHROPIC_BASE_URL": trap.base_url})
    assert trap.requests == [], "the replay called the configured model API"
    report = json.loads((out / "replay.json").read_text()) if (out / "replay.json").exists() else {}
    return Result(proc.returncode, proc.stdout, proc.stderr, out), report


def test_replay_reproduces_the_calculator_patch_byte_for_byte(recorded: Result, tmp_path: Path) -> None:
    result, report = _replay(str(recorded.out), "--out", str(tmp_path / "new"), "--ignore-regex", TIMINGS)

    assert result.exit_code == 0, result.stderr + result.stdout
    assert result.patch == recorded.patch and b"+    return a * b\n" in result.patch
    assert report == {**report, "identical_patch": True, "divergences": [], "status": "completed", "recorded_status": "completed"}
    assert report["model_turns"] == {"recorded": 5, "requested": 5} and report["ran_out_of_turns"] is False
    assert Path(report["source"]) == recorded.out.resolve()
    # Every tool call really ran again, in the same order with the same inputs.
    assert [(c["name"], c["input"]) for c in result.events("tool_call")] == [(c["name"], c["input"]) for c in recorded.events("tool_call")]
    assert "4 passed" in result.events("tool_call")[-1]["output"]
    assert result.record["verify"]["passed"] is True and result.record["task"] == recorded.record["task"]
    assert result.record["policy"] == recorded.record["policy"]
    assert "REPLAY of" in result.stdout and "reproduced exactly" in result.stdout


def test_replay_names_the_tool_call_whose_result_changed(recorded: Result, tmp_path: Path) -> None:
    moved = tmp_path / "calculator"
    shutil.copytree(recorded.record["repo"], moved)
    source = moved / "calculator.py"
    source.write_text(source.read_text() + "\n\ndef divide(a, b):\n    return a / b\n")

    result, report = _replay(str(recorded.out), "--repo", str(moved), "--out", str(tmp_path / "new"), "--ignore-regex", TIMINGS)

    assert result.exit_code == 1, result.stderr + result.stdout
    # read_file shows the new function, and edit_file's excerpt around the change now reaches it too.
    assert [(d["index"], d["step"], d["tool"], d["fields"]) for d in report["divergences"]] == [
        (2, 2, "read_file", ["output"]), (3, 3, "edit_file", ["output"]),
    ]  # fmt: skip
    assert any(line.startswith("+") and "def divide(a, b):" in line for line in report["divergences"][0]["diff"])
    assert report["identical_patch"] is (result.patch == recorded.patch) is False
    assert report["status"] == report["recorded_status"] == "completed"
    assert result.record["repo"] == str(moved)
    assert "tool call #2 (step 2, read_file): output differ" in result.stdout


def test_replay_without_timing_filter_reports_the_timings(recorded: Result, tmp_path: Path) -> None:
    """Nothing is normalised by default: pytest's timings are reported unless --ignore-regex says otherwise."""
    trajectory = recorded.out / "trajectory.jsonl"
    events = [json.loads(line) for line in trajectory.read_text().splitlines()]
    last_tests = max(i for i, e in enumerate(events) if e["type"] == "tool_call")
    events[last_tests]["output"] = events[last_tests]["output"].replace(" passed in ", " passed in 99")  # a timing no rerun gives
    source = tmp_path / "source"
    shutil.copytree(recorded.out, source)
    (source / "trajectory.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))

    result, report = _replay(str(source), "--out", str(tmp_path / "new"))

    assert result.exit_code == 1, result.stderr + result.stdout
    assert [d["index"] for d in report["divergences"]][-1] == 4
    assert report["identical_patch"] is True


def test_replay_says_when_it_needs_more_turns_than_recorded(recorded: Result, tmp_path: Path) -> None:
    source = tmp_path / "interrupted"
    shutil.copytree(recorded.out, source)
    lines = (source / "trajectory.jsonl").read_text().splitlines(keepends=True)
    last_response = max(i for i, line in enumerate(lines) if json.loads(line)["type"] == "model_response")
    (source / "trajectory.jsonl").write_text("".join(lines[:last_response]))  # as if the run stopped before step 5's answer

    result, report = _replay(str(source), "--out", str(tmp_path / "new"), "--ignore-regex", TIMINGS)

    assert result.exit_code == 1, result.stderr + result.stdout
    assert report["ran_out_of_turns"] is True and report["model_turns"] == {"recorded": 4, "requested": 5}
    assert report["divergences"] == [] and report["identical_patch"] is True
    assert "the replay needed more model turns than were recorded" in result.stdout
    assert result.record["error"] == "the replay needed more model turns than were recorded (4)"


def test_replay_bad_input_is_one_line_and_exit_2(recorded: Result, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    no_responses = tmp_path / "no-responses"
    shutil.copytree(recorded.out, no_responses)
    (no_responses / "trajectory.jsonl").write_text('{"type": "run_start", "t": 0, "version": 1}\n')
    gone = tmp_path / "gone"
    shutil.copytree(recorded.out, gone)
    (gone / "run.json").write_text(json.dumps({**recorded.record, "repo": str(tmp_path / "no-such-repo")}))

    cases = {
        tmp_path / "missing": "run folder not found",
        empty: "has no run.json",
        no_responses: "holds no model responses",
        gone: "the recorded repo no longer exists",
    }
    for folder, message in cases.items():
        proc = airlock("replay", str(folder), "--out", str(tmp_path / "never"))
        assert proc.returncode == 2, (folder, proc.stderr)
        assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = airlock("replay", str(recorded.out), "--ignore-regex", "(", "--out", str(tmp_path / "never"))
    assert proc.returncode == 2 and "not a valid regular expression" in proc.stderr
    assert not (tmp_path / "never").exists()
