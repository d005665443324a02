"""What a run does in any sandbox: copy the repo in, install the tools, record the baseline, start the
tool server, and export the change at the end. Written once, against the backend seam.

The repo and the tool code arrive as tar streams on an attached process's stdin (nothing from the host
is mounted), and the patch leaves as the stdout of `baseline.py export`. `start` does the first four in
two processes: the tools (as root), then one that unpacks the repo, records the baseline and becomes the
tool server, fed while the host is still reading the repo.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import tools
from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import ROOT_USER, Box, Stream
from orchestrator.sandbox.channel import ExecResult, Feed, ToolChannel, run_command
from orchestrator.sandbox.env_archive import PackStats, StreamFile, copy_checked, in_repo
from orchestrator.sandbox.repo_tar import CopyStats, Extra, Progress, RepoScan, write_tar
from orchestrator.sandbox.spec import ENV_EXCLUDE, ENV_ROOT, ENV_WORKSPACE, PROJECT_MARKER, PROJECT_PREFIX, VENV, SandboxSpec

# How the tool runtime's Python runs the tools: -S, no site-packages, so nothing of the project's loads into them.
PYTHON_FLAGS = ["-E", "-s", "-S", "-B"]
DOES_NOT_APPLY = "baseline apply: the patch does not apply: "  # baseline.py's words for a patch at fault
# Unpacking a big repo and recording its baseline can take minutes on a slow disk or a busy machine.
PREPARE_TIMEOUT_S = 600.0
EDITABLE_FAILED = "airlock: the project could not be installed editable"  # said on stderr by _restore_environment
UNTAR = ["-x", "--no-same-owner", "-f", "-", "-C", "/"]  # tar's: member names carry their absolute folder


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
        self.editable_failed = False  # the project's offline editable install failed at the start

    def exec(self, cmd: list[str], *, user: str | None = None, feed_stdin: Feed | None = None, timeout: float = 300.0) -> ExecResult:
        """Run one command to its end; SandboxError if it fails, with the last line of its stderr."""
        what = " ".join([os.path.basename(cmd[0]), *(arg for arg in cmd[1:] if not arg.startswith("-"))])[:100]  # the program by its name
        stream = self.box.attach(cmd, user=user or self.spec.user, stdin=feed_stdin is not None)
        result = run_command(stream, what, feed_stdin=feed_stdin, timeout=timeout)
        if result.exit_code != 0:
            detail = result.stderr.strip().splitlines()
            raise SandboxError(f"`{what}` failed in the sandbox" + (f": {detail[-1]}" if detail else ""))
        return result

    def copy_in(self, scan: RepoScan, *, extra: Extra | None = None, progress: Progress | None = None) -> CopyStats:
        """Stream the scanned working tree into the workspace (and `extra` where it says), nothing else."""
        stats: list[CopyStats] = []
        self.exec(
            [self.layout.program("tar"), *UNTAR], feed_stdin=lambda send: stats.append(self._repo_tar(scan, send, extra, progress)), timeout=PREPARE_TIMEOUT_S
        )
        return stats[0]

    def copy_files(self, files: dict[str, bytes]) -> None:
        """Only these files (by repo-relative path) into the workspace, with exactly these bytes."""
        workspace = self.layout.workspace
        self.copy_in(RepoScan(Path(workspace), [], CopyStats()), extra={f"{workspace}/{rel}": data for rel, data in files.items()})

    def install_tools(self) -> None:
        if self.box.has_tools:
            return
        archive = tools_tar()
        self.exec(
            [self.layout.program("tar"), "-x", "--no-same-owner", "-f", "-", "-C", self.layout.tools_parent],
            user=ROOT_USER,
            feed_stdin=lambda send: send(archive),
        )

    def restore_environment_files(self) -> None:
        """Copy what the setup phase created in the repo (node_modules, egg-info, ...) from the environment
        image back into the workspace; the baseline leaves those files out, so no patch carries them."""
        if self.spec.environment:
            self.exec([self.layout.program("sh"), "-c", self._restore_environment()])

    def write_file(self, path: str, data: bytes) -> None:
        """`data` into the file `path` inside the sandbox, as the sandbox user."""
        self.exec([self.layout.program("sh"), "-c", f'exec {self.layout.program("cat")} > "$0"', path], feed_stdin=lambda send: send(data))

    def _restore_environment(self) -> str:
        """Copy the setup's files back, then install the project editable when the environment says so (offline:
        its dependencies and build backend are in the environment; a failure is said, and the sandbox goes on)."""
        workspace = self.layout.workspace
        install = shlex.join([f"{VENV}/bin/python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "--prefix", PROJECT_PREFIX, "-e", "."])  # fmt: skip
        return (
            f"if [ -d {ENV_WORKSPACE} ]; then {self.layout.program('cp')} -a --no-preserve=ownership {ENV_WORKSPACE}/. {workspace}/; fi; "
            f"if [ -f {PROJECT_MARKER} ]; then (cd {workspace} && {install}) >&2 || echo {shlex.quote(EDITABLE_FAILED)} >&2; fi"
        )

    def _environment_tool(self, command: str) -> list[str]:
        layout = self.layout
        return [
            layout.python,
            *PYTHON_FLAGS,
            f"{layout.tools_dir}/environment.py",
            command,
            "--root",
            layout.workspace,
            "--state",
            layout.state,
            "--env",
            ENV_ROOT,
        ]

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

    def record_baseline(self, objects_from: str | None = None) -> None:
        self.exec(self._baseline("init", objects_from=objects_from))
        self.ready = True

    def start_tool_server(self) -> ToolChannel:
        return ToolChannel(self.box.attach(self._server(), user=self.spec.user, stdin=True), sweep=self._sweep)

    def start(
        self, scan: RepoScan, *, extra: Extra | None = None, objects_from: str | None = None, progress: Progress | None = None,
        sent: Callable[[CopyStats], None] | None = None,
    ) -> tuple[CopyStats, ToolChannel]:  # fmt: skip
        """install_tools, then copy_in, record_baseline and start_tool_server as one process: the shell
        unpacks the repo, gives a shipped `.git` its index, records the baseline and becomes the server.
        `sent` is told once the whole archive is on its way."""
        self.install_tools()
        workspace, git_dir = self.layout.workspace, f"{self.layout.workspace}/.git"
        steps = [shlex.join([self.layout.program("tar"), *UNTAR]), *([self._restore_environment()] if self.spec.environment else [])]
        if extra and f"{git_dir}/HEAD" in extra:
            steps.append(shlex.join([self.layout.program("git"), f"--git-dir={git_dir}", f"--work-tree={workspace}", "read-tree", "HEAD"]))
        steps += [shlex.join(self._baseline("init", objects_from=objects_from)) + " >&2", "exec " + shlex.join(self._server())]
        stream = self.box.attach([self.layout.program("sh"), "-c", " && ".join(steps)], user=self.spec.user, stdin=True)
        try:
            stats = self._repo_tar(scan, stream.send, extra, progress)
        except OSError as exc:  # the process ended early (no room, killed): its own words say more than ours
            raise SandboxError(f"could not copy the repo in: {_last_words(stream) or exc}") from None
        if sent is not None:
            sent(stats)
        try:
            channel = ToolChannel(stream, start_timeout=PREPARE_TIMEOUT_S, sweep=self._sweep)
        except SandboxError:
            # The server refused to go on (or never started): the baseline exists if baseline.py said so
            # ({"files": N}, sent to stderr above), and then the patch can still be exported.
            self.ready = b'{"files":' in stream.stderr_tail
            raise
        self.ready = True
        self.editable_failed = EDITABLE_FAILED.encode() in stream.stderr_tail
        return stats, channel

    def _repo_tar(self, scan: RepoScan, send: Callable[[bytes], None], extra: Extra | None, progress: Progress | None) -> CopyStats:
        return write_tar(scan, send, into=self.layout.workspace, extra=extra, progress=progress)

    def _baseline(self, command: str, git_dir: str | None = None, objects_from: str | None = None) -> list[str]:
        layout = self.layout
        cmd = [
            layout.python,
            *PYTHON_FLAGS,
            f"{layout.tools_dir}/baseline.py",
            command,
            "--root",
            layout.workspace,
            "--git-dir",
            git_dir or layout.baseline_git_dir,
        ]
        cmd += ["--exclude-from", ENV_EXCLUDE] if self.spec.environment else []
        return cmd + (["--objects-from", objects_from] if objects_from else [])

    def _server(self) -> list[str]:
        return [
            self.layout.python, *PYTHON_FLAGS, f"{self.layout.tools_dir}/server.py", "--root", self.layout.workspace,
            "--max-output-bytes", str(self.spec.max_output_bytes),
            "--command-timeout", str(self.spec.command_timeout),
            *(["--max-processes", str(self.spec.pids)] if self.spec.own_kernel else []), "--sweep", self._sweep,
        ]  # fmt: skip

    @property
    def _sweep(self) -> str:
        """By uid under a kernel of the sandbox's own (gVisor), whose subreapers can take the box down when
        they die (tools/confine.py); as the commands' subreaper everywhere else."""
        return "uid" if self.spec.own_kernel else "tree"

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
