"""The pipe under a hijacked connection, without Docker: the bytes that arrived with the HTTP response's
headers (and sit in its buffered file) come first, then the rest from the socket or the ssh client's pipes;
the half-close ends the input; every wait has a deadline."""

from __future__ import annotations

import http.client
import socket
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest

from orchestrator.sandbox.hijack import ProcessPipe, SocketPipe, pipe_of

UPGRADE = b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"


def hijacked_socket(early: bytes) -> tuple[SimpleNamespace, socket.socket]:
    """What docker-py hands back for a unix or tcp engine: the SocketIO under the response, which it keeps as `_response`."""
    client, engine = socket.socketpair()
    engine.sendall(UPGRADE + early)  # the process's first output arrives with the headers, in one read
    response = http.client.HTTPResponse(client)
    response.begin()
    raw = response.fp.raw  # socket.SocketIO, as `response.raw._fp.fp.raw` is in docker-py
    return SimpleNamespace(_sock=raw._sock, _response=SimpleNamespace(raw=SimpleNamespace(_fp=response))), engine


def test_bytes_that_came_with_the_headers_are_not_lost() -> None:
    hijacked, engine = hijacked_socket(b"ready\n")
    pipe = pipe_of(hijacked)
    assert isinstance(pipe, SocketPipe)
    assert pipe.recv(time.monotonic() + 5) == b"ready\n"
    engine.sendall(b"more")
    assert pipe.recv(time.monotonic() + 5) == b"more"
    pipe.send(b"input")
    pipe.close_write()
    assert engine.recv(100) == b"input" and engine.recv(100) == b""  # the half-close: the input ended
    engine.sendall(b"output after the input ended")
    assert pipe.recv(time.monotonic() + 5) == b"output after the input ended"
    with pytest.raises(TimeoutError):
        pipe.recv(time.monotonic() + 0.2)
    engine.close()
    assert pipe.recv(time.monotonic() + 5) == b""
    pipe.close()


def test_the_ssh_clients_pipes_half_close_through_its_stdin() -> None:
    """docker-py's SSHSocket: bytes flow through the ssh process's stdin and stdout (`cat` stands in for it here)."""
    proc = subprocess.Popen(["sh", "-c", "printf 'HTTP/1.1 101 UPGRADED\\r\\n\\r\\nearly'; exec cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    while proc.stdout.readline() not in (b"\r\n", b""):  # the response's headers, read through the buffered file
        pass
    pipe = pipe_of(SimpleNamespace(proc=proc, _response=SimpleNamespace(raw=SimpleNamespace(_fp=SimpleNamespace(fp=proc.stdout)))))
    assert isinstance(pipe, ProcessPipe)
    got = b""
    while len(got) < len(b"early"):
        got += pipe.recv(time.monotonic() + 5)
    assert got == b"early"
    data = bytes(range(256)) * 4096  # 1 MiB: far more than the pipes hold, so sending waits for the reading
    sender = threading.Thread(target=lambda: (pipe.send(data), pipe.close_write()))  # then `cat` sees its input end
    sender.start()
    echoed = bytearray()
    while chunk := pipe.recv(time.monotonic() + 10):
        echoed += chunk
    sender.join(10)
    assert bytes(echoed) == data
    assert proc.wait(timeout=10) == 0
    with pytest.raises(OSError):
        pipe.send(b"after the half-close")
    pipe.close()


def test_a_send_nobody_reads_fails_once_the_reader_is_gone_and_resumes_while_it_lives() -> None:
    """A tool server killed for memory leaves its stream open and unread: the send asks each `poll` whether
    its reader is gone, and fails then, instead of waiting out SEND_TIMEOUT_S; a slow reader loses nothing."""
    client, engine = socket.socketpair()
    pipe = SocketPipe(client)
    data = bytes(range(256)) * 16384  # 4 MiB: far more than the socket buffers hold
    asked: list[float] = []

    def gone() -> bool:
        asked.append(time.monotonic())
        return len(asked) >= 3

    started = time.monotonic()
    with pytest.raises(BrokenPipeError):
        pipe.send(data, gone=gone, poll=0.1)
    assert len(asked) == 3 and time.monotonic() - started < 5

    client2, engine2 = socket.socketpair()
    pipe2 = SocketPipe(client2)
    received = bytearray()

    def slow_reader() -> None:
        while len(received) < len(data):
            time.sleep(0.05)  # slower than the poll: the send stalls and resumes many times
            received.extend(engine2.recv(1 << 20))

    reader = threading.Thread(target=slow_reader)
    reader.start()
    pipe2.send(data, gone=lambda: False, poll=0.01)
    reader.join(30)
    assert bytes(received) == data
    for sock in (client, engine, client2, engine2):
        sock.close()


def test_an_ssh_server_refusing_one_more_session_is_told_with_what_to_set() -> None:
    """OpenSSH refuses channels beyond MaxSessions with code 2; requests and urllib3 wrap paramiko's error."""
    import paramiko
    import requests
    import urllib3

    from orchestrator.sandbox.docker_backend import SSH_SESSIONS_REFUSED, docker_message

    refused = paramiko.ChannelException(2, "Connect failed")
    wrapped = requests.exceptions.ConnectionError(urllib3.exceptions.ProtocolError("Connection aborted.", refused))
    assert docker_message(refused) == docker_message(wrapped) == SSH_SESSIONS_REFUSED and "MaxSessions 64" in SSH_SESSIONS_REFUSED
    other = requests.exceptions.ConnectionError(urllib3.exceptions.ProtocolError("Connection aborted.", paramiko.ChannelException(1, "no")))
    assert "MaxSessions" not in docker_message(other) and docker_message(requests.exceptions.ConnectionError("down")) == "down"
