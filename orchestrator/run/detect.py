"""`--setup auto`: what a repo's own files say it needs installed.

Only plain reads of a few named files at the repo's root (no git, no code of the repo runs here); a symlink
or a hidden file is never read. Python: a virtualenv first on PATH (so the agent's `python3`, `pip` and
`pytest` are its), the requirements files installed, the project itself installed editable with its test
extras. Node: `npm ci` for a package-lock.json, yarn or pnpm (through npx) for their lock files.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from orchestrator.globs import path_matches
from orchestrator.run.setup_inputs import NODE_FILES, PYTHON_LOCKS, PYTHON_PROJECT, REQUIREMENTS, read_inside, root_files
from orchestrator.sandbox.spec import PROJECT_MARKER, PROJECT_PREFIX, VENV

# Always first: airlock's virtualenv, which sees the image's packages (pytest) beneath the project's own.
# For a project `auto` finds no Python in: no pip at all (seconds and megabytes saved).
VENV_WITHOUT_PIP = f"python3 -m venv --system-site-packages {VENV} --without-pip"
# The image's own pip serves the virtualenv (a `pip` there that runs it with the virtualenv's Python):
# seeding the virtualenv with a copy of pip (ensurepip) cost 2.6 CPU-seconds and 10 MiB per environment.
# An image without a pip of its own still gets the copy.
_PIP_LAUNCHER = f'#!/bin/sh\\nexec {VENV}/bin/python3 -m pip "$@"\\n'
VENV_COMMAND = (
    f"{VENV_WITHOUT_PIP} && if {VENV}/bin/python3 -c 'import pip' 2>/dev/null; "
    f"then printf {shlex.quote(_PIP_LAUNCHER)} > {VENV}/bin/pip && chmod +x {VENV}/bin/pip && ln -s pip {VENV}/bin/pip3; "
    f"else {VENV}/bin/python3 -m ensurepip --default-pip; fi"
)
TEST_EXTRAS = ("test", "tests", "testing", "dev")
# Marks an environment whose project is installed editable in each sandbox (see Sandbox.restore_environment_files),
# and hooks the folder that install writes to into the virtualenv's site-packages.
_PTH = f'import site, sys; site.addsitedir("{PROJECT_PREFIX}/lib/python%d.%d/site-packages" % sys.version_info[:2])\n'
_WRITE_PTH = f'import sysconfig; open(sysconfig.get_path("purelib") + "/airlock-project.pth", "w").write({json.dumps(_PTH)})'
EDITABLE_LATER = f"touch {PROJECT_MARKER} && python3 -c {shlex.quote(_WRITE_PTH)}"


@dataclass
class Detected:
    commands: list[str] = field(default_factory=list)  # without VENV_COMMAND
    ecosystems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was found and what was done about it, one line each
    whole_repo: str | None = None  # why these commands need every file of the repo (see orchestrator.run.setup_inputs)


def _test_extras(pyproject: bytes | None, setup_cfg: bytes | None) -> list[str]:
    extras: set[str] = set()
    if pyproject:
        try:
            declared = tomllib.loads(pyproject.decode("utf-8", "replace")).get("project", {}).get("optional-dependencies", {})
            extras |= set(declared) if isinstance(declared, dict) else set()
        except tomllib.TOMLDecodeError:
            pass
    if setup_cfg:
        section = re.search(r"^\[options\.extras_require\]\s*$(.*?)(?=^\[|\Z)", setup_cfg.decode("utf-8", "replace"), re.M | re.S)
        if section:
            extras |= set(re.findall(r"^([A-Za-z0-9_.-]+)\s*=", section.group(1), re.M))
    return [extra for extra in TEST_EXTRAS if extra in extras]


_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[([^\]]*)\])?")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def static_requirements(pyproject: bytes | None, extras: Sequence[str]) -> list[str] | None:
    """Everything the project needs before it can be installed editable with no network: its build
    requirements, dependencies and those of `extras` (its own extras named inside them expanded), all from
    pyproject.toml's static metadata; None when they are not all static there (then only the project's
    own build can say, and that needs the whole repo)."""
    try:
        data = tomllib.loads((pyproject or b"").decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError:
        return None
    project, build = data.get("project"), data.get("build-system", {})
    if not isinstance(project, dict) or not isinstance(project.get("name"), str) or not isinstance(build, dict):
        return None
    dynamic = project.get("dynamic", [])
    if not isinstance(dynamic, list) or {"dependencies", "optional-dependencies"} & set(dynamic):
        return None
    requires, dependencies, optional = build.get("requires", ["setuptools>=64"]), project.get("dependencies", []), project.get("optional-dependencies", {})
    if not isinstance(requires, list) or not isinstance(dependencies, list) or not isinstance(optional, dict):
        return None
    found: list[str] = [str(item) for item in requires]
    if str(build.get("build-backend", "setuptools")).startswith("setuptools"):
        found.append("wheel")  # what setuptools' get_requires_for_build_editable adds before 70.1 (bdist_wheel)
    pending, seen = [*dependencies, *(item for extra in extras for item in optional.get(extra, []))], set(extras)
    while pending:
        item = str(pending.pop(0))
        match = _NAME.match(item)
        if match and _normal(match.group(1)) == _normal(project["name"]):  # "myproject[other]": its own extras, not the index's
            for extra in (e.strip() for e in (match.group(3) or "").split(",") if e.strip()):
                if extra not in seen and isinstance(optional.get(extra), list):
                    seen.add(extra)
                    pending += optional[extra]
        elif item not in found:
            found.append(item)
    return found


def detect(repo: Path, hidden: Sequence[str] = ()) -> Detected:
    found = Detected()
    files = [name for name in root_files(repo) if not path_matches(name, hidden)]
    requirements = [name for name in files if REQUIREMENTS.match(name)]
    project = [name for name in PYTHON_PROJECT if name in files]
    if requirements or project:
        found.ecosystems.append("python")
        for name in requirements:
            found.commands.append(f"pip install -r {name}")
        if project:
            pyproject = read_inside(repo, "pyproject.toml", hidden)
            extras = _test_extras(pyproject, read_inside(repo, "setup.cfg", hidden))
            with_extras = f" with extras {', '.join(extras)}" if extras else ""
            needs = static_requirements(pyproject, extras) if project == ["pyproject.toml"] else None
            if needs is not None:  # manifests first: the dependencies now, the project itself in each sandbox, offline
                found.commands.append(EDITABLE_LATER)
                if needs:
                    found.commands.append(f"pip install {' '.join(shlex.quote(item) for item in needs)}")
                found.notes.append(f"python: pyproject.toml: its build requirements and dependencies{with_extras} installed from its static metadata; "
                                   "the project itself installed editable, without network, in each sandbox")  # fmt: skip
            else:
                target = f"'.[{','.join(extras)}]'" if extras else "."
                found.commands.append(f"pip install -e {target}")
                found.whole_repo = f"the project itself is installed ({', '.join(project)}): its build reads and runs the repo's files"
                found.notes.append(f"python: {', '.join(project)}: the project installed editable{with_extras}")
        if requirements:
            found.notes.append(f"python: {', '.join(requirements)} installed")
        for lock in (name for name in PYTHON_LOCKS if name in files):
            found.notes.append(f"python: {lock} is part of the environment's key; pip resolves the versions from the project's metadata")
    node = [name for name in NODE_FILES if name in files]
    if "package.json" in node:
        found.ecosystems.append("node")
        if "package-lock.json" in node or "npm-shrinkwrap.json" in node:
            command = "npm ci"
        elif "yarn.lock" in node:
            command = "npx --yes yarn@1 install --frozen-lockfile --non-interactive"
        elif "pnpm-lock.yaml" in node:
            command = "npx --yes pnpm@9 install --frozen-lockfile"
        else:
            command = "npm install --no-package-lock"
        found.commands.append(command)
        found.notes.append(f"node: {', '.join(node)}: {command}")
    return found
