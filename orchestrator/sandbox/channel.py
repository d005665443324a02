"""Talking to processes in a sandbox over a `Stream`: one-shot commands, and the persistent tool server.

The tool server answers one JSON line per request on stdout, so a tool call costs a round trip on an
open stream instead of starting a new process in the sandbox (about 50-70 ms each with Docker).
Everything read back is untrusted data: sizes are capped and malformed replies end the channel.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import Stream

MAX_REPLY_BYTES = 16 * 1024 * 1024  # a reply line larger than this is a broken or hostile server
MAX_STDOUT_BYTES = 512 * 1024 * 1024

Feed = Callable[[Callable[[bytes], None]], object]


@dataclass
class ExecResult:
    exit_code: int | None
    stdout: bytes
    stderr: str = ""


def run_command(stream: Stream, what: str, *, feed_stdin: Feed | None = None, timeout: float = 120.0, max_stdout: int = MAX_STDOUT_BYTES) -> ExecResult:
    """Collect a started command's stdout until it ends; `feed_stdin(send)` streams its input first. Closes the stream."""
    deadline = time.monotonic() + timeout
    try:
        if feed_stdin is not None:
            feed_stdin(stream.send)
            stream.close_stdin()
        out = bytearray()
        while (chunk := stream.next_stdout(deadline)) is not None:
            out += chunk
            if len(out) > max_stdout:
                raise SandboxError(f"`{what}` in the sandbox wrote more than {max_stdout} bytes")
        return ExecResult(stream.exit_code(), bytes(out), stream.stderr_tail.decode("utf-8", "replace"))
    except TimeoutError:
        raise SandboxError(f"`{what}` in the sandbox did not finish within {timeout:.0f} s") from None
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
    """Client of the tool server (tools/server.py), kept running for the whole run on one stream."""

    def __init__(self, stream: Stream, *, start_timeout: float = 30.0) -> None:
        self._stream = stream
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
                raise SandboxError("the tool server exited" + self._why_ended())
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

    def _why_ended(self) -> str:
        """How the server's process ended, when that can be told: a signal, or its last words."""
        code = self._stream.exit_code()
        detail = self._stream.stderr_tail.decode("utf-8", "replace").strip().splitlines()
        if code is not None and code > 128 and (name := _signal_name(code - 128)):
            return f" (killed by {name})" + (f": {detail[-1]}" if detail else "")
        return f": {detail[-1]}" if detail else (f" with exit code {code}" if code else "")

    def close(self) -> None:
        self._stream.close()


def _signal_name(number: int) -> str | None:
    try:
        return signal.Signals(number).name
    except ValueError:
        return None
