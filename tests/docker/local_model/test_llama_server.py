"""airlock against a real self-hosted model: llama.cpp's own `llama-server --jinja`, with the model's own chat
template, serving Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) on the CPU. Run by `make test-local-model`, which builds
the server and fetches the model first (scripts/ensure-local-model.sh); skipped otherwise.

It asserts protocol facts, not task success: every run ends with a valid run.json and trajectory and no
traceback, tool calls are executed (structured or parsed from text), the server rejected no request but
overflows that were handled, and no container is left (tests/docker/conftest.py checks that after each test).
Each finished run adds a row to a table in the cache folder, which `make test-local-model` prints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import PROJECT, Result, airlock, airlock_env

from orchestrator.demo import CALCULATOR_REPO, CALCULATOR_TASK, TEST_COMMAND
from orchestrator.run.record import EXIT_CODES, RunRecord
from orchestrator.tokens import estimate_tokens

MODEL_DIR = os.environ.get("AIRLOCK_LOCAL_MODEL_DIR")
pytestmark = pytest.mark.skipif(not MODEL_DIR, reason="needs llama-server and the model: run `make test-local-model`")

CONTEXT = 16_384  # llama-server -c; one slot (-np 1) gets all of it
MODEL_NAME = "qwen2.5-coder-1.5b-instruct"  # what airlock asks for; llama-server serves its one model whatever the name
START_TIMEOUT_S = 600.0  # loading 1.1 GB and warming up on a busy 2-core machine
RUN_BUDGET_S = 540  # each run's --timeout: four runs stay within about 40 minutes on a loaded machine
# The run ends itself at its budget, model call included (no SDK retry outlasts it): only sandbox start,
# patch export and verify come on top. The test's own limit on the process is well beyond that.
END_MARGIN_S = 120
RUN_TIMEOUT_S = RUN_BUDGET_S + 2 * END_MARGIN_S
OVERFLOW_REASONS = ("the API said the prompt was too long", "the newest tool results did not fit in the context window")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - a server on 127.0.0.1 that this test started
        return json.loads(response.read())


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`llama-server --jinja` on a free local port, with the model's own template; stopped when the module is done."""
    assert MODEL_DIR is not None
    root = Path(MODEL_DIR)
    [model] = sorted(root.glob("*.gguf"))
    port = _free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [str(root / "bin" / "llama-server"), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    # One thread: on a shared 2-core machine, two threads that wait for each other at every step of a matrix
    # product crawl (measured: 0.3 tokens/s under load, against 29 idle). --timeout: a slow reply is not a dead one.
    # --temp 0: the same replies every run, so a run's result is the model's and airlock's, not the dice's (at the
    # default 0.8, the same four tasks made 8 tool calls in one run and none in the next).
    command += ["-c", str(CONTEXT), "-np", "1", "-t", "1", "--timeout", str(RUN_TIMEOUT_S), "--jinja", "--temp", "0"]
    with log.open("wb") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert server.poll() is None, f"llama-server exited with {server.returncode}: {log.read_text(errors='replace')[-3000:]}"
            try:
                if _get(base + "/health").get("status") == "ok":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"llama-server did not become healthy in {START_TIMEOUT_S:.0f} s"
            time.sleep(1)
        yield {"base": base, "log": log, "models": [m["id"] for m in _get(base + "/v1/models")["data"]]}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


TABLE_FILE = "last-run.txt"  # in the cache folder; `make test-local-model` prints it at the end, whatever failed
HEADER = ("task", "status", "exit", "steps", "tool calls", "from text", "model s", "tools s", "tokens in", "tokens out", "trims")


@pytest.fixture(scope="module")
def table() -> list[dict[str, Any]]:
    """Rows of the finished runs; each new row rewrites the table in the cache folder."""
    assert MODEL_DIR is not None
    (Path(MODEL_DIR) / TABLE_FILE).unlink(missing_ok=True)
    return []


def _write_table(rows: list[dict[str, Any]]) -> None:
    assert MODEL_DIR is not None
    lines = [HEADER, *[tuple(str(row[key]) for key in HEADER) for row in rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    title = f"airlock against llama-server --jinja (Qwen2.5-Coder-1.5B-Instruct Q4_K_M, -c {CONTEXT}, CPU):"
    body = ["  " + "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))) for line in lines]
    (Path(MODEL_DIR) / TABLE_FILE).write_text("\n".join([title, *body]) + "\n")


def _explore_repo(root: Path) -> Path:
    """A small package whose misspelt greeting is defined away from where it is used: list, search, read, edit."""
    (root / "app").mkdir(parents=True)
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "config.py").write_text('"""Settings of the greeter."""\n\nGREETING = "Helo"\nPUNCTUATION = "!"\n')
    (root / "app" / "main.py").write_text(
        'from app.config import GREETING, PUNCTUATION\n\n\ndef greet(name: str) -> str:\n    return f"{GREETING}, {name}{PUNCTUATION}"\n\n\n'
        'if __name__ == "__main__":\n    print(greet("world"))\n'
    )
    (root / "README.md").write_text("# greeter\n\n`python -m app.main` prints a greeting.\n")
    return root


def _log_repo(root: Path) -> Path:
    """A repo with a 100 KB build log whose one failing step is in the middle."""
    root.mkdir(parents=True)
    lines = [
        f"2026-12-01 08:{i // 60 % 60:02d}:{i % 60:02d} [worker-{i % 4}] step {i:04d}: compiled module_{i:04d}.o in {i % 97 / 10:.1f}s" for i in range(1400)
    ]
    lines[700] = "2026-12-01 08:11:40 [worker-0] step 0700: ERROR linking module_0700.o: undefined reference to `frobnicate'"
    (root / "build.log").write_text("\n".join(lines) + "\n")
    assert 95_000 < (root / "build.log").stat().st_size < 110_000
    return root


TASKS = {
    "calculator": (lambda tmp: shutil.copytree(CALCULATOR_REPO, tmp / "calculator"), CALCULATOR_TASK, ["--verify", TEST_COMMAND]),
    "calculator-strict": (
        lambda tmp: shutil.copytree(CALCULATOR_REPO, tmp / "calculator"),
        CALCULATOR_TASK,
        ["--verify", TEST_COMMAND, "--policy", str(PROJECT / "policies" / "strict.toml")],
    ),
    "explore-edit": (
        lambda tmp: _explore_repo(tmp / "greeter"),
        "The greeting printed by `python -m app.main` is misspelt: 'Helo'. List the files, search for where the greeting is "
        "defined, read that file, and fix the spelling to 'Hello' with edit_file.",
        ["--verify", "python3 -c \"from app.config import GREETING; assert GREETING == 'Hello'\""],
    ),
    "log-100k": (lambda tmp: _log_repo(tmp / "logs"), "Use read_file to read build.log, and tell me which step failed and why.", []),
}


@pytest.mark.parametrize("name", list(TASKS))
def test_a_run_against_the_real_model_keeps_every_protocol_promise(name: str, llama_server: dict[str, Any], table: list, tmp_path: Path) -> None:
    make_repo, task, extra = TASKS[name]
    repo, out = make_repo(tmp_path), tmp_path / "out"
    log_before = llama_server["log"].read_text(errors="replace")
    args = ["--provider", "openai", "--base-url", llama_server["base"] + "/v1", "--model", MODEL_NAME, "--max-steps", "8", "--max-reply-tokens", "1024"]
    args += ["--timeout", str(RUN_BUDGET_S)]
    proc = airlock("run", str(repo), "--task", task, "--out", str(out), *args, *extra, env=airlock_env(), timeout=RUN_TIMEOUT_S)
    result = Result(proc.returncode, proc.stdout, proc.stderr, out)
    server_log = llama_server["log"].read_text(errors="replace")[len(log_before) :]

    # A valid, closed record and trajectory, a documented exit code, and no traceback of airlock's own (the
    # output of a command or of the verify, quoted after "│", may well hold one: a failing assert's).
    record = RunRecord.model_validate(result.record)
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if not line.lstrip().startswith("│")]
    assert not [line for line in ours if "Traceback" in line], proc.stdout[-3000:] + proc.stderr[-3000:]
    assert record.status in EXIT_CODES and proc.returncode == record.exit_code, proc.stdout[-3000:]
    assert record.status not in ("model_error", "sandbox_error", "interrupted"), f"{record.status}: {record.error}"
    events = result.events()
    assert events[0]["type"] == "run_start" and events[-1] == {**events[-1], "type": "run_end", "status": record.status}
    assert record.served_model in llama_server["models"]  # what the server says it serves, beside the name asked for
    assert record.duration_s < RUN_BUDGET_S + END_MARGIN_S, record.duration_s  # a slow model call does not outlast --timeout

    # Tool calls were executed, whether the server returned them structured or the model wrote them as text. A
    # small model may also answer in prose alone (seen: "as an AI language model, I don't have access to the
    # repository"): then the run ended at the model's own end of turn, with nothing left unrun; or twice in a row
    # with a call that could not be read, which ends the run as stuck.
    calls = result.events("tool_call")
    responses = result.events("model_response")
    assert record.tool_calls == len(calls), proc.stdout[-3000:]
    if not calls:
        unreadable = any(event.get("rule") == "unreadable_calls" for event in record.policy_events)
        assert record.status in ("completed", "verify_failed") or (record.status == "stuck" and unreadable), proc.stdout[-3000:]
        assert responses[-1]["stop_reason"] == "end_turn", proc.stdout[-3000:]
    from_text = sum(call["id"].startswith("call_text_") for call in calls)
    notes = [note for response in responses for note in response["notes"]]
    assert all(note.startswith("tool call parsed from text") for note in notes), notes  # no parameter refused

    # The server rejected no request but overflows, and each of those was handled by trimming or shortening: a
    # refused parameter would be a note, any other rejection a model_error (both ruled out above); the server logs
    # each error it answers a task with.
    trims = result.events("context_trimmed")
    overflows = [trim for trim in trims if trim["reason"] in OVERFLOW_REASONS]
    errors = re.findall(r"task id = \d+, error: (.*)", server_log)
    assert all("context size" in error for error in errors) and len(errors) == len(overflows), (errors, overflows)
    reads = [call for call in calls if call["name"] == "read_file" and "build.log" in json.dumps(call["input"])]
    if name == "log-100k" and reads and estimate_tokens(reads[0]["output"]) > 0.25 * CONTEXT:
        # Capped only to max_output_chars, as no --context-window is given: the server's "too long" answer then
        # taught airlock the window, and the result was shortened to fit it before the request was sent again.
        assert any(reads[0]["id"] in trim["shortened"] and trim["window"] == CONTEXT for trim in overflows), trims

    usage = record.usage
    table.append({
        "task": name, "status": record.status, "exit": proc.returncode, "steps": record.steps, "tool calls": record.tool_calls,
        "from text": from_text, "model s": f"{sum(r['duration_s'] for r in responses):.0f}", "tools s": f"{sum(c['duration_s'] for c in calls):.1f}",
        "tokens in": f"{usage.prompt_tokens():,}", "tokens out": f"{usage.output_tokens:,}", "trims": len(trims),
    })  # fmt: skip
    _write_table(table)


def test_the_real_model_made_tool_calls_and_they_ran(table: list[dict[str, Any]]) -> None:
    """Over the runs above (it comes after them): whatever one run's model did, calls were made and executed."""
    if not table:
        pytest.skip("no run above finished (run them with this test)")
    assert sum(row["tool calls"] for row in table) >= 1, table


SAMPLES = {
    "log": "\n".join(f"2026-12-01 08:{i % 60:02d}:07 [worker-{i % 4}] GET /api/v2/items/{i * 7919 % 100000} 200 {i % 97 / 10:.1f}ms" for i in range(300)),
    "python": (PROJECT / "orchestrator" / "run" / "agent.py").read_text(),
    "prose": (PROJECT / "README.md").read_text()[:20_000],
    "pytest": "\n".join(f"tests/test_mod_{i}.py::test_case_{i} PASSED{' ' * (i % 9)}[{i % 100:3d}%]" for i in range(300)),
}


@pytest.mark.parametrize("kind", list(SAMPLES))
def test_the_token_estimate_errs_high_against_the_real_tokenizer(kind: str, llama_server: dict[str, Any]) -> None:
    sample = SAMPLES[kind]
    body = json.dumps({"content": sample}).encode()
    request = urllib.request.Request(llama_server["base"] + "/tokenize", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - the local server
        real = len(json.loads(response.read())["tokens"])
    estimate = estimate_tokens(sample)
    assert real <= estimate <= 2.2 * real, (kind, real, estimate, len(sample) / real)
