"""One way to reach a Docker daemon, shared by the image builder, the sandbox driver and doctor.

An engine is named by its address, as DOCKER_HOST names it: unix:///var/run/docker.sock, tcp://host:2376
(TLS from DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, as the docker CLI reads them) or ssh://user@host. Over
ssh, docker-py talks to `docker system dial-stdio` on the far side through paramiko (one connection for
all streams), or, with AIRLOCK_DOCKER_SSH=openssh, through the `ssh` client (which honours all of
~/.ssh/config: ProxyJump, agents, certificates), as the docker CLI does.
"""

from __future__ import annotations

import importlib
import io
import os
import tarfile
from datetime import datetime
from typing import Any

import docker
import docker.errors
import docker.utils
import requests.exceptions

from orchestrator.errors import SandboxError, UsageError

# Reaching a local daemon takes milliseconds; waiting longer only delays the error message.
PING_TIMEOUT_S = 5.0
# Ordinary API calls (inspect, create, exec start) after the ping: generous, since a busy
# daemon on a 2-core machine can stall for a while. Builds and imports set their own (none).
API_TIMEOUT_S = 120.0

LOCAL_ENGINE = "unix:///var/run/docker.sock"
SSH_ENV = "AIRLOCK_DOCKER_SSH"  # paramiko (the default) or openssh
SSH_FLAVOURS = ("paramiko", "openssh")


UNREACHABLE_FIX = "run `make setup` (or start dockerd), and check that `docker info` works for this user"


class DockerUnreachable(SandboxError):
    """No daemon answered; `where` is the address tried and `cause` the reason, both short."""

    def __init__(self, where: str, cause: str) -> None:
        self.where, self.cause = where, cause
        super().__init__(f"Docker is not reachable at {where} ({cause}); {unreachable_fix(where)}")


def unreachable_fix(where: str) -> str:
    if where.startswith("unix://"):
        return UNREACHABLE_FIX
    return f"check that `docker -H {where} info` works from this machine (ssh engines: the remote user may use docker)"


def engine_address(engine: str | None = None) -> str:
    """The address of `engine`, or of the engine DOCKER_HOST names (this machine's socket when unset)."""
    return engine or os.environ.get("DOCKER_HOST") or LOCAL_ENGINE


class _EngineAPI(docker.APIClient):
    """docker-py's client without requests' environment settings: REQUESTS_CA_BUNDLE would replace the
    engine's CA (DOCKER_CERT_PATH's ca.pem), and HTTP(S)_PROXY would route a tcp:// engine through a proxy."""

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> dict[str, Any]:
        return {"proxies": {}, "stream": stream, "verify": self.verify if verify is None else verify, "cert": cert or self.cert}


class _EngineClient(docker.DockerClient):
    def __init__(self, **kwargs: Any) -> None:
        self.api = _EngineAPI(**kwargs)


def docker_client(engine: str | None = None, ping_timeout: float = PING_TIMEOUT_S, timeout: float = API_TIMEOUT_S) -> docker.DockerClient:
    """A client for `engine` (default: DOCKER_HOST, else this machine's socket), known to answer.

    Raises SandboxError (exit 3) with one line saying what to do when no daemon answers.
    """
    address = engine_address(engine)
    flavour = os.environ.get(SSH_ENV) or SSH_FLAVOURS[0]
    if flavour not in SSH_FLAVOURS:
        raise UsageError(f"{SSH_ENV} must be {' or '.join(SSH_FLAVOURS)}, not {flavour!r}")
    if address.startswith("ssh://"):
        try:
            importlib.import_module("paramiko")  # docker-py has already tried to, when it was imported
        except ImportError:
            raise UsageError(f"{address}: ssh:// engines need paramiko: pip install 'airlock[ssh]'") from None
    settings = docker.utils.kwargs_from_env(environment={**os.environ, "DOCKER_HOST": address})  # TLS as the docker CLI reads it
    try:
        # The client asks the daemon for its API version, so the short timeout covers that too.
        client = _EngineClient(timeout=ping_timeout, use_ssh_client=flavour == "openssh", **settings)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise DockerUnreachable(address, _root_cause(exc)) from exc
    # Later calls get the longer timeout; the APIClient reads this attribute per request.
    client.api.timeout = timeout
    return client


def _root_cause(exc: BaseException) -> str:
    """The OS-level reason buried in docker-py's and requests' wrappers, e.g. "Permission denied"."""
    seen: set[int] = set()
    stack: list[object] = [exc]
    while stack:
        item = stack.pop(0)
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.strerror:
            return item.strerror
        if isinstance(item, TimeoutError) or "timed out" in str(item).lower():
            return "timed out"
        stack += [item.__cause__, item.__context__, *item.args]
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def parse_time(value: Any) -> float | None:
    """A timestamp as the engine writes it (RFC 3339 with nanoseconds, which fromisoformat does not take)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return None


def dockerfile_context(dockerfile: str) -> io.BytesIO:
    """A build context that holds a Dockerfile and nothing else, for the engine's builder."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile.encode())
        tar.addfile(info, io.BytesIO(dockerfile.encode()))
    context.seek(0)
    return context
