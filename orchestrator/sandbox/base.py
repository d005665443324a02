"""The sandbox backend seam: what the rest of airlock asks of any place that can run a sandbox.

A `Backend` starts hardened boxes from a `SandboxSpec`; a `Box` runs processes attached as a `Stream`.
Copy-in, the tool install, the baseline, the patch export and the tool server are written once, against
these (see orchestrator.sandbox.driver); Docker is one implementation (orchestrator.sandbox.docker_backend).
Everything a stream returns is untrusted data.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from orchestrator.errors import SandboxError
from orchestrator.sandbox.spec import Layout, SandboxSpec

ROOT_USER = "0:0"
# How `Box.failure()` begins when the box was killed for memory, so the runner can say what to raise.
OUT_OF_MEMORY = "the sandbox ran out of memory"

Log = Callable[[str], None]


class NameInUse(SandboxError):
    """A sandbox with the spec's name is running (e.g. another airlock process builds the same environment)."""


@dataclass(frozen=True)
class Environment:
    """An environment image made by a setup phase, found by its key."""

    key: str
    image: str  # the reference a SandboxSpec names
    size: int = 0
    created: float = 0.0  # seconds since the epoch
    labels: dict[str, str] = field(default_factory=dict)  # repo, base image, commands, ... as the store keeps them


class EnvironmentStore(Protocol):
    """Where environment images live: the engine that runs the sandboxes made from them."""

    def image_id(self, image: str) -> str:
        """The id of `image` (a sandbox image), part of every environment key; SandboxError if it is missing."""

    def find(self, key: str) -> Environment | None: ...

    def save(self, key: str, base_image: str, archive: Path, labels: dict[str, str]) -> Environment:
        """A new image: `base_image` plus `archive` (an uncompressed tar of checked members, all under
        `airlock-env/`) unpacked into ENV_ROOT, root-owned. The store may append to `archive`."""

    def all(self) -> list[Environment]: ...

    def remove(self, env: Environment) -> None: ...


class NoEnvironments:
    """The store of a backend that keeps no environment images: nothing is found, and a setup phase is refused."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def image_id(self, image: str) -> str:
        raise SandboxError(f"a setup phase needs environment images, which --backend {self.backend} does not keep yet: use --backend docker")

    def find(self, key: str) -> Environment | None:
        return None

    def save(self, key: str, base_image: str, archive: Path, labels: dict[str, str]) -> Environment:
        return Environment(key, self.image_id(base_image))

    def all(self) -> list[Environment]:
        return []

    def remove(self, env: Environment) -> None:
        pass


@dataclass(frozen=True)
class ImageBuild:
    """A project's Dockerfile to build as its sandbox image, with egress to `allow_hosts` only."""

    context: bytes  # a tar archive of the build context
    context_digest: str  # of every file in it
    dockerfile: str  # its path in the context
    dockerfile_text: bytes
    args: dict[str, str]
    target: str | None
    allow_hosts: tuple[str, ...]
    memory: int
    timeout: float
    log: Callable[[str], None]  # each line the build prints


class Stream(Protocol):
    """One process in a box, with its stdin and stdout attached; stderr is kept as a short tail."""

    stderr_tail: bytes

    def send(self, data: bytes) -> None:
        """Write to the process's stdin; raises OSError when it is gone."""

    def close_stdin(self) -> None: ...

    def next_stdout(self, deadline: float | None) -> bytes | None:
        """The next stdout chunk, None at end of stream; TimeoutError once `deadline` (time.monotonic()) passes."""

    def exit_code(self) -> int | None:
        """The process's exit status once its stream has ended (None if unknown)."""

    def close(self) -> None: ...


class Box(Protocol):
    """One started sandbox."""

    id: str
    layout: Layout
    # The backend put the tool code in place itself, read-only (Kubernetes cannot exec as root to write it).
    has_tools: bool

    def attach(self, cmd: list[str], *, user: str, stdin: bool) -> Stream:
        """Start `cmd` in the box as `user` ("uid:gid"); raises SandboxError if it cannot be started."""

    def failure(self) -> str | None:
        """Why the box stopped working, when that can be found out (e.g. it was killed for memory)."""

    def end_processes(self, user: str) -> None:
        """SIGKILL every process `user` runs in the box, whoever started it; the box itself lives on."""

    def egress_log(self) -> str:
        """The egress proxy's access log so far (squid's lines), or '' for a box without egress."""

    def remove(self) -> None:
        """Remove the box and everything in it; raises SandboxError if that fails."""


class Backend(Protocol):
    name: str
    # The box must be ready (its checks passed) before the run's first model request, e.g. the
    # Kubernetes egress probe; else the model is asked while the box starts.
    ready_before_model: bool

    def prepare(self, spec: SandboxSpec, log: Log) -> dict[str, Any]:
        """Make sure what a box of `spec` needs is where boxes start (its image, ...), saying what it does
        through `log`; returns what run.json records of it. Raises SandboxError."""

    def with_tool_runtime(self, spec: SandboxSpec, log: Log) -> tuple[SandboxSpec, dict[str, Any]]:
        """`spec` on an image whose boxes carry airlock's tool runtime (sandbox_image/runtime.sh), made when
        missing, and what run.json records of it. Raises SandboxError."""

    def build_image(self, spec: SandboxSpec, build: ImageBuild) -> tuple[str, bool]:
        """The image `build` makes (found by a key of everything it reads, else built through an egress proxy),
        and whether it was built now. Raises SandboxError."""

    def check(self, spec: SandboxSpec) -> None:
        """Before anything is made: UsageError for what makes `start` fail for certain (an unknown image)."""

    def start(self, spec: SandboxSpec) -> Box:
        """A running, hardened box made from `spec`; raises SandboxError (nothing is left behind)."""

    def remove_stale(self, *, everything: bool = False, runs: Collection[str] = ()) -> list[str]:
        """Remove boxes whose owner is gone, and those of `runs` (whose owners the caller knows are dead), or
        every airlock box; returns their short ids."""

    def describe(self) -> dict[str, Any]:
        """What run.json records of where the sandbox ran."""

    def environments(self) -> EnvironmentStore:
        """The environment images this backend's sandboxes can start from."""
