"""Copy-in: the repo's working tree as a tar stream, read by plain file walking.

Git is never run here: an untrusted repo's `.git/config` and hooks execute code on any host that runs
`git status` in it. Walking the tree also captures uncommitted and untracked files exactly as they are.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from orchestrator.globs import path_matches


@dataclass
class CopyStats:
    files: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # special files and unreadable entries
    hidden: list[str] = field(default_factory=list)  # left out by the policy's [paths] hidden globs


class _ChunkWriter:
    """File-like adapter so tarfile can stream straight into a socket (no temporary archive)."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self._send = send

    def write(self, data: bytes) -> int:
        self._send(bytes(data))
        return len(data)


def _walk(root: Path, exclude: Path | None, hidden: Sequence[str], stats: CopyStats) -> Iterator[tuple[Path, os.stat_result]]:
    """Yield (relative path, lstat) for every entry below root, parents before children, without following links."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        kept = []
        for name in sorted(dirnames) + sorted(filenames):
            path = base / name
            rel = path.relative_to(root)
            if path == exclude:
                continue
            if hidden and path_matches(rel.as_posix(), hidden):
                stats.hidden.append(rel.as_posix())
                continue
            if name in dirnames:
                kept.append(name)
            yield rel, path.lstat()
        dirnames[:] = kept


def _member(rel: Path, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(rel.as_posix())
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    # Host user and group names stay on the host.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar(root: Path, send: Callable[[bytes], None], *, exclude: Path | None = None, hidden: Sequence[str] = ()) -> CopyStats:
    """Stream root's working tree (files, folders, symlinks as links) as a tar archive through `send`."""
    stats = CopyStats()
    with tarfile.open(fileobj=_ChunkWriter(send), mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for rel, st in _walk(root, exclude, hidden, stats):
            info = _member(rel, st)
            content: BinaryIO | None = None
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(root / rel)
            elif stat.S_ISREG(st.st_mode):
                try:
                    content = open(root / rel, "rb")  # noqa: SIM115 - closed below
                except OSError:
                    stats.skipped.append(rel.as_posix())
                    continue
                info.size = st.st_size
                stats.files += 1
                stats.bytes += st.st_size
            else:  # fifos, sockets, devices: nothing a patch could carry
                stats.skipped.append(rel.as_posix())
                continue
            try:
                tar.addfile(info, content)
            finally:
                if content is not None:
                    content.close()
    return stats
