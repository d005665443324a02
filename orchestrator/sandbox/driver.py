"""What a run does in any sandbox: copy the repo in, install the tools, record the baseline, start the
tool server, and export the change at the end. Written once, against the backend seam.

The repo and the tool code arrive as tar streams on an attached process's stdin (nothing from the host
is mounted), and the patch leaves as the stdout of `baseline.py export`.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import tools
from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import ROOT_USER, Box
from orchestrator.sandbox.channel import ExecResult, Feed, ToolChannel, run_command
from orchestrator.sandbox.env_archive import PackStats, StreamFile, copy_checked, in_repo
from orchestrator.sandbox.repo_tar import CopyStats, write_tar
from orchestrator.sandbox.spec import ENV_EXCLUDE, ENV_ROOT, ENV_WORKSPACE, SandboxSpec

# -S: no site-packages, so a virtualenv first on PATH (a setup phase's) cannot load code into airlock's tools.
PYTHON = ["python3", "-E", "-s", "-S", "-B"]
DOES_NOT_APPLY = "baseline apply: the patch does not apply: "  # baseline.py's words for a patch at fault


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

    def _baseline(self, command: str, git_dir: str | None = None) -> list[str]:
        layout = self.layout
        cmd = [*PYTHON, f"{layout.tools_dir}/baseline.py", command, "--root", layout.workspace, "--git-dir", git_dir or layout.baseline_git_dir]
        return cmd + (["--exclude-from", ENV_EXCLUDE] if self.spec.environment else [])

    def restore_environment_files(self) -> None:
        """Copy what the setup phase created in the repo (node_modules, egg-info, ...) from the environment
        image back into the workspace; the baseline leaves those files out, so no patch carries them."""
        if self.spec.environment:
            copy = f"if [ -d {ENV_WORKSPACE} ]; then cp -a --no-preserve=ownership {ENV_WORKSPACE}/. {self.layout.workspace}/; fi"
            self.exec(["sh", "-c", copy])

    def _environment_tool(self, command: str) -> list[str]:
        layout = self.layout
        return [*PYTHON, f"{layout.tools_dir}/environment.py", command, "--root", layout.workspace, "--state", layout.state, "--env", ENV_ROOT]

    def run_setup(self, commands: list[str], secrets: dict[str, str], output: Callable[[bytes], None], deadline: float) -> int | None:
        """Run the setup commands in the workspace, their output streamed to `output`; their exit status (the
        first failing one's), or raises TimeoutError once `deadline` (time.monotonic()) passes."""
        stream = self.box.attach(self._environment_tool("run"), user=self.spec.user, stdin=True)
        try:
            stream.send(json.dumps({"commands": commands, "secrets": secrets}).encode())
            stream.close_stdin()
            while (chunk := stream.next_stdout(deadline)) is not None:
                output(chunk)
            return stream.exit_code()
        except TimeoutError:
            raise
        except OSError as exc:  # TimeoutError is one too: the clause above keeps it
            raise SandboxError(f"lost the connection to the setup sandbox: {exc}") from None
        finally:
            stream.close()

    def setup_changes(self) -> dict[str, object]:
        """What the setup commands created, modified and deleted in the repo (untrusted: the caller checks types)."""
        try:
            found = json.loads(self.exec(self._environment_tool("changes"), timeout=120).stdout)
        except ValueError:
            raise SandboxError("the setup sandbox sent changes that are not JSON") from None
        return found if isinstance(found, dict) else {}

    def pack_environment(self, dest: Path, secrets: list[str], timeout: float = 600.0, repo: Path | None = None) -> PackStats:
        """The environment folder and the files setup created in the repo (never one `repo` has), checked, into the tar file `dest`."""
        stream = self.box.attach(self._environment_tool("pack"), user=self.spec.user, stdin=False)
        try:
            stats = copy_checked(
                StreamFile(stream, time.monotonic() + timeout), dest, secrets, limit=self.spec.env_disk + self.spec.disk,
                in_repo=(lambda path: in_repo(repo, path)) if repo is not None else lambda _path: False,
            )  # fmt: skip
        except (tarfile.TarError, OSError) as exc:
            detail = stream.stderr_tail.decode("utf-8", "replace").strip().splitlines()
            raise SandboxError(f"packing the environment failed: {detail[-1] if detail else exc}") from None
        finally:
            stream.close()
        return stats

    def record_baseline(self) -> None:
        self.exec(self._baseline("init"))
        self.ready = True

    def export_patch(self, timeout: float = 120.0) -> tuple[bytes, list[str]]:
        """The change since the baseline as a binary git diff (untrusted bytes), and the paths git could not record.

        The agent's time is over: whatever of its processes still runs (the tool server's subreaper kills
        them after each call, but the agent may have killed the server) dies first, so nothing it left
        can change the tree, or the export's output, while the patch is made."""
        self.box.end_processes(self.spec.user)
        result = self.exec(self._baseline("export"), timeout=timeout)
        unrecorded = [line.removeprefix("unrecorded: ") for line in result.stderr.splitlines() if line.startswith("unrecorded: ")]
        return result.stdout, unrecorded

    def apply_patch(self, patch: bytes, timeout: float = 120.0) -> str | None:
        """Apply a patch to the workspace as `airlock apply` would; None if it applied, else why not."""
        if not patch:
            return None
        cmd = self._baseline("apply", self.layout.apply_git_dir)
        result = run_command(self.box.attach(cmd, user=self.spec.user, stdin=True), "baseline.py apply", feed_stdin=lambda send: send(patch), timeout=timeout)
        if result.exit_code == 0:
            return None
        detail = (result.stderr.strip().splitlines() or [""])[-1]
        if not detail.startswith(DOES_NOT_APPLY):
            raise SandboxError(f"could not apply the patch in the sandbox: {detail or f'exit code {result.exit_code}'}")
        return detail.removeprefix(DOES_NOT_APPLY)

    def start_tool_server(self) -> ToolChannel:
        cmd = [
            *PYTHON, f"{self.layout.tools_dir}/server.py", "--root", self.layout.workspace,
            "--max-output-bytes", str(self.spec.max_output_bytes),
            "--command-timeout", str(self.spec.command_timeout),
            *(["--max-processes", str(self.spec.pids)] if self.spec.own_kernel else []),
        ]  # fmt: skip
        return ToolChannel(self.box.attach(cmd, user=self.spec.user, stdin=True))

    def remove(self) -> None:
        self.ready = False
        self.box.remove()
