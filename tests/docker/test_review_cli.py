"""`airlock show` and `airlock review` through the real CLI, on a real run with a hostile file name and output."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import airlock

from orchestrator.providers.scripted import reply, text, tool_use

HOSTILE_NAME = "notes\u202ecod.sh"
ESCAPES = "\x1b[2J\x1b]0;pwned\x07"  # clear the screen, set the terminal's title


def test_show_prints_one_run_safely(run_scripted, calculator_repo: Path, tmp_path: Path) -> None:
    turns = [
        reply(
            text(f"I will add a helper.{ESCAPES}\nSecond line of the plan."),
            tool_use("write_file", path=HOSTILE_NAME, content="#!/bin/sh\necho hi\n"),
            tool_use("write_file", path=".github/workflows/ci.yml", content="on: push\n"),
            tool_use("run_bash", command="chmod +x calculator.py && printf 'out\\033[2J\\n'"),
        ),
        reply(text("Done.")),
    ]
    result, _ = run_scripted(calculator_repo, turns, task=f"Add a helper {ESCAPES}")
    assert result.exit_code == 0, result.stdout + result.stderr

    proc = airlock("show", str(result.out))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "■ completed" in out and "2 steps · 3 tool calls" in out
    assert "needs attention (4)" in out
    assert "notes\\u202ecod.sh — name contains bidirectional controls (U+202E RIGHT-TO-LEFT OVERRIDE)" in out
    assert "calculator.py — executable bit added (mode 100644 → 100755)" in out
    assert ".github/workflows/ci.yml — CI configuration" in out
    assert "3 files changed, +3 -0" in out and "mode 100644 → 100755" in out
    assert "+echo hi" in out  # the coloured diff (no colour codes: not a terminal)
    assert "1 I will add a helper.\\x1b[2J\\x1b]0;pwned\\x07" in out  # the plan's first line, escaped
    assert "▶ run_bash chmod +x calculator.py" in out and "→ out\\x1b[2J (exit 0)" in out
    assert "■ run ended: completed" in out
    # Nothing the agent wrote reaches the terminal as a control sequence or a bidi override.
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out


def test_show_and_review_refuse_folders_without_runs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (("review", str(empty)), ("show", str(empty)), ("review", str(tmp_path / "missing")), ("show", str(tmp_path / "missing"))):
        proc = airlock(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("airlock: error: "), proc.stderr
    batch = tmp_path / "batch"
    (batch / "a").mkdir(parents=True)
    (batch / "a" / "run.json").write_text(json.dumps({"run_id": "a", "status": "running", "task": "t"}))
    proc = airlock("show", str(batch))
    assert proc.returncode == 2 and "holds 1 run:" in proc.stderr and "airlock review" in proc.stderr
    proc = airlock("review", str(batch), "--out", str(tmp_path / "elsewhere.html"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "elsewhere.html")
    page = (tmp_path / "elsewhere.html").read_text()
    assert 'href="./batch/a/run.json"' in page  # links to the run's files are relative to the report
