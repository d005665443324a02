"""A local HTTP server that speaks the Anthropic Messages API from a script.

It backs `airlock demo` (no API key needed) and the test suite: the real `anthropic` SDK talks to it
over HTTP through `base_url`, so the whole path from the agent loop to the wire is exercised.
Each request to POST /v1/messages consumes the next turn of the script. A turn is a response body,
an `ApiError` (an HTTP error the SDK will see), or a function of the request body returning either.
For several runs at once (`airlock batch`), the script can be a dict of scripts keyed by a marker:
a request goes to the script whose marker is in its first user message (the task text).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Union

_ids = itertools.count(1)


@dataclass
class ApiError:
    status: int
    message: str
    type: str = "api_error"
    headers: dict[str, str] = field(default_factory=dict)


Turn = Union[dict[str, Any], ApiError, Callable[[dict[str, Any]], Union[dict[str, Any], ApiError]]]


def _usage(request: dict[str, Any], content: list[dict[str, Any]]) -> dict[str, int]:
    # Rough token counts (4 characters a token) so usage accounting has something real to sum.
    return {
        "input_tokens": len(json.dumps(request.get("messages", []))) // 4,
        "output_tokens": max(1, len(json.dumps(content)) // 4),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def reply(
    *blocks: dict[str, Any], stop_reason: str | None = None, usage: dict[str, int] | None = None
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A turn answering with these content blocks; stop_reason defaults to tool_use if any block is one.

    `usage` replaces the estimated token counts (e.g. to report cache reads as the real API would)."""
    content = list(blocks)
    reason = stop_reason or ("tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn")

    def respond(request: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"msg_scripted_{next(_ids)}",
            "type": "message",
            "role": "assistant",
            "model": request.get("model", "scripted"),
            "content": content,
            "stop_reason": reason,
            "stop_sequence": None,
            "usage": {**_usage(request, content), **(usage or {})},
        }

    return respond


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(name: str, **tool_input: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_scripted_{next(_ids)}", "name": name, "input": tool_input}


def _task_text(request: dict[str, Any]) -> str:
    content = request.get("messages", [{}])[0].get("content", "")
    return content if isinstance(content, str) else " ".join(block.get("text", "") for block in content if isinstance(block, dict))


class ScriptedMessagesAPI:
    """Serve the turns in order on 127.0.0.1; `requests` keeps every request body received.

    `times` and `markers` run parallel to `requests`: when each arrived (time.monotonic()) and which
    script answered it (None for a plain list of turns)."""

    def __init__(self, turns: Iterable[Turn] | Mapping[str, Iterable[Turn]]) -> None:
        self._routed = isinstance(turns, Mapping)
        self._scripts: dict[str | None, list[Turn]] = (
            {marker: list(script) for marker, script in turns.items()} if isinstance(turns, Mapping) else {None: list(turns)}
        )
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.times: list[float] = []
        self.markers: list[str | None] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ScriptedMessagesAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def for_marker(self, marker: str) -> list[tuple[float, dict[str, Any]]]:
        """(arrival time, body) of every request the script of `marker` answered."""
        return [(t, body) for t, body, m in zip(self.times, self.requests, self.markers) if m == marker]

    def _route(self, request: dict[str, Any]) -> str | None:
        if not self._routed:
            return None
        text = _task_text(request)
        # The longest marker that matches, so "task-1" does not catch the requests of "task-12".
        found = [marker for marker in self._scripts if marker is not None and marker in text]
        return max(found, key=len) if found else None

    def _next(self, request: dict[str, Any]) -> dict[str, Any] | ApiError:
        with self._lock:
            marker = self._route(request)
            self.requests.append(request)
            self.times.append(time.monotonic())
            self.markers.append(marker)
            turns = self._scripts.get(marker)
            if turns is None:
                return ApiError(400, "no script of the scripted model matches this task", "invalid_request_error")
            if not turns:
                return ApiError(400, "the scripted model has no more replies", "invalid_request_error")
            turn = turns.pop(0)
        return turn(request) if callable(turn) else turn

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path.split("?")[0] != "/v1/messages":
                    return self._send(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})
                api.headers.append({name.lower(): value for name, value in self.headers.items()})
                outcome = api._next(json.loads(body))
                if isinstance(outcome, ApiError):
                    error = {"type": "error", "error": {"type": outcome.type, "message": outcome.message}}
                    return self._send(outcome.status, error, outcome.headers)
                self._send(200, outcome)

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:  # keep the terminal for the run's own trace
                pass

        return Handler
