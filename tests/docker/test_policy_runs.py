"""Each policy section enforced in full `airlock run`s: real CLI, real SDK, real Docker."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import PROJECT, airlock, airlock_env

from orchestrator.errors import SandboxError
from orchestrator.providers.scripted import reply, text, tool_use
from orchestrator.sandbox.docker_backend import DockerBackend
from orchestrator.sandbox.spec import DEFAULT_IMAGE, SandboxSpec

STRICT = PROJECT / "policies" / "strict.toml"
FIX = tool_use("edit_file", path="calculator.py", old_str="def multiply(a, b):\n    return a + b", new_str="def multiply(a, b):\n    return a * b")


def write_policy(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(body)
    return path


def events(result, rule_prefix: str) -> list[dict]:
    return [e for e in result.record["policy_events"] if e["rule"].startswith(rule_prefix)]


def test_budget_stops_the_run_after_the_current_step(run_scripted, calculator_repo: Path, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, "[budget]\nmax_output_tokens = 10\n")
    turns = [reply(text("Fixing multiply now, then I will run the whole test suite to check it."), FIX), reply(text("never reached"))]
    result, api = run_scripted(calculator_repo, turns, "--policy", str(policy))
    assert result.exit_code == 1
    record = result.record
    assert record["status"] == "budget_exceeded" and record["steps"] == 1 and len(api.requests) == 1
    assert record["tool_calls"] == 1  # the step's tool call was still answered
    assert b"+    return a * b" in result.patch  # the work so far is exported
    [event] = events(result, "budget")
    assert "output tokens" in event["detail"] and event["time"]
    assert "budget" in result.stdout
    assert record["policy"]["budget"]["max_output_tokens"] == 10


def test_cost_budget_with_known_prices_and_cost_in_run_json(run_scripted, calculator_repo: Path, tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path,
        '[budget]\nmax_cost_usd = 0.000001\n[budget.prices."test-model"]\ninput = 3.0\noutput = 15.0\ncache_write = 3.75\ncache_read = 0.3\n',
    )
    result, _ = run_scripted(calculator_repo, [reply(FIX), reply(text("never reached"))], "--policy", str(policy), "--model", "test-model")
    assert result.record["status"] == "budget_exceeded"
    usage = result.record["usage"]
    per_million = {"input_tokens": 3.0, "output_tokens": 15.0, "cache_creation_input_tokens": 3.75, "cache_read_input_tokens": 0.3}
    expected = sum(usage[key] * price for key, price in per_million.items()) / 1e6
    assert result.record["cost_usd"] == pytest.approx(expected, rel=1e-3)
    assert "cost" in events(result, "budget")[0]["detail"]


def test_wall_clock_and_step_limits_from_the_policy(run_scripted, calculator_repo: Path, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, "[limits]\ntimeout = 4\nmax_steps = 2\n")
    result, _ = run_scripted(calculator_repo, [reply(tool_use("run_bash", command="sleep 30")), reply(text("x"))], "--policy", str(policy))
    assert result.record["status"] == "timeout" and result.exit_code == 1
    assert events(result, "limits.timeout")

    turns = [reply(tool_use("run_bash", command="true")) for _ in range(3)]
    result, _ = run_scripted(calculator_repo, turns, "--policy", str(policy), "--timeout", "600")  # the flag overrides the file
    assert result.record["status"] == "max_steps" and result.record["steps"] == 2
    assert events(result, "limits.max_steps")
    assert result.record["policy"]["limits"]["timeout"] == 600


def test_refused_command_inside_a_pipeline(run_scripted, calculator_repo: Path) -> None:
    turns = [
        reply(tool_use("run_bash", command="ls | wc -l && echo $(curl -s http://example.com)")),
        reply(tool_use("run_bash", command="python3 -m pytest -q -p no:cacheprovider 2>&1 | tail -3")),
        reply(text("done")),
    ]
    result, api = run_scripted(calculator_repo, turns, "--policy", str(STRICT))
    calls = result.events("tool_call")
    assert calls[0]["is_error"] is True and "curl" in calls[0]["output"] and "allow" in calls[0]["output"]
    assert calls[0]["meta"] == {}  # it never reached the sandbox
    assert calls[1]["is_error"] is False and "3 failed" in calls[1]["output"]
    assert api.requests[1]["messages"][-1]["content"][0]["is_error"] is True
    [event] = events(result, "commands")
    assert "curl" in event["detail"]


def test_protected_test_file_changed_through_the_shell_is_dropped_from_the_patch(run_scripted, calculator_repo: Path) -> None:
    turns = [
        reply(tool_use("edit_file", path="test_calculator.py", old_str="== 12", new_str="== 7")),
        # sed is not on strict.toml's allowlist, but python3 is, and an interpreter can change anything:
        reply(tool_use("run_bash", command="sed -i 's/== 12/== 7/' test_calculator.py")),
        reply(
            tool_use(
                "run_bash",
                command="python3 -c \"import pathlib; p = pathlib.Path('test_calculator.py'); p.write_text(p.read_text().replace('== 12', '== 7'))\"",
            )
        ),
        reply(FIX),
        reply(text("done")),
    ]
    result, _ = run_scripted(calculator_repo, turns, "--policy", str(STRICT))
    assert result.exit_code == 0, result.stdout
    calls = result.events("tool_call")
    assert calls[0]["is_error"] is True and "protected" in calls[0]["output"]
    assert calls[1]["is_error"] is True and "'sed' is not allowed" in calls[1]["output"]
    assert calls[2]["is_error"] is False
    patch = result.patch.decode()
    assert "calculator.py" in patch and "test_calculator.py" not in patch
    refused = result.record["patch"]["refused"]
    assert [r["path"] for r in refused] == ["test_calculator.py"] and "protected" in refused[0]["reason"]
    assert len(events(result, "paths.protected")) == 2  # the refused edit and the dropped change
    assert "test_calculator.py" in result.stdout


def test_hidden_secrets_never_enter_the_sandbox(run_scripted, calculator_repo: Path) -> None:
    (calculator_repo / ".env").write_text("API_TOKEN=super-secret-value\n")
    (calculator_repo / "deploy").mkdir()
    (calculator_repo / "deploy" / "server.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    turns = [reply(tool_use("run_bash", command="ls -la; cat .env; ls deploy; grep -r super-secret . ; echo end")), reply(text("done"))]
    result, _ = run_scripted(calculator_repo, turns)
    output = result.events("tool_call")[0]["output"]
    assert "super-secret-value" not in output and "No such file or directory" in output
    assert "server.pem" not in output and "calculator.py" in output
    assert sorted(result.record["snapshot"]["hidden"]) == [".env", "deploy/server.pem"]
    assert "super-secret-value" not in (result.out / "trajectory.jsonl").read_text()


def test_a_runtime_the_daemon_does_not_know_is_a_clear_sandbox_error() -> None:
    # The policy allows runc and runsc; `make test` registers runsc, so a runtime no daemon has stands in.
    spec = SandboxSpec(image=DEFAULT_IMAGE, run_id="no-such-runtime", runtime="airlock-no-such-runtime")
    with pytest.raises(SandboxError, match="the container runtime 'airlock-no-such-runtime' is not registered with the Docker daemon"):
        DockerBackend().start(spec)


def test_command_rules_cover_the_usual_spellings_and_the_sandbox_is_the_boundary(run_scripted, calculator_repo: Path) -> None:
    spellings = ["pip3 install requests", "python3 -m pip install requests", "python -m pip install --user requests", "/usr/bin/pip3 install x"]
    around = "python3 -c \"import urllib.request; urllib.request.urlopen('http://93.184.215.14', timeout=5)\" 2>&1 | tail -1"
    turns = [reply(tool_use("run_bash", command=command)) for command in [*spellings, around]] + [reply(text("done"))]
    result, _ = run_scripted(calculator_repo, turns, "--policy", str(STRICT))

    assert result.exit_code == 0, result.stdout + result.stderr
    *refused, passed = result.events("tool_call")
    for call in refused:
        assert call["is_error"] and "refused by policy [commands] deny rule" in call["output"] and call["meta"] == {}, call
    # The rules are a guard-rail: python3 is allowed, so this passes them; the sandbox has no network.
    assert not passed["is_error"] and "Network is unreachable" in passed["output"]


def test_a_mistyped_image_is_refused_with_the_name_meant(calculator_repo: Path, tmp_path: Path) -> None:
    """A typo is bad input (exit 2), said before anything starts: no output folder for a run that never ran."""
    env = airlock_env("http://127.0.0.1:9")
    typo = airlock("run", str(calculator_repo), "--task", "x", "--image", "airlock-sandbx:latest", "--out", str(tmp_path / "typo"), env=env)
    assert typo.returncode == 2
    assert typo.stderr.strip() == "airlock: error: sandbox image 'airlock-sandbx:latest' not found: did you mean airlock-sandbox:latest?"
    assert not (tmp_path / "typo").exists()
    unknown = airlock("run", str(calculator_repo), "--task", "x", "--image", "no-such/image:9", "--out", str(tmp_path / "unknown"), env=env)
    assert unknown.returncode == 2 and "sandbox image 'no-such/image:9' not found on this Docker engine" in unknown.stderr
    assert not (tmp_path / "unknown").exists()
