"""Whatever the tool server answers, the run ends cleanly: a malformed reply is a sandbox_error with
run.json closed, run_end written, the patch exported and no traceback.

The agent's commands can no longer reach the server's pipes (tests/docker/test_channel_attacks.py), so
these replies come from a server that is itself hostile: the real channel (and, for whole runs, the real
runner and driver) talk over real pipes to a stand-in for tools/server.py that first changes the repo,
then answers badly."""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from local_backend import LocalBackend, LocalBox, LocalStream
from rich.console import Console

from orchestrator.errors import SandboxError
from orchestrator.policy.model import Policy
from orchestrator.providers import make_provider
from orchestrator.providers.scripted import ScriptedModelServer, reply, text, tool_use
from orchestrator.run.config import RunConfig, new_run_id
from orchestrator.run.runner import Run
from orchestrator.sandbox import channel as host
from orchestrator.sandbox.channel import ToolChannel
from orchestrator.sandbox.spec import SandboxSpec
from tools import protocol as server_protocol

READY = {"id": 0, "ready": True, "protocol": 4, "python": "3", "dumpable": False, "subreaper": True, "sweep": "tree"}
GOOD = {"id": 1, "output": "ok", "is_error": False, "meta": {"exit_code": 0}}
# How the stand-in server answers the first request: the exact bytes it writes.
REPLIES: dict[str, tuple[bytes, str]] = {
    "nested 100,000 deep": (b'{"id": 1, "output": "x", "is_error": false, "meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "malformed reply"),
    "16 MB of meta": (json.dumps({**GOOD, "meta": {"blob": "x" * 16_000_000}}).encode() + b"\n", "exceeded"),
    "meta nested": (json.dumps({**GOOD, "meta": {"exit_code": {"really": 0}}}).encode() + b"\n", "malformed reply"),
    "meta a list": (json.dumps({**GOOD, "meta": [0]}).encode() + b"\n", "malformed reply"),
    "meta with too many keys": (json.dumps({**GOOD, "meta": {f"k{n}": n for n in range(40)}}).encode() + b"\n", "malformed reply"),
    "a meta text too long": (json.dumps({**GOOD, "meta": {"note": "x" * 5000}}).encode() + b"\n", "malformed reply"),
    "a meta key that is no name": (json.dumps({**GOOD, "meta": {"\x1b]0;evil\x07": 1}}).encode() + b"\n", "malformed reply"),
    "a huge number": (b'{"id": 1, "output": "x", "is_error": false, "meta": {"exit_code": 1' + b"0" * 5000 + b"}}\n", "malformed reply"),
    "NaN": (b'{"id": 1, "output": "x", "is_error": false, "meta": {"exit_code": NaN}}\n', "malformed reply"),
    "output not a string": (json.dumps({**GOOD, "output": ["x"]}).encode() + b"\n", "malformed reply"),
    "is_error a string": (json.dumps({**GOOD, "is_error": "false"}).encode() + b"\n", "malformed reply"),
    "id a boolean": (json.dumps({**GOOD, "id": True}).encode() + b"\n", "malformed reply"),
    "another request's id": (json.dumps({**GOOD, "id": 7}).encode() + b"\n", "answered request 7, expected 1"),
    "a key too many": (json.dumps({**GOOD, "exit_code": 0}).encode() + b"\n", "malformed reply"),
    "a key missing": (json.dumps({"id": 1, "output": "x", "is_error": False}).encode() + b"\n", "malformed reply"),
    "not an object": (b'[1, "ok", false, {}]\n', "malformed reply"),
    "not JSON": (b"FORGED-BY-SANDBOX\n", "malformed reply"),
    "a line the server did not sign": (b"unsigned:" + json.dumps(GOOD).encode() + b"\n", "does not carry the tool server's signature"),
    "not UTF-8": (b'{"id": 1, "output": "\xff\xfe", "is_error": false, "meta": {}}\n', "malformed reply"),
    # a process in the sandbox writing a reply of its own, in time for the next request (or too early)
    "a forged second reply": (
        json.dumps(GOOD).encode() + b"\nunsigned:" + json.dumps({**GOOD, "id": 2, "output": "FORGED"}).encode() + b"\n",
        "nobody asked for|does not carry the tool server's signature",
    ),
    "half a line, then gone": (b'{"id": 1, "output": "x"', "the tool server exited"),
}
# The stand-in: reads the key, sends a ready line (argv[1]), then for the first request makes a change
# to the repo and sends the lines of the file argv[2], each signed unless it starts with "unsigned:"
# (a line without a newline ends the stream), and a correct reply to any later request.
STAND_IN = """
import hashlib, hmac, sys
key = bytes.fromhex(sys.stdin.buffer.readline().decode())
def send(payload):
    if payload.startswith(b"unsigned:"):
        sys.stdout.buffer.write(payload[9:] + b"\\n")
    else:
        sys.stdout.buffer.write(payload + b"\\t" + hmac.new(key, b"reply\\0" + payload, hashlib.sha256).hexdigest().encode() + b"\\n")
    sys.stdout.flush()
send(sys.argv[1].encode())
for n, line in enumerate(sys.stdin.buffer, 1):
    if n == 1:
        open("made-by-the-server.txt", "w").write("work done\\n")
        first = open(sys.argv[2], "rb").read()
        if not first.endswith(b"\\n"):
            sys.stdout.buffer.write(first); sys.stdout.flush(); sys.exit(0)
        for payload in first.split(b"\\n")[:-1]:
            send(payload)
    else:
        send(b'{"id": %d, "output": "ok", "is_error": false, "meta": {}}' % n)
"""


class HostileBox(LocalBox):
    """A box whose tool server is the stand-in above; copy-in, the baseline and the export are the real ones."""

    stand_in: list[str] = []

    def attach(self, cmd: list[str], *, user: str, stdin: bool) -> LocalStream:
        if cmd[:2] == [self.layout.program("sh"), "-c"] and "/server.py" in cmd[2]:  # copy-in and baseline, then `exec` the server
            cmd = [*cmd[:2], cmd[2][: cmd[2].rindex("exec ")] + "exec " + shlex.join(self.stand_in)]
        elif any(arg.endswith("/server.py") for arg in cmd):
            cmd = self.stand_in
        return super().attach(cmd, user=user, stdin=stdin)


class HostileBackend(LocalBackend):
    def __init__(self, ready: dict[str, Any], first: Path) -> None:
        super().__init__()
        self.stand_in = [sys.executable, "-c", STAND_IN, json.dumps(ready), str(first)]

    def start(self, spec: SandboxSpec) -> LocalBox:
        box = HostileBox(spec)
        box.stand_in = self.stand_in
        self.boxes.append(box)
        return box


def run_against(ready: dict[str, Any], first: bytes, repo: Path, out: Path) -> tuple[Any, str]:
    reply_file = out.parent / "first-reply"
    reply_file.write_bytes(first)
    backend = HostileBackend(ready, reply_file)
    console = Console(file=io.StringIO(), width=200)
    turns = [reply(tool_use("run_bash", command="make test")), reply(tool_use("run_bash", command="ls")), reply(text("done"))]
    with ScriptedModelServer(turns) as api:
        config = RunConfig(repo=repo, task="Fix it.", out=out, run_id=new_run_id(), model="scripted", policy=Policy())
        record = Run(config, make_provider("anthropic", "scripted", api_key="test", base_url=api.base_url), console, backend=backend).execute()
    assert all(not Path(box.root).exists() for box in backend.boxes), "the box outlived its run"
    return record, console.file.getvalue()  # type: ignore[attr-defined]


def channel_to(ready: dict[str, Any], first: bytes, tmp_path: Path) -> ToolChannel:
    """A channel to the stand-in, over real pipes, as the runner opens one."""
    (tmp_path / "first-reply").write_bytes(first)
    argv = [sys.executable, "-c", STAND_IN, json.dumps(ready), str(tmp_path / "first-reply")]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return ToolChannel(LocalStream(proc))


@pytest.mark.parametrize("kind", list(REPLIES))
def test_every_malformed_reply_ends_the_channel_with_a_sandbox_error(tmp_path: Path, kind: str) -> None:
    first, message = REPLIES[kind]
    channel = channel_to(READY, first, tmp_path)
    try:
        with pytest.raises(SandboxError, match=message):
            channel.call("run_bash", {"command": "make test"}, timeout=30)
            channel.call("run_bash", {"command": "ls"}, timeout=30)  # a second call only when the first reply passed
    finally:
        channel.close()


def test_host_and_server_sign_alike() -> None:
    key = bytes(range(32))
    for direction in (host.REQUEST, host.REPLY):
        line = host.sign(key, direction, b'{"id": 1}')
        assert line == server_protocol.sign(key, direction, b'{"id": 1}')
        assert host.opened(key, direction, line) == server_protocol.opened(key, direction, line) == b'{"id": 1}'
        assert host.opened(key, direction, line.replace(b"1", b"2", 1)) is None
        assert host.opened(bytes(32), direction, line) is None
    assert host.opened(key, host.REPLY, host.sign(key, host.REQUEST, b"{}")) is None  # a request is no reply


def test_a_good_reply_passes_with_its_meta(tmp_path: Path) -> None:
    channel = channel_to(READY, json.dumps({**GOOD, "meta": {"exit_code": 0, "timed_out": False, "duration_ms": 12, "note": "x"}}).encode() + b"\n", tmp_path)
    try:
        reply_ = channel.call("run_bash", {"command": "\ud800 a lone surrogate from the model"}, timeout=30)
        assert (reply_.output, reply_.is_error, reply_.meta) == ("ok", False, {"exit_code": 0, "timed_out": False, "duration_ms": 12, "note": "x"})
        assert channel.call("ping", {}, timeout=30).output == "ok"
    finally:
        channel.close()


@pytest.mark.parametrize("weakness", [{"dumpable": True}, {"subreaper": False}, {"protocol": 1}, {"dumpable": None}])
def test_a_server_that_did_not_protect_itself_is_refused(tmp_path: Path, weakness: dict[str, Any]) -> None:
    ready = {key: value for key, value in {**READY, **weakness}.items() if value is not None}
    message = "could not protect itself" if "protocol" not in weakness and "dumpable" in ready else "malformed reply to start"
    with pytest.raises(SandboxError, match=message):
        channel_to(ready, b"", tmp_path)


# Whole runs, for the replies that once escaped (a RecursionError, 16 MB in the trajectory, a forged
# result, a torn line) and for a server that is not protected.
@pytest.mark.parametrize("kind", ["nested 100,000 deep", "16 MB of meta", "a forged second reply", "half a line, then gone", "unprotected"])
def test_a_run_whose_server_answers_badly_ends_cleanly_with_its_patch(calculator_repo: Path, tmp_path: Path, kind: str) -> None:
    ready, (first, message) = (READY, REPLIES[kind]) if kind in REPLIES else ({**READY, "dumpable": True}, (b"", "could not protect itself"))
    record, shown = run_against(ready, first, calculator_repo, tmp_path / "out")

    assert record.status == "sandbox_error" and record.exit_code == 3
    assert re.search(message, record.error or ""), record.error
    assert "internal error" not in record.error and "Traceback" not in shown
    saved = json.loads((tmp_path / "out" / "run.json").read_text())
    assert saved["status"] == "sandbox_error" and saved["error"] == record.error and saved["patch"]["exported"] is True
    events = [json.loads(line) for line in (tmp_path / "out" / "trajectory.jsonl").read_text().splitlines()]
    assert events[-1]["type"] == "run_end" and events[-1]["status"] == "sandbox_error"
    assert not [event for event in events if event["type"] == "error"]  # no bug of ours was met on the way
    assert "FORGED" not in (tmp_path / "out" / "trajectory.jsonl").read_text()
    assert len((tmp_path / "out" / "trajectory.jsonl").read_bytes()) < 100_000
    if kind != "unprotected":  # the stand-in changed the repo before it answered
        assert b"+work done" in (tmp_path / "out" / "patch.diff").read_bytes()
