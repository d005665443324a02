"""The wire format: one JSON object per line in, exactly one JSON line out per request.

Every line but the first carries a signature: `<JSON>\t<hex HMAC-SHA256>`, keyed by a secret the host
writes as the first line, before any command can run, and bound to its direction. A line without it
was not written by the other side (a process in the sandbox that got at a pipe, say: some runtimes,
gVisor among them, let same-uid processes open another's /proc/<pid>/fd) and is not acted on. Raw tabs
never occur in our JSON (json.dumps escapes them), so the last tab separates the signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 4  # 4: the ready line says how the server sweeps; 3: signed lines; 2: the ready line says whether the server is protected
REQUEST, REPLY = b"request", b"reply"
KEY_LINE = re.compile(rb"[0-9a-f]{64}\n?")

# json.dumps(ensure_ascii=False) leaves these raw, and str.splitlines() would split on them.
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


class BadRequest(Exception):
    """A line that is not a usable request; `request_id` is echoed when it could be read."""

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    id: int | None
    tool: str
    args: dict[str, Any]


def parse_request(line: bytes) -> Request:
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest(f"malformed request line (expected one JSON object): {exc}") from None
    if not isinstance(message, dict):
        raise BadRequest("malformed request: expected a JSON object")
    request_id = message.get("id")
    if request_id is not None and (not isinstance(request_id, int) or isinstance(request_id, bool)):
        raise BadRequest("malformed request: 'id' must be an integer")
    tool = message.get("tool")
    if not isinstance(tool, str):
        raise BadRequest("malformed request: 'tool' must be a string", request_id)
    args = message.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise BadRequest("malformed request: 'args' must be a JSON object", request_id)
    return Request(request_id, tool, args)


def encode_line(message: dict[str, Any]) -> bytes:
    """One protocol payload: UTF-8 JSON with no raw line break (nor tab) inside; `sign` makes it a line."""
    text = json.dumps(message, ensure_ascii=False)
    for char, escaped in _LINE_BREAKS.items():
        text = text.replace(char, escaped)  # these can only occur inside JSON strings
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (e.g. echoed from the request): ASCII JSON escapes it
        return json.dumps(message).encode("ascii")


def _mac(key: bytes, direction: bytes, payload: bytes) -> bytes:
    return hmac.new(key, direction + b"\0" + payload, hashlib.sha256).hexdigest().encode("ascii")


def sign(key: bytes, direction: bytes, payload: bytes) -> bytes:
    """The line that carries `payload` in `direction`, signed."""
    return payload + b"\t" + _mac(key, direction, payload) + b"\n"


def opened(key: bytes, direction: bytes, line: bytes) -> bytes | None:
    """The payload of a line signed with `key` for `direction`, or None when the signature is not ours."""
    payload, tab, mac = line.removesuffix(b"\n").rpartition(b"\t")
    return payload if tab and hmac.compare_digest(mac, _mac(key, direction, payload)) else None
