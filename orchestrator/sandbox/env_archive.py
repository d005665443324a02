"""The environment a setup sandbox packed, checked on the host member by member before it becomes an image.

The archive comes from a sandbox that ran the repo's install code, so it is untrusted: only folders,
regular files and symlinks under `airlock-env/` pass, with plain permissions (no set-uid), owned by root;
a member holding a setup secret (its name, link or content) refuses the whole environment. The files setup
created in the repo (`airlock-env/workspace/...`) are listed in `airlock-env/workspace.exclude`, so they
are never part of a patch.
"""

from __future__ import annotations

import io
import posixpath
import re
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import Stream

ROOT = "airlock-env"
WORKSPACE = f"{ROOT}/workspace/"
EXCLUDE = f"{ROOT}/workspace.exclude"


class UnsafeEnvironment(SandboxError):
    """The packed environment holds something it must not (a secret, a path outside it, a device...)."""


class StreamFile(io.RawIOBase):
    """A sandbox process's stdout as a file, every read bounded by one deadline."""

    def __init__(self, stream: Stream, deadline: float) -> None:
        self._stream, self._deadline, self._pending = stream, deadline, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._pending:
            try:
                self._pending = self._stream.next_stdout(self._deadline) or b""
            except TimeoutError:
                raise SandboxError("packing the environment did not finish in time") from None
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class _SecretScan:
    """Reads through to `source`, raising once any secret appears, also across chunk borders."""

    def __init__(self, source: IO[bytes], secrets: list[bytes], name: str) -> None:
        self._source, self._secrets, self._name = source, secrets, name
        self._keep = max(len(s) for s in secrets) - 1
        self._tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        window = self._tail + data
        if any(secret in window for secret in self._secrets):
            raise UnsafeEnvironment(f"the setup wrote a secret into {self._name}: the environment is not kept")
        self._tail = window[-self._keep :] if self._keep else b""
        return data


@dataclass
class PackStats:
    files: int = 0
    bytes: int = 0
    workspace_paths: list[str] = field(default_factory=list)  # the topmost entries setup created in the repo


def _checked_name(name: str) -> str:
    clean = posixpath.normpath(name)
    if name.startswith("/") or "\0" in name or clean.split("/")[0] != ROOT or ".." in clean.split("/"):
        raise UnsafeEnvironment(f"the packed environment has a path outside it: {name[:200]!r}")
    return clean


def gitignore_line(path: str) -> str:
    """A gitignore pattern matching exactly `path` from the root (special characters escaped)."""
    escaped = re.sub(r"([*?\[\\])", r"\\\1", path)
    if escaped.endswith(" "):
        escaped = escaped[:-1] + "\\ "
    return "/" + escaped


def copy_checked(
    source: BinaryIO | io.RawIOBase, dest: Path, secrets: list[str], limit: int, in_repo: Callable[[str], bool] = lambda _path: False
) -> PackStats:
    """Copy the archive in `source` to the tar file `dest`, checking every member; returns what it held.

    `in_repo(path)`: whether the user's repo has `path`. Files setup made are carried into later workspaces
    over the pristine copy and left out of the patch, so one that claims a repo path would replace the repo's
    own file (a test, say) under the agent and verify: such an archive is refused."""
    stats = PackStats()
    tokens = [secret.encode() for secret in secrets if secret]
    with tarfile.open(fileobj=source, mode="r|") as src, tarfile.open(dest, mode="w", format=tarfile.PAX_FORMAT) as out:
        for member in src:
            name = _checked_name(member.name)
            if tokens and any(token in (member.name + member.linkname).encode() for token in tokens):
                raise UnsafeEnvironment(f"the setup put a secret into a file name or link in {name[:200]!r}: the environment is not kept")
            if not (member.isreg() or member.isdir() or member.issym()):
                raise UnsafeEnvironment(f"the packed environment has a special file or hard link: {name[:200]!r}")
            if name.startswith(WORKSPACE):
                top = name.removeprefix(WORKSPACE)
                if "\n" in top or "\r" in top:
                    continue  # cannot be named in a gitignore file, so it could reach a patch: not carried
                if in_repo(top):
                    raise UnsafeEnvironment(f"the setup packed a path of the repo as one it made: {top[:200]!r}")
                if "/" not in top:
                    stats.workspace_paths.append(top)
            member.name = name
            member.mode &= 0o777
            member.uid = member.gid = 0
            member.uname = member.gname = ""
            member.mtime = int(member.mtime) if member.mtime else int(time.time())
            stats.bytes += member.size
            if stats.bytes > limit:
                raise UnsafeEnvironment(f"the environment is larger than {limit / 1024**2:.0f} MiB")
            if member.isreg():
                data = src.extractfile(member)
                assert data is not None
                out.addfile(member, _SecretScan(data, tokens, name) if tokens else data)
                stats.files += 1
            else:
                out.addfile(member)
        listing = "".join(gitignore_line(path) + "\n" for path in stats.workspace_paths).encode()
        info = tarfile.TarInfo(EXCLUDE)
        info.size, info.mode, info.mtime = len(listing), 0o644, int(time.time())
        out.addfile(info, io.BytesIO(listing))
    return stats


def in_repo(repo: Path, path: str) -> bool:
    """Whether `path` (relative, '/'-separated) is in `repo`, or lies under a symlink or a file of it."""
    current = repo
    parts = path.split("/")
    for i, part in enumerate(parts):
        current = current / part
        try:
            mode = current.lstat().st_mode
        except OSError:
            return False
        if i < len(parts) - 1 and (mode & 0o170000) != 0o040000:
            return True  # a symlink or a file of the repo where setup claims a folder
    return True
