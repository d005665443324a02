"""The environment a project already describes: `.devcontainer/devcontainer.json` (an image, or a Dockerfile
to build, and the commands that finish it), or a Dockerfile named with `--setup dockerfile:PATH`.

Only plain reads of the repo, through real folders (no symlink on the way, nothing outside the repo).
What a devcontainer asks for that would weaken the sandbox or needs what airlock does not have (privileges,
capabilities, mounts, extra `docker run` arguments, features from a registry, compose) is refused in one
line; what only an editor uses (ports, customizations, ...) is ignored, said in one line each.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import json5

from orchestrator.errors import UsageError
from orchestrator.run.setup_inputs import read_inside

DOCKERFILE_SETUP = "dockerfile:"  # --setup dockerfile:PATH
DEVCONTAINER_FILES = (".devcontainer/devcontainer.json", ".devcontainer.json")
LIFECYCLE = ("onCreateCommand", "updateContentCommand", "postCreateCommand")  # run once, in this order: the setup
REFUSED = {
    "privileged": "a sandbox never runs privileged",
    "capAdd": "a sandbox keeps no capabilities",
    "securityOpt": "a sandbox's security options are airlock's",
    "runArgs": "airlock makes the container itself; no `docker run` arguments reach it",
    "mounts": "nothing of the host is ever mounted into a sandbox",
    "workspaceMount": "nothing of the host is ever mounted into a sandbox",
    "features": "features come from a container registry, which airlock does not use: install them in the Dockerfile",
    "dockerComposeFile": "a sandbox is one container: give an image or a Dockerfile",
}
IGNORED = {
    "initializeCommand": "it runs on the host, where airlock never runs a repo's commands",
    "postStartCommand": "no command runs at a sandbox's start",
    "postAttachCommand": "no command runs at a sandbox's start",
    "forwardPorts": "a sandbox has no network",
    "appPort": "a sandbox has no network",
    "portsAttributes": "a sandbox has no network",
    "otherPortsAttributes": "a sandbox has no network",
    "containerUser": "the agent's commands run as airlock's unprivileged user",
    "remoteUser": "the agent's commands run as airlock's unprivileged user",
    "updateRemoteUserUID": "the agent's commands run as airlock's unprivileged user",
    "containerEnv": "a sandbox's environment is airlock's and the image's",
    "remoteEnv": "a sandbox's environment is airlock's and the image's",
    "customizations": "for editors",
    "hostRequirements": "the policy's limits size the sandbox",
    "workspaceFolder": "the repo is at /workspace",
    "overrideCommand": "airlock starts the container its own way",
    "shutdownAction": "airlock removes the sandbox itself",
    "waitFor": "the setup runs every lifecycle command before the agent starts",
    "userEnvProbe": "for editors",
}
QUIET = {"name", "$schema", "image", "build", *LIFECYCLE}
BUILD_KEYS = {"dockerfile", "context", "args", "target"}


@dataclass(frozen=True)
class ProjectImage:
    """What the project describes: an image to run as it is, or a Dockerfile (repo-relative) built in a
    context folder (repo-relative, "" for the root); and the commands that finish the environment."""

    source: str  # where it is described, for messages and run.json
    image: str | None = None
    dockerfile: str | None = None
    context: str = ""
    args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    commands: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # one line each, said when the run starts

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "image": self.image, "dockerfile": self.dockerfile, "context": self.context or ".", "commands": self.commands}


def project_image(repo: Path, setup_commands: list[str], hidden: list[str]) -> ProjectImage | None:
    """The project's own environment for these setup commands (`auto` looks for a devcontainer); UsageError
    for one that cannot be honoured."""
    if len(setup_commands) == 1 and setup_commands[0].startswith(DOCKERFILE_SETUP):
        path = _inside(setup_commands[0][len(DOCKERFILE_SETUP) :], "", f"--setup {setup_commands[0]}")
        if read_inside(repo, path, hidden) is None:
            raise UsageError(f"--setup {setup_commands[0]}: no such file in the repo (a regular file, not hidden, reached through no symlink)")
        return ProjectImage(source=f"{DOCKERFILE_SETUP}{path}", dockerfile=path)
    if setup_commands != ["auto"]:
        return None
    for name in DEVCONTAINER_FILES:
        data = read_inside(repo, name, hidden)
        if data is not None:
            return parse_devcontainer(repo, name, data, hidden)
    return None


def parse_devcontainer(repo: Path, name: str, data: bytes, hidden: list[str]) -> ProjectImage:
    try:
        config = json5.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{name}: not valid JSON with comments: {str(exc).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise UsageError(f"{name}: expected an object")
    for key, why in REFUSED.items():
        if config.get(key) not in (None, False, [], {}):
            raise UsageError(f"{name} asks for `{key}`, which airlock refuses: {why}")
    ignored = [f"{name}: `{key}` ignored: {IGNORED.get(key, 'airlock does not know it')}" for key in config if key not in QUIET and key not in REFUSED]
    commands = [command for key in LIFECYCLE for command in _commands(config.get(key), f"{name} `{key}`")]
    folder = posixpath.dirname(name)
    build = config.get("build")
    if build is None:
        image = config.get("image")
        if not isinstance(image, str) or not image:
            raise UsageError(f"{name}: give `image` or `build.dockerfile` (airlock runs no compose file)")
        return ProjectImage(source=name, image=image, commands=commands, ignored=ignored)
    if not isinstance(build, dict) or not isinstance(build.get("dockerfile"), str):
        raise UsageError(f"{name}: `build` needs a `dockerfile`")
    ignored += [f"{name}: `build.{key}` ignored: airlock does not know it" for key in build if key not in BUILD_KEYS]
    dockerfile = _inside(build["dockerfile"], folder, f"{name} `build.dockerfile`")
    context = _inside(str(build.get("context", ".")), folder, f"{name} `build.context`")
    if context and not (dockerfile + "/").startswith(context.rstrip("/") + "/"):
        raise UsageError(f"{name}: the Dockerfile {dockerfile} is outside the build context {context}")
    if read_inside(repo, dockerfile, hidden) is None:
        raise UsageError(f"{name}: the Dockerfile {dockerfile} is not in the repo (a regular file, not hidden, reached through no symlink)")
    args = build.get("args") or {}
    if not isinstance(args, dict) or not all(isinstance(value, str) for value in args.values()):
        raise UsageError(f"{name}: `build.args` must map names to strings")
    target = build.get("target")
    if target is not None and not isinstance(target, str):
        raise UsageError(f"{name}: `build.target` must be a string")
    return ProjectImage(source=name, dockerfile=dockerfile, context=context, args=dict(args), target=target, commands=commands, ignored=ignored)


def _commands(value: object, where: str) -> list[str]:
    """A lifecycle command: a shell string, an argument list, or an object of such commands by name."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list) and value and all(isinstance(arg, str) for arg in value):
        return [shlex.join(value)]
    if isinstance(value, dict):
        return [command for item in value.values() for command in _commands(item, where)]
    raise UsageError(f"{where}: expected a command string, a list of arguments or an object of commands")


def _inside(path: str, folder: str, where: str) -> str:
    """`path` (relative to the repo folder `folder`) as a normal repo-relative path; UsageError outside the repo."""
    if path.startswith("/"):
        raise UsageError(f"{where}: {path} is an absolute path: give a path inside the repo")
    joined = posixpath.normpath(posixpath.join(folder, path))
    if joined == ".":
        return ""
    if joined == ".." or joined.startswith("../"):
        raise UsageError(f"{where}: {path} leaves the repo")
    return joined
