"""A process in a sandbox pod, as a `Stream`: the official client's exec websocket (v5.channel.k8s.io).

The client buffers each channel (1 stdout, 2 stderr, 3 the exit status); every wait here is bounded by the
caller's deadline, stdin is closed with v5's close frame, and one thread pings every open websocket so that
an idle stream (the tool server while the model thinks, the lifeline all run long) is not closed by a proxy
or load balancer in front of the API server.
"""

from __future__ import annotations

import io
import json
import threading
import time
import weakref
from typing import Any

from kubernetes.stream import ws_client

from orchestrator.errors import SandboxError

SEND_TIMEOUT_S = 120.0  # a box that stops reading its stdin cannot block the host forever
PING_S = 25.0
STDERR_TAIL_BYTES = 4096


class _Discard(io.BytesIO):
    def write(self, data: Any) -> int:
        return 0


class KubeStream:
    """One exec'd process. The client's websocket buffers each channel; every wait is bounded by the deadline."""

    def __init__(self, ws: ws_client.WSClient, *, stdin: bool) -> None:
        self._ws = ws
        # stream() cannot ask for capture_all=False: without this, the client keeps a copy of all the output.
        if hasattr(ws, "_all"):
            ws._all = _Discard()
        if stdin and ws.subprotocol != ws_client.V5_CHANNEL_PROTOCOL:
            ws.close()
            raise SandboxError(
                f"the API server speaks {ws.subprotocol or 'an old protocol'}, not v5.channel.k8s.io (Kubernetes 1.30 or newer), so stdin cannot be closed"
            )
        self.stderr_tail = b""
        ws.sock.settimeout(SEND_TIMEOUT_S)  # a box that stops reading its stdin cannot block the host forever
        keepalive.add(ws)

    def send(self, data: bytes) -> None:
        try:
            self._ws.write_stdin(data)
        except Exception as exc:  # websocket-client's exceptions for a closed connection
            raise OSError(f"the sandbox's input stream is closed: {exc}") from None

    def close_stdin(self) -> None:
        try:
            self._ws.close_channel(ws_client.STDIN_CHANNEL)
        except Exception as exc:
            raise OSError(f"could not close the sandbox's input stream: {exc}") from None

    def next_stdout(self, deadline: float | None) -> bytes | None:
        ws = self._ws
        while True:
            try:
                if err := ws.read_channel(ws_client.STDERR_CHANNEL):
                    self.stderr_tail = (self.stderr_tail + err)[-STDERR_TAIL_BYTES:]
                if out := ws.read_channel(ws_client.STDOUT_CHANNEL):
                    return bytes(out)
                if not ws.is_open():
                    return None
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    raise TimeoutError
                ws.update(timeout=timeout)
            except TimeoutError:
                raise
            except Exception as exc:
                raise OSError(f"the sandbox's output stream broke: {exc}") from None

    def exit_code(self) -> int | None:
        """From the error channel's Status, sent when the process has ended."""
        try:
            self._ws.run_forever(timeout=10)  # the status follows the last output
            status = json.loads(self._ws.read_channel(ws_client.ERROR_CHANNEL) or b"{}")
        except Exception:
            return None
        if status.get("status") == "Success":
            return 0
        for cause in (status.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode" and str(cause.get("message", "")).isdigit():
                return int(cause["message"])
        return None

    def close(self) -> None:
        keepalive.discard(self._ws)
        try:
            self._ws.close()
        except Exception:
            pass


class Keepalive:
    """One thread pinging every open websocket, so that an idle stream (the tool server while the model thinks,
    the lifeline all run long) is not closed by a proxy in between."""

    def __init__(self) -> None:
        self._sockets: weakref.WeakSet[ws_client.WSClient] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, ws: ws_client.WSClient) -> None:
        with self._lock:
            self._sockets.add(ws)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="airlock-kube-keepalive", daemon=True)
                self._thread.start()

    def discard(self, ws: ws_client.WSClient) -> None:
        with self._lock:
            self._sockets.discard(ws)

    def _run(self) -> None:
        while True:
            time.sleep(PING_S)
            with self._lock:
                sockets = list(self._sockets)
            for ws in sockets:
                try:
                    ws.sock.ping()
                except Exception:
                    pass


keepalive = Keepalive()
