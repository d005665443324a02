"""What a setup phase may read, and so what its environment's key must cover.

Manifest-first, as a well-written Dockerfile installs dependencies: when the setup can run from a few files
alone (requirements files and every file they reference, npm's manifest and lock file, the policy's
`[setup] files`), the setup sandbox gets exactly those files' bytes and nothing else of the repo, and the
key is a digest of them. So no other file of the repo is there for the install's code to read or run, and
two repos share an environment only when everything its build could read is byte-identical.

When the setup needs the whole repo (the project itself is installed, a requirements file names a local
path, npm workspaces, explicit setup commands), the key also covers a digest of every file copied in, and
of the repo's path: an environment built while the repo's own code ran is reused only for that repo, in
exactly that state.

Only plain reads of the repo (no git, no code of it runs here); a symlink on the way to a file, a hidden
file, or a reference that leaves the repo is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import AirlockError
from orchestrator.globs import path_matches
from orchestrator.sandbox.repo_tar import RepoScan

PYTHON_PROJECT = ("pyproject.toml", "setup.py", "setup.cfg")
PYTHON_LOCKS = ("uv.lock", "poetry.lock", "Pipfile.lock")
NODE_FILES = ("package.json", "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml")
ROOT_MANIFESTS = (*PYTHON_PROJECT, *PYTHON_LOCKS, *NODE_FILES, "Pipfile")
REQUIREMENTS = re.compile(r"^(.*[-_.])?requirements([-_.].*)?\.txt$")
MAX_KEY_FILE_BYTES = 32 * 1024**2
# Options of a requirements file that name another requirements file (read by pip, relative to the file's folder).
_INCLUDE = re.compile(r"^(-r|-c|--requirement|--constraint)(=|\s+|(?=[^-\s]))(\S+)")
# Options whose value may be a local path pip reads: an editable project, a folder of archives.
_LOCAL_OPTION = re.compile(r"^(-e|--editable|-f|--find-links)(=|\s+|(?=[^-\s]))(\S+)")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://|^(git|hg|svn|bzr)\+", re.I)
# npm runs these scripts of the root package.json itself during an install: the repo's own code.
NPM_INSTALL_SCRIPTS = ("preinstall", "install", "postinstall", "prepublish", "preprepare", "prepare", "postprepare")


class UnsafeReference(AirlockError):
    """A requirements file names a path outside the repo (status setup_failed, nothing is built)."""


@dataclass
class SetupInputs:
    """What the setup sandbox gets, and what its key covers."""

    files: dict[str, bytes] = field(default_factory=dict)  # by repo-relative path: the key files
    whole_repo: str | None = None  # why the setup needs every file of the repo; None: the key files alone
    repo_code: str | None = None  # why the repo's own code may run during the build (binds the key to this repo)

    def record(self, repo_files: int) -> dict[str, object]:
        return {
            "mode": "repo" if self.whole_repo else "manifests",
            "files": repo_files if self.whole_repo else len(self.files),
            "why": self.whole_repo,
            "repo_code": self.repo_code,
        }


def read_inside(repo: Path, rel: str, hidden: Sequence[str] = ()) -> bytes | None:
    """A regular file of the repo by relative path, reached through real folders only (no symlink on the
    way), not hidden and not too big; None otherwise."""
    if path_matches(rel, hidden):
        return None
    current = repo
    parts = rel.split("/")
    for i, part in enumerate(parts):
        current = current / part
        try:
            st = os.lstat(current)
        except OSError:
            return None
        want_dir = i < len(parts) - 1
        if (want_dir and not stat.S_ISDIR(st.st_mode)) or (not want_dir and (not stat.S_ISREG(st.st_mode) or st.st_size > MAX_KEY_FILE_BYTES)):
            return None
    try:
        return current.read_bytes()
    except OSError:
        return None


def root_files(repo: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(repo) if entry.is_file(follow_symlinks=False))
    except OSError:
        return []


def _logical_lines(text: str) -> list[str]:
    """A requirements file's lines, continuations joined and comments dropped."""
    lines, pending = [], ""
    for raw in text.splitlines():
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        line = re.sub(r"(^|\s)#.*$", "", pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    return lines


def _is_local_path(value: str) -> bool:
    """Whether a requirement names something on disk (a project folder, an archive) rather than a package."""
    if value.startswith("file:"):
        return True
    if _URL.match(value):
        return False
    name = value.split(";", 1)[0].strip()
    return name in (".", "..") or name.startswith((".", "/", "~")) or "/" in name or "\\" in name


def references(text: str) -> tuple[list[str], list[str]]:
    """The requirements files a requirements file includes (-r, -c), and the local paths it installs from."""
    includes, local = [], []
    for line in _logical_lines(text):
        if match := _INCLUDE.match(line):
            value = match.group(3)
            if not _URL.match(value):
                includes.append(value)
        elif match := _LOCAL_OPTION.match(line):
            if _is_local_path(match.group(3)) or match.group(1) in ("-e", "--editable") and not _URL.match(match.group(3)):
                local.append(match.group(3))
        elif line.startswith("-"):
            continue  # --index-url and the like: no file of the repo
        elif " @ " in line and line.split(" @ ", 1)[1].strip().startswith("file:"):
            local.append(line.split(" @ ", 1)[1].strip())
        elif _is_local_path(line):
            local.append(line)
    return includes, local


def _inside(base: str, value: str, where: str) -> str:
    """`value` (relative to the repo folder `base`) as a repo-relative path; UnsafeReference if it leaves the repo."""
    path = value.removeprefix("file://").removeprefix("file:")
    if path.startswith(("/", "~", "$")):  # absolute, or a folder only the sandbox's environment would tell
        raise UnsafeReference(f"{where} refers to {value!r}, outside the repo: the setup reads only the repo's own files")
    joined = posixpath.normpath(posixpath.join(base, path))
    if joined == ".." or joined.startswith("../"):
        raise UnsafeReference(f"{where} refers to {value!r}, outside the repo: the setup reads only the repo's own files")
    return joined


def gather(repo: Path, patterns: Sequence[str], hidden: Sequence[str] = (), *, whole_repo: str | None = None) -> SetupInputs:
    """The files an environment depends on: the root manifests and lock files, every requirements file at the
    root and, recursively, each file it includes, and the repo files matching the policy's `patterns`.
    `whole_repo`: the caller already knows the setup needs the whole repo (and says why)."""
    inputs = SetupInputs(whole_repo=whole_repo)
    roots = root_files(repo)
    pending = [name for name in roots if name in ROOT_MANIFESTS or REQUIREMENTS.match(name)]
    requirement_files = {name for name in pending if REQUIREMENTS.match(name)}
    while pending:
        rel = pending.pop(0)
        if rel in inputs.files:
            continue
        data = read_inside(repo, rel, hidden)
        if data is None:
            continue
        inputs.files[rel] = data
        if rel not in requirement_files:
            continue
        includes, local = references(data.decode("utf-8", "replace"))
        for value in includes:
            target = _inside(posixpath.dirname(rel), value, rel)
            requirement_files.add(target)
            pending.append(target)
        for value in local:
            _inside("", value, rel)
            inputs.whole_repo = inputs.whole_repo or f"{rel} installs from the repo's own files ({value})"
    if patterns:
        for folder, dirs, files in os.walk(repo):
            dirs[:] = sorted(d for d in dirs if d != ".git")
            for name in files:
                rel = Path(folder, name).relative_to(repo).as_posix()
                if path_matches(rel, patterns) and (data := read_inside(repo, rel, hidden)) is not None:
                    inputs.files[rel] = data
    inputs.files = dict(sorted(inputs.files.items()))
    _node(inputs)
    if inputs.whole_repo:
        inputs.repo_code = inputs.repo_code or inputs.whole_repo
    return inputs


def _node(inputs: SetupInputs) -> None:
    """npm workspaces need their members' folders; the root's install scripts are the repo's own code."""
    try:
        manifest = json.loads(inputs.files.get("package.json", b"{}"))
    except ValueError:
        return
    if not isinstance(manifest, dict):
        return
    if manifest.get("workspaces"):
        inputs.whole_repo = inputs.whole_repo or "package.json declares npm workspaces, whose members are folders of the repo"
    scripts = manifest.get("scripts")
    if isinstance(scripts, dict) and (found := [name for name in NPM_INSTALL_SCRIPTS if name in scripts]):
        inputs.repo_code = f"package.json's {', '.join(found)} script{'s' if len(found) > 1 else ''} run{'' if len(found) > 1 else 's'} during the install"


def tree_digest(scan: RepoScan) -> str:
    """A digest of every entry the copy-in sends: path, kind, executable bit, content or link target."""
    digest = hashlib.sha256(b"airlock-tree/v1")
    for rel, st in scan.entries:
        path = scan.root / rel
        if stat.S_ISREG(st.st_mode):
            content = hashlib.sha256()
            try:
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        content.update(chunk)
            except OSError:
                content.update(b"\0unreadable")
            what = b"f" + (b"x" if st.st_mode & 0o111 else b"-") + content.digest()
        elif stat.S_ISLNK(st.st_mode):
            try:
                what = b"l" + os.readlink(path).encode("utf-8", "surrogateescape")
            except OSError:
                what = b"l\0unreadable"
        else:
            what = b"d"
        digest.update(rel.encode("utf-8", "surrogateescape") + b"\0" + what + b"\n")
    return digest.hexdigest()
