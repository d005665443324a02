"""Starting a batch's `airlock run` processes cheaply, so that one host can drive many at once.

Each task is still its own process (one that crashes, hangs or is killed takes no other down), but it is
forked from a launcher that imported airlock, both model SDKs and both sandbox clients once (the standard
library's forkserver): a run starts in milliseconds instead of spending about two seconds of CPU on imports,
and the imported modules' pages (about 100 MB) are shared by every run instead of copied into each. The
forked run is exactly `airlock run ARGS`: its own environment, its output in its log, the batch's process
group (a Ctrl-C at the terminal reaches it), its exit status. AIRLOCK_BATCH_FORKSERVER=0 starts each run as
a new interpreter instead.
"""

from __future__ import annotations

import gc
import importlib
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Protocol

FORKSERVER_ENV = "AIRLOCK_BATCH_FORKSERVER"
ENTRY = "orchestrator.cli:main"  # the program a run is, `airlock`, named as the command line names it
# What every run imports; the launcher imports it once. Missing optional packages are skipped.
PRELOAD = (
    "orchestrator.cli", "orchestrator.run.runner", "orchestrator.providers.anthropic_api", "orchestrator.providers.openai_api",
    "orchestrator.sandbox.docker_backend", "orchestrator.sandbox.kubernetes_backend", "anthropic", "openai",
)  # fmt: skip


class RunProcess(Protocol):
    """What the scheduler needs of a run's process (subprocess.Popen has it all)."""

    pid: int

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int | None: ...


def launch(args: list[str], env: dict[str, str], log: Path) -> RunProcess:
    """`airlock ARGS` (`run ...`, `resume ...`) with `env`, its stdout and stderr appended to `log`, stdin closed."""
    if os.environ.get(FORKSERVER_ENV, "1") == "0":
        with open(log, "ab") as sink:
            return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env)
    return ForkedRun(args, env, log)


def preload() -> None:
    """Run in the launcher before it forks anything (orchestrator.batch.preload): import what runs need, then
    keep the collector off those objects (gc.freeze), so that collecting in one run does not copy shared pages."""
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    gc.freeze()


class ForkedRun:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["orchestrator.batch.preload"])
        self._process = context.Process(target=become_cli, args=(args, env, str(log)), name="airlock-run", daemon=False)
        self._process.start()
        assert self._process.pid is not None
        self.pid: int = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int | None:
        self._process.join(timeout)
        return self._process.exitcode


def become_cli(args: list[str], env: dict[str, str], stdout: str, stderr: str | None = None, cwd: str | None = None) -> None:
    """In a forked process: become `airlock ARGS` as a new interpreter started by a shell would be, with `env`
    and nothing of the launcher's, stdin closed, stdout appended to one file and stderr to another (by default
    the same), in `cwd` if given."""
    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for target, path in ((1, stdout), (2, stderr or stdout)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, target)
        os.close(fd)
    sys.argv = ["airlock", *args]
    module, _, function = ENTRY.partition(":")
    getattr(importlib.import_module(module), function)()
