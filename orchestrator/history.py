"""The git history a sandbox gets: rebuilt from the repo's objects, without the hidden paths' content.

The repo's own `.git` never enters the sandbox: its config (remote URLs with credentials, credential
helpers, hooks, filters), index, stash, reflogs, packed refs and other branches stay on the host. The
sandbox gets a `.git` of airlock's making instead: HEAD's branch pointing at the same commit, and the
commits of its last N generations (`git clone --depth N`), all of them, or none, as one pack.

The pack is made here by airlock's neutral git on a git dir of its own that reads the repo's objects
through `objects/info/alternates`; the repo's `.git` itself is only read as plain files (HEAD and the
refs), and only when it is a real folder whose objects live in it. Every tree of the shipped commits is
walked and each path a `hidden` glob matches is dropped, so no hidden content is reachable from anything
shipped. A commit whose tree lost something gets a new id (its children follow, and its signature is
dropped, since it no longer holds); a commit that lost nothing keeps its id, signature and all.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from orchestrator.globs import TreeMatcher
from orchestrator.patch.neutral_git import init_neutral_git_dir, neutral_args, neutral_env, run_git
from orchestrator.sizes import plural

TIMEOUT_S = 600.0
_SHA = re.compile(rb"[0-9a-f]{40}")
_BRANCH = re.compile(r"[\w.+-]+(?:/[\w.+-]+)*")
_TREE_MODE = b"40000"
_SIGNATURES = (b"gpgsig ", b"gpgsig-sha256 ", b"mergetag ")  # headers a rewritten commit no longer matches
EXAMPLES = 5

CONFIG = b"""\
[core]
\trepositoryformatversion = 0
\tfilemode = true
\tbare = false
\tlogallrefupdates = true
[user]
\tname = airlock sandbox
\temail = sandbox@airlock.invalid
"""


@dataclass
class History:
    """What the sandbox's `.git` is made of. Without `pack`, the sandbox gets no `.git` (`why` says why)."""

    depth: int | None  # generations asked for: None for all, 0 for none
    why: str = ""  # when there is no history: the reason, in words for the user and the model
    pack: Path | None = None  # with its .idx beside it
    head: str | None = None  # what HEAD points at in the sandbox (a rewritten id if hidden paths were dropped)
    branch: str | None = None  # None: a detached HEAD
    shallow: list[str] = field(default_factory=list)  # commits whose parents were left out
    commits: int = 0
    rewritten: int = 0  # commits whose tree lost hidden paths
    hidden: list[str] = field(default_factory=list)  # a few of the hidden paths dropped from the history
    hidden_count: int = 0

    @property
    def index(self) -> Path | None:
        return self.pack.with_suffix(".idx") if self.pack is not None else None

    def dot_git(self, alternate: str) -> dict[str, bytes]:
        """The small files of the sandbox's `.git` (the pack lives at `alternate`, an objects folder)."""
        assert self.head is not None
        ref = f"refs/heads/{self.branch}" if self.branch else None
        files = {
            "HEAD": f"ref: {ref}\n".encode() if ref else f"{self.head}\n".encode(),
            "config": CONFIG,
            "objects/info/alternates": f"{alternate}\n".encode(),
            "packed-refs": f"# pack-refs with: peeled fully-peeled sorted \n{self.head} {ref}\n".encode() if ref else b"",
        }
        if self.shallow:
            files["shallow"] = "".join(f"{commit}\n" for commit in sorted(self.shallow)).encode()
        return files

    def describe(self) -> str:
        """One line for the terminal and for the model."""
        if self.pack is None:
            return f"no git history in the sandbox: {self.why}"
        where = f"branch {self.branch}" if self.branch else "a detached HEAD"
        span = "the full history" if not self.shallow else f"the last {plural(self.commits, 'commit')} (older history left out)"
        dropped = f"; {plural(self.hidden_count, 'hidden path')} removed from {plural(self.rewritten, 'commit')}" if self.rewritten else ""
        return f"git history: {span} of {where}{dropped}"

    def record(self) -> dict[str, object]:
        return {
            "depth": "full" if self.depth is None else self.depth, "commits": self.commits, "shallow": bool(self.shallow), "head": self.head, "branch": self.branch,
            "rewritten_commits": self.rewritten, "hidden_paths": self.hidden_count, "hidden_examples": self.hidden,
            "pack_bytes": self.pack.stat().st_size if self.pack is not None else 0, "why_none": self.why or None,
        }  # fmt: skip


def prepare_history(repo: Path, depth: int | None, hidden: Sequence[str], cache: Path | None = None) -> History:
    """The last `depth` generations of history (None: all of it) to ship from `repo` (read-only). Never
    raises for anything the repo holds: a history that cannot be made is a History without a pack, saying why.

    Packs are kept in `cache` (one folder per repo, commit, depth and hidden globs), so the runs of a
    batch on one repo make it once; a run waits for another making the same one rather than doing it twice.
    """
    if depth == 0:
        return History(depth, why="git history: none was chosen")
    dot_git = repo / ".git"
    try:
        head = _find_head(dot_git)
    except _NoHistory as exc:
        return History(depth, why=str(exc))
    key = _cache_key(dot_git, head, depth, hidden)
    folder = (cache or default_cache()) / key
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, however this process ends
            if not (folder / META).is_file():
                _build_into(folder, dot_git, head, depth, TreeMatcher(hidden))
            history = _load(folder, depth, head)
        _evict(folder.parent, keep=folder)
        return history
    except (_NoHistory, OSError, ValueError, subprocess.SubprocessError) as exc:
        return History(depth, why=f"the history could not be read ({exc})")


def promise(repo: Path, depth: int | None) -> str:
    """What the model is told about its history before the pack is made (only HEAD is read for it)."""
    if depth == 0:
        return "There is no .git: the repository's git history was left out of this sandbox."
    try:
        head = _find_head(repo / ".git")
    except _NoHistory as exc:
        return f"There is no .git: the repository's git history is not available here ({exc})."
    span = "its full history" if depth is None else f"only its last {depth} generations of commits (a shallow clone: older history is absent)"
    on = f"branch {head.branch}" if head.branch else "a detached HEAD"
    return f"The repository's .git holds {span} of {on}, without files hidden by policy; it has no remotes and no other branches."


META = "history.json"
CACHE_FORMAT = 1
CACHE_LIMIT_BYTES = 2 * 1024**3  # older packs are removed beyond this
CACHE_IN_USE_S = 3600.0  # a pack used this recently may be being copied into a sandbox right now


def default_cache() -> Path:
    """AIRLOCK_CACHE, else $XDG_CACHE_HOME/airlock, else ~/.cache/airlock; history packs go in its history/."""
    base = os.environ.get("AIRLOCK_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "airlock")
    return Path(base) / "history"


def _cache_key(dot_git: Path, head: _Head, depth: int | None, hidden: Sequence[str]) -> str:
    described = json.dumps([CACHE_FORMAT, os.path.abspath(dot_git), head.commit, depth, sorted(hidden), sorted(head.shallow)])
    return hashlib.sha256(described.encode()).hexdigest()[:32]


def _build_into(folder: Path, dot_git: Path, head: _Head, depth: int | None, matcher: TreeMatcher) -> None:
    """Build in a temporary folder beside `folder`, then move it into place whole."""
    with tempfile.TemporaryDirectory(prefix=".building-", dir=folder.parent) as tmp:
        work = Path(tmp)
        meta = _build(dot_git, head, depth, matcher, work)
        built = work / "out"
        built.mkdir()
        (work / f"history-{meta.pop('pack')}.pack").rename(built / "history.pack")
        (work / f"history-{meta.pop('index')}.idx").rename(built / "history.idx")
        (built / META).write_text(json.dumps(meta))
        shutil.rmtree(folder, ignore_errors=True)  # a half-made one from a killed run
        built.rename(folder)


def _load(folder: Path, depth: int | None, head: _Head) -> History:
    meta = json.loads((folder / META).read_text())
    os.utime(folder)  # recently used: kept longest
    return History(
        depth, pack=folder / "history.pack", head=str(meta["head"]), branch=head.branch, shallow=[str(c) for c in meta["shallow"]],
        commits=int(meta["commits"]), rewritten=int(meta["rewritten"]), hidden=[str(p) for p in meta["hidden"]], hidden_count=int(meta["hidden_count"]),
    )  # fmt: skip


def _evict(cache: Path, keep: Path) -> None:
    """Remove the least recently used packs while the cache holds more than CACHE_LIMIT_BYTES."""
    entries, recent = [], time.time() - CACHE_IN_USE_S
    for entry in cache.iterdir():
        if entry.is_dir() and entry != keep and (entry / META).is_file() and entry.stat().st_mtime < recent:
            entries.append((entry.stat().st_mtime, sum(f.stat().st_size for f in entry.iterdir()), entry))
    total = sum(size for _, size, _ in entries) + sum(f.stat().st_size for f in keep.iterdir())
    for _, size, entry in sorted(entries):
        if total <= CACHE_LIMIT_BYTES:
            break
        shutil.rmtree(entry, ignore_errors=True)
        with contextlib.suppress(OSError):
            (cache / f"{entry.name}.lock").unlink()
        total -= size


class _NoHistory(Exception):
    pass


@dataclass(frozen=True)
class _Head:
    commit: str
    branch: str | None
    shallow: tuple[str, ...]  # the repo's own shallow boundary, if it is a shallow clone


def _find_head(dot_git: Path) -> _Head:
    """HEAD, read as plain files; only a `.git` that is a real folder holding its own objects counts."""
    if not dot_git.exists() and not dot_git.is_symlink():
        raise _NoHistory("the repo is not a git repository")
    if dot_git.is_symlink() or not dot_git.is_dir():
        raise _NoHistory("its .git is a link or a file pointing elsewhere (a worktree or submodule?), which airlock does not follow")
    objects = dot_git / "objects"
    if objects.is_symlink() or not objects.is_dir() or (objects / "pack").is_symlink():
        raise _NoHistory("its .git has no objects folder of its own")
    if (objects / "info" / "alternates").exists():
        raise _NoHistory("its objects are borrowed from another repository (objects/info/alternates), which airlock does not follow")
    for folder in (objects, objects / "pack"):
        if folder.is_dir() and any(entry.is_symlink() for entry in os.scandir(folder)):
            raise _NoHistory("its objects folder holds links to elsewhere, which airlock does not follow")
    head = _read(dot_git / "HEAD").strip()
    branch = None
    for _ in range(5):  # a symbolic ref may name another
        if not head.startswith(b"ref: "):
            break
        name = head[5:].strip().decode("utf-8", "replace")
        if name.startswith("refs/heads/") and _BRANCH.fullmatch(name[11:]) and ".." not in name and not name.endswith(".lock"):
            branch = branch or name[11:]
        head = _resolve_ref(dot_git, name)
    if len(head) == 64 and re.fullmatch(rb"[0-9a-f]{64}", head):
        raise _NoHistory("it is a SHA-256 repository, which airlock cannot rebuild yet")
    if not _SHA.fullmatch(head):
        raise _NoHistory("its HEAD names no commit (no commits yet?)")
    shallow = tuple(line.decode() for line in _read(dot_git / "shallow", required=False).split() if _SHA.fullmatch(line))
    return _Head(head.decode(), branch, shallow)


def _read(path: Path, *, required: bool = True) -> bytes:
    if path.is_symlink() or (required and not path.is_file()):
        raise _NoHistory(f"its {path.name} is missing or a link")
    try:
        with open(path, "rb") as file:
            return file.read(1024 * 1024)
    except OSError:
        if required:
            raise _NoHistory(f"its {path.name} cannot be read") from None
        return b""


def _resolve_ref(dot_git: Path, name: str) -> bytes:
    if not name.startswith("refs/") or ".." in name.split("/"):
        raise _NoHistory(f"its HEAD names an unusual ref {name!r}")
    loose = dot_git / name
    if loose.is_file() and not loose.is_symlink():
        return _read(loose).strip()
    for line in _read(dot_git / "packed-refs", required=False).splitlines():
        sha, _, ref = line.partition(b" ")
        if ref.strip() == name.encode():
            return sha
    raise _NoHistory("its current branch has no commits yet")


# --- building the pack -------------------------------------------------------------------------------------


def _build(dot_git: Path, head: _Head, depth: int | None, matcher: TreeMatcher, workdir: Path) -> dict[str, object]:
    """Walk, rewrite and pack into `workdir`; returns what the cache records (pack and index by their names)."""
    git_dir = workdir / "git"
    init_neutral_git_dir(git_dir)
    objects = os.fsdecode(os.path.abspath(dot_git / "objects"))
    if "\n" in objects:
        raise _NoHistory("the repo's path holds a line break")
    (git_dir / "objects" / "info").mkdir(parents=True, exist_ok=True)
    (git_dir / "objects" / "info" / "alternates").write_text(objects + "\n")
    with _ObjectReader(git_dir) as reader:
        boundary = _depth_boundary(reader, head, depth)
        cut = sorted(set(boundary) | set(head.shallow))
        _write_shallow(git_dir, cut)
        order = _topological(git_dir, head.commit)
        rewriter = _Rewriter(reader, _PackWriter(git_dir), matcher)
        with _ObjectReader(git_dir, ids=order) as commits:
            for commit in order:
                rewriter.commit(commit, commits.read(commit, b"commit"))
        rewriter.pack.flush()
    new_head = rewriter.mapped[head.commit]
    shipped = set(order)
    shallow = [rewriter.mapped[commit] for commit in cut if commit in shipped]
    _write_shallow(git_dir, shallow)
    packed = run_git(["pack-objects", "--revs", "--quiet", str(workdir / "history")], git_dir=git_dir, work_tree=None, cwd=workdir,
                     input=f"{new_head}\n".encode(), timeout=TIMEOUT_S)  # fmt: skip
    if packed.returncode != 0:
        raise _NoHistory(_first_line(packed.stderr) or "git pack-objects failed")
    name = packed.stdout.decode().strip()
    return {
        "pack": name, "index": name, "head": new_head, "shallow": shallow, "commits": len(order),
        "rewritten": rewriter.rewritten, "hidden": rewriter.examples, "hidden_count": len(rewriter.dropped),
    }  # fmt: skip


def _first_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[0][:200] if lines else ""


def _write_shallow(git_dir: Path, commits: Sequence[str]) -> None:
    path = git_dir / "shallow"
    if commits:
        path.write_text("".join(f"{commit}\n" for commit in commits))
    elif path.exists():
        path.unlink()


def _depth_boundary(reader: _ObjectReader, head: _Head, depth: int | None) -> list[str]:
    """The commits `depth - 1` generations below HEAD (by the shortest way), whose parents are left out."""
    if depth is None:
        return []
    seen, frontier = {head.commit}, [head.commit]
    cut = set(head.shallow)
    for _ in range(depth - 1):
        below = []
        for commit in frontier:
            if commit in cut:
                continue
            for parent in _parents(reader.read(commit, b"commit")):
                if parent not in seen:
                    seen.add(parent)
                    below.append(parent)
        if not below:
            return []  # the whole history is shallower than that
        frontier = below
    return [commit for commit in frontier if commit not in cut and _parents(reader.read(commit, b"commit"))]


def _parents(raw: bytes) -> list[str]:
    headers = raw.split(b"\n\n", 1)[0]
    return [line[7:47].decode() for line in headers.split(b"\n") if line.startswith(b"parent ")]


def _topological(git_dir: Path, head: str) -> list[str]:
    """Every commit to ship, parents first (the shallow file cuts the walk)."""
    listed = run_git(["rev-list", "--topo-order", "--reverse", head], git_dir=git_dir, work_tree=None, cwd=git_dir, timeout=TIMEOUT_S)
    if listed.returncode != 0:
        raise _NoHistory(_first_line(listed.stderr) or "git rev-list failed")
    return listed.stdout.decode().split()


class _ObjectReader:
    """`git cat-file --batch` kept running: one object per round trip. Given `ids`, git reads them all at
    once from a file and answers in that order, with no round trip each: `read` must follow that order."""

    def __init__(self, git_dir: Path, ids: Sequence[str] = ()) -> None:
        self._home = tempfile.TemporaryDirectory(prefix="airlock-githome-")
        self._ids = tempfile.TemporaryFile()
        self._ids.write("".join(f"{sha}\n" for sha in ids).encode())
        self._ids.seek(0)
        self._proc = subprocess.Popen(
            ["git", *neutral_args(), "cat-file", "--batch"], env=neutral_env(home=Path(self._home.name), git_dir=git_dir, work_tree=None),
            cwd=git_dir, stdin=self._ids if ids else subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert self._proc.stdout is not None
        self._in: IO[bytes] | None = self._proc.stdin
        self._out: IO[bytes] = self._proc.stdout

    def __enter__(self) -> _ObjectReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._in is not None:
            self._in.close()
        self._out.close()  # a git still answering (the walk stopped early) gets a broken pipe and ends
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._ids.close()
        self._home.cleanup()

    def read(self, sha: str, kind: bytes) -> bytes:
        if self._in is not None:
            self._in.write(sha.encode() + b"\n")
            self._in.flush()
        header = self._out.readline().split()
        if len(header) != 3 or header[0] != sha.encode() or header[1] != kind:
            raise _NoHistory(f"object {sha[:12]} is missing or not a {kind.decode()} (a partial clone?)")
        data = self._out.read(int(header[2]) + 1)
        return data[:-1]


class _PackWriter:
    """The objects the rewrite makes, written as packs of many: a full history's rewrite makes tens of
    thousands, which as loose files are slow to make and slower to remove. Nothing reads them back before
    the end, when git packs what HEAD reaches."""

    LIMIT = 64 * 1024**2  # bytes of deflated objects held before they are written out as one pack
    TYPES = {b"commit": 1, b"tree": 2}

    def __init__(self, git_dir: Path) -> None:
        self.git_dir = git_dir
        self._pending: list[bytes] = []
        self._size = 0
        self._known: set[bytes] = set()

    def add(self, kind: bytes, data: bytes) -> bytes:
        """The object's binary id; it joins the next pack unless it is in one already."""
        sha = hashlib.sha1(b"%s %d\0" % (kind, len(data)) + data, usedforsecurity=False).digest()
        if sha not in self._known:
            self._known.add(sha)
            self._pending.append(_pack_entry(self.TYPES[kind], data))
            self._size += len(self._pending[-1])
            if self._size > self.LIMIT:
                self.flush()
        return sha

    def flush(self) -> None:
        """The pending objects as one pack (version 2, no deltas), indexed into the git dir by git itself."""
        if not self._pending:
            return
        body = b"PACK" + struct.pack(">II", 2, len(self._pending)) + b"".join(self._pending)
        pack = body + hashlib.sha1(body, usedforsecurity=False).digest()
        indexed = run_git(["index-pack", "--stdin"], git_dir=self.git_dir, work_tree=None, cwd=self.git_dir, input=pack, timeout=TIMEOUT_S)
        if indexed.returncode != 0:
            raise _NoHistory(_first_line(indexed.stderr) or "git index-pack failed")
        self._pending, self._size = [], 0


def _pack_entry(kind: int, data: bytes) -> bytes:
    """One undeltified object of a pack: its type and size (7 bits a byte, low bits first), then its bytes deflated."""
    size = len(data)
    header = bytearray([(kind << 4) | (size & 0x0F)])
    size >>= 4
    while size:
        header[-1] |= 0x80
        header.append(size & 0x7F)
        size >>= 7
    return bytes(header) + zlib.compress(data, 1)


class _Rewriter:
    """Commits and trees without the hidden paths; the objects that change go to `pack`."""

    def __init__(self, reader: _ObjectReader, pack: _PackWriter, matcher: TreeMatcher) -> None:
        self.reader, self.pack, self.matcher = reader, pack, matcher
        self.mapped: dict[str, str] = {}  # commit -> the commit shipped for it
        self.trees: dict[tuple[bytes, str], bytes | None] = {}  # (tree, folder) -> the tree shipped (None: left empty)
        self.dropped: set[str] = set()
        self.rewritten = 0

    @property
    def examples(self) -> list[str]:
        return sorted(self.dropped)[:EXAMPLES]

    def commit(self, commit: str, raw: bytes) -> None:
        headers, sep, message = raw.partition(b"\n\n")
        lines = _header_fields(headers)
        tree = bytes.fromhex(lines[0][5:45].decode()) if lines and lines[0].startswith(b"tree ") else None
        if tree is None:
            raise _NoHistory(f"commit {commit[:12]} has no tree")
        new_tree = self._tree(tree, "") if self.matcher else tree
        kept_tree = new_tree if new_tree is not None else self.pack.add(b"tree", b"")
        parents = [line[7:47].decode() for line in lines if line.startswith(b"parent ")]
        if kept_tree == tree and all(self.mapped.get(parent, parent) == parent for parent in parents):
            self.mapped[commit] = commit
            return
        out = [b"tree " + kept_tree.hex().encode()]
        out += [b"parent " + self.mapped.get(parent, parent).encode() for parent in parents]
        out += [line for line in lines if not line.startswith((b"tree ", b"parent ", *_SIGNATURES))]
        self.mapped[commit] = self.pack.add(b"commit", b"\n".join(out) + sep + message).hex()
        self.rewritten += kept_tree != tree

    def _tree(self, tree: bytes, folder: str) -> bytes | None:
        key = (tree, folder)
        if key in self.trees:
            return self.trees[key]
        raw = self.reader.read(tree.hex(), b"tree")
        kept, changed, pos = [], False, 0
        while pos < len(raw):
            space, nul = raw.index(b" ", pos), raw.index(b"\0", pos)
            mode, name_bytes, sha = raw[pos:space], raw[space + 1 : nul], raw[nul + 1 : nul + 21]
            entry_end = nul + 21
            name = os.fsdecode(name_bytes)
            path = folder + name
            if self.matcher.matches(path, name):
                self.dropped.add(path)
                changed = True
            elif mode == _TREE_MODE and (sub := self._tree(sha, path + "/")) != sha:
                changed = True
                if sub is not None:
                    kept.append(mode + b" " + name_bytes + b"\0" + sub)
            else:
                kept.append(raw[pos:entry_end])
            pos = entry_end
        result: bytes | None = tree
        if changed:
            result = self.pack.add(b"tree", b"".join(kept)) if kept else None
        self.trees[key] = result
        return result


def _header_fields(headers: bytes) -> list[bytes]:
    """Header lines, each with its continuation lines (a signature spans many)."""
    fields: list[bytes] = []
    for line in headers.split(b"\n"):
        if line.startswith(b" ") and fields:
            fields[-1] += b"\n" + line
        else:
            fields.append(line)
    return fields
