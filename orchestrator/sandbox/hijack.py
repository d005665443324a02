"""The byte pipe under a hijacked Docker API connection (an attached exec), on every docker-py transport.

`exec_start(socket=True)` hands back a different object per transport: a socket over unix or tcp (an SSL
socket with TLS), a paramiko `Channel` over ssh, or, with the OpenSSH client, docker-py's `SSHSocket`, whose
bytes really flow through an `ssh` process's stdin and stdout (its own recv blocks until it has all it asked
for, so it cannot be used with a deadline). Each becomes a `Pipe` with the same four operations and a
deadline on every wait. A send that the box does not take asks, every `poll` seconds, whether its reader is
gone (a process killed for memory leaves its stream open, unread), so that it fails then, not minutes later. The HTTP response that preceded the hijack was read through a buffered file:
whatever that file read past the headers is the stream's first bytes, so it is taken first, never lost.
"""

from __future__ import annotations

import io
import os
import select
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

SEND_TIMEOUT_S = 120.0  # a box that stops reading its stdin cannot block the host forever
_CHUNK = 65536


def _never() -> bool:
    return False


def _check_stall(gone: Callable[[], bool], stalled_since: float) -> None:
    """After a wait in which the box took nothing: fail if its reader is gone, or if it took nothing for SEND_TIMEOUT_S."""
    if gone():
        raise BrokenPipeError("the process reading the stream is gone") from None
    if time.monotonic() - stalled_since >= SEND_TIMEOUT_S:
        raise TimeoutError(f"the sandbox took no input for {SEND_TIMEOUT_S:.0f} s") from None


def _wait(fd: Any, deadline: float | None, *, write: bool = False) -> None:
    timeout = None if deadline is None else deadline - time.monotonic()
    if timeout is not None and timeout <= 0:
        raise TimeoutError
    ready = select.select([], [fd], [], timeout)[1] if write else select.select([fd], [], [], timeout)[0]
    if not ready:
        raise TimeoutError


class SocketPipe:
    """A socket, an SSL socket or a paramiko Channel: all have sendall, recv, shutdown and a selectable fileno."""

    def __init__(self, sock: Any, first: bytes = b"") -> None:
        self._sock, self._first = sock, first
        sock.settimeout(SEND_TIMEOUT_S)

    def send(self, data: bytes, gone: Callable[[], bool] = _never, poll: float = SEND_TIMEOUT_S) -> None:
        """All of `data`; BrokenPipeError once nothing was taken for `poll` seconds and `gone()`, TimeoutError
        once nothing was taken for SEND_TIMEOUT_S. A socket's send either takes some bytes or times out
        having taken none (an SSL socket's too, retried with the same bytes), so a send resumes where it was."""
        view = memoryview(data)
        stalled_since = time.monotonic()
        self._sock.settimeout(min(poll, SEND_TIMEOUT_S))
        try:
            while view:
                try:
                    sent = self._sock.send(view[:_CHUNK])
                except TimeoutError:
                    _check_stall(gone, stalled_since)
                    continue
                view, stalled_since = view[sent:], time.monotonic()
        finally:
            self._sock.settimeout(SEND_TIMEOUT_S)

    def close_write(self) -> None:
        if isinstance(self._sock, socket.socket):
            # socket.socket's own shutdown, also for an SSL socket, whose override would drop the TLS layer and
            # read ciphertext from then on. TLS's own half-close (close_notify alone) cannot be sent from Python:
            # unwrap() goes on to read the peer's alert and discards the output that comes first. The engine takes
            # the TCP half-close at a record boundary as the end of the input, as on plain tcp.
            socket.socket.shutdown(self._sock, socket.SHUT_WR)
        else:
            self._sock.shutdown(socket.SHUT_WR)  # a paramiko Channel: sends the ssh channel's EOF

    def recv(self, deadline: float | None) -> bytes:
        """Some bytes, b"" at the end of the stream; TimeoutError once `deadline` (time.monotonic()) passes."""
        if self._first:
            first, self._first = self._first, b""
            return first
        pending = getattr(self._sock, "pending", None)  # TLS: bytes already decrypted wait in the SSL layer
        if not (pending is not None and pending()):
            _wait(self._sock, deadline)
        return bytes(self._sock.recv(_CHUNK))

    def close(self) -> None:
        """Shut down first: a read waiting on this socket in another thread ends at once."""
        try:
            if isinstance(self._sock, socket.socket):
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self._sock.close()
        except OSError:
            pass


class ProcessPipe:
    """The OpenSSH client's stdin and stdout (docker-py's SSHSocket): closing its stdin is the half-close,
    which `ssh` carries to `docker system dial-stdio` on the far side."""

    def __init__(self, proc: subprocess.Popen[bytes], first: bytes = b"") -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self._proc, self._first = proc, first
        self._in, self._out = proc.stdin.fileno(), proc.stdout.fileno()
        os.set_blocking(self._in, False)

    def send(self, data: bytes, gone: Callable[[], bool] = _never, poll: float = SEND_TIMEOUT_S) -> None:
        if self._proc.stdin is None or self._proc.stdin.closed:
            raise BrokenPipeError("the stream's input is closed")
        view = memoryview(data)
        stalled_since = time.monotonic()
        while view:
            try:
                _wait(self._in, min(stalled_since + SEND_TIMEOUT_S, time.monotonic() + poll), write=True)
                view, stalled_since = view[os.write(self._in, view[:_CHUNK]) :], time.monotonic()
            except BlockingIOError:
                continue
            except TimeoutError:
                _check_stall(gone, stalled_since)

    def close_write(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()

    def recv(self, deadline: float | None) -> bytes:
        if self._first:
            first, self._first = self._first, b""
            return first
        _wait(self._out, deadline)
        return os.read(self._out, _CHUNK)

    def close(self) -> None:
        """End the ssh process (docker-py's own close would first write two newlines into the stream)."""
        self.close_write()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


Pipe = SocketPipe | ProcessPipe


def pipe_of(hijacked: Any) -> Pipe:
    """The pipe under what docker-py's exec_start(socket=True) or attach_socket returns."""
    first = _read_ahead(hijacked)
    proc = getattr(hijacked, "proc", None)  # docker-py's SSHSocket: the ssh client process
    if isinstance(proc, subprocess.Popen):
        return ProcessPipe(proc, first)
    return SocketPipe(getattr(hijacked, "_sock", hijacked), first)  # unix and tcp: a SocketIO around the socket


def _read_ahead(hijacked: Any) -> bytes:
    """What the HTTP response's buffered file already read past the headers (docker-py keeps the response
    on the hijacked object as `_response`), taken without waiting."""
    response = getattr(hijacked, "_response", None)
    file = getattr(getattr(getattr(response, "raw", None), "_fp", None), "fp", None)
    if isinstance(file, io.BufferedReader):  # unix, tcp and TLS sockets, or the ssh client's stdout pipe
        return _without_waiting(file)
    channel = getattr(file, "channel", None)
    if channel is not None and hasattr(channel, "recv_ready"):  # paramiko's ChannelFile, reading its channel
        return _paramiko_read_ahead(file, channel)
    return b""


def _without_waiting(file: io.BufferedReader) -> bytes:
    """One read1: the buffered bytes, or what the raw stream has right now (never a wait)."""
    sock = getattr(file.raw, "_sock", None)
    if sock is not None:  # a Python socket with a timeout waits inside recv: make it non-blocking meanwhile
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
    else:
        blocking = os.get_blocking(file.fileno())
        os.set_blocking(file.fileno(), False)
    try:
        return bytes(file.read1(_CHUNK) or b"")
    except OSError:  # nothing there yet (EAGAIN, or SSL's want-read): the raw reads get it later
        return b""
    finally:
        if sock is not None:
            sock.settimeout(timeout)
        else:
            os.set_blocking(file.fileno(), blocking)


def _paramiko_read_ahead(file: Any, channel: Any) -> bytes:
    """paramiko's buffered file has no peek: read it a byte at a time until it would have to wait."""
    timeout = channel.gettimeout()
    channel.settimeout(0.0)
    taken = bytearray()
    try:
        while byte := file.read(1):
            taken += byte
    except (TimeoutError, OSError):
        pass
    finally:
        channel.settimeout(timeout)
    return bytes(taken)
