"""Attached `docker exec` streams: one-shot commands with stdin/stdout, and the persistent tool server.

Docker multiplexes an attached exec's stdout and stderr over one socket with 8-byte frame headers
(docker-py's `frames_iter` reads them). The tool server answers one JSON line per request on stdout,
so a tool call costs a socket round trip instead of a new `docker exec` (about 50-70 ms each).
Everything read back is untrusted data: sizes are capped and malformed replies end the channel.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from docker import APIClient
from docker.utils.socket import STDERR, STDOUT, frames_iter

from orchestrator.errors import SandboxError

MAX_REPLY_BYTES = 16 * 1024 * 1024  # a reply line larger than this is a broken or hostile server
STDERR_TAIL_BYTES = 4096


class _Stream:
    """One attached exec: raw socket for writing, demultiplexed frames for reading, with deadlines."""

    def __init__(self, api: APIClient, container_id: str, cmd: list[str], *, user: str, stdin: bool) -> None:
        self._api = api
        self.exec_id = api.exec_create(
            container_id, cmd, stdin=stdin, stdout=True, stderr=True, tty=False, user=user
        )["Id"]
        self._io = api.exec_start(self.exec_id, socket=True)
        self._sock: socket.socket = self._io._sock
        self._frames: Iterator[tuple[int, bytes]] = frames_iter(self._io, tty=False)
        self.stderr_tail = b""

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def close_stdin(self) -> None:
        self._sock.shutdown(socket.SHUT_WR)

    def next_stdout(self, deadline: float | None) -> bytes | None:
        """The next stdout chunk, or None at end of stream; raises TimeoutError past the deadline."""
        while True:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self._sock.settimeout(remaining)
            else:
                self._sock.settimeout(None)
            try:
                stream, data = next(self._frames)
            except StopIteration:
                return None
            except (socket.timeout, TimeoutError) as exc:
                raise TimeoutError from exc
            if stream == STDOUT:
                return data
            if stream == STDERR:
                self.stderr_tail = (self.stderr_tail + data)[-STDERR_TAIL_BYTES:]

    def exit_code(self) -> int | None:
        return self._api.exec_inspect(self.exec_id).get("ExitCode")

    def close(self) -> None:
        try:
            self._io.close()
            self._sock.close()
        except OSError:
            pass


@dataclass
class ExecResult:
    exit_code: int | None
    stdout: bytes
    stderr: str = ""


def run_exec(
    api: APIClient,
    container_id: str,
    cmd: list[str],
    *,
    user: str,
    feed_stdin: Callable[[Callable[[bytes], None]], object] | None = None,
    timeout: float = 120.0,
    max_stdout: int = 512 * 1024 * 1024,
) -> ExecResult:
    """Run one command in the container and collect its stdout; `feed_stdin(send)` streams its input."""
    try:
        stream = _Stream(api, container_id, cmd, user=user, stdin=feed_stdin is not None)
    except OSError as exc:  # docker's APIError is one: e.g. the container was removed under the run
        raise SandboxError(f"could not run `{cmd[0]}` in the sandbox: {getattr(exc, 'explanation', None) or exc}") from None
    deadline = time.monotonic() + timeout
    try:
        if feed_stdin is not None:
            feed_stdin(stream.send)
            stream.close_stdin()
        out = bytearray()
        while (chunk := stream.next_stdout(deadline)) is not None:
            out += chunk
            if len(out) > max_stdout:
                raise SandboxError(f"`{cmd[0]}` in the sandbox wrote more than {max_stdout} bytes")
        return ExecResult(stream.exit_code(), bytes(out), stream.stderr_tail.decode("utf-8", "replace"))
    except TimeoutError:
        raise SandboxError(f"`{' '.join(cmd[:3])}` in the sandbox did not finish within {timeout:.0f} s") from None
    except OSError as exc:
        raise SandboxError(f"lost the connection to the sandbox: {exc}") from None
    finally:
        stream.close()


@dataclass
class ToolReply:
    output: str
    is_error: bool
    meta: dict[str, Any] = field(default_factory=dict)


class ToolChannel:
    """Client of the tool server (tools/server.py) kept running for the whole run."""

    def __init__(self, api: APIClient, container_id: str, cmd: list[str], *, user: str, start_timeout: float = 30.0):
        self._stream = _Stream(api, container_id, cmd, user=user, stdin=True)
        self._buffer = bytearray()
        self._next_id = 1
        if not self._read_line(time.monotonic() + start_timeout, "start").get("ready"):
            raise SandboxError("the tool server did not start correctly in the sandbox")

    def call(self, tool: str, args: dict[str, Any], timeout: float) -> ToolReply:
        """Send one request and wait for its reply; `timeout` bounds the whole round trip."""
        request_id = self._next_id
        self._next_id += 1
        line = json.dumps({"id": request_id, "tool": tool, "args": args}, ensure_ascii=False) + "\n"
        try:
            self._stream.send(line.encode())
        except OSError as exc:
            raise SandboxError(f"the tool server is gone: {exc}") from None
        reply = self._read_line(time.monotonic() + timeout, tool)
        if reply.get("id") != request_id:
            raise SandboxError(f"the tool server answered request {reply.get('id')!r}, expected {request_id}")
        output, is_error, meta = reply.get("output"), reply.get("is_error"), reply.get("meta", {})
        if not isinstance(output, str) or not isinstance(is_error, bool) or not isinstance(meta, dict):
            raise SandboxError("the tool server sent a malformed reply")
        return ToolReply(output, is_error, meta)

    def _read_line(self, deadline: float, what: str) -> dict[str, Any]:
        while (newline := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > MAX_REPLY_BYTES:
                raise SandboxError(f"the tool server's reply to {what} exceeded {MAX_REPLY_BYTES} bytes")
            try:
                chunk = self._stream.next_stdout(deadline)
            except TimeoutError:
                raise SandboxError(f"the tool server did not answer {what} in time") from None
            except OSError as exc:
                raise SandboxError(f"lost the connection to the tool server: {exc}") from None
            if chunk is None:
                detail = self._stream.stderr_tail.decode("utf-8", "replace").strip().splitlines()
                raise SandboxError("the tool server exited" + (f": {detail[-1]}" if detail else ""))
            self._buffer += chunk
        line = bytes(self._buffer[:newline])
        del self._buffer[: newline + 1]
        try:
            reply = json.loads(line)
        except ValueError:
            raise SandboxError("the tool server sent a line that is not JSON") from None
        if not isinstance(reply, dict):
            raise SandboxError("the tool server sent a reply that is not a JSON object")
        return reply

    def close(self) -> None:
        self._stream.close()
