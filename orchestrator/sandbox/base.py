"""The sandbox backend seam: what the rest of airlock asks of any place that can run a sandbox.

A `Backend` starts hardened boxes from a `SandboxSpec`; a `Box` runs processes attached as a `Stream`.
Copy-in, the tool install, the baseline, the patch export and the tool server are written once, against
these (see orchestrator.sandbox.driver); Docker is one implementation (orchestrator.sandbox.docker_backend).
Everything a stream returns is untrusted data.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from orchestrator.sandbox.spec import Layout, SandboxSpec

ROOT_USER = "0:0"
# How `Box.failure()` begins when the box was killed for memory, so the runner can say what to raise.
OUT_OF_MEMORY = "the sandbox ran out of memory"


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

    def attach(self, cmd: list[str], *, user: str, stdin: bool) -> Stream:
        """Start `cmd` in the box as `user` ("uid:gid"); raises SandboxError if it cannot be started."""

    def failure(self) -> str | None:
        """Why the box stopped working, when that can be found out (e.g. it was killed for memory)."""

    def remove(self) -> None:
        """Remove the box and everything in it; raises SandboxError if that fails."""


class Backend(Protocol):
    name: str

    def check(self, spec: SandboxSpec) -> None:
        """Before anything is made: UsageError for what makes `start` fail for certain (an unknown image)."""

    def start(self, spec: SandboxSpec) -> Box:
        """A running, hardened box made from `spec`; raises SandboxError (nothing is left behind)."""

    def remove_stale(self, *, everything: bool = False, runs: Collection[str] = ()) -> list[str]:
        """Remove boxes whose owner is gone, and those of `runs` (whose owners the caller knows are dead), or
        every airlock box; returns their short ids."""

    def describe(self) -> dict[str, Any]:
        """What run.json records of where the sandbox ran."""
