"""One way to reach the Docker daemon, shared by the image builder, the sandbox driver and doctor."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import docker
import docker.errors
import requests.exceptions

from orchestrator.errors import SandboxError

# Reaching a local daemon takes milliseconds; waiting longer only delays the error message.
PING_TIMEOUT_S = 5.0
# Ordinary API calls (inspect, create, exec start) after the ping: generous, since a busy
# daemon on a 2-core machine can stall for a while. Builds and imports set their own (none).
API_TIMEOUT_S = 120.0

UNREACHABLE_FIX = "run `make setup` (or start dockerd), and check that `docker info` works for this user"


class DockerUnreachable(SandboxError):
    """No daemon answered; `where` is the address tried and `cause` the reason, both short."""

    def __init__(self, where: str, cause: str) -> None:
        self.where, self.cause = where, cause
        super().__init__(f"Docker is not reachable at {where} ({cause}); {UNREACHABLE_FIX}")


def docker_client(ping_timeout: float = PING_TIMEOUT_S, timeout: float = API_TIMEOUT_S) -> docker.DockerClient:
    """A client for the daemon named by DOCKER_HOST / the Docker context, known to answer.

    Raises SandboxError (exit 3) with one line saying what to do when no daemon answers.
    """
    try:
        # from_env asks the daemon for its API version, so the short timeout covers that too.
        client = docker.from_env(timeout=ping_timeout)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise DockerUnreachable(_daemon_address(), _root_cause(exc)) from exc
    # Later calls get the longer timeout; the APIClient reads this attribute per request.
    client.api.timeout = timeout
    return client


def _daemon_address() -> str:
    return os.environ.get("DOCKER_HOST") or "the default socket (unix:///var/run/docker.sock)"


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
