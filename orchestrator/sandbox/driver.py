"""What a run does in any sandbox: copy the repo in, install the tools, record the baseline, start the
tool server, and export the change at the end. Written once, against the backend seam.

The repo and the tool code arrive as tar streams on an attached process's stdin (nothing from the host
is mounted), and the patch leaves as the stdout of `baseline.py export`.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from pathlib import Path

import tools
from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import ROOT_USER, Box
from orchestrator.sandbox.channel import ExecResult, Feed, ToolChannel, run_command
from orchestrator.sandbox.repo_tar import CopyStats, write_tar
from orchestrator.sandbox.spec import SandboxSpec

PYTHON = ["python3", "-E", "-s", "-B"]


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

    def copy_in(self, repo: Path, *, exclude: Path | None = None, hidden: Sequence[str] = ()) -> CopyStats:
        """Stream the repo's working tree into the workspace, without `hidden` paths or `exclude` (the run's output folder)."""
        stats: list[CopyStats] = []
        try:
            self.exec(
                ["tar", "-x", "--no-same-owner", "-f", "-", "-C", self.layout.workspace],
                feed_stdin=lambda send: stats.append(write_tar(repo, send, exclude=exclude, hidden=hidden)),
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
        if self.box.has_tools:
            return
        archive = tools_tar()
        self.exec(["tar", "-x", "--no-same-owner", "-f", "-", "-C", self.layout.tools_parent], user=ROOT_USER, feed_stdin=lambda send: send(archive))

    def _baseline(self, command: str) -> list[str]:
        layout = self.layout
        return [*PYTHON, f"{layout.tools_dir}/baseline.py", command, "--root", layout.workspace, "--git-dir", layout.baseline_git_dir]

    def record_baseline(self) -> None:
        self.exec(self._baseline("init"))
        self.ready = True

    def export_patch(self, timeout: float = 120.0) -> tuple[bytes, list[str]]:
        """The change since the baseline as a binary git diff (untrusted bytes), and the paths git could not record."""
        result = self.exec(self._baseline("export"), timeout=timeout)
        unrecorded = [line.removeprefix("unrecorded: ") for line in result.stderr.splitlines() if line.startswith("unrecorded: ")]
        return result.stdout, unrecorded

    def start_tool_server(self) -> ToolChannel:
        cmd = [
            *PYTHON, f"{self.layout.tools_dir}/server.py", "--root", self.layout.workspace,
            "--max-output-bytes", str(self.spec.max_output_bytes),
            "--command-timeout", str(self.spec.command_timeout),
        ]  # fmt: skip
        return ToolChannel(self.box.attach(cmd, user=self.spec.user, stdin=True))

    def remove(self) -> None:
        self.ready = False
        self.box.remove()
