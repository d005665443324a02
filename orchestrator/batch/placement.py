"""Where a batch's tasks run: one or more engines, each with its own limit of tasks at once.

An engine is a Docker engine by address (`--engine ssh://builder-2=8`: at most 8 of the batch's tasks
there; without `=N`, --jobs) or a Kubernetes namespace. A task goes to the engine with the most room left.
Each task's `airlock run` reaches its engine itself (DOCKER_HOST, or --backend kubernetes --namespace).

An engine that stops answering gets no new task. Its running tasks fail as they will (their runs record
why); the batch marks each with ENGINE_LOST in its folder, so that a resumed batch runs it again, and goes
on on the other engines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import UsageError
from orchestrator.sandbox.backends import check_backend

ENGINE_LOST = "engine-lost.txt"  # in a task's folder: its engine went down under it; a resume runs it again
_LIMIT = re.compile(r"^(?P<where>.+?)=(?P<jobs>\d+)$")
_SCHEMES = ("unix://", "tcp://", "ssh://")


@dataclass(eq=False)
class Engine:
    backend: str
    location: str | None  # a Docker engine's address; a Kubernetes namespace (None: the backend's default)
    jobs: int  # most tasks at once here
    down: str | None = None  # why it stopped answering
    suspects: list[Path] = field(default_factory=list)  # folders of its tasks that failed, until it is checked

    @property
    def label(self) -> str:
        return self.location or f"the default {self.backend} engine"

    def env(self) -> dict[str, str]:
        """The environment a task's `airlock run` needs to reach this engine."""
        return {"DOCKER_HOST": self.location} if self.backend == "docker" and self.location else {}

    def run_options(self) -> list[str]:
        options = ["--backend", self.backend]
        if self.backend == "kubernetes" and self.location:
            options += ["--namespace", self.location]
        return options


def parse_engines(backend: str, engines: list[str], namespace: str | None, jobs: int) -> list[Engine]:
    """The engines of `--engine` (repeatable, Docker only) or `--namespace` (Kubernetes), each with its limit."""
    check_backend(backend)
    if backend != "docker" and engines:
        raise UsageError("--engine names Docker engines; with --backend kubernetes use --namespace")
    if backend != "kubernetes" and namespace is not None:
        raise UsageError("--namespace is for --backend kubernetes")
    if backend != "docker":
        return [Engine(backend, namespace, jobs)]
    if not engines:
        return [Engine("docker", None, jobs)]  # DOCKER_HOST's, as for `airlock run`
    parsed: list[Engine] = []
    for text in engines:
        match = _LIMIT.match(text)
        where, limit = (match["where"], int(match["jobs"])) if match else (text, jobs)
        if not where.startswith(_SCHEMES):
            raise UsageError(f"--engine {text!r}: give a Docker engine address (unix://, tcp:// or ssh://), optionally with =N tasks at once")
        if limit < 1:
            raise UsageError(f"--engine {text!r}: at least 1 task at once")
        if any(engine.location == where for engine in parsed):
            raise UsageError(f"--engine {where} is given twice")
        parsed.append(Engine("docker", where, limit))
    return parsed


def room(engine: Engine, busy: list[Engine]) -> int:
    """How many more tasks `engine` takes, with `busy` the engines of the tasks active now (one entry each).
    None while a task of it has failed and it is being asked whether it still answers."""
    if engine.down or engine.suspects:
        return 0
    return max(engine.jobs - sum(other is engine for other in busy), 0)


def pick(engines: list[Engine], busy: list[Engine]) -> Engine | None:
    """The engine with the most room (the first of equals), or None when every one is full or down."""
    best = max(engines, key=lambda engine: room(engine, busy))
    return best if room(best, busy) else None


def mark_lost(out: Path, engine: Engine) -> None:
    (out / ENGINE_LOST).write_text(f"{engine.label}: {engine.down}\n", encoding="utf-8")


def was_lost(out: Path) -> bool:
    return (out / ENGINE_LOST).exists()
