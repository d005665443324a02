"""What a run does in any sandbox: copy the repo in, install the tools, record the baseline, start the
tool server, and export the change at the end. Written once, against the backend seam.

The repo and the tool code arrive as tar streams on an attached process's stdin (nothing from the host
is mounted), and the patch leaves as the stdout of `baseline.py export`. `start` does the first four in
two processes: the tools (as root), then one that unpacks the repo, records the baseline and becomes the
tool server, fed while the host is still reading the repo.
"""

from __future__ import annotations

import io
import shlex
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import tools
from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import ROOT_USER, Box, Stream
from orchestrator.sandbox.channel import ExecResult, Feed, ToolChannel, run_command
from orchestrator.sandbox.repo_tar import CopyStats, Extra, Progress, RepoScan, write_tar
from orchestrator.sandbox.spec import SandboxSpec

PYTHON = ["python3", "-E", "-s", "-B"]
# Unpacking a big repo and recording its baseline can take minutes on a slow disk or a busy machine.
PREPARE_TIMEOUT_S = 600.0
UNTAR = ["tar", "-x", "--no-same-owner", "-f", "-", "-C", "/"]  # member names carry their absolute folder


def tools_tar() -> bytes:
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
    """One box prepared for one run."""

    def __init__(self, box: Box, spec: SandboxSpec) -> None:
        self.box = box
        self.spec = spec
        self.layout = box.layout
        self.ready = False  # the baseline is recorded, so a patch can be exported

    def exec(self, cmd: list[str], *, user: str | None = None, feed_stdin: Feed | None = None, timeout: float = 300.0) -> ExecResult:
        """Run one command to its end; SandboxError if it fails, with the last line of its stderr."""
        what = " ".join(arg for arg in cmd if not arg.startswith("-"))[:100]
        stream = self.box.attach(cmd, user=user or self.spec.user, stdin=feed_stdin is not None)
        result = run_command(stream, what, feed_stdin=feed_stdin, timeout=timeout)
        if result.exit_code != 0:
            detail = result.stderr.strip().splitlines()
            raise SandboxError(f"`{what}` failed in the sandbox" + (f": {detail[-1]}" if detail else ""))
        return result

    def copy_in(self, scan: RepoScan, *, extra: Extra | None = None, progress: Progress | None = None) -> CopyStats:
        """Stream the scanned working tree into the workspace (and `extra` where it says), nothing else."""
        stats: list[CopyStats] = []
        self.exec(UNTAR, feed_stdin=lambda send: stats.append(self._repo_tar(scan, send, extra, progress)), timeout=PREPARE_TIMEOUT_S)
        return stats[0]

    def install_tools(self) -> None:
        archive = tools_tar()
        self.exec(["tar", "-x", "--no-same-owner", "-f", "-", "-C", self.layout.tools_parent], user=ROOT_USER, feed_stdin=lambda send: send(archive))

    def record_baseline(self, objects_from: str | None = None) -> None:
        self.exec(self._baseline("init", objects_from))
        self.ready = True

    def start_tool_server(self) -> ToolChannel:
        return ToolChannel(self.box.attach(self._server(), user=self.spec.user, stdin=True))

    def start(
        self, scan: RepoScan, *, extra: Extra | None = None, objects_from: str | None = None, progress: Progress | None = None,
        sent: Callable[[CopyStats], None] | None = None,
    ) -> tuple[CopyStats, ToolChannel]:  # fmt: skip
        """install_tools, then copy_in, record_baseline and start_tool_server as one process: the shell
        unpacks the repo, gives a shipped `.git` its index, records the baseline and becomes the server.
        `sent` is told once the whole archive is on its way."""
        self.install_tools()
        workspace, git_dir = self.layout.workspace, f"{self.layout.workspace}/.git"
        steps = [shlex.join(UNTAR)]
        if extra and f"{git_dir}/HEAD" in extra:
            steps.append(shlex.join(["git", f"--git-dir={git_dir}", f"--work-tree={workspace}", "read-tree", "HEAD"]))
        steps += [shlex.join(self._baseline("init", objects_from)) + " >&2", "exec " + shlex.join(self._server())]
        stream = self.box.attach(["sh", "-c", " && ".join(steps)], user=self.spec.user, stdin=True)
        try:
            stats = self._repo_tar(scan, stream.send, extra, progress)
        except OSError as exc:  # the process ended early (no room, killed): its own words say more than ours
            raise SandboxError(f"could not copy the repo in: {_last_words(stream) or exc}") from None
        if sent is not None:
            sent(stats)
        channel = ToolChannel(stream, start_timeout=PREPARE_TIMEOUT_S)
        self.ready = True
        return stats, channel

    def _repo_tar(self, scan: RepoScan, send: Callable[[bytes], None], extra: Extra | None, progress: Progress | None) -> CopyStats:
        return write_tar(scan, send, into=self.layout.workspace, extra=extra, progress=progress)

    def _baseline(self, command: str, objects_from: str | None = None) -> list[str]:
        layout = self.layout
        borrow = ["--objects-from", objects_from] if objects_from else []
        return [*PYTHON, f"{layout.tools_dir}/baseline.py", command, "--root", layout.workspace, "--git-dir", layout.baseline_git_dir, *borrow]

    def _server(self) -> list[str]:
        return [
            *PYTHON, f"{self.layout.tools_dir}/server.py", "--root", self.layout.workspace,
            "--max-output-bytes", str(self.spec.max_output_bytes),
            "--command-timeout", str(self.spec.command_timeout),
        ]  # fmt: skip

    def export_patch(self, timeout: float = 120.0) -> tuple[bytes, list[str]]:
        """The change since the baseline as a binary git diff (untrusted bytes), and the paths git could not record."""
        result = self.exec(self._baseline("export"), timeout=timeout)
        unrecorded = [line.removeprefix("unrecorded: ") for line in result.stderr.splitlines() if line.startswith("unrecorded: ")]
        return result.stdout, unrecorded

    def remove(self) -> None:
        self.ready = False
        self.box.remove()


def _last_words(stream: Stream, within: float = 5.0) -> str:
    """The last line the process wrote on stderr, once it has ended (bounded)."""
    deadline = time.monotonic() + within
    try:
        while stream.next_stdout(deadline) is not None:
            pass
    except (OSError, TimeoutError):
        pass
    lines = stream.stderr_tail.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else ""
