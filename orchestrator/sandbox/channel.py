"""Talking to processes in a sandbox over a `Stream`: one-shot commands, and the persistent tool server.

The tool server answers one JSON line per request on stdout, so a tool call costs a round trip on an
open stream instead of starting a new process in the sandbox (about 50-70 ms each with Docker).
Everything read back is untrusted data: sizes are capped, every reply is validated, and a malformed one
ends the channel.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import Stream

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


# What a reply may hold. The server's replies are flat: an output, an error flag and a few numbers
# about the call (exit code, duration, line counts), so nothing else is taken, nested or large.
MAX_REPLY_BYTES = 8 * 1024 * 1024  # the server cuts outputs at 1,000,000 characters; JSON escapes at most 6 bytes each
MAX_META_ITEMS = 16
MAX_META_TEXT = 1000
MetaValue = StrictBool | Annotated[StrictInt, Field(ge=-(2**53), le=2**53)] | StrictFloat | None | Annotated[StrictStr, Field(max_length=MAX_META_TEXT)]
MetaKey = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]


# The channel's signatures (the twin of tools/protocol.py: a test keeps them equal; across the trust
# boundary neither side imports the other): `<JSON>\t<hex HMAC-SHA256 of direction NUL JSON>`.
REQUEST, REPLY = b"request", b"reply"


def _mac(key: bytes, direction: bytes, payload: bytes) -> bytes:
    return hmac.new(key, direction + b"\0" + payload, hashlib.sha256).hexdigest().encode("ascii")


def sign(key: bytes, direction: bytes, payload: bytes) -> bytes:
    return payload + b"\t" + _mac(key, direction, payload) + b"\n"


def opened(key: bytes, direction: bytes, line: bytes) -> bytes | None:
    payload, tab, mac = line.removesuffix(b"\n").rpartition(b"\t")
    return payload if tab and hmac.compare_digest(mac, _mac(key, direction, payload)) else None


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ToolReply(_Line):
    id: int
    output: str
    is_error: bool
    meta: Annotated[dict[MetaKey, MetaValue], Field(max_length=MAX_META_ITEMS)]


class ServerReady(_Line):
    """The server's first line, written before any command ran: it says how the server protected itself."""

    id: Literal[0]
    ready: Literal[True]
    protocol: Literal[4]
    python: Annotated[str, Field(max_length=MAX_META_TEXT)]
    dumpable: bool
    subreaper: bool
    sweep: Literal["tree", "uid"]  # how it ends what the commands leave: as their subreaper, or every process of its uid


_Reply = TypeVar("_Reply", bound=_Line)


class ToolChannel:
    """Client of the tool server (tools/server.py), kept running for the whole run on one stream.

    Its first line hands the server a fresh key, before any command of the agent's can run; every line
    after it is signed with that key, so a line the server did not write is recognised. Every reply is
    validated against the models above by pydantic, straight from the bytes (strict UTF-8, bounded
    nesting, no NaN, exact types, no extra keys), so a forged, malformed, oversized, out-of-order or
    unexpected reply ends the channel with a SandboxError, never with anything else."""

    def __init__(self, stream: Stream, *, start_timeout: float = 30.0, sweep: str = "tree") -> None:
        """`sweep`: the one the server was asked for (orchestrator.sandbox.driver, tools/confine.py)."""
        self._stream = stream
        self._buffer = bytearray()
        self._next_id = 1
        self._key = secrets.token_bytes(32)
        self._send(self._key.hex().encode() + b"\n")
        ready = self._read(ServerReady, time.monotonic() + start_timeout, "start")
        if ready.dumpable or ready.sweep != sweep or (sweep == "tree" and not ready.subreaper):
            raise SandboxError(
                "the tool server could not protect itself from the agent's commands "
                f"(non-dumpable: {not ready.dumpable}, subreaper: {ready.subreaper}, sweep: {ready.sweep}, asked: {sweep}): "
                "the kernel or container runtime refused prctl"
            )

    def call(self, tool: str, args: dict[str, Any], timeout: float) -> ToolReply:
        """Send one request and wait for its reply; `timeout` bounds the whole round trip."""
        if self._buffer:  # e.g. a second "reply" to the last request: the channel is out of step
            raise SandboxError(f"the tool server sent {len(self._buffer)} bytes nobody asked for before request {self._next_id}")
        request_id = self._next_id
        self._next_id += 1
        payload = json.dumps({"id": request_id, "tool": tool, "args": args})  # ASCII: a lone surrogate from the model is escaped
        self._send(sign(self._key, REQUEST, payload.encode()))
        reply = self._read(ToolReply, time.monotonic() + timeout, tool)
        if reply.id != request_id:
            raise SandboxError(f"the tool server answered request {reply.id}, expected {request_id}")
        return reply

    def _send(self, line: bytes) -> None:
        try:
            self._stream.send(line)
        except OSError as exc:
            raise SandboxError(f"the tool server is gone: {exc}") from None

    def _read(self, model: type[_Reply], deadline: float, what: str) -> _Reply:
        payload = opened(self._key, REPLY, self._read_line(deadline, what))
        if payload is None:
            raise SandboxError(f"the reply to {what} does not carry the tool server's signature: something else in the sandbox wrote it")
        try:
            return model.model_validate_json(payload)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part)[:40] for part in error["loc"])
            raise SandboxError(f"the tool server sent a malformed reply to {what}: {where + ': ' if where else ''}{error['msg']}") from None

    def _read_line(self, deadline: float, what: str) -> bytes:
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
        if newline > MAX_REPLY_BYTES:
            raise SandboxError(f"the tool server's reply to {what} exceeded {MAX_REPLY_BYTES} bytes")
        line = bytes(self._buffer[:newline])
        del self._buffer[: newline + 1]
        return line

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
