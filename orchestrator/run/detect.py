"""`--setup auto`: what a repo's own files say it needs installed.

Only plain reads of a few named files at the repo's root (no git, no code of the repo runs here); a symlink
or a hidden file is never read. Python: a virtualenv first on PATH (so the agent's `python3`, `pip` and
`pytest` are its), the requirements files installed, the project itself installed editable with its test
extras. Node: `npm ci` for a package-lock.json, yarn or pnpm (through npx) for their lock files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from orchestrator.globs import path_matches
from orchestrator.run.setup_inputs import NODE_FILES, PYTHON_LOCKS, PYTHON_PROJECT, REQUIREMENTS, read_inside, root_files
from orchestrator.sandbox.spec import VENV

# Always first: airlock's virtualenv, which sees the image's packages (pytest) beneath the project's own.
VENV_COMMAND = f"python3 -m venv --system-site-packages {VENV}"
# For a project `auto` finds no Python in: no pip to install (seconds and megabytes saved).
VENV_WITHOUT_PIP = f"{VENV_COMMAND} --without-pip"
TEST_EXTRAS = ("test", "tests", "testing", "dev")


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
            extras = _test_extras(read_inside(repo, "pyproject.toml", hidden), read_inside(repo, "setup.cfg", hidden))
            target = f"'.[{','.join(extras)}]'" if extras else "."
            found.commands.append(f"pip install -e {target}")
            found.whole_repo = f"the project itself is installed ({', '.join(project)}): its build reads and runs the repo's files"
            found.notes.append(f"python: {', '.join(project)}: the project installed editable" + (f" with extras {', '.join(extras)}" if extras else ""))
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
