"""What a sandbox is made of, whatever runs it: its limits, its environment and where things live inside.

The runner turns the policy into a `SandboxSpec`; the sandbox layer never sees the policy itself.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_IMAGE = "airlock-sandbox:latest"
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
class Layout:
    """Where the repo, the tool code and the baseline live inside a sandbox."""

    workspace: str = "/workspace"
    tools_parent: str = "/opt/airlock"  # the tool code goes into <tools_parent>/tools, written as root
    state: str = "/var/lib/airlock"  # airlock's own files (the baseline), outside the repo

    @property
    def tools_dir(self) -> str:
        return f"{self.tools_parent}/tools"

    @property
    def baseline_git_dir(self) -> str:
        return f"{self.state}/baseline.git"

    @property
    def history_objects(self) -> str:
        """The repo's history as shipped (one pack), borrowed by the repo's `.git` and the baseline alike."""
        return f"{self.state}/history"


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
    # The longest the sandbox may live: past it, any airlock process may remove it as abandoned.
    lifetime_s: float = 4 * 3600.0

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
