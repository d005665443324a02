"""What a sandbox is made of, whatever runs it: its limits, its environment and where things live inside.

The runner turns the policy into a `SandboxSpec`; the sandbox layer never sees the policy itself.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

from orchestrator.sandbox.egress import Credential

DEFAULT_IMAGE = "airlock-sandbox:latest"
# Labels every sandbox carries, whatever runs it, so that leftovers can be found.
LABEL = "airlock.sandbox"
DEADLINE_LABEL = "airlock.deadline"
# Set AIRLOCK_OWNER to tag every sandbox with it (label airlock.owner), e.g. a CI job's id.
OWNER_ENV, OWNER_LABEL = "AIRLOCK_OWNER", "airlock.owner"
# Commands are capped in the sandbox a little below the policy's max_output_chars, leaving room for the
# dropped-bytes marker and the exit-code footer, so the host's own cap never cuts the result a second time.
OUTPUT_MARKER_ROOM = 200

# airlock's own programs (sandbox_image/runtime.sh), self-contained and read-only in every image a sandbox
# runs: the tool server's Python, and the git, tar and shell it runs, whatever the image holds. Last on PATH,
# so the image's own python3, git and bash stay the project's.
RUNTIME = "/opt/airlock-runtime"
RUNTIME_BIN = f"{RUNTIME}/bin"
RUNTIME_LABEL = "airlock.runtime"  # on an image that carries the runtime at RUNTIME
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # an image's PATH when it names none

# The only environment inside: nothing from the host, never the API key, nothing that waits for input.
SANDBOX_ENV = {
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

# Where a setup phase puts the project's environment (outside the repo, so never in a patch): a virtualenv
# that `python3` and `pytest` resolve to through PATH, and the files setup created in the workspace
# (node_modules, egg-info, ...), copied back into every later workspace made from the environment image.
ENV_ROOT = "/opt/airlock-env"
VENV = f"{ENV_ROOT}/venv"
ENV_WORKSPACE = f"{ENV_ROOT}/workspace"
ENV_EXCLUDE = f"{ENV_ROOT}/workspace.exclude"  # gitignore lines naming those files: never part of the patch
# A project whose dependencies came from its manifests alone is installed editable in each sandbox, with no
# network, under PROJECT_PREFIX (the sandbox user's home), which a .pth in the virtualenv adds to its path.
PROJECT_MARKER = f"{ENV_ROOT}/project-editable"
PROJECT_PREFIX = "/home/airlock/.airlock-project"
ENVIRONMENT_PATH = f"{VENV}/bin:{PROJECT_PREFIX}/bin:/workspace/node_modules/.bin"  # before the image's own PATH
# Setup sandboxes only: caches go to /tmp (never into the environment), no chatter with the registries.
SETUP_ENV = {
    "PIP_NO_CACHE_DIR": "1",
    "npm_config_cache": "/tmp/npm-cache",
    "npm_config_update_notifier": "false",
    "npm_config_fund": "false",
    "npm_config_audit": "false",
}


@dataclass(frozen=True)
class Layout:
    """Where the repo, the tool code and the baseline live inside a sandbox."""

    workspace: str = "/workspace"
    tools_parent: str = "/opt/airlock"  # the tool code goes into <tools_parent>/tools, written as root
    state: str = "/var/lib/airlock"  # airlock's own files (the baseline), outside the repo
    runtime: str = RUNTIME  # the tool runtime: the programs the driver and the tools run

    def program(self, name: str) -> str:
        """One of the tool runtime's programs (git, tar, sh, cat, cp)."""
        return f"{self.runtime}/bin/{name}"

    @property
    def python(self) -> str:
        """The tool runtime's Python, never the image's."""
        return f"{self.runtime}/python/bin/python3"

    @property
    def tools_dir(self) -> str:
        return f"{self.tools_parent}/tools"

    @property
    def baseline_git_dir(self) -> str:
        return f"{self.state}/baseline.git"

    @property
    def apply_git_dir(self) -> str:
        return f"{self.state}/apply.git"

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
    # A setup sandbox: its only route out is an egress proxy that forwards to these hosts, and ENV_ROOT is a
    # writable tmpfs of `env_disk` bytes. None: no network at all (every agent and verify sandbox).
    egress: tuple[str, ...] | None = None
    # Authorization headers the egress proxy adds for their hosts: the setup sandbox never holds them.
    egress_credentials: tuple[Credential, ...] = field(default=(), repr=False)
    env_disk: int = 0
    # The image holds an environment made by a setup phase (its virtualenv goes first on PATH).
    environment: bool = False
    # Unique among running sandboxes: starting a second one with the same name raises NameInUse.
    name: str | None = None
    # The image's own PATH (its config's), so a golang or node image finds its toolchain.
    path: str = IMAGE_PATH
    # The image's VOLUME folders: each gets a small tmpfs, so no anonymous volume (unbounded, writable) is made.
    image_volumes: tuple[str, ...] = ()

    def environment_vars(self) -> dict[str, str]:
        """The sandbox's whole environment: never anything from the host (the image's own variables, which
        the engine adds, are the project's)."""
        path = f"{self.path}:{RUNTIME_BIN}"
        if self.egress is None and not self.environment:
            return SANDBOX_ENV | {"PATH": path}
        environment = SANDBOX_ENV | {"PATH": f"{ENVIRONMENT_PATH}:{path}", "VIRTUAL_ENV": VENV}
        return environment | (SETUP_ENV if self.egress is not None else {})

    @property
    def own_kernel(self) -> bool:
        """gVisor gives the sandbox a kernel of its own: per-uid limits there count only the sandbox's
        processes, and each of them costs the host about two tasks of gVisor's sentry."""
        return self.runtime == "runsc"

    # Kubernetes only: the pod's runtimeClassName and node selector, and more places the egress probe tries.
    runtime_class: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    egress_probe: tuple[str, ...] = ()

    def record(self) -> dict[str, object]:
        return {
            "image": self.image,
            "cpus": self.cpus,
            "memory": self.memory,
            "disk": self.disk,
            "pids_limit": self.pids,
            "network": "none" if self.egress is None else "egress proxy",
            "runtime": self.runtime,
            "user": self.user,
        }


def owner_labels(spec: SandboxSpec) -> dict[str, str]:
    """Labels that identify a sandbox, its owner and how long it may live, so leftovers can be found."""
    labels = {
        LABEL: "1",
        "airlock.run-id": spec.run_id,
        "airlock.host": socket.gethostname(),
        "airlock.pid": str(os.getpid()),
        DEADLINE_LABEL: str(int(time.time() + spec.lifetime_s)),
    }
    return labels | owner_tag()


def owner_tag() -> dict[str, str]:
    """The owner label, when AIRLOCK_OWNER names one."""
    owner = os.environ.get(OWNER_ENV)
    return {OWNER_LABEL: owner} if owner else {}


def sandbox_labels() -> list[str]:
    """The label filter that finds this owner's sandboxes (every airlock sandbox when no owner is set)."""
    return [LABEL, *(f"{key}={value}" for key, value in owner_tag().items())]
