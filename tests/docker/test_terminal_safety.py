"""Nothing from the model, the repo or the sandbox can drive the host's terminal.

The CLI runs in a real pseudo-terminal (so rich writes colours, as for a person) and the raw bytes it
writes are checked: the only escape sequences left are rich's own colour changes, and each hostile
sequence shows as its visible escape. The hostile text comes from a scripted model's plan, its tool
calls (name, arguments), a command's output, a file name, and an API error message."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import tty
from pathlib import Path

from helpers import PROJECT, airlock_env

from orchestrator.providers.scripted import ApiError, ScriptedModelServer, reply, text, tool_use

# Window title, clipboard write (paste-jacking), a disguised link, clear screen, erase the line above,
# carriage return, backspace, a right-to-left override, and C1's CSI.
HOSTILE = "\x1b]0;PWNED-TITLE\x07\x1b]52;c;cHduZWQ=\x07\x1b]8;;http://evil.example/\x07link\x1b]8;;\x07\x1b[2J\x1b[1A\x1b[2K\r\x08\u202e\x9b31m"
AS_PRINTF = "\\033]0;PWNED-TITLE\\007\\033]52;c;cHduZWQ=\\007\\033[2J\\033[1A\\033[2K"
SGR = re.compile(rb"\x1b\[[0-9;]*m")  # rich's colours: the only sequences that may reach the terminal


def in_pty(argv: list[str], env: dict[str, str], timeout: float = 240) -> tuple[int, bytes]:
    """Run argv with a pseudo-terminal as stdin, stdout and stderr; its exit code and every byte it wrote."""
    master, slave = pty.openpty()
    tty.setraw(slave)  # no translation: the bytes read are the bytes written
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env={**env, "TERM": "xterm-256color"}, cwd=PROJECT, close_fds=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer is gone
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=30), bytes(out)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def assert_harmless(out: bytes) -> bytes:
    """No sequence but colours, no lone control byte, no bidi override; returns the text without colours."""
    plain = SGR.sub(b"", out)
    assert b"\x1b" not in plain, plain[max(0, plain.find(b"\x1b") - 80) : plain.find(b"\x1b") + 80]
    for raw in (b"\x07", b"\x08", b"\r", "\u202e".encode(), "\x9b".encode()):
        assert raw not in plain, raw
    return plain


def test_airlock_run_shows_hostile_text_as_escapes(tmp_path: Path, calculator_repo: Path) -> None:
    turns = [
        reply(text(f"My plan {HOSTILE}"), tool_use("run_bash", command=f"printf '{AS_PRINTF}'; echo; echo '{HOSTILE}'")),
        reply(tool_use(f"read{HOSTILE}", path="x")),
        reply(tool_use("write_file", path=f"notes{HOSTILE}.txt", content="x\n")),
        ApiError(400, f"bad request {HOSTILE}", "invalid_request_error"),
    ]
    with ScriptedModelServer(turns) as api:
        code, out = in_pty(
            [sys.executable, "-m", "orchestrator", "run", str(calculator_repo), "--task", "Do it.", "--out", str(tmp_path / "out")], airlock_env(api.base_url)
        )

    assert code == 4, out.decode(errors="replace")
    plain = assert_harmless(out)
    shown = plain.decode()
    assert shown.count("\\x1b]0;PWNED-TITLE\\x07") >= 4  # the plan, the output, the tool name, the path, the error
    assert "\\x1b]52;c;cHduZWQ=" in shown and "\\x1b]8;;http://evil.example/" in shown and "\\u202e" in shown and "\\x9b31m" in shown
    assert "error: model API error 400: bad request \\x1b]0;PWNED-TITLE" in shown
    assert "■ model_error" in shown and "\x1b[1m" in out.decode()  # a real terminal: rich did colour it


def test_airlock_batch_board_and_summary_show_hostile_text_as_escapes(tmp_path: Path, calculator_repo: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": "t1", "repo": str(calculator_repo), "task": "Do it."}) + "\n")
    turns = [
        reply(text(HOSTILE), tool_use(f"x{HOSTILE}", path="y"), tool_use("run_bash", command="sleep 2")),  # the board shows both for 2 s
        ApiError(400, f"bad request {HOSTILE}", "invalid_request_error"),
    ]
    with ScriptedModelServer(turns) as api:
        code, out = in_pty([sys.executable, "-m", "orchestrator", "batch", str(tasks), "--out", str(tmp_path / "results")], airlock_env(api.base_url))

    assert code == 1, out.decode(errors="replace")
    plain = SGR.sub(b"", out)
    for raw in (b"\x1b]", b"\x07", b"\x1b[2J", "\u202e".encode(), "\x9b".encode()):  # the board itself moves the cursor up and erases lines
        assert raw not in plain, raw
    shown = plain.decode()
    assert "t1: model API error 400: bad request \\x1b]0;PWNED-TITLE\\x07" in shown  # the log line and the summary's errors
    assert "x\\x1b]0;PWNED-TITLE\\x07" in shown  # the board's "doing" column: the tool the model called


def test_airlock_doctor_shows_a_hostile_image_name_as_escapes() -> None:
    code, out = in_pty([sys.executable, "-m", "orchestrator", "doctor", "--image", f"evil{HOSTILE}"], airlock_env())

    assert code == 1, out.decode(errors="replace")
    shown = assert_harmless(out).decode()
    assert "evil\\x1b]0;PWNED-TITLE\\x07" in shown
