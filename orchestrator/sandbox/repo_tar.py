"""Copy-in: the repo's working tree as a tar stream, read by plain file walking.

Git is never run here: an untrusted repo's `.git/config` and hooks execute code on any host that runs
`git status` in it. Walking the tree also captures uncommitted and untracked files exactly as they are.
No `.git` entry of the repo is copied, at any depth: the repo's own (config, remotes, credentials, index,
stash, objects) stays on the host, and the sandbox's `.git`, when it gets one, is airlock's, added as
`extra` members.

The walk (`scan_repo`) comes first and only looks: it says how many files and bytes there are and what
the policy hides, so a repo that cannot fit is refused before anything starts. The stream
(`write_tar`) reads the files later, while the sandbox unpacks them.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from orchestrator.globs import TreeMatcher

GIT = ".git"
# Members of the archive beside the repo: an absolute path in the sandbox -> bytes, a host file, or None for a folder.
Extra = Mapping[str, "bytes | Path | None"]
Progress = Callable[[int, int], None]  # (files of the repo, bytes of every file) streamed so far
PROGRESS_EVERY_BYTES = 4 * 1024**2


@dataclass
class CopyStats:
    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # special files and unreadable entries
    hidden: list[str] = field(default_factory=list)  # left out by the policy's [paths] hidden globs


@dataclass
class RepoScan:
    """What the walk found: the entries to copy (parents before children) and what they add up to."""

    root: Path
    entries: list[tuple[str, os.stat_result]]
    stats: CopyStats


def scan_repo(root: Path, *, exclude: Path | None = None, hidden: Sequence[str] = ()) -> RepoScan:
    """Every entry below root to copy, without following links: no `.git`, no `hidden` paths, not `exclude`."""
    stats = CopyStats()
    entries: list[tuple[str, os.stat_result]] = []
    matcher = TreeMatcher(hidden)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        kept = []
        for name in sorted(dirnames) + sorted(filenames):
            path = base / name
            rel = path.relative_to(root).as_posix()
            if name == GIT or path == exclude:
                continue
            if matcher and matcher.matches(rel, name):
                stats.hidden.append(rel)
                continue
            try:
                st = path.lstat()
            except OSError:
                stats.skipped.append(rel)
                continue
            if name in dirnames:
                kept.append(name)
            if stat.S_ISREG(st.st_mode):
                stats.files += 1
                stats.bytes += st.st_size
            elif not (stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):  # fifos, sockets, devices: nothing a patch could carry
                stats.skipped.append(rel)
                continue
            entries.append((rel, st))
        dirnames[:] = kept
    return RepoScan(root, entries, stats)


class _ChunkWriter:
    """File-like adapter so tarfile can stream straight into a socket (no temporary archive)."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self._send = send

    def write(self, data: bytes) -> int:
        self._send(bytes(data))
        return len(data)


def _member(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    # Host user and group names stay on the host.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar(scan: RepoScan, send: Callable[[bytes], None], *, into: str, extra: Extra | None = None, progress: Progress | None = None) -> CopyStats:
    """Stream the scanned tree (files, folders, symlinks as links) as a tar archive through `send`,
    its members under `into` (an absolute folder in the sandbox; "/" for an archive of relative names, such
    as a build context), then the `extra` members.

    A file that can no longer be read is skipped and named; the counts are of what was streamed."""
    prefix = into.strip("/") + "/" if into.strip("/") else ""
    stats = CopyStats(hidden=list(scan.stats.hidden), skipped=list(scan.stats.skipped))
    sent = reported = 0  # bytes of files streamed, the extra ones included
    with tarfile.open(fileobj=_ChunkWriter(send), mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for rel, st in scan.entries:
            info = _member(prefix + rel, st)
            content: BinaryIO | None = None
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                try:
                    info.linkname = os.readlink(scan.root / rel)
                except OSError:
                    stats.skipped.append(rel)
                    continue
            else:
                try:
                    content = open(scan.root / rel, "rb")  # noqa: SIM115 - closed below
                    info.size = os.fstat(content.fileno()).st_size  # as it is now, not as it was when scanned
                except OSError:
                    stats.skipped.append(rel)
                    continue
                stats.files += 1
                stats.bytes += info.size
            try:
                tar.addfile(info, content)
            finally:
                if content is not None:
                    content.close()
            sent += info.size
            if progress is not None and sent - reported >= PROGRESS_EVERY_BYTES:
                reported = sent
                progress(stats.files, sent)
        for path, data in (extra or {}).items():
            sent += _add_extra(tar, path.strip("/"), data)
            if progress is not None:
                progress(stats.files, sent)
    return stats


def _add_extra(tar: tarfile.TarFile, name: str, data: bytes | Path | None) -> int:
    """Add one extra member; returns its size."""
    info = tarfile.TarInfo(name)
    info.mtime = int(time.time())
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    elif isinstance(data, bytes):
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    else:
        info.mode = 0o444
        with open(data, "rb") as file:
            info.size = os.fstat(file.fileno()).st_size
            tar.addfile(info, file)
    return info.size
