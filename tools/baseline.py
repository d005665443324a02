"""Record the untouched work tree, and later export every change since then as one binary git diff.

    python3 -E -s -B baseline.py init   --root /workspace --git-dir /var/lib/airlock/baseline.git [--objects-from DIR]
    python3 -E -s -B baseline.py export --root /workspace --git-dir /var/lib/airlock/baseline.git > patch.diff
    python3 -E -s -B baseline.py apply  --root /workspace --git-dir /var/lib/airlock/apply.git < patch.diff

Git runs with our own git dir (outside the tree), a from-scratch environment, command-line config
(the highest precedence) and our own info/attributes (which beats every in-tree .gitattributes), so
nothing in the repository can change which bytes end up in the patch or make git run anything. The
repository's own `.git`, if present, is just a folder here, and git never adds `.git` entries.

Every binary hunk of the export is a literal (the whole file, deflated): git writes a delta against the
old content when that is smaller, and a delta cannot be reviewed without that content. With literals,
patch.diff alone shows a reviewer whatever `git apply` would write.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import zlib
from collections.abc import Callable
from typing import IO, Any

BRANCH = "refs/heads/baseline"

# Unset every attribute that transforms content or calls a driver.
# The host's twin is orchestrator/neutral_git.NEUTRAL_ATTRIBUTES (a test keeps them equal; the trust boundary
# means neither side imports the other).
ATTRIBUTES = "* -text !eol -filter -ident !working-tree-encoding !diff !merge\n"

# Build caches that must never reach a patch (in-tree .gitignore files are honoured on purpose).
EXCLUDES = "__pycache__/\n*.py[cod]\n.pytest_cache/\n.mypy_cache/\n.ruff_cache/\n"

# The tool runtime's git (sandbox_image/runtime.sh): the same git whatever the image holds. This script
# stands alone (the host's tests import it), so it names the path itself rather than import tools/runtime.py.
_RUNTIME_GIT = "/opt/airlock-runtime/bin/git"
GIT = _RUNTIME_GIT if os.access(_RUNTIME_GIT, os.X_OK) else "git"
CONFIG = {
    "core.hooksPath": "/dev/null",
    "core.fsmonitor": "false",
    "core.autocrlf": "false",
    "core.safecrlf": "false",
    "core.filemode": "true",
    "core.symlinks": "true",
    "core.ignorecase": "false",
    "core.precomposeunicode": "false",
    "core.untrackedCache": "false",
    "core.bigFileThreshold": "512m",
    "core.bare": "false",
    "core.attributesFile": "/dev/null",
    "core.excludesFile": "/dev/null",
    "core.sparseCheckout": "false",
    "core.splitIndex": "false",
    "core.trustctime": "true",  # with checkStat=default: a same-size edit with a forged mtime is still seen
    "core.checkStat": "default",
    "core.ignoreStat": "false",  # true would stop add from noticing edits to tracked files
    "core.quotePath": "true",
    "core.pager": "cat",
    "safe.directory": "*",  # the tree may belong to another uid than the one running us
    "commit.gpgSign": "false",
    "diff.noprefix": "false",
    "diff.mnemonicPrefix": "false",
    "diff.relative": "false",
    "diff.ignoreSubmodules": "none",
    "submodule.recurse": "false",
    "protocol.allow": "never",
    "color.ui": "false",
    "gc.auto": "0",
    "maintenance.auto": "false",
}

EXPORT_DIFF = [
    "diff", "--cached", "--binary", "--full-index", "-M", "--no-color", "--no-ext-diff",
    "--no-textconv", "--src-prefix=a/", "--dst-prefix=b/", BRANCH, "--",
]  # fmt: skip

IDENTITY = {
    "GIT_AUTHOR_NAME": "airlock",
    "GIT_AUTHOR_EMAIL": "airlock@sandbox.invalid",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000",
    "GIT_COMMITTER_NAME": "airlock",
    "GIT_COMMITTER_EMAIL": "airlock@sandbox.invalid",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000",
}

_Output = int | IO[Any] | None
_SECTION = re.compile(rb"(?=^diff --git )", re.MULTILINE)
_INDEX = re.compile(rb"^index ([0-9a-f]+)\.\.([0-9a-f]+)", re.MULTILINE)
_LITERAL_LINE = 52  # bytes of deflated data per line, as git writes them


def literal_binaries(diff: bytes, blob: Callable[[str], bytes]) -> bytes:
    """`diff` with every binary hunk, forward and reverse, replaced by a literal of the new and the old blob
    (`blob(object id)` reads one from the object database)."""
    out = []
    for section in _SECTION.split(diff):
        head, marker, _ = section.partition(b"\nGIT binary patch\n")
        index = _INDEX.search(head)
        if marker and index is not None:
            old, new = (blob(oid.decode("ascii")) if oid.strip(b"0") else b"" for oid in index.groups())
            section = head + marker + _literal(new) + _literal(old)
        out.append(section)
    return b"".join(out)


def _literal(data: bytes) -> bytes:
    """git's `literal` binary hunk: the deflated data in base85 lines, each led by its byte count
    (A-Z for 1-26, a-z for 27-52), then an empty line. Python's b85 alphabet is git's."""
    deflated = zlib.compress(data, 9)
    lines = [b"literal %d\n" % len(data)]
    for start in range(0, len(deflated), _LITERAL_LINE):
        chunk = deflated[start : start + _LITERAL_LINE]
        count = len(chunk)
        lines.append(bytes([ord("A") + count - 1 if count <= 26 else ord("a") + count - 27]) + base64.b85encode(chunk, pad=True) + b"\n")
    return b"".join(lines) + b"\n"


_STDERR_FD = 2


class BaselineError(Exception):
    """Recording or exporting failed; the message says why (git's own stderr has the details)."""


class Baseline:
    """A work tree and the separate git dir that records its baseline."""

    def __init__(self, root: str, git_dir: str, exclude_from: str | None = None) -> None:
        self.root = os.path.realpath(root)
        self.git_dir = os.path.realpath(git_dir)
        self.exclude_from = exclude_from  # more gitignore lines: files a setup phase made, never part of the change
        if os.path.commonpath([self.root, self.git_dir]) == self.root:
            raise BaselineError(f"--git-dir {git_dir} must be outside --root {root}, or the tree would record itself")

    def init(self, objects_from: str | None = None) -> int:
        """Commit the tree as it is now; returns how many files it holds.

        `objects_from`: an objects folder (the repo's history as shipped) to borrow from: a file that is
        already there (unchanged since the last commit) is only hashed, not compressed and stored again."""
        os.makedirs(self.git_dir, exist_ok=True)
        self._git("init", "--quiet", "--template=")  # no template: no sample hooks, nothing we did not write
        self._git("symbolic-ref", "HEAD", BRANCH)  # works on any git, unlike init --initial-branch
        if objects_from:
            info = os.path.join(self.git_dir, "objects", "info")
            os.makedirs(info, exist_ok=True)
            with open(os.path.join(info, "alternates"), "w", encoding="utf-8") as f:
                f.write(os.path.realpath(objects_from) + "\n")
        self._write_info()
        self._add_all()
        self._git("commit", "--quiet", "--no-verify", "--allow-empty", "--no-gpg-sign", "-m", "baseline")
        listed = self._git("ls-files", "-z", stdout=subprocess.PIPE)
        return listed.count(b"\0")

    def export(self) -> None:
        """Write the binary diff from the baseline to the tree as it is now to our stdout, byte for byte,
        but for binary hunks, written as literals."""
        self._write_info()  # again: whatever ran in the sandbox since init may have changed them
        self._add_all()
        diff = self._git(*EXPORT_DIFF, stdout=subprocess.PIPE)
        sys.stdout.buffer.write(literal_binaries(diff, self._blob))
        sys.stdout.flush()

    def _blob(self, object_id: str) -> bytes:
        return self._git("cat-file", "blob", object_id, stdout=subprocess.PIPE)

    def apply(self, patch: bytes) -> None:
        """Apply a patch to the tree as `airlock apply` does on the host: all or nothing, the tree's own
        attributes and config ignored (the verify sandbox gets the pristine repo plus exactly this patch)."""
        if not os.path.isdir(self.git_dir):
            os.makedirs(self.git_dir)
            self._git("init", "--quiet", "--template=")
        self._write_info()
        done = self._run(["apply", "--whitespace=nowarn", "-"], stdout=_STDERR_FD, stderr=subprocess.PIPE, stdin=patch)
        if done.returncode != 0:
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise BaselineError("the patch does not apply: " + ("; ".join(lines[:3]) or f"git apply exited with {done.returncode}"))

    def _add_all(self) -> None:
        """Stage the whole tree. A path git cannot record (a `.GIT` folder, an unreadable file, a nested repo
        without commits) is skipped and reported on stderr as `unrecorded: <git's message>`, so it never costs
        the rest of the change: the host names it in the run's record."""
        done = self._run(["add", "--all", "--ignore-errors"], stdout=_STDERR_FD, stderr=subprocess.PIPE)
        messages = done.stderr.decode("utf-8", "replace").splitlines()
        problems = [line.split(":", 1)[1].strip() for line in messages if line.startswith(("error:", "warning:"))]
        for problem in problems:
            print(f"unrecorded: {problem}", file=sys.stderr)
        if done.returncode != 0 and not problems:
            raise BaselineError(f"git add failed with exit code {done.returncode}: {' '.join(messages)[-300:]}")

    def _write_info(self) -> None:
        info = os.path.join(self.git_dir, "info")
        os.makedirs(info, exist_ok=True)
        extra = ""
        if self.exclude_from and os.path.exists(self.exclude_from):
            with open(self.exclude_from, encoding="utf-8") as f:
                extra = f.read()
        for name, text in (("attributes", ATTRIBUTES), ("exclude", EXCLUDES + extra)):
            with open(os.path.join(info, name), "w", encoding="utf-8", newline="") as f:
                f.write(text)

    def _git(self, *args: str, stdout: _Output = _STDERR_FD) -> bytes:
        """Run git on our git dir and the tree; stdout goes to stderr unless asked for (PIPE) or inherited (None)."""
        done = self._run(list(args), stdout=stdout)
        if done.returncode != 0:
            raise BaselineError(f"git {args[0]} failed with exit code {done.returncode}")
        return done.stdout or b""

    def _run(self, args: list[str], stdout: _Output, stderr: _Output = None, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        options = [f"--git-dir={self.git_dir}", f"--work-tree={self.root}", "--no-pager", "--no-replace-objects"]
        for key, value in CONFIG.items():
            options += ["-c", f"{key}={value}"]
        if stdin is None:  # nothing git runs may wait for input
            return subprocess.run([GIT, *options, *args], cwd=self.root, env=self._env(), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
        return subprocess.run([GIT, *options, *args], cwd=self.root, env=self._env(), input=stdin, stdout=stdout, stderr=stderr)

    def _env(self) -> dict[str, str]:
        """From scratch: no inherited GIT_* variable (GIT_DIR, GIT_CONFIG_COUNT, ...) can reach git."""
        return {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": "/nonexistent",  # no ~/.gitconfig or ~/.config/git/* even for a git older than GIT_CONFIG_GLOBAL
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_SYSTEM": "/dev/null",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_ATTR_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_OPTIONAL_LOCKS": "0",
            "GIT_NO_REPLACE_OBJECTS": "1",
            **IDENTITY,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Record the work tree's baseline, export the change since it, or apply a patch.")
    parser.add_argument("command", choices=["init", "export", "apply"])
    parser.add_argument("--root", required=True, help="the work tree")
    parser.add_argument("--git-dir", required=True, help="where the baseline is kept (outside the work tree)")
    parser.add_argument("--exclude-from", help="a file of further gitignore patterns (if it exists)")
    parser.add_argument("--objects-from", help="init: an objects folder whose objects need not be stored again")
    options = parser.parse_args(argv)
    try:
        baseline = Baseline(options.root, options.git_dir, options.exclude_from)
        if options.command == "init":
            print(json.dumps({"files": baseline.init(options.objects_from)}), flush=True)
        elif options.command == "apply":
            baseline.apply(sys.stdin.buffer.read())
        else:
            baseline.export()
    except (BaselineError, OSError) as exc:  # OSError: e.g. git is not installed, or no space left
        print(f"baseline {options.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
