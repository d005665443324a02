"""Behaviour of the in-sandbox side where it runs in production: inside the sandbox image.

The tool server and baseline.py run in a container of the sandbox image (its Python, ripgrep, git and
bash), spoken to over `docker exec -i`. The tests' temporary folders and the tool code are bind-mounted
at their host paths and the container shares the host's PID namespace, so a test can set files up and
watch processes from outside. (Real sandboxes mount nothing; this container exists only for these tests.)
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import secrets
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from helpers import SESSION_OWNER

from orchestrator.sandbox.spec import DEFAULT_IMAGE, SANDBOX_ENV
from tools.protocol import REPLY, REQUEST, opened, sign

TOOLS = Path(__file__).resolve().parents[2] / "tools"
PYTHON = ["/usr/bin/python3", "-E", "-s", "-B"]  # absolute: some tests give the server an empty PATH
CAP = 2000  # --max-output-bytes of the default server
NEUTRAL_ATTRIBUTES = "* -text !eol -filter -ident !working-tree-encoding !diff !merge\n"


@pytest.fixture(scope="session")
def image_box(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient) -> Iterator[str]:
    """One container of the sandbox image for the whole session, with no network and no capabilities."""
    base = str(tmp_path_factory.getbasetemp())
    container = docker_client.containers.run(
        DEFAULT_IMAGE, ["sleep", "infinity"], detach=True, init=True, user=f"{os.getuid()}:{os.getgid()}",
        volumes={base: {"bind": base, "mode": "rw"}, str(TOOLS): {"bind": str(TOOLS), "mode": "ro"}},
        pid_mode="host", network_mode="none", cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
        environment=SANDBOX_ENV, labels={"airlock.test-box": SESSION_OWNER},
    )  # fmt: skip
    try:
        yield container.id
    finally:
        container.remove(force=True)


@pytest.fixture
def in_image(image_box: str) -> Callable[..., list[str]]:
    """argv run inside the image; `env`, when given, is the process's whole environment."""

    def command(*argv: str, env: dict[str, str] | None = None) -> list[str]:
        clean = ["env", "-i", *(f"{key}={value}" for key, value in env.items())] if env is not None else []
        return ["docker", "exec", "-i", image_box, *clean, *argv]

    return command


class Server:
    """The real server, in the image, spoken to over its pipes as the host does (the key first, then
    signed lines); every read has a deadline."""

    def __init__(self, command: list[str], key_line: bytes | None = None) -> None:
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.next_id = 1
        self.key = secrets.token_bytes(32)
        self.send_unsigned(key_line or self.key.hex().encode() + b"\n")
        self.ready = self.receive()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send_raw(self, data: bytes) -> None:
        """Each line of `data`, signed as the host signs its requests."""
        self.send_unsigned(b"".join(sign(self.key, REQUEST, line) for line in data.split(b"\n")[:-1]))

    def send_unsigned(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def receive_raw(self, timeout: float = 15) -> bytes:
        """The next reply's payload, its signature checked."""
        line = self._lines.get(timeout=timeout)
        assert line is not None, "the server exited"
        payload = opened(self.key, REPLY, line)
        assert payload is not None, f"an unsigned reply: {line[:200]!r}"
        return payload

    def receive(self, timeout: float = 15) -> dict[str, Any]:
        return json.loads(self.receive_raw(timeout))

    def call(self, tool: str, **args: Any) -> dict[str, Any]:
        request_id = self.next_id
        self.next_id += 1
        self.send_raw(json.dumps({"id": request_id, "tool": tool, "args": args}).encode() + b"\n")
        reply = self.receive()
        assert reply["id"] == request_id
        assert set(reply) == {"id", "output", "is_error", "meta"}
        return reply

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    return workspace


@pytest.fixture
def start_server(root: Path, in_image: Callable[..., list[str]]):
    started: list[Server] = []

    def start(*options: str, env: dict[str, str] | None = None, key_line: bytes | None = None) -> Server:
        server = Server(in_image(*PYTHON, str(TOOLS / "server.py"), "--root", str(root), *options, env=env), key_line)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def server(start_server: Callable[..., Server]) -> Server:
    return start_server("--max-output-bytes", str(CAP), "--command-timeout", "5")


def ok(reply: dict[str, Any]) -> str:
    assert reply["is_error"] is False, reply["output"]
    return reply["output"]


def error(reply: dict[str, Any]) -> str:
    assert reply["is_error"] is True, reply["output"]
    return reply["output"]


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie awaiting its reaper."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return status.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_dead(pid: int, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- protocol ----------------------------------------------------------------------------------


def test_ready_line_comes_first(server: Server) -> None:
    assert server.ready["id"] == 0
    assert server.ready["ready"] is True
    assert server.ready["protocol"] == 4
    assert server.ready["python"].split()[0].startswith("3.")
    assert server.ready["dumpable"] is False and server.ready["subreaper"] is True


def test_ping_without_an_id_is_answered_with_a_null_id(server: Server) -> None:
    server.send_raw(b'{"tool": "ping"}\n')
    assert server.receive() == {"id": None, "output": "pong", "is_error": False, "meta": {}}


@pytest.mark.parametrize(
    "line, request_id, message",
    [
        (b"this is not json\n", None, "malformed request line"),
        (b'{"id": 1, "tool": "ping"\n', None, "malformed request line"),
        (b"\xff\xfe not utf-8\n", None, "malformed request line"),
        (b"[1, 2, 3]\n", None, "expected a JSON object"),
        (b'{"id": "7", "tool": "ping"}\n', None, "'id' must be an integer"),
        (b'{"id": true, "tool": "ping"}\n', None, "'id' must be an integer"),
        (b'{"id": 8}\n', 8, "'tool' must be a string"),
        (b'{"id": 9, "tool": "ping", "args": [1]}\n', 9, "'args' must be a JSON object"),
        (b"[" * 100000 + b"\n", None, "malformed request"),
    ],
)
def test_bad_lines_get_an_error_reply_and_the_server_goes_on(server: Server, line: bytes, request_id: int | None, message: str) -> None:
    server.send_raw(line)
    reply = server.receive()
    assert reply["id"] == request_id
    assert message in error(reply)
    server.next_id = 10  # ids only go up: the server ignores one it has seen
    assert ok(server.call("ping")) == "pong"


def test_lines_without_the_hosts_signature_and_replays_are_ignored(server: Server) -> None:
    forged = {"id": 2, "tool": "write_file", "args": {"path": "forged.txt", "content": "x"}}
    server.send_unsigned(json.dumps(forged).encode() + b"\n")  # as a process in the sandbox could
    server.send_unsigned(json.dumps(forged).encode() + b"\t" + b"0" * 64 + b"\n")
    assert ok(server.call("ping")) == "pong"  # id 1: the forged lines got no reply
    server.send_raw(json.dumps({"id": 1, "tool": "write_file", "args": {"path": "replayed.txt", "content": "x"}}).encode() + b"\n")
    assert ok(server.call("ping")) == "pong"  # id 2: the replayed id 1 was not run
    assert ok(server.call("list_dir")).splitlines()[1:] == ["  (empty directory)"]


def test_the_first_line_must_be_a_key(start_server: Callable[..., Server]) -> None:
    with pytest.raises(AssertionError, match="the server exited"):
        start_server(key_line=b"not a key\n")


def test_blank_lines_are_skipped(server: Server) -> None:
    server.send_raw(b"\n  \n")
    assert ok(server.call("ping")) == "pong"  # call() checks that this reply is the ping's


def test_unknown_tool_lists_the_available_ones(server: Server) -> None:
    message = error(server.call("rm_rf"))
    assert "unknown tool 'rm_rf'" in message
    for name in ("read_file", "write_file", "edit_file", "list_dir", "search", "run_bash"):
        assert name in message


@pytest.mark.parametrize(
    "tool, args, message",
    [
        ("read_file", {}, "missing required argument 'path'"),
        ("read_file", {"path": None}, "missing required argument 'path'"),
        ("read_file", {"path": 5}, "'path' must be a string, not 5"),
        ("read_file", {"path": "a", "start_line": "3"}, "'start_line' must be an integer, not a string"),
        ("read_file", {"path": "a", "start_line": True}, "'start_line' must be an integer, not a boolean"),
        ("read_file", {"path": "a", "start_line": 1.5}, "'start_line' must be an integer"),
        ("read_file", {"path": "a", "start_line": 0}, "'start_line' must be >= 1"),
        ("list_dir", {"depth": 6}, "'depth' must be <= 5"),
        ("search", {"pattern": "x", "ignore_case": "yes"}, "'ignore_case' must be a boolean"),
        ("edit_file", {"path": "a", "old_str": "x"}, "missing required argument 'new_str'"),
        ("write_file", {"path": "a", "content": ["x"]}, "'content' must be a string, not an array"),
        ("run_bash", {"command": "true", "timeout": float("nan")}, "'timeout' must be a number"),
        ("run_bash", {"command": "true", "timeout": 0}, "'timeout' must be a positive number"),
        ("run_bash", {"command": "true", "timout": 3}, "unexpected argument(s) for run_bash: timout"),
    ],
)
def test_argument_errors_become_error_results(server: Server, tool: str, args: dict[str, Any], message: str) -> None:
    assert message in error(server.call(tool, **args))


def test_an_unexpected_exception_becomes_an_error_naming_it(server: Server, root: Path) -> None:
    # A lone surrogate cannot be encoded as UTF-8; the message echoes it, so the reply needs ASCII escapes.
    reply = server.call("write_file", path="s.txt", content="\ud800")
    assert error(reply).startswith("UnicodeEncodeError: ")
    assert not (root / "s.txt").exists()
    assert ok(server.call("ping")) == "pong"


def test_reply_lines_contain_no_raw_line_breaks(server: Server, root: Path) -> None:
    text = "a\u2028b\u2029c\x85d\re\n"
    (root / "breaks.txt").write_text(text, encoding="utf-8", newline="")
    server.send_raw(b'{"id": 1, "tool": "read_file", "args": {"path": "breaks.txt"}}\n')
    raw = server.receive_raw()
    assert b"\n" not in raw and b"\t" not in raw  # the payload: one line, and the tab before the signature is the only one
    assert raw.decode("utf-8").splitlines() == [raw.decode("utf-8")]
    assert json.loads(raw)["output"] == "     1\ta\u2028b\u2029c\x85d\re"


def test_exits_cleanly_at_end_of_input(server: Server) -> None:
    assert ok(server.call("ping")) == "pong"
    assert server.close() == 0


def test_refuses_to_start_without_a_root_directory(tmp_path: Path, in_image: Callable[..., list[str]]) -> None:
    done = subprocess.run(
        in_image(*PYTHON, str(TOOLS / "server.py"), "--root", str(tmp_path / "missing")),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=10,
    )
    assert done.returncode == 2
    assert done.stdout == b""
    assert b"is not a directory" in done.stderr


# --- read_file ---------------------------------------------------------------------------------


def test_read_file_numbers_lines_like_cat_n(server: Server, root: Path) -> None:
    (root / "f.txt").write_bytes(b"alpha\r\n\tbeta\ngamma")
    reply = server.call("read_file", path="f.txt")
    assert ok(reply) == "     1\talpha\n     2\t\tbeta\n     3\tgamma"
    assert reply["meta"]["total_lines"] == 3


def test_read_file_ranges(server: Server, root: Path) -> None:
    (root / "ten.txt").write_text("".join(f"line {n}\n" for n in range(1, 11)))
    assert ok(server.call("read_file", path="ten.txt", start_line=3, end_line=5)) == ("     3\tline 3\n     4\tline 4\n     5\tline 5")
    assert ok(server.call("read_file", path="ten.txt", start_line=9)) == "     9\tline 9\n    10\tline 10"
    assert ok(server.call("read_file", path="ten.txt", end_line=2)) == "     1\tline 1\n     2\tline 2"
    assert ok(server.call("read_file", path="ten.txt", start_line=10, end_line=99)) == "    10\tline 10"
    assert "ten.txt, which has 10 lines" in error(server.call("read_file", path="ten.txt", start_line=11))
    assert "end_line (2) is before start_line (3)" in error(server.call("read_file", path="ten.txt", start_line=3, end_line=2))


def test_read_file_shows_at_most_2000_lines_and_says_how_to_read_on(server: Server, root: Path) -> None:
    (root / "long.txt").write_text("".join(f"{n}\n" for n in range(1, 2501)))
    lines = ok(server.call("read_file", path="long.txt")).split("\n")
    assert len(lines) == 2001
    assert lines[1999] == "  2000\t2000"
    assert "long.txt has 2500 lines" in lines[2000] and "start_line" in lines[2000]
    assert ok(server.call("read_file", path="long.txt", start_line=2001)).split("\n")[-1] == "  2500\t2500"


def test_read_file_cuts_very_long_lines(server: Server, root: Path) -> None:
    (root / "wide.txt").write_text("é" * 5000 + "\nshort\n" + "x" * 100000, encoding="utf-8")
    lines = ok(server.call("read_file", path="wide.txt")).split("\n")
    assert lines[0] == "     1\t" + "é" * 2000 + " [... line cut at 2000 characters]"
    assert lines[1] == "     2\tshort"
    assert lines[2] == "     3\t" + "x" * 2000 + " [... line cut at 2000 characters]"
    assert len(lines) == 3


def test_read_file_refuses_binary_files_and_names_the_size(server: Server, root: Path) -> None:
    (root / "blob.bin").write_bytes(b"PK\x03\x04\x00" * 100)
    message = error(server.call("read_file", path="blob.bin"))
    assert "blob.bin is a binary file (500 bytes)" in message


def test_read_file_of_odd_targets(server: Server, root: Path) -> None:
    (root / "empty.txt").write_bytes(b"")
    (root / "sub").mkdir()
    os.mkfifo(root / "fifo")
    assert ok(server.call("read_file", path="empty.txt")) == "(empty file)"
    assert "use list_dir" in error(server.call("read_file", path="sub"))
    assert "not a regular file" in error(server.call("read_file", path="fifo"))  # and did not block
    assert error(server.call("read_file", path=str(root / "sub" / "nope.txt"))) == "file not found: sub/nope.txt"
    assert error(server.call("read_file", path="empty.txt/x")) == "file not found: empty.txt/x"


# --- write_file --------------------------------------------------------------------------------


def test_write_file_creates_parents_and_writes_exact_bytes(server: Server, root: Path) -> None:
    content = "one\r\ntwo\nthree — no final newline"
    reply = server.call("write_file", path="a/b/c.txt", content=content)
    size = len(content.encode())
    assert ok(reply) == f"created a/b/c.txt ({size} bytes, 3 lines)"
    assert (root / "a/b/c.txt").read_bytes() == content.encode()
    assert sorted(os.listdir(root / "a/b")) == ["c.txt"]  # no temporary file left behind


def test_write_file_overwrites_keeping_the_mode(server: Server, root: Path) -> None:
    script = root / "run.sh"
    script.write_text("old\n")
    script.chmod(0o750)
    reply = server.call("write_file", path=str(script), content="#!/bin/sh\necho new\n")
    assert ok(reply) == "overwrote run.sh (19 bytes, 2 lines)"
    assert script.read_text() == "#!/bin/sh\necho new\n"
    assert stat.S_IMODE(script.stat().st_mode) == 0o750


def test_write_file_through_a_symlink_writes_its_target(server: Server, root: Path) -> None:
    (root / "target.txt").write_text("old\n")
    (root / "link.txt").symlink_to("target.txt")
    ok(server.call("write_file", path="link.txt", content="new\n"))
    assert (root / "link.txt").is_symlink()
    assert (root / "target.txt").read_text() == "new\n"


def test_write_file_errors(server: Server, root: Path) -> None:
    (root / "file.txt").write_text("x")
    (root / "dir").mkdir()
    assert "dir is a directory" in error(server.call("write_file", path="dir", content="x"))
    message = error(server.call("write_file", path="file.txt/below.txt", content="x"))
    assert message == "could not write file.txt/below.txt: one of its parents is a file, not a directory"
    assert (root / "file.txt").read_text() == "x"


# --- edit_file ---------------------------------------------------------------------------------


def test_edit_file_replaces_the_single_match_and_shows_the_result(server: Server, root: Path) -> None:
    path = root / "m.py"
    path.write_text("".join(f"line {n}\n" for n in range(1, 11)))
    reply = server.call("edit_file", path="m.py", old_str="line 6\n", new_str="six\nsix and a half\n")
    assert ok(reply) == (
        "edited m.py; the result around the change:\n"
        "     3\tline 3\n     4\tline 4\n     5\tline 5\n     6\tsix\n     7\tsix and a half\n"
        "     8\tline 7\n     9\tline 8\n    10\tline 9"
    )
    expected = "".join(f"line {n}\n" for n in range(1, 6)) + "six\nsix and a half\n"
    assert path.read_text() == expected + "".join(f"line {n}\n" for n in range(7, 11))


def test_edit_file_with_no_match_says_so_and_changes_nothing(server: Server, root: Path) -> None:
    (root / "m.py").write_text("def f():\n    return 1\n")
    message = error(server.call("edit_file", path="m.py", old_str="def f():\n  return 1", new_str="x"))
    assert "not found" in message and "whitespace" in message and "read_file" in message
    assert (root / "m.py").read_text() == "def f():\n    return 1\n"


def test_edit_file_with_several_matches_names_their_lines(server: Server, root: Path) -> None:
    (root / "m.py").write_text("x = 1\ny = 2\nx = 1\nx = 1\n")
    message = error(server.call("edit_file", path="m.py", old_str="x = 1", new_str="x = 3"))
    assert "occurs 3 times" in message and "lines 1, 3, 4" in message and "context" in message
    assert (root / "m.py").read_text() == "x = 1\ny = 2\nx = 1\nx = 1\n"


def test_edit_file_rejects_empty_and_no_op_edits(server: Server, root: Path) -> None:
    (root / "m.py").write_text("x\n")
    assert "old_str is empty" in error(server.call("edit_file", path="m.py", old_str="", new_str="y"))
    assert "identical" in error(server.call("edit_file", path="m.py", old_str="x", new_str="x"))


def test_edit_file_keeps_crlf_and_every_other_byte(server: Server, root: Path) -> None:
    path = root / "win.txt"
    path.write_bytes(b"\xef\xbb\xbfone\r\ntwo\r\nthree\r\nlast")
    ok(server.call("edit_file", path="win.txt", old_str="two\r\n", new_str="2\r\nextra\r\n"))
    assert path.read_bytes() == b"\xef\xbb\xbfone\r\n2\r\nextra\r\nthree\r\nlast"
    message = error(server.call("edit_file", path="win.txt", old_str="one\n2", new_str="x"))
    assert "CRLF" in message


def test_edit_file_keeps_the_mode_and_the_symlink(server: Server, root: Path) -> None:
    (root / "tool.sh").write_text("echo a\n")
    (root / "tool.sh").chmod(0o755)
    (root / "alias.sh").symlink_to("tool.sh")
    ok(server.call("edit_file", path="alias.sh", old_str="a", new_str="b"))
    assert (root / "alias.sh").is_symlink()
    assert (root / "tool.sh").read_text() == "echo b\n"
    assert stat.S_IMODE((root / "tool.sh").stat().st_mode) == 0o755


def test_edit_file_refuses_non_utf8(server: Server, root: Path) -> None:
    (root / "latin1.txt").write_bytes(b"caf\xe9\n")
    assert "not valid UTF-8" in error(server.call("edit_file", path="latin1.txt", old_str="caf", new_str="bar"))
    assert (root / "latin1.txt").read_bytes() == b"caf\xe9\n"


# --- list_dir ----------------------------------------------------------------------------------


def test_list_dir_draws_a_sorted_tree(server: Server, root: Path) -> None:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "deep.py").write_text("")
    (root / "src" / "main.py").write_text("")
    (root / "README.md").write_text("")
    (root / "link").symlink_to("src/main.py")
    (root / ".git" / "objects").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("")
    assert ok(server.call("list_dir")) == ("./\n  .git/\n  README.md\n  link -> src/main.py\n  src/\n    main.py\n    pkg/")
    assert ok(server.call("list_dir", path="src", depth=5)) == "src/\n  main.py\n  pkg/\n    deep.py"
    assert ok(server.call("list_dir", depth=1)) == "./\n  .git/\n  README.md\n  link -> src/main.py\n  src/"


def test_list_dir_caps_entries_breadth_first(server: Server, root: Path) -> None:
    (root / "big").mkdir()
    for n in range(600):
        (root / "big" / f"f{n:03}").write_text("")
    (root / "zzz.txt").write_text("")
    reply = server.call("list_dir")
    lines = ok(reply).split("\n")
    assert lines[:3] == ["./", "  big/", "    f000"]
    assert "  zzz.txt" in lines  # the top level is complete although it sorts last
    assert "[... 102 more entries not shown (limit 500)" in lines[-1]
    assert reply["meta"] == {"entries": 500, "omitted": 102}


def test_list_dir_errors(server: Server, root: Path) -> None:
    (root / "f.txt").write_text("")
    assert "use read_file" in error(server.call("list_dir", path="f.txt"))
    assert error(server.call("list_dir", path="nope")) == "directory not found: nope"


# --- search ------------------------------------------------------------------------------------


@pytest.fixture
def code(root: Path) -> Path:
    (root / "pkg").mkdir()
    (root / "pkg" / "a.py").write_text("def Alpha():\n    return 1\n")
    (root / "pkg" / "b.txt").write_text("alpha beta\n")
    (root / "top.py").write_text("x = 'alpha'\n")
    return root


def test_search_finds_matches_with_paths_relative_to_the_root(server: Server, code: Path) -> None:
    found = sorted(ok(server.call("search", pattern="alpha")).split("\n"))
    assert found == ["pkg/b.txt:1:alpha beta", "top.py:1:x = 'alpha'"]
    found = ok(server.call("search", pattern="ALPHA", ignore_case=True, glob="*.py", path="pkg"))
    assert found == "pkg/a.py:1:def Alpha():"


def test_search_without_matches_is_not_an_error(server: Server, code: Path) -> None:
    reply = server.call("search", pattern="zeta")
    assert ok(reply) == "no matches for 'zeta' in ."
    assert reply["meta"] == {"matches": 0, "truncated": False}


def test_search_truncates_to_max_results(server: Server, root: Path) -> None:
    (root / "many.txt").write_text("hit\n" * 50)
    reply = server.call("search", pattern="hit", max_results=5)
    lines = ok(reply).split("\n")
    assert lines[:5] == [f"many.txt:{n}:hit" for n in range(1, 6)]
    assert "45 more matching lines not shown" in lines[5]
    assert reply["meta"] == {"matches": 5, "truncated": True}


def test_search_errors(server: Server, code: Path) -> None:
    assert "rg failed (exit code 2)" in error(server.call("search", pattern="(unclosed"))
    assert error(server.call("search", pattern="x", path="missing")) == "path not found: missing"


def test_search_uses_the_tool_runtimes_ripgrep_whatever_the_path(start_server: Callable[..., Server], root: Path, tmp_path: Path) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    (root / "found.txt").write_text("needle\n")
    server = start_server(env={"PATH": str(empty_bin)})  # an image with no rg of its own
    assert ok(server.call("search", pattern="needle")) == "found.txt:1:needle"


# --- run_bash ----------------------------------------------------------------------------------


def test_run_bash_reports_the_exit_code_and_merges_stderr(server: Server) -> None:
    reply = server.call("run_bash", command="echo out; echo err >&2; exit 3")
    assert ok(reply) == "out\nerr\n[exit code: 3]"
    assert reply["meta"]["exit_code"] == 3
    assert reply["meta"]["timed_out"] is False
    assert reply["meta"]["dropped_bytes"] == 0
    assert isinstance(reply["meta"]["duration_ms"], int)
    assert ok(server.call("run_bash", command="printf partial")) == "partial\n[exit code: 0]"
    assert "[exit code: -9 (killed by SIGKILL)]" in ok(server.call("run_bash", command="kill -9 $$"))


def test_run_bash_starts_every_call_in_the_root(server: Server, root: Path) -> None:
    assert ok(server.call("run_bash", command="cd /tmp && pwd")) == "/tmp\n[exit code: 0]"
    assert ok(server.call("run_bash", command="pwd")) == f"{os.path.realpath(root)}\n[exit code: 0]"


def test_run_bash_has_no_stdin(server: Server) -> None:
    reply = server.call("run_bash", command="cat; echo done", timeout=4)
    assert ok(reply) == "done\n[exit code: 0]"
    assert reply["meta"]["duration_ms"] < 2000


def test_run_bash_makes_the_command_the_oom_killers_first_choice(server: Server) -> None:
    assert ok(server.call("run_bash", command="cat /proc/self/oom_score_adj")) == "1000\n[exit code: 0]"


def test_run_bash_timeout_kills_everything_the_command_started(server: Server, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    command = f"setsid sleep 100 & echo $! > {pids}; echo $$ >> {pids}; sleep 100"
    reply = server.call("run_bash", command=command, timeout=0.5)
    assert error(reply) == "[timed out after 0.5 s: the command and every process it started were killed]"
    assert reply["meta"]["timed_out"] is True and reply["meta"]["exit_code"] is None
    assert 450 <= reply["meta"]["duration_ms"] < 2500
    background, shell = (int(pid) for pid in pids.read_text().split())
    assert wait_dead(background) and wait_dead(shell)
    assert ok(server.call("ping")) == "pong"


def test_run_bash_timeout_is_capped_by_the_servers_limit(start_server: Callable[..., Server]) -> None:
    server = start_server("--command-timeout", "0.5")
    reply = server.call("run_bash", command="sleep 30", timeout=600)
    assert "[timed out after 0.5 s" in error(reply)


def test_run_bash_background_jobs_do_not_outlive_the_call(server: Server, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    reply = server.call("run_bash", command=f"sleep 100 & echo $! > {pid_file}; echo started")
    assert ok(reply) == "started\n[exit code: 0]"
    assert time.monotonic() - started < 3
    assert wait_dead(int(pid_file.read_text()))


ESCAPES = {
    "setsid": "setsid sleep 100 & echo $! >> {pids}",
    "double fork": "( ( sleep 100 & echo $! >> {pids} ) & )",
    "nohup, output closed": "nohup sleep 100 >/dev/null 2>&1 </dev/null & echo $! >> {pids}",
    "a new session that forks again": "setsid sh -c 'sleep 100 & echo $! >> {pids}; wait' &",
}


@pytest.mark.parametrize("escape", list(ESCAPES))
def test_nothing_a_command_starts_outlives_the_call(server: Server, tmp_path: Path, escape: str) -> None:
    pids = tmp_path / "pids"
    started = time.monotonic()
    reply = server.call("run_bash", command=ESCAPES[escape].format(pids=pids) + "\nsleep 0.2; echo bye")
    assert ok(reply) == "bye\n[exit code: 0]"
    assert time.monotonic() - started < 3  # the call does not wait for what it kills
    for pid in (int(line) for line in pids.read_text().split()):
        assert not alive(pid), f"{escape}: process {pid} outlived its call"


def test_the_commands_cannot_reach_the_servers_pipes_or_memory(server: Server) -> None:
    probe = (
        "server=$PPID; for f in fd/0 fd/1 mem environ; do "
        '(exec 3<>/proc/$server/$f) 2>/dev/null && echo "open $f" || echo "refused $f"; done; '
        'python3 -c "import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); '
        "print('ptrace', 'refused' if libc.ptrace(16, int(sys.argv[1]), 0, 0) else 'attached', ctypes.get_errno())\" $server"
    )
    shown = ok(server.call("run_bash", command=probe))
    assert "refused fd/0\nrefused fd/1\nrefused mem\nrefused environ\nptrace refused 1\n" in shown  # 1: EPERM
    assert ok(server.call("ping")) == "pong"


def test_run_bash_is_woken_by_the_exit_itself_never_by_a_poll_interval(in_image: Callable[..., list[str]], root: Path) -> None:
    """A trivial command often closes its output a moment before its exit is visible. With the poll
    interval made a minute long, twenty such commands still return at once: the exit wakes the server."""
    script = (
        f"import sys, time\nsys.path.insert(0, {str(TOOLS)!r})\nimport shell\n"
        "shell._POLL_SECONDS = 60.0\n"
        "started = time.monotonic()\n"
        f"codes = [shell.run(['/bin/true'], {str(root)!r}, 120, 1000).exit_code for _ in range(20)]\n"
        "print(codes.count(0), round(time.monotonic() - started, 1))\n"
    )
    done = subprocess.run(in_image(*PYTHON, "-c", script), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    succeeded, seconds = done.stdout.split()
    assert succeeded == "20"
    assert float(seconds) < 50  # one missed wake-up alone would cost 60 s


def test_run_bash_keeps_the_head_and_tail_of_a_flood(server: Server) -> None:
    reply = server.call("run_bash", command="seq 1 200000")
    full = "".join(f"{n}\n" for n in range(1, 200001)).encode()
    dropped = len(full) - CAP
    head, tail = full[: CAP // 2].decode(), full[-(CAP // 2) :].decode()
    assert (
        ok(reply)
        == f"{head}\n[... {dropped} bytes of output dropped; narrow the command with grep, head or tail, or redirect it to a file and read line ranges ...]\n{tail}[exit code: 0]"
    )
    assert reply["meta"]["dropped_bytes"] == dropped


def test_run_bash_endless_output_is_killed_at_the_timeout(server: Server) -> None:
    reply = server.call("run_bash", command="yes flood", timeout=0.5)
    assert error(reply).startswith("flood\nflood\n")
    assert "bytes of output dropped" in reply["output"]
    assert reply["meta"]["timed_out"] is True
    assert reply["meta"]["dropped_bytes"] > 100000
    assert reply["meta"]["duration_ms"] < 2500


def test_run_bash_that_cannot_start_is_an_error(server: Server, root: Path) -> None:
    root.rmdir()  # the working directory is gone, so the command cannot start
    assert "could not start the command" in error(server.call("run_bash", command="true"))
    assert ok(server.call("ping")) == "pong"


# --- baseline.py -------------------------------------------------------------------------------


@pytest.fixture
def baseline(in_image: Callable[..., list[str]]) -> Callable[..., subprocess.CompletedProcess]:
    """baseline.py in the image: baseline(command, root, git_dir, env=None)."""

    def run(command: str, root: Path, git_dir: Path, env: dict[str, str] | None = None, *extra: str) -> subprocess.CompletedProcess:
        argv = in_image(*PYTHON, str(TOOLS / "baseline.py"), command, "--root", str(root), "--git-dir", str(git_dir), *extra, env=env)
        return subprocess.run(argv, capture_output=True, timeout=60)

    return run


def git(*args: str, cwd: Path, stdin: bytes | None = None) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}
    subprocess.run(["git", *args], cwd=cwd, env=env, input=stdin, check=True, capture_output=True, timeout=60)


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def apply_patch(patch: bytes, tree: Path, tmp_path: Path) -> None:
    """`git apply` onto `tree`, from an empty repo whose attributes keep the tree's .gitattributes out of it."""
    git_dir = tmp_path / "apply.git"
    git(f"--git-dir={git_dir}", "init", "--quiet", cwd=tmp_path)
    (git_dir / "info").mkdir(exist_ok=True)
    (git_dir / "info" / "attributes").write_text(NEUTRAL_ATTRIBUTES)
    git(f"--git-dir={git_dir}", f"--work-tree={tree}", "apply", "--whitespace=nowarn", "-", cwd=tree, stdin=patch)


def snapshot(root: Path, skip: Callable[[str], bool] = lambda rel: False) -> dict[str, tuple]:
    """Every file and symlink below root (folders are implied): content and exec bit, or link target."""
    found: dict[str, tuple] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            rel = path.relative_to(root).as_posix()
            if skip(rel):
                continue
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_file():
                found[rel] = ("file", path.read_bytes(), bool(path.stat().st_mode & 0o100))
        dirs[:] = [d for d in dirs if not skip(Path(directory, d).relative_to(root).as_posix())]
    return found


def hostile_env(tmp_path: Path, repo: Path) -> dict[str, str]:
    """Everything an environment could do to git's view of the bytes, which baseline.py must ignore."""
    home = tmp_path / "home"
    (home / ".config" / "git").mkdir(parents=True)
    (home / ".gitconfig").write_text('[core]\n\tautocrlf = true\n[filter "evil"]\n\tclean = tr a-z A-Z\n')
    (home / ".config" / "git" / "attributes").write_text("* text eol=crlf\n")
    (tmp_path / "other-index").write_bytes(b"not an index")
    return {
        **SANDBOX_ENV,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "GIT_DIR": str(repo / ".git"),
        "GIT_WORK_TREE": "/",
        "GIT_INDEX_FILE": str(tmp_path / "other-index"),
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "filter.evil.clean",
        "GIT_CONFIG_VALUE_0": "tr a-z A-Z",
        "GIT_CONFIG_KEY_1": "core.autocrlf",
        "GIT_CONFIG_VALUE_1": "true",
        "GIT_CONFIG_PARAMETERS": "'core.autocrlf'='true'",
    }


def make_original(tree: Path) -> None:
    tree.mkdir()
    (tree / "mod.txt").write_bytes(b"line 1\nline 2\nline 3\n")
    (tree / "del.txt").write_bytes(b"to be deleted\n")
    (tree / "rename_me.txt").write_bytes(b"".join(b"stable line %d\n" % n for n in range(30)))
    (tree / "image.bin").write_bytes(bytes(range(256)) * 4)
    (tree / "script.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (tree / "crlf.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    (tree / "no_eol.txt").write_bytes(b"last line without newline")
    (tree / "old_link").symlink_to("mod.txt")
    (tree / ".gitignore").write_bytes(b"*.log\n")
    (tree / ".gitattributes").write_bytes(b"* text=auto eol=crlf\n*.txt filter=evil ident\n")
    # The repo's own .git, with config that would rewrite content if anything read it.
    git("init", "--quiet", cwd=tree)
    git("config", "core.autocrlf", "true", cwd=tree)
    git("config", "filter.evil.clean", "tr a-z A-Z", cwd=tree)
    git("config", "filter.evil.required", "true", cwd=tree)


def change(tree: Path) -> None:
    (tree / "mod.txt").write_bytes(b"line 1\nline two\nline 3\n")
    (tree / "del.txt").unlink()
    (tree / "moved dir").mkdir()
    (tree / "rename_me.txt").rename(tree / "moved dir" / "renamed.txt")
    image = bytearray((tree / "image.bin").read_bytes())
    image[100:104] = b"\x00\xff\x00\xff"
    (tree / "image.bin").write_bytes(bytes(image))
    (tree / "script.sh").chmod(0o755)
    (tree / "crlf.txt").write_bytes(b"one\r\n2\r\nthree\r\nfour\r\n")
    (tree / "no_eol.txt").write_bytes(b"last line, still without newline")
    (tree / "old_link").unlink()
    (tree / "old_link").symlink_to("crlf.txt")
    (tree / "empty.txt").write_bytes(b"")
    (tree / "ünï cödé.txt").write_bytes("héllo wörld\n".encode())
    (tree / "new" / "nested" / "deep").mkdir(parents=True)
    (tree / "new" / "nested" / "deep" / "mod.py").write_bytes(b"print('hi')\n")
    (tree / "new_crlf.txt").write_bytes(b"a\r\nb\r\n")
    (tree / "ident.txt").write_bytes(b"$Id: 0123456789abcdef $\n")
    (tree / "tool").write_bytes(b"#!/bin/sh\nexit 0\n")
    (tree / "tool").chmod(0o755)
    (tree / "new.bin").write_bytes(bytes(range(255, -1, -1)) * 3)
    (tree / "link_to_dir").symlink_to("new/nested")
    (tree / "dangling").symlink_to("does/not/exist")
    # Never part of a patch: build caches, ignored files, the repo's own .git.
    (tree / "__pycache__").mkdir()
    (tree / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\x00cache")
    (tree / "new" / "helper.pyc").write_bytes(b"\x00cache")
    (tree / "debug.log").write_bytes(b"noise\n")
    (tree / ".git" / "planted").write_bytes(b"not part of the tree\n")


def _not_in_patch(rel: str) -> bool:
    parts = rel.split("/")
    return ".git" in parts or "__pycache__" in parts or rel.endswith((".pyc", ".log"))


def test_baseline_export_reproduces_every_kind_of_change(tmp_path: Path, baseline: Callable[..., subprocess.CompletedProcess]) -> None:
    tree, copy, git_dir = tmp_path / "tree", tmp_path / "copy", tmp_path / "state" / "baseline.git"
    make_original(tree)
    shutil.copytree(tree, copy, symlinks=True)
    env = hostile_env(tmp_path, tree)

    init = baseline("init", tree, git_dir, env)
    assert init.returncode == 0, init.stderr
    assert json.loads(init.stdout) == {"files": 10}  # .git is not a file of the tree
    change(tree)
    export = baseline("export", tree, git_dir, env)
    assert export.returncode == 0, export.stderr
    patch = export.stdout

    assert b"rename from rename_me.txt\n" in patch
    assert b"old mode 100644\nnew mode 100755\n" in patch
    assert b"GIT binary patch" in patch
    assert b"new file mode 120000" in patch
    assert b"+2\r\n" in patch and b"+a\r\n" in patch  # CRLF kept despite eol=crlf and autocrlf
    assert b"$Id: 0123456789abcdef $" in patch  # not collapsed by the ident attribute
    assert b"HELLO" not in patch and b"LINE" not in patch  # the evil filter never ran
    for never in (b"__pycache__", b".pyc", b"debug.log", b"planted"):
        assert never not in patch

    apply_patch(patch, copy, tmp_path)
    assert snapshot(copy, _not_in_patch) == snapshot(tree, _not_in_patch)


def test_baseline_of_an_empty_tree_and_an_unchanged_tree(tmp_path: Path, baseline: Callable[..., subprocess.CompletedProcess]) -> None:
    tree, copy, git_dir = tmp_path / "tree", tmp_path / "copy", tmp_path / "baseline.git"
    tree.mkdir()
    copy.mkdir()
    init = baseline("init", tree, git_dir)
    assert (init.returncode, init.stdout) == (0, b'{"files": 0}\n'), init.stderr
    assert baseline("export", tree, git_dir).stdout == b""

    (tree / "first.txt").write_bytes(b"first\n")
    export = baseline("export", tree, git_dir)
    assert export.returncode == 0
    apply_patch(export.stdout, copy, tmp_path)
    assert snapshot(copy) == {"first.txt": ("file", b"first\n", False)}


def test_baseline_borrows_the_objects_the_history_already_holds(tmp_path: Path, baseline: Callable[..., subprocess.CompletedProcess]) -> None:
    """The shipped history holds the committed files: the baseline only hashes those, and stores the rest."""
    tree, copy, git_dir, history = tmp_path / "tree", tmp_path / "copy", tmp_path / "baseline.git", tmp_path / "history.git"
    tree.mkdir()
    committed, local = b"".join(b"committed line %d\n" % n for n in range(500)), b"an uncommitted file\n"
    (tree / "committed.txt").write_bytes(committed)
    (tree / "local.txt").write_bytes(local)
    shutil.copytree(tree, copy)
    git("init", "--quiet", "--bare", str(history), cwd=tmp_path)
    git(f"--git-dir={history}", "hash-object", "-w", str(tree / "committed.txt"), cwd=tmp_path)

    init = baseline("init", tree, git_dir, None, "--objects-from", str(history / "objects"))
    assert init.returncode == 0, init.stderr
    loose = {path.parent.name + path.name for path in (git_dir / "objects").glob("??/*")}
    assert blob_id(committed) not in loose and blob_id(local) in loose  # borrowed, not stored twice
    (tree / "committed.txt").write_bytes(committed.replace(b"line 7\n", b"line seven\n"))
    export = baseline("export", tree, git_dir)
    assert export.returncode == 0, export.stderr
    assert b"-committed line 7\n+committed line seven\n" in export.stdout  # the old side read from the history's objects
    apply_patch(export.stdout, copy, tmp_path)
    assert snapshot(copy) == snapshot(tree)


def test_baseline_failures_exit_non_zero_with_a_message(tmp_path: Path, baseline: Callable[..., subprocess.CompletedProcess]) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    never_initialised = baseline("export", tree, tmp_path / "missing.git")
    assert never_initialised.returncode != 0
    assert never_initialised.stdout == b""
    assert b"baseline export: git add failed" in never_initialised.stderr

    inside = baseline("init", tree, tree / "state.git")
    assert inside.returncode != 0
    assert b"must be outside --root" in inside.stderr
    assert not (tree / "state.git").exists()


def test_sandbox_and_host_neutralise_the_same_git_attributes() -> None:
    """tools/baseline.py and orchestrator/neutral_git.py cannot import each other (trust boundary): keep them equal."""
    import importlib.util

    from orchestrator.patch.neutral_git import NEUTRAL_ATTRIBUTES

    spec = importlib.util.spec_from_file_location("sandbox_baseline", TOOLS / "baseline.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.ATTRIBUTES.encode() == NEUTRAL_ATTRIBUTES


def test_baseline_apply_writes_the_patch_whatever_the_trees_attributes_say(
    tmp_path: Path, baseline: Callable[..., subprocess.CompletedProcess], in_image: Callable[..., list[str]]
) -> None:
    tree, copy = tmp_path / "tree", tmp_path / "copy"
    make_original(tree)
    shutil.copytree(tree, copy, symlinks=True)
    git_dir = tmp_path / "state" / "baseline.git"
    assert baseline("init", tree, git_dir).returncode == 0
    change(tree)
    patch = baseline("export", tree, git_dir).stdout

    apply = in_image(*PYTHON, str(TOOLS / "baseline.py"), "apply", "--root", str(copy), "--git-dir", str(tmp_path / "apply.git"))
    done = subprocess.run(apply, input=patch, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert snapshot(copy, _not_in_patch) == snapshot(tree, _not_in_patch)

    again = subprocess.run(apply, input=patch, capture_output=True, timeout=60)  # all or nothing: it no longer applies
    assert again.returncode == 1
    assert again.stderr.startswith(b"baseline apply: the patch does not apply: ")
    assert snapshot(copy, _not_in_patch) == snapshot(tree, _not_in_patch)
