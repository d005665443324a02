"""`--setup auto`: what a repo's own files say it needs installed, and which files an environment depends on.

Only plain reads of a few named files at the repo's root (no git, no code of the repo runs here); a symlink
or a hidden file is never read. Python: a virtualenv first on PATH (so the agent's `python3`, `pip` and
`pytest` are its), the requirements files installed, the project itself installed editable with its test
extras. Node: `npm ci` for a package-lock.json, yarn or pnpm (through npx) for their lock files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from orchestrator.globs import path_matches
from orchestrator.sandbox.spec import VENV

# Always first: airlock's virtualenv, which sees the image's packages (pytest) beneath the project's own.
VENV_COMMAND = f"python3 -m venv --system-site-packages {VENV}"
# For a project `auto` finds no Python in: no pip to install (seconds and megabytes saved).
VENV_WITHOUT_PIP = f"{VENV_COMMAND} --without-pip"
PYTHON_PROJECT = ("pyproject.toml", "setup.py", "setup.cfg")
PYTHON_LOCKS = ("uv.lock", "poetry.lock", "Pipfile.lock")
NODE_FILES = ("package.json", "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml")
REQUIREMENTS = re.compile(r"^(.*[-_.])?requirements([-_.].*)?\.txt$")
TEST_EXTRAS = ("test", "tests", "testing", "dev")
MAX_KEY_FILE_BYTES = 32 * 1024**2


@dataclass
class Detected:
    commands: list[str] = field(default_factory=list)  # without VENV_COMMAND
    ecosystems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was found and what was done about it, one line each


def _read(repo: Path, name: str, hidden: Sequence[str]) -> bytes | None:
    """A regular file at the repo's root (never through a symlink, never a hidden one), or None."""
    if path_matches(name, hidden):
        return None
    try:
        st = os.lstat(repo / name)
    except OSError:
        return None
    if not (st.st_mode & 0o170000 == 0o100000) or st.st_size > MAX_KEY_FILE_BYTES:
        return None
    try:
        return (repo / name).read_bytes()
    except OSError:
        return None


def _root_files(repo: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(repo) if entry.is_file(follow_symlinks=False))
    except OSError:
        return []


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
    files = [name for name in _root_files(repo) if not path_matches(name, hidden)]
    requirements = [name for name in files if REQUIREMENTS.match(name)]
    project = [name for name in PYTHON_PROJECT if name in files]
    if requirements or project:
        found.ecosystems.append("python")
        for name in requirements:
            found.commands.append(f"pip install -r {name}")
        if project:
            extras = _test_extras(_read(repo, "pyproject.toml", hidden), _read(repo, "setup.cfg", hidden))
            target = f"'.[{','.join(extras)}]'" if extras else "."
            found.commands.append(f"pip install -e {target}")
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


def key_files(repo: Path, patterns: Sequence[str], hidden: Sequence[str] = ()) -> dict[str, bytes]:
    """The files an environment depends on: every manifest and lock file above at the root, and the repo
    files matching the policy's `files` patterns; by repo-relative path."""
    names = [name for name in _root_files(repo) if name in (*PYTHON_PROJECT, *PYTHON_LOCKS, *NODE_FILES, "Pipfile") or REQUIREMENTS.match(name)]
    found = {name: data for name in names if (data := _read(repo, name, hidden)) is not None}
    if patterns:
        for folder, dirs, files in os.walk(repo):
            dirs[:] = sorted(d for d in dirs if d != ".git")
            for name in files:
                rel = Path(folder, name).relative_to(repo).as_posix()
                if path_matches(rel, patterns) and (data := _read(repo, rel, hidden)) is not None:
                    found[rel] = data
    return dict(sorted(found.items()))
