"""The runner, the agent loop and the sandbox driver end to end without Docker: the real SDKs against
the scripted model server, the real tool server and baseline, in a box of the test-only local backend."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from local_backend import LocalBackend
from rich.console import Console

from orchestrator.demo import calculator_script
from orchestrator.policy.model import Policy
from orchestrator.providers import make_provider
from orchestrator.providers.scripted import ScriptedModelServer, Turn, reply, text, tool_use
from orchestrator.run.config import RunConfig, new_run_id
from orchestrator.run.record import RunRecord
from orchestrator.run.runner import Run

FIX = tool_use("edit_file", path="calculator.py", old_str="def multiply(a, b):\n    return a + b", new_str="def multiply(a, b):\n    return a * b")


def run_locally(
    repo: Path, out: Path, turns: list[Turn], provider: str = "anthropic", *, server: dict[str, Any] | None = None,
    verify: str | None = None, text_tool_calls: bool = True, **limits: Any,
) -> tuple[RunRecord, ScriptedModelServer, str]:  # fmt: skip
    """One run of the real runner and agent loop in a box of the local backend, against the scripted model server
    (`server`: its options); returns the record, the server (with the requests it got) and the terminal's text."""
    backend = LocalBackend()
    console = Console(file=io.StringIO(), width=200)
    with ScriptedModelServer(turns, **(server or {})) as api:
        base_url = api.base_url if provider == "anthropic" else api.openai_base_url
        policy = Policy().with_overrides(**limits)
        config = RunConfig(repo=repo, task="Fix it.", out=out, run_id=new_run_id(), model="scripted", policy=policy, verify=verify)
        model = make_provider(provider, "scripted", api_key="test", base_url=base_url, text_tool_calls=text_tool_calls)
        record = Run(config, model, console, backend=backend).execute()
    assert all(not Path(box.root).exists() for box in backend.boxes), "the box outlived its run"
    return record, api, console.file.getvalue()  # type: ignore[attr-defined]


def events(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "trajectory.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_the_calculator_exercise_runs_end_to_end(calculator_repo: Path, tmp_path: Path, provider: str) -> None:
    record, api, shown = run_locally(calculator_repo, tmp_path / "out", calculator_script(), provider)
    assert record.status == "completed", record.error
    assert (record.steps, record.tool_calls) == (5, 4)
    patch = (tmp_path / "out" / "patch.diff").read_text()
    assert "-    return a + b\n+    return a * b\n" in patch
    assert "return a + b" in (calculator_repo / "calculator.py").read_text()  # the repo itself is never touched
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "completed"
    assert [e["type"] for e in events(tmp_path / "out")][-1] == "run_end"
    assert len(api.requests) == 5 and "■ completed" in shown


def test_a_git_repo_gets_its_rebuilt_history_in_the_box(calculator_repo: Path, tmp_path: Path) -> None:
    """The whole start-up path with a history: the pack made on the host, unpacked beside the work tree,
    the .git given its index, the baseline borrowing the pack's objects; git works in the box."""
    from orchestrator.patch.neutral_git import run_git

    def git(*args: str) -> None:
        assert run_git(list(args), git_dir=calculator_repo / ".git", work_tree=calculator_repo, cwd=calculator_repo).returncode == 0

    git("init", "--quiet", "--template=", "--initial-branch=main")
    git("add", "-A")
    git("-c", "user.name=dev", "-c", "user.email=dev@example.invalid", "commit", "--quiet", "-m", "the calculator")
    (calculator_repo / "server.key").write_text("secret\n")  # hidden by the default policy
    turns = [reply(FIX, tool_use("run_bash", command="git log --format=%s; git status --short; ls -a")), reply(text("done"))]
    record, api, shown = run_locally(calculator_repo, tmp_path / "out", turns)
    assert record.status == "completed", record.error
    [output] = [event["output"] for event in events(tmp_path / "out") if event["type"] == "tool_call" and event["name"] == "run_bash"]
    log, _, rest = output.partition("\n")
    assert log == "the calculator" and " M calculator.py" in rest and "server.key" not in rest
    assert record.snapshot["history"]["commits"] == 1 and record.snapshot["hidden"] == ["server.key"]
    assert "git history: the full history of branch main" in shown and "hidden by policy: 1 path" in shown
    assert "-    return a + b\n+    return a * b\n" in (tmp_path / "out" / "patch.diff").read_text()


def test_an_export_failing_after_an_earlier_error_is_said_too(calculator_repo: Path, tmp_path: Path) -> None:
    """The run keeps its first error (the tool server killed), and the export that then fails is not silent.
    The local box isolates nothing, so the agent can reach the baseline and break the export, as a real
    sandbox's agent cannot."""
    sabotage = tool_use("run_bash", command="rm -rf ../state/*; kill -KILL $PPID")
    record, api, shown = run_locally(calculator_repo, tmp_path / "out", [reply(FIX), reply(sabotage), reply(text("never asked"))])
    assert record.status == "sandbox_error" and "the tool server exited" in (record.error or "")
    assert record.patch.exported is False and (tmp_path / "out" / "patch.diff").read_bytes() == b""
    [failed] = [event for event in events(tmp_path / "out") if event["type"] == "export_failed"]
    assert "baseline.py export" in failed["error"]
    assert "the patch could not be exported either: `" in shown
