"""The benchmark's repos, made here so `make bench` needs no network: a synthetic big one, built with git.

Shaped like the big real repos (ansible: 5,000 files, 37 MB of tree, 495 MB of history): thousands of
small text files, and a history whose bytes are mostly in its older part (big files that were added and
removed again long ago), so the recent history is small and the full one is not. Like requests and
ansible, it tracks test certificates that the default policy hides, so every commit is rewritten.
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
from pathlib import Path
from typing import IO

from orchestrator.patch.neutral_git import neutral_args, neutral_env, run_git

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon phi chi psi omega".split()
AUTHOR = "bench <bench@example.invalid>"
HIDDEN_FIXTURES = ("tests/certs/server.pem", "tests/certs/server.key")  # hidden by the default policy


class _Text:
    """Source-like text, fast: files are made of lines drawn from a pool of made-up ones."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.lines = [(" ".join(rng.choice(WORDS) + str(rng.randrange(10_000)) for _ in range(8)) + "\n").encode() for _ in range(4000)]

    def make(self, size: int) -> bytes:
        return b"".join(self.rng.choices(self.lines, k=max(1, size // 70)))


class _FastImport:
    """Commits written straight into `git fast-import`, so the history is never held in memory whole."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream, self.marks = stream, 0

    def commit(self, message: str, changes: list[bytes]) -> None:
        self.marks += 1
        who = f"{AUTHOR} {1700000000 + self.marks * 60} +0000"
        self.stream.write(b"commit refs/heads/main\nmark :%d\n" % self.marks)
        self.stream.write(f"author {who}\ncommitter {who}\n".encode() + _data(message.encode()) + b"".join(changes))

    @staticmethod
    def modify(path: str, payload: bytes) -> bytes:
        return f"M 100644 inline {path}\n".encode() + _data(payload)


def _data(payload: bytes) -> bytes:
    return b"data %d\n" % len(payload) + payload + b"\n"


def synthetic_repo(root: Path, *, files: int = 5000, history_mb: int = 500, recent_commits: int = 60, seed: int = 13) -> Path:
    """A git repo at `root` with `files` text files and about `history_mb` MB of history (one pack)."""
    rng = random.Random(seed)
    text = _Text(rng)
    paths = [f"src/pkg{n % 50:02d}/module_{n:04d}.py" for n in range(files - len(HIDDEN_FIXTURES))]
    root.mkdir(parents=True)
    git_dir = root / ".git"
    _git(["init", "--quiet", "--template=", "--initial-branch=main", str(root)], git_dir, root)
    with tempfile.TemporaryDirectory(prefix="airlock-bench-home-") as home:
        env = neutral_env(home=Path(home), git_dir=git_dir, work_tree=None)
        # Stored, not compressed: the random blobs would not shrink, and compressing 500 MB takes minutes.
        command = ["git", *neutral_args(), "-c", "pack.compression=0", "-c", "core.compression=0", "fast-import", "--quiet"]
        with subprocess.Popen(command, stdin=subprocess.PIPE, env=env) as proc:
            assert proc.stdin is not None
            out = _FastImport(proc.stdin)
            first = [out.modify(path, text.make(rng.randrange(2000, 12000))) for path in paths]
            out.commit("the first version", first + [out.modify(path, b"-----BEGIN PRIVATE KEY-----\nbench\n") for path in HIDDEN_FIXTURES])
            for n in range(history_mb):  # every other one adds a 2 MiB file of random bytes, the next removes it
                edits = [out.modify(rng.choice(paths), text.make(6000)) for _ in range(3)]
                edits.append(out.modify(f"assets/blob-{n}.bin", rng.randbytes(2 * 1024**2)) if n % 2 == 0 else f"D assets/blob-{n - 1}.bin\n".encode())
                out.commit(f"change {n}", edits)
            for n in range(recent_commits):
                out.commit(f"recent change {n}", [out.modify(rng.choice(paths), text.make(6000)) for _ in range(3)])
            proc.stdin.close()
        if proc.returncode != 0:
            raise RuntimeError(f"git fast-import failed with exit code {proc.returncode}")
    _git(["read-tree", "-u", "--reset", "HEAD"], git_dir, root)  # the work tree, as a checkout writes it
    return root


def _git(args: list[str], git_dir: Path, work_tree: Path) -> None:
    done = run_git(args, git_dir=git_dir, work_tree=work_tree, cwd=work_tree, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"git {args[0]} failed: {done.stderr.decode(errors='replace')[-300:]}")


def tree_bytes(root: Path) -> tuple[int, int]:
    """(bytes of the work tree, bytes of .git)."""
    work = git = 0
    for folder, _, names in os.walk(root):
        for name in names:
            size = os.lstat(os.path.join(folder, name)).st_size
            if Path(folder).relative_to(root).parts[:1] == (".git",):
                git += size
            else:
                work += size
    return work, git
