"""The hardened container a run works in, and everything the host does to it.

The container has no network, no capabilities, a read-only root, a non-root user, limits on CPU,
memory (no swap) and processes, and size-limited tmpfs mounts for everything writable: overlay2 on
ext4 cannot bound a container's disk, but a tmpfs can, and its pages count against the memory limit.
Nothing from the host is mounted and no host environment goes in. The repo arrives as a tar stream,
the tool code likewise, each through an attached exec (tmpfs mounts are invisible to `docker cp`).
"""

from __future__ import annotations

import io
import os
import socket
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import docker
import docker.errors
from docker.models.containers import Container

import tools
from orchestrator.channel import ExecResult, ToolChannel, run_exec
from orchestrator.errors import SandboxError
from orchestrator.snapshot import SnapshotStats, write_tar

if TYPE_CHECKING:
    from orchestrator.policy import Policy

LABEL = "airlock.sandbox"
WORKSPACE = "/workspace"
TOOLS_DIR = "/opt/airlock/tools"
BASELINE_GIT_DIR = "/var/lib/airlock/baseline.git"
PYTHON = ["python3", "-E", "-s", "-B"]
# Commands are capped in the sandbox a little below the policy's max_output_chars, leaving room for the
# dropped-bytes marker and the exit-code footer, so the host's own cap never cuts the result a second time.
OUTPUT_MARKER_ROOM = 200

# The only environment inside: nothing from the host, never the API key, nothing that waits for input.
SANDBOX_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/home/airlock",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "CI": "true",
    "PAGER": "cat",
    "GIT_PAGER": "cat",
    "GIT_EDITOR": "true",
    "GIT_TERMINAL_PROMPT": "0",
    "DEBIAN_FRONTEND": "noninteractive",
    "PIP_NO_INPUT": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}


@dataclass(frozen=True)
class SandboxSpec:
    image: str
    run_id: str
    cpus: float = 2.0
    memory: int = 4 * 1024**3
    disk: int = 2 * 1024**3
    pids: int = 512
    command_timeout: float = 120.0
    max_output_bytes: int = 30_000
    runtime: str = "runc"
    user: str = "1000:1000"

    @classmethod
    def from_policy(cls, policy: Policy, run_id: str) -> SandboxSpec:
        limits = policy.limits
        return cls(
            image=policy.sandbox.image, run_id=run_id, cpus=limits.cpus, memory=limits.memory, disk=limits.disk,
            pids=limits.pids, command_timeout=limits.command_timeout, runtime=policy.sandbox.runtime, user=policy.sandbox.user,
            max_output_bytes=limits.max_output_chars - OUTPUT_MARKER_ROOM,
        )  # fmt: skip

    def record(self) -> dict[str, object]:
        return {
            "image": self.image,
            "cpus": self.cpus,
            "memory": self.memory,
            "disk": self.disk,
            "pids_limit": self.pids,
            "network": "none",
            "runtime": self.runtime,
            "user": self.user,
        }


def _tmpfs(size: int, *, owner: str | None = None, mode: str = "0755", exec_: bool = True) -> str:
    """Mount options of a size-limited tmpfs (owned by `owner`, "uid:gid", when given)."""
    opts = ["rw", "nosuid", "nodev", "exec" if exec_ else "noexec", f"size={size}", f"mode={mode}"]
    if owner:
        uid, gid = owner.split(":")
        opts += [f"uid={uid}", f"gid={gid}"]
    return ",".join(opts)


def owner_labels(run_id: str) -> dict[str, str]:
    """Labels that identify a sandbox and the process that owns it, so leftovers can be found."""
    return {LABEL: "1", "airlock.run-id": run_id, "airlock.host": socket.gethostname(), "airlock.pid": str(os.getpid())}


def _tools_tar() -> bytes:
    """The tool server's source files, as a tar archive (standard library only, no build step)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(Path(tools.__file__).parent.glob("*.py")):
            info = tarfile.TarInfo(f"tools/{path.name}")
            data = path.read_bytes()
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Sandbox:
    """One container for one run. Use as a context manager: the container is removed on every path."""

    def __init__(self, client: docker.DockerClient, spec: SandboxSpec) -> None:
        self.client = client
        self.spec = spec
        self.container: Container | None = None
        self.ready = False  # the baseline is recorded, so a patch can be exported

    def start(self) -> None:
        if self.spec.runtime != "runc" and self.spec.runtime not in self.client.info().get("Runtimes", {}):
            raise SandboxError(f"the container runtime {self.spec.runtime!r} is not registered with the Docker daemon (see `airlock doctor`)")
        try:
            self.container = self.client.containers.create(**self.create_kwargs())
            self.container.start()
        except docker.errors.ImageNotFound:
            self.remove()
            raise SandboxError(f"sandbox image {self.spec.image!r} not found; build it with `airlock image build`") from None
        except docker.errors.DockerException as exc:
            self.remove()
            raise SandboxError(f"could not start the sandbox: {_docker_message(exc)}") from None

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def create_kwargs(self) -> dict[str, object]:
        spec = self.spec
        return dict(
            image=spec.image,
            command=["sleep", "infinity"],
            user=spec.user,
            working_dir=WORKSPACE,
            runtime=spec.runtime,
            environment=SANDBOX_ENV,
            hostname="sandbox",
            labels=owner_labels(spec.run_id),
            network_mode="none",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            read_only=True,
            tmpfs={
                WORKSPACE: _tmpfs(spec.disk, owner=spec.user),
                "/var/lib/airlock": _tmpfs(spec.disk, owner=spec.user, exec_=False),
                "/tmp": _tmpfs(512 * 1024**2, mode="1777"),
                "/home/airlock": _tmpfs(256 * 1024**2, owner=spec.user),
                # Root-owned, so the agent cannot swap the tool code under the server.
                "/opt/airlock": _tmpfs(16 * 1024**2, exec_=False),
            },
            init=True,
            pids_limit=spec.pids,
            mem_limit=spec.memory,
            memswap_limit=spec.memory,  # equal: no swap
            nano_cpus=int(spec.cpus * 1e9),
            use_config_proxy=False,
            stdin_open=False,
            tty=False,
        )

    @property
    def id(self) -> str:
        if self.container is None:
            raise SandboxError("the sandbox is not running")
        return self.container.id

    def _exec(
        self, cmd: list[str], *, user: str | None = None, feed_stdin: Callable[[Callable[[bytes], None]], object] | None = None, timeout: float = 300.0
    ) -> ExecResult:
        result = run_exec(self.client.api, self.id, cmd, user=user or self.spec.user, feed_stdin=feed_stdin, timeout=timeout)
        if result.exit_code != 0:
            detail = result.stderr.strip().splitlines()
            what = " ".join(arg for arg in cmd if not arg.startswith("-"))[:100]
            raise SandboxError(f"`{what}` failed in the sandbox" + (f": {detail[-1]}" if detail else ""))
        return result

    def copy_in(self, repo: Path, *, exclude: Path | None = None, hidden: Sequence[str] = ()) -> SnapshotStats:
        """Stream the repo's working tree into /workspace, without `hidden` paths or `exclude` (the run's output folder)."""
        stats: list[SnapshotStats] = []
        try:
            self._exec(
                ["tar", "-x", "--no-same-owner", "-f", "-", "-C", WORKSPACE],
                feed_stdin=lambda send: stats.append(write_tar(repo, send, exclude=exclude, hidden=list(hidden))),
            )
        except SandboxError as exc:
            if stats and stats[0].bytes >= self.spec.disk * 0.9:
                raise SandboxError(
                    f"the repo ({stats[0].bytes / 1024**2:.0f} MiB) does not fit in the sandbox workspace "
                    f"({self.spec.disk / 1024**2:.0f} MiB): raise --disk (and --memory, which it counts toward)"
                ) from exc
            raise
        return stats[0]

    def install_tools(self) -> None:
        archive = _tools_tar()
        self._exec(["tar", "-x", "--no-same-owner", "-f", "-", "-C", "/opt/airlock"], user="0:0", feed_stdin=lambda send: send(archive))

    def record_baseline(self) -> None:
        self._exec([*PYTHON, f"{TOOLS_DIR}/baseline.py", "init", "--root", WORKSPACE, "--git-dir", BASELINE_GIT_DIR])
        self.ready = True

    def export_patch(self, timeout: float = 120.0) -> tuple[bytes, list[str]]:
        """The change since the baseline as a binary git diff (untrusted bytes), and the paths git could not record."""
        cmd = [*PYTHON, f"{TOOLS_DIR}/baseline.py", "export", "--root", WORKSPACE, "--git-dir", BASELINE_GIT_DIR]
        result = self._exec(cmd, timeout=timeout)
        unrecorded = [line.removeprefix("unrecorded: ") for line in result.stderr.splitlines() if line.startswith("unrecorded: ")]
        return result.stdout, unrecorded

    def start_tool_server(self) -> ToolChannel:
        cmd = [
            *PYTHON, f"{TOOLS_DIR}/server.py", "--root", WORKSPACE,
            "--max-output-bytes", str(self.spec.max_output_bytes),
            "--command-timeout", str(self.spec.command_timeout),
        ]  # fmt: skip
        return ToolChannel(self.client.api, self.id, cmd, user=self.spec.user)

    def remove(self) -> None:
        """Remove this run's container, found by its run label too (a create cut short by Ctrl-C may have no handle)."""
        try:
            found = self.client.containers.list(all=True, filters={"label": f"airlock.run-id={self.spec.run_id}"}, ignore_removed=True)
            for container in {c.id: c for c in [*found, *([self.container] if self.container else [])]}.values():
                _remove_container(container)
        except docker.errors.DockerException as exc:
            raise SandboxError(f"could not remove the sandbox of run {self.spec.run_id}: {_docker_message(exc)}") from None
        self.container = None
        self.ready = False


def remove_stale(client: docker.DockerClient, *, everything: bool = False) -> list[str]:
    """Remove sandboxes whose owning airlock process on this host is gone (or all of them)."""
    host = socket.gethostname()
    removed = []
    for container in client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True):
        if not everything and (container.labels.get("airlock.host") != host or owner_alive(container.labels)):
            continue
        if _remove_container(container):
            removed.append(container.short_id)
    return removed


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


def _docker_message(exc: docker.errors.DockerException) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)


def owner_alive(labels: dict[str, str]) -> bool:
    """Whether the airlock process that created a sandbox (per its labels) is still running on this host."""
    pid = labels.get("airlock.pid", "")
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process its parent has not reaped yet still answers signal 0, but it is dead
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
