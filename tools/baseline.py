"""Record the untouched work tree, and later export every change since then as one binary git diff.

    python3 -E -s -B baseline.py init   --root /workspace --git-dir /var/lib/airlock/baseline.git [--objects-from DIR]
    python3 -E -s -B baseline.py export --root /workspace --git-dir /var/lib/airlock/baseline.git > patch.diff

Git runs with our own git dir (outside the tree), a from-scratch environment, command-line config
(the highest precedence) and our own info/attributes (which beats every in-tree .gitattributes), so
nothing in the repository can change which bytes end up in the patch or make git run anything. The
repository's own `.git`, if present, is just a folder here, and git never adds `.git` entries.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import IO, Any

BRANCH = "refs/heads/baseline"

# Unset every attribute that transforms content or calls a driver.
# The host's twin is orchestrator/neutral_git.NEUTRAL_ATTRIBUTES (a test keeps them equal; the trust boundary
# means neither side imports the other).
ATTRIBUTES = "* -text !eol -filter -ident !working-tree-encoding !diff !merge\n"

# Build caches that must never reach a patch (in-tree .gitignore files are honoured on purpose).
EXCLUDES = "__pycache__/\n*.py[cod]\n.pytest_cache/\n.mypy_cache/\n.ruff_cache/\n"

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
_STDERR_FD = 2


class BaselineError(Exception):
    """Recording or exporting failed; the message says why (git's own stderr has the details)."""


class Baseline:
    """A work tree and the separate git dir that records its baseline."""

    def __init__(self, root: str, git_dir: str) -> None:
        self.root = os.path.realpath(root)
        self.git_dir = os.path.realpath(git_dir)
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
        """Write the binary diff from the baseline to the tree as it is now to our stdout, byte for byte."""
        self._write_info()  # again: whatever ran in the sandbox since init may have changed them
        self._add_all()
        sys.stdout.flush()
        self._git(*EXPORT_DIFF, stdout=None)  # inherits our stdout: git's bytes pass through untouched

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
        for name, text in (("attributes", ATTRIBUTES), ("exclude", EXCLUDES)):
            with open(os.path.join(info, name), "w", encoding="utf-8", newline="") as f:
                f.write(text)

    def _git(self, *args: str, stdout: _Output = _STDERR_FD) -> bytes:
        """Run git on our git dir and the tree; stdout goes to stderr unless asked for (PIPE) or inherited (None)."""
        done = self._run(list(args), stdout=stdout)
        if done.returncode != 0:
            raise BaselineError(f"git {args[0]} failed with exit code {done.returncode}")
        return done.stdout or b""

    def _run(self, args: list[str], stdout: _Output, stderr: _Output = None) -> subprocess.CompletedProcess[bytes]:
        options = [f"--git-dir={self.git_dir}", f"--work-tree={self.root}", "--no-pager", "--no-replace-objects"]
        for key, value in CONFIG.items():
            options += ["-c", f"{key}={value}"]
        return subprocess.run(["git", *options, *args], cwd=self.root, env=self._env(), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)

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
    parser = argparse.ArgumentParser(description="Record the work tree's baseline, or export the change since it.")
    parser.add_argument("command", choices=["init", "export"])
    parser.add_argument("--root", required=True, help="the work tree")
    parser.add_argument("--git-dir", required=True, help="where the baseline is kept (outside the work tree)")
    parser.add_argument("--objects-from", help="init: an objects folder whose objects need not be stored again")
    options = parser.parse_args(argv)
    try:
        baseline = Baseline(options.root, options.git_dir)
        if options.command == "init":
            print(json.dumps({"files": baseline.init(options.objects_from)}), flush=True)
        else:
            baseline.export()
    except (BaselineError, OSError) as exc:  # OSError: e.g. git is not installed, or no space left
        print(f"baseline {options.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
