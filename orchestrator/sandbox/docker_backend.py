"""The Docker backend: each sandbox is one hardened container on a Docker engine.

The container has no network, no capabilities, a read-only root, a non-root user, limits on CPU,
memory (no swap) and processes, and size-limited tmpfs mounts for everything writable: overlay2 on
ext4 cannot bound a container's disk, but a tmpfs can, and its pages count against the memory limit.
Nothing from the host is mounted and no host environment goes in.

Its life is tied to its owner: the container's main process reads its stdin, which only the owning
airlock process holds open (an attach made before the start, with StdinOnce). When the owner dies,
however it dies, the engine closes that stdin, the main process exits and the container stops with
everything in it. So other airlock processes sharing the engine (CI runners, other hosts) only ever
remove containers that have stopped, or that outlived the deadline their labels carry.

The engine does not end a dead container's attached streams promptly (a send can block for minutes),
so each box follows its container's events: when it dies (killed for memory, removed by someone
else), every stream of it is shut at once, and `failure()` says why.
"""

from __future__ import annotations

import difflib
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Collection
from datetime import datetime
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from orchestrator.errors import SandboxError, UsageError
from orchestrator.sandbox.base import OUT_OF_MEMORY, Stream
from orchestrator.sandbox.docker_client import docker_client
from orchestrator.sandbox.spec import DEFAULT_IMAGE, SANDBOX_ENV, Layout, SandboxSpec

LABEL = "airlock.sandbox"
DEADLINE_LABEL = "airlock.deadline"
# Set AIRLOCK_OWNER to tag every sandbox with it (label airlock.owner), e.g. a CI job's id.
OWNER_ENV, OWNER_LABEL = "AIRLOCK_OWNER", "airlock.owner"
STDERR_TAIL_BYTES = 4096
SEND_TIMEOUT_S = 120.0  # a box that stops reading its stdin cannot block the host forever
PROCESS_POLL_S = 1.0  # how often a waiting stream asks whether its process still runs
LAST_WORDS_S = 0.2  # once it does not, how long what it wrote last may still take to arrive
CREATED_GRACE_S = 300.0  # a container another airlock created but has not started yet is not abandoned
_STDOUT, _STDERR = 1, 2
_HEADER = 8  # Docker's multiplexed stream: 1 byte stream type, 3 zero bytes, 4 bytes big-endian size
LAYOUT = Layout()


def _tmpfs(size: int, *, owner: str | None = None, mode: str = "0755", exec_: bool = True) -> str:
    """Mount options of a size-limited tmpfs (owned by `owner`, "uid:gid", when given)."""
    opts = ["rw", "nosuid", "nodev", "exec" if exec_ else "noexec", f"size={size}", f"mode={mode}"]
    if owner:
        uid, gid = owner.split(":")
        opts += [f"uid={uid}", f"gid={gid}"]
    return ",".join(opts)


def owner_labels(spec: SandboxSpec) -> dict[str, str]:
    """Labels that identify a sandbox, its owner and how long it may live, so leftovers can be found."""
    labels = {
        LABEL: "1",
        "airlock.run-id": spec.run_id,
        "airlock.host": socket.gethostname(),
        "airlock.pid": str(os.getpid()),
        DEADLINE_LABEL: str(int(time.time() + spec.lifetime_s)),
    }
    if owner := os.environ.get(OWNER_ENV):
        labels[OWNER_LABEL] = owner
    return labels


def create_kwargs(spec: SandboxSpec) -> dict[str, Any]:
    layout = LAYOUT
    return dict(
        image=spec.image,
        # Lives as long as its stdin is open: see the module's docstring.
        command=["cat"],
        stdin_open=True,
        user=spec.user,
        working_dir=layout.workspace,
        runtime=spec.runtime,
        environment=SANDBOX_ENV,
        hostname="sandbox",
        labels=owner_labels(spec),
        network_mode="none",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        read_only=True,
        tmpfs={
            layout.workspace: _tmpfs(spec.disk, owner=spec.user),
            layout.state: _tmpfs(spec.disk, owner=spec.user, exec_=False),
            "/tmp": _tmpfs(512 * 1024**2, mode="1777"),
            "/home/airlock": _tmpfs(256 * 1024**2, owner=spec.user),
            # Root-owned, so the agent cannot swap the tool code under the server.
            layout.tools_parent: _tmpfs(16 * 1024**2, exec_=False),
        },
        init=True,
        pids_limit=spec.pids,
        mem_limit=spec.memory,
        memswap_limit=spec.memory,  # equal: no swap
        nano_cpus=int(spec.cpus * 1e9),
        use_config_proxy=False,
        tty=False,
    )


def _raw_socket(stream: Any) -> Any:
    """The socket under what docker-py returns for a hijacked connection."""
    return getattr(stream, "_sock", stream)


class DockerStream:
    """One attached exec. Docker multiplexes its stdout and stderr over one connection in frames; every
    read first waits on the socket with the time left, so a box that stops answering cannot block the host.

    The engine does not end the stream of a process that died (killed for memory, say): while waiting,
    the stream asks about once a second whether its process still runs, and ends itself when it does not."""

    def __init__(self, api: docker.APIClient, exec_id: str, connection: Any) -> None:
        self._api, self.exec_id = api, exec_id
        self._connection = connection  # keeps docker-py's response (and so the socket) alive
        self._sock = _raw_socket(connection)
        self._sock.settimeout(PROCESS_POLL_S)
        self._buffer = bytearray()
        self._ended = False  # its process is gone: what is left to read is all there is
        self.stderr_tail = b""

    def send(self, data: bytes) -> None:
        view, deadline = memoryview(data), time.monotonic() + SEND_TIMEOUT_S
        while view:
            try:
                view = view[self._sock.send(view) :]
            except TimeoutError:  # nobody is reading: is anybody there?
                if self._process_gone():
                    raise BrokenPipeError("the process in the sandbox has ended") from None
                if time.monotonic() > deadline:
                    raise

    def close_stdin(self) -> None:
        self._sock.shutdown(socket.SHUT_WR)

    def next_stdout(self, deadline: float | None) -> bytes | None:
        while True:
            header = self._read_exact(_HEADER, deadline)
            if header is None:
                return None
            data = self._read_exact(int.from_bytes(header[4:], "big"), deadline)
            if data is None:
                raise OSError("the sandbox's output stream ended in the middle of a frame")
            if header[0] == _STDOUT:
                return data
            if header[0] == _STDERR:
                self.stderr_tail = (self.stderr_tail + data)[-STDERR_TAIL_BYTES:]

    def _read_exact(self, size: int, deadline: float | None) -> bytes | None:
        """`size` bytes, or None at a clean end of stream (nothing buffered)."""
        while len(self._buffer) < size:
            chunk = b""
            if self._wait_readable(deadline):
                try:
                    chunk = self._sock.recv(max(65536, size - len(self._buffer)))
                except TimeoutError:  # TLS: readable, but not yet a whole record
                    continue
            if not chunk:
                if self._buffer:
                    raise OSError("the sandbox's output stream ended in the middle of a frame")
                return None
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _wait_readable(self, deadline: float | None) -> bool:
        """True once there is something to read; False when the process is gone and nothing is left."""
        pending = getattr(self._sock, "pending", None)  # TLS: bytes already decrypted wait in the SSL layer
        if pending is not None and pending():
            return True
        while True:
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise TimeoutError
            wait = min(PROCESS_POLL_S, timeout) if timeout is not None else PROCESS_POLL_S
            if self._ended:
                wait = min(wait, LAST_WORDS_S)
            readable, _, _ = select.select([self._sock], [], [], wait)
            if readable:
                return True
            if self._ended:
                return False
            self._ended = self._process_gone()

    def _process_gone(self) -> bool:
        try:
            return self._api.exec_inspect(self.exec_id).get("Running") is False
        except docker.errors.NotFound:
            return True
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return False  # the engine is busy or unsure: keep waiting, within the caller's deadline

    def exit_code(self) -> int | None:
        try:
            return self._api.exec_inspect(self.exec_id).get("ExitCode")
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return None

    def abort(self) -> None:
        """End the stream now: a blocked read sees its end, a blocked send fails."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        for closable in (self._connection, self._sock):
            try:
                closable.close()
            except OSError:
                pass


class DockerBox:
    """One started container, the attach that keeps it alive, and the watch on its events."""

    layout = LAYOUT

    def __init__(self, client: docker.DockerClient, spec: SandboxSpec, container: Container, lifeline: Any, events: Any) -> None:
        self.client, self.spec, self.container = client, spec, container
        self.id: str = container.id or ""
        self._lifeline = lifeline
        self._streams: weakref.WeakSet[DockerStream] = weakref.WeakSet()
        self._died = False
        self._out_of_memory = False
        self._events = events
        threading.Thread(target=self._watch, name=f"airlock-watch-{self.id[:12]}", daemon=True).start()

    def _watch(self) -> None:
        """Note when the kernel killed a process of the box for memory (the engine says so only in an event
        while the container lives); shut every stream of the box as soon as its container dies."""
        for event in self._events:
            action = (event.get("status") or event.get("Action")) if isinstance(event, dict) else None
            if action == "oom":
                self._out_of_memory = True
            elif action in ("die", "destroy"):
                self._died = True
                for stream in list(self._streams):
                    stream.abort()
                return

    def attach(self, cmd: list[str], *, user: str, stdin: bool) -> Stream:
        api = self.client.api
        try:
            if self._died:
                raise OSError("the container is gone")
            exec_id = api.exec_create(self.id, cmd, stdin=stdin, stdout=True, stderr=True, tty=False, user=user)["Id"]
            stream = DockerStream(api, exec_id, api.exec_start(exec_id, socket=True))
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            cause = self.failure()
            raise SandboxError(f"could not run `{cmd[0]}` in the sandbox: {cause or docker_message(exc)}") from None
        self._streams.add(stream)
        if self._died:  # it died while the stream was being made
            stream.abort()
        return stream

    def failure(self) -> str | None:
        try:
            state = self.client.api.inspect_container(self.id).get("State") or {}
        except docker.errors.NotFound:
            return "the sandbox container was removed by someone else"
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return None
        if state.get("OOMKilled") or self._out_of_memory:
            return f"{OUT_OF_MEMORY} (limit {_mib(self.spec.memory)})"
        if state.get("Status") not in (None, "running"):
            return f"the sandbox container stopped ({state.get('Status')}, exit code {state.get('ExitCode')})"
        return None

    def remove(self) -> None:
        self._died = True  # from here on, its end is ours
        try:
            _remove_container(self.container)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise SandboxError(f"could not remove the sandbox of run {self.spec.run_id}: {docker_message(exc)}") from None
        finally:
            for closable in (self._events, _raw_socket(self._lifeline)):
                try:
                    closable.close()
                except OSError:
                    pass


def _mib(size: int) -> str:
    return f"{size // 1024**2} MiB"


def remove_run(client: docker.DockerClient, run_id: str) -> None:
    """Remove a run's container found by its run label: a start that failed half-way has no handle on it."""
    try:
        for container in client.containers.list(all=True, filters={"label": f"airlock.run-id={run_id}"}, ignore_removed=True):
            _remove_container(container)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise SandboxError(f"could not remove the sandbox of run {run_id}: {docker_message(exc)}") from None


class DockerBackend:
    name = "docker"

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self._client = client

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker_client()
        return self._client

    def check(self, spec: SandboxSpec) -> None:
        client = self.client
        if spec.runtime != "runc" and spec.runtime not in client.info().get("Runtimes", {}):
            raise SandboxError(f"the container runtime {spec.runtime!r} is not registered with the Docker daemon (see `airlock doctor`)")
        try:
            client.images.get(spec.image)
        except docker.errors.ImageNotFound:
            raise UsageError(missing_image(spec.image, self._image_names())) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise SandboxError(f"could not look up the sandbox image {spec.image!r}: {docker_message(exc)}") from None

    def _image_names(self) -> list[str]:
        try:
            return [tag for image in self.client.images.list() for tag in image.tags]
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return []

    def start(self, spec: SandboxSpec) -> DockerBox:
        client = self.client
        try:
            container = client.containers.create(**create_kwargs(spec))  # stdin_open: StdinOnce too
            # Watched from before its start, so not even an immediate death goes unseen.
            events = client.events(filters={"container": container.id, "event": ["oom", "die", "destroy"]}, decode=True)
            # Attached before the start, so the main process's stdin is ours from its first moment.
            lifeline = client.api.attach_socket(container.id, params={"stdin": 1, "stream": 1})
            container.start()
        except docker.errors.ImageNotFound:
            remove_run(client, spec.run_id)
            raise SandboxError(missing_image(spec.image, self._image_names())) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            remove_run(client, spec.run_id)
            raise SandboxError(f"could not start the sandbox: {docker_message(exc)}") from None
        return DockerBox(client, spec, container, lifeline, events)

    def remove_stale(self, *, everything: bool = False, runs: Collection[str] = ()) -> list[str]:
        removed = []
        for container in self.client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True):
            ours = everything or container.labels.get("airlock.run-id") in runs
            if (ours or abandoned(container.attrs)) and _remove_container(container):
                removed.append(container.short_id)
        return removed

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}


def abandoned(attrs: dict[str, Any], now: float | None = None) -> bool:
    """Whether a sandbox's owner is gone: it has stopped, was never started, or outlived its deadline.

    A running sandbox before its deadline belongs to a live owner, wherever that owner runs."""
    now = time.time() if now is None else now
    status = (attrs.get("State") or {}).get("Status")
    deadline = ((attrs.get("Config") or {}).get("Labels") or {}).get(DEADLINE_LABEL, "")
    if deadline.isdigit() and int(deadline) < now:
        return True
    if status in ("exited", "dead"):
        return True
    if status == "created":
        created = _parse_time(attrs.get("Created"))
        return created is not None and now - created > CREATED_GRACE_S
    return False


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:  # Docker writes nanoseconds, which fromisoformat does not take
        return datetime.fromisoformat(value[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return None


def _remove_container(container: Container) -> bool:
    """Force-remove; False if it is already gone or another airlock process is removing it right now."""
    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        if exc.status_code == 409:  # "removal already in progress"
            return False
        raise
    return True


def missing_image(image: str, known: list[str]) -> str:
    """Not found, with the close name the user probably meant, or how to make the default one."""
    close = difflib.get_close_matches(image, known, n=1, cutoff=0.75)
    if close:
        return f"sandbox image {image!r} not found: did you mean {close[0]}?"
    if image == DEFAULT_IMAGE:
        return f"sandbox image {image!r} not found; build it with `airlock image build`"
    return f"sandbox image {image!r} not found on this Docker engine (build or load it, or leave --image out for {DEFAULT_IMAGE})"


def docker_message(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)
