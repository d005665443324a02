"""A sandbox backend for tests only: each box is a temporary folder, each attached process a local
subprocess. It isolates nothing; it lets the agent loop, the runner and the driver be tested end to end
without a Docker engine. Never offered on the command line (it is not in the backend registry)."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import ImageBuild
from orchestrator.sandbox.spec import SANDBOX_ENV, Layout, SandboxSpec

STDERR_TAIL_BYTES = 4096


class LocalStream:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        self.stderr_tail = b""
        self._stderr = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr.start()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for chunk in iter(lambda: os.read(self.proc.stderr.fileno(), 65536), b""):  # type: ignore[union-attr]
            self.stderr_tail = (self.stderr_tail + chunk)[-STDERR_TAIL_BYTES:]

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def next_stdout(self, deadline: float | None) -> bytes | None:
        assert self.proc.stdout is not None
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            raise TimeoutError
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not readable:
            raise TimeoutError
        return os.read(self.proc.stdout.fileno(), 65536) or None

    def exit_code(self) -> int | None:
        code = self.proc.wait(timeout=30)
        self._stderr.join(timeout=5)
        return code

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()


def _link_runtime(runtime: str) -> None:
    """The tool runtime's layout (spec.Layout.program, .python) as links to this machine's programs."""
    os.makedirs(f"{runtime}/bin")
    os.makedirs(f"{runtime}/python/bin")
    for name in ("tar", "sh", "cp", "cat", "git"):
        found = shutil.which(name)
        if found is None:
            raise SandboxError(f"the local test backend needs `{name}` on PATH")
        os.symlink(found, f"{runtime}/bin/{name}")
    os.symlink(sys.executable, f"{runtime}/python/bin/python3")


class LocalBox:
    has_tools = False

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        self.root = tempfile.mkdtemp(prefix=f"airlock-local-{spec.run_id}-")
        self.id = os.path.basename(self.root)
        self.layout = Layout(workspace=f"{self.root}/workspace", tools_parent=f"{self.root}/opt", state=f"{self.root}/state", runtime=f"{self.root}/runtime")
        for folder in (self.layout.workspace, self.layout.tools_parent, self.layout.state, f"{self.root}/home"):
            os.makedirs(folder)
        _link_runtime(self.layout.runtime)
        self.processes: list[subprocess.Popen[bytes]] = []

    def attach(self, cmd: list[str], *, user: str, stdin: bool) -> LocalStream:
        env = {**SANDBOX_ENV, "HOME": f"{self.root}/home", "PATH": os.environ["PATH"]}
        try:
            proc = subprocess.Popen(
                cmd, cwd=self.layout.workspace, env=env, start_new_session=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            raise SandboxError(f"could not run `{cmd[0]}` in the sandbox: {exc}") from None
        self.processes.append(proc)
        return LocalStream(proc)

    def failure(self) -> str | None:
        return None if os.path.isdir(self.root) else "the sandbox folder was removed"

    def end_processes(self, user: str) -> None:
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def egress_log(self) -> str:
        return ""

    def remove(self) -> None:
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


class LocalBackend:
    name = "local-test"
    ready_before_model = False

    def __init__(self) -> None:
        self.boxes: list[LocalBox] = []

    def prepare(self, spec: SandboxSpec, log: Callable[[str], None]) -> dict[str, Any]:
        return {}

    def build_image(self, spec: SandboxSpec, build: ImageBuild) -> tuple[str, bool]:
        raise SandboxError("the local test backend builds no image")

    def with_tool_runtime(self, spec: SandboxSpec, log: Callable[[str], None]) -> tuple[SandboxSpec, dict[str, Any]]:
        return spec, {}  # each box links the host's programs as its runtime (see LocalBox)

    def check(self, spec: SandboxSpec) -> None:
        pass  # any "image" will do: a box is a temporary folder

    def start(self, spec: SandboxSpec) -> LocalBox:
        box = LocalBox(spec)
        self.boxes.append(box)
        return box

    def remove_stale(self, *, everything: bool = False, runs: Collection[str] = ()) -> list[str]:
        return []

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}

    def environments(self) -> Any:
        raise SandboxError("the local test backend keeps no environments")
