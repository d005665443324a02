"""The Docker backend: each sandbox is one hardened container on a Docker engine.

The container has no network, no capabilities, a read-only root, a non-root user, limits on CPU,
memory (no swap) and processes, and size-limited tmpfs mounts for everything writable: overlay2 on
ext4 cannot bound a container's disk, but a tmpfs can, and its pages count against the memory limit.
Nothing from the host is mounted and no host environment goes in.

Its main process (and Docker's init) run as a uid of their own, not the agent's, so the agent's commands
can neither signal, trace nor stop them. Its life is tied to its owner: the container's main process reads its stdin, which only the owning
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
import threading
import time
import weakref
from collections.abc import Collection
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from orchestrator.errors import SandboxError, UsageError
from orchestrator.sandbox.base import OUT_OF_MEMORY, ImageBuild, Log, NameInUse, Stream
from orchestrator.sandbox.channel import run_command
from orchestrator.sandbox.docker_build import build_project_image
from orchestrator.sandbox.docker_client import docker_client, engine_address, parse_time
from orchestrator.sandbox.docker_egress import Proxy, proxy_log, remove_networks, remove_outdated_proxy_images, start_proxy
from orchestrator.sandbox.docker_environments import DockerEnvironments
from orchestrator.sandbox.docker_tool_runtime import carries_runtime, refusal, remove_outdated_derived_images, with_tool_runtime
from orchestrator.sandbox.engines import ensure_image, local_engine_client
from orchestrator.sandbox.hijack import pipe_of
from orchestrator.sandbox.spec import DEADLINE_LABEL, DEFAULT_IMAGE, ENV_ROOT, Layout, SandboxSpec, owner_labels, owner_tag, sandbox_labels

# The container's main process and init: not the agent's uid, so its commands cannot kill, stop or trace them.
KEEPER_USER = "65534:65534"
STDERR_TAIL_BYTES = 4096
PROCESS_POLL_S = 1.0  # how often a waiting stream asks whether its process still runs
LAST_WORDS_S = 0.2  # once it does not, how long what it wrote last may still take to arrive
CREATED_GRACE_S = 300.0  # a container another airlock created but has not started yet is not abandoned
STOP_GRACE_S = 10.0  # how long a box whose lifeline closed may take to stop by itself before it is killed
_STDOUT, _STDERR = 1, 2
_HEADER = 8  # Docker's multiplexed stream: 1 byte stream type, 3 zero bytes, 4 bytes big-endian size
LAYOUT = Layout()
IMAGE_VOLUME_BYTES = 64 * 1024**2  # each of an --image's VOLUME folders


def _tmpfs(size: int, *, owner: str | None = None, mode: str = "0755", exec_: bool = True) -> str:
    """Mount options of a size-limited tmpfs (owned by `owner`, "uid:gid", when given)."""
    opts = ["rw", "nosuid", "nodev", "exec" if exec_ else "noexec", f"size={size}", f"mode={mode}"]
    if owner:
        uid, gid = owner.split(":")
        opts += [f"uid={uid}", f"gid={gid}"]
    return ",".join(opts)


def create_kwargs(spec: SandboxSpec, proxy: Proxy | None = None) -> dict[str, Any]:
    layout = LAYOUT
    tmpfs = {
        layout.workspace: _tmpfs(spec.disk, owner=spec.user),
        layout.state: _tmpfs(spec.disk, owner=spec.user, exec_=False),
        "/tmp": _tmpfs(512 * 1024**2, mode="1777"),
        "/home/airlock": _tmpfs(256 * 1024**2, owner=spec.user),
        # Root-owned, so the agent cannot swap the tool code under the server.
        layout.tools_parent: _tmpfs(16 * 1024**2, exec_=False),
    }
    for folder in spec.image_volumes:
        tmpfs.setdefault(folder, _tmpfs(IMAGE_VOLUME_BYTES, owner=spec.user))
    environment = spec.environment_vars()
    if spec.env_disk:  # a setup sandbox: the environment it makes, streamed out at the end
        tmpfs[ENV_ROOT] = _tmpfs(spec.env_disk, owner=spec.user)
    if proxy is not None:  # its only way out; no DNS is needed, the proxy resolves names
        environment |= {name: proxy.url for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
        environment |= {"NO_PROXY": "localhost,127.0.0.1", "no_proxy": "localhost,127.0.0.1"}
    return dict(
        image=spec.image,
        # Lives as long as its stdin is open: see the module's docstring. Neither the image's entrypoint
        # nor its health check runs.
        entrypoint=[layout.program("cat")],
        command=["-"],
        healthcheck={"test": ["NONE"]},
        stdin_open=True,
        user=KEEPER_USER,  # every process airlock starts names its user (spec.user) itself
        working_dir=layout.workspace,
        runtime=spec.runtime,
        environment=environment,
        hostname="sandbox",
        labels=owner_labels(spec),
        name=spec.name,
        network_mode="none" if proxy is None else proxy.network.name,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        read_only=True,
        tmpfs=tmpfs,
        init=True,
        # Under gVisor the box's process limit is the commands' RLIMIT_NPROC (see the driver); the host's
        # limit is the sentry's, which runs each process as about two host tasks, plus some forty of its own.
        pids_limit=64 + 3 * spec.pids if spec.own_kernel else spec.pids,
        mem_limit=spec.memory,
        memswap_limit=spec.memory,  # equal: no swap
        nano_cpus=int(spec.cpus * 1e9),
        use_config_proxy=False,
        tty=False,
    )


class DockerStream:
    """One attached exec. Docker multiplexes its stdout and stderr over one connection in frames; every
    read first waits on the connection with the time left, so a box that stops answering cannot block the host.

    The engine does not end the stream of a process that died (killed for memory, say), nor does anything
    read its input any more: while waiting to read or to send, the stream asks about once a second whether
    its process still runs, and ends itself (or fails the send) when it does not."""

    def __init__(self, api: docker.APIClient, exec_id: str, connection: Any) -> None:
        self._api, self.exec_id = api, exec_id
        self._connection = connection  # keeps docker-py's response (and so the connection) alive
        self._pipe = pipe_of(connection)
        self._buffer = bytearray()
        self._ended = False  # its process is gone: what is left to read is all there is
        self.stderr_tail = b""

    def send(self, data: bytes) -> None:
        self._pipe.send(data, gone=self._process_gone, poll=PROCESS_POLL_S)

    def close_stdin(self) -> None:
        self._pipe.close_write()

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
            chunk = self._recv(deadline)
            if not chunk:
                if self._buffer:
                    raise OSError("the sandbox's output stream ended in the middle of a frame")
                return None
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _recv(self, deadline: float | None) -> bytes:
        """Some bytes; b"" at the end of the stream, or once the process is gone and nothing more arrived."""
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError
            until = now + (LAST_WORDS_S if self._ended else PROCESS_POLL_S)
            try:
                return self._pipe.recv(until if deadline is None else min(until, deadline))
            except TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                if self._ended:
                    return b""
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
        self._pipe.close()

    def close(self) -> None:
        self._pipe.close()


class DockerBox:
    """One started container, the attach that keeps it alive, and the watch on its events."""

    layout = LAYOUT
    has_tools = False  # the driver writes the tool code as root into a root-owned tmpfs

    def __init__(
        self, client: docker.DockerClient, spec: SandboxSpec, container: Container, lifeline: Any, events: Any, proxy: Proxy | None = None
    ) -> None:  # fmt: skip
        self.client, self.spec, self.container = client, spec, container
        self.id: str = container.id or ""
        self._lifeline = pipe_of(lifeline)
        self.proxy = proxy
        self._streams: weakref.WeakSet[DockerStream] = weakref.WeakSet()
        self._died = False
        self._stopped = threading.Event()  # its container has died (the engine said so)
        self._out_of_memory = False
        self._events = events
        self._watcher = threading.Thread(target=self._watch, name=f"airlock-watch-{self.id[:12]}", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        """Note when the kernel killed a process of the box for memory (the engine says so only in an event
        while the container lives); shut every stream of the box as soon as its container dies."""
        for event in self._events:
            action = (event.get("status") or event.get("Action")) if isinstance(event, dict) else None
            if action == "oom":
                self._out_of_memory = True
            elif action in ("die", "destroy"):
                self._died = True
                self._stopped.set()
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
        except Exception as exc:
            if not _transport_error(exc):
                raise
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

    def end_processes(self, user: str) -> None:
        # kill(-1) from inside reaches every process of its uid in the box's PID namespace but itself,
        # and never the main process, which runs as KEEPER_USER.
        stream = self.attach([self.layout.program("sh"), "-c", "kill -KILL -1 2>/dev/null; exit 0"], user=user, stdin=False)
        run_command(stream, "kill -KILL -1", timeout=30.0)

    def egress_log(self) -> str:
        return proxy_log(self.client, self.proxy) if self.proxy is not None else ""

    def remove(self) -> None:
        """Let go of the lifelines, give the box a moment to stop by itself, then remove what is left.

        A box that stopped is removed without a kill. Killing a running gVisor box can deadlock Debian's
        containerd shim (1.6) for minutes: its init exits while `runsc kill` still runs, and until the shim
        gives up, every inspect of that container, and so every `docker ps`, on the engine hangs."""
        self._died = True  # from here on, its end is ours
        try:
            for pipe in (self._lifeline, *([pipe_of(self.proxy.lifeline)] if self.proxy is not None else [])):
                try:
                    pipe.close()
                except OSError:
                    pass
            if self._watcher.is_alive():  # else no event would tell
                self._stopped.wait(STOP_GRACE_S)
            remove_run(self.client, self.spec.run_id, also=self.container)
        finally:
            _close_events(self._events)


def _close_events(events: Any) -> None:
    """End the watch's event stream on every transport. docker-py cannot cancel one over ssh (paramiko's
    channel, or the OpenSSH client's pipes): there the channel it reads is closed instead (for OpenSSH, its
    SSHSocket, which ends the ssh process)."""
    try:
        events.close()
    except Exception:  # DockerException over paramiko, UnboundLocalError over OpenSSH: docker-py's own limits
        channel = getattr(getattr(getattr(events._response.raw, "_fp", None), "fp", None), "channel", None)
        if channel is not None:
            try:
                channel.close()
            except OSError:
                pass


def _mib(size: int) -> str:
    return f"{size // 1024**2} MiB"


def remove_run(client: docker.DockerClient, run_id: str, also: Container | None = None) -> None:
    """Remove a run's containers (sandbox, egress proxy) and its setup network, found by the run label too
    (a create cut short by Ctrl-C may have no handle)."""
    try:
        for container in client.containers.list(all=True, filters={"label": f"airlock.run-id={run_id}"}, ignore_removed=True):
            _remove_container(container)
        remove_networks(client, [f"airlock.run-id={run_id}"])
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise SandboxError(f"could not remove the sandbox of run {run_id}: {docker_message(exc)}") from None


class DockerBackend:
    name = "docker"
    ready_before_model = False

    def __init__(self, engine: str | None = None, client: docker.DockerClient | None = None) -> None:
        self.engine = engine_address(engine)  # where the containers go: DOCKER_HOST's engine unless told
        self._client = client

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker_client(self.engine)
        return self._client

    def prepare(self, spec: SandboxSpec, log: Log) -> dict[str, Any]:
        source = local_engine_client(self.engine)
        try:
            image_id = ensure_image(self.client, spec.image, where=self.engine, source=source, log=log)
        finally:
            if source is not None:
                source.close()
        return {"engine": self.engine, "image_id": image_id}

    def build_image(self, spec: SandboxSpec, build: ImageBuild) -> tuple[str, bool]:
        try:
            return build_project_image(self.client, spec, build)
        finally:
            remove_run(self.client, spec.run_id)  # the build's egress proxy and network

    def with_tool_runtime(self, spec: SandboxSpec, log: Log) -> tuple[SandboxSpec, dict[str, Any]]:
        source = local_engine_client(self.engine)  # a remote engine is sent the images the derived one is made of
        try:
            ensure_image(self.client, spec.image, where=self.engine, source=source, log=log)
            if not carries_runtime(self.client.api.inspect_image(spec.image)):
                ensure_image(self.client, DEFAULT_IMAGE, where=self.engine, source=source, log=log)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise SandboxError(f"could not look up the sandbox image {spec.image!r}: {docker_message(exc)}") from None
        finally:
            if source is not None:
                source.close()
        return with_tool_runtime(self.client, spec, log)

    def check(self, spec: SandboxSpec) -> None:
        source = local_engine_client(self.engine)  # a remote engine is sent this machine's image (see prepare)
        try:
            self._check_runtime(spec)
            for client in (self.client, *([source] if source is not None else [])):
                try:
                    image = client.api.inspect_image(spec.image)
                except docker.errors.ImageNotFound:
                    continue
                if why := refusal(client, image, spec):
                    raise UsageError(why)
                return
            raise UsageError(missing_image(spec.image, self._image_names()))
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise SandboxError(f"could not look up the sandbox image {spec.image!r}: {docker_message(exc)}") from None
        finally:
            if source is not None:
                source.close()

    def _check_runtime(self, spec: SandboxSpec) -> None:
        if spec.runtime != "runc" and spec.runtime not in self.client.info().get("Runtimes", {}):
            raise SandboxError(f"the container runtime {spec.runtime!r} is not registered with the Docker daemon (see `airlock doctor`)")

    def _image_names(self) -> list[str]:
        try:
            return [tag for image in self.client.images.list() for tag in image.tags]
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return []

    def start(self, spec: SandboxSpec) -> DockerBox:
        client = self.client
        proxy = None
        try:
            self._check_runtime(spec)
            if spec.name and client.containers.list(all=True, filters={"name": f"^/{spec.name}$"}):
                raise NameInUse(f"a sandbox named {spec.name} exists")  # checked before making a proxy; the create is the atomic check
            if spec.egress is not None:
                proxy = start_proxy(client, f"airlock-setup-{spec.run_id}", spec.egress, owner_labels(spec), spec.egress_credentials)
            container = client.containers.create(**create_kwargs(spec, proxy))  # stdin_open: StdinOnce too
            # Watched from before its start, so not even an immediate death goes unseen.
            events = client.events(filters={"container": container.id, "event": ["oom", "die", "destroy"]}, decode=True)
            # Attached before the start, so the main process's stdin is ours from its first moment.
            lifeline = client.api.attach_socket(container.id, params={"stdin": 1, "stream": 1})
            container.start()
        except SandboxError:
            remove_run(client, spec.run_id)
            raise
        except docker.errors.ImageNotFound:
            remove_run(client, spec.run_id)
            raise SandboxError(missing_image(spec.image, self._image_names())) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            remove_run(client, spec.run_id)
            if isinstance(exc, docker.errors.APIError) and exc.status_code == 409 and spec.name and spec.name in str(exc):
                raise NameInUse(f"a sandbox named {spec.name} is running") from None
            raise SandboxError(f"could not start the sandbox: {docker_message(exc)}") from None
        return DockerBox(client, spec, container, lifeline, events, proxy)

    def remove_stale(self, *, everything: bool = False, runs: Collection[str] = ()) -> list[str]:
        removed = []
        for container in self.client.containers.list(all=True, filters={"label": sandbox_labels()}, ignore_removed=True):
            ours = everything or container.labels.get("airlock.run-id") in runs
            if not (ours or abandoned(container.attrs)):
                continue
            if ours and not everything and container.status == "running":  # its owner died, its lifeline closed: it is stopping
                _wait_stopped(container)
            if _remove_container(container):
                removed.append(container.short_id)
        # Setup networks nobody uses any more (their run's containers are gone, or were removed above).
        remove_networks(self.client, [], unused_only=True, grace_s=CREATED_GRACE_S)
        remove_outdated_proxy_images(self.client)  # those of earlier sandbox images
        remove_outdated_derived_images(self.client)
        return removed

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "engine": self.engine}

    def environments(self) -> DockerEnvironments:
        return DockerEnvironments(self.client, owner_tag())


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
        created = parse_time(attrs.get("Created"))
        return created is not None and now - created > CREATED_GRACE_S
    return False


def _wait_stopped(container: Container) -> None:
    """Give a box whose owner died the moment it takes to stop by itself: removing a stopped box kills
    nothing (see DockerBox.remove); one that does not stop in time is killed after all."""
    try:
        container.wait(timeout=STOP_GRACE_S, condition="not-running")
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        pass


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


SSH_SESSIONS_REFUSED = (
    "the engine's SSH server refused one more session of airlock's connection (OpenSSH allows 10 by default, "
    "and a busy run keeps more open): set `MaxSessions 64` in the engine host's sshd_config"
)


def docker_message(exc: BaseException) -> str:
    if _refused_session(exc):
        return SSH_SESSIONS_REFUSED
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)


def _transport_error(exc: BaseException) -> bool:
    """The engine or the way to it failed: Docker's and requests' errors, and over ssh paramiko's own, which
    its channel raises unwrapped (paramiko is docker-py's to import: only ssh:// engines need it)."""
    return isinstance(exc, (docker.errors.DockerException, requests.exceptions.RequestException, OSError)) or type(exc).__module__.startswith("paramiko")


def _refused_session(exc: BaseException) -> bool:
    """paramiko's ChannelException(2, ...) anywhere in the chain (requests and urllib3 wrap it): sshd said
    "administratively prohibited" to a new channel, what OpenSSH says beyond MaxSessions."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        error = todo.pop()
        if not isinstance(error, BaseException) or id(error) in seen:
            continue
        seen.add(id(error))
        if type(error).__name__ == "ChannelException" and getattr(error, "code", None) == 2:
            return True
        todo += [error.__cause__, error.__context__, *error.args, getattr(error, "reason", None)]
    return False
