"""Run host git without letting any repository we touch influence it.

The repos airlock works on are untrusted: their `.git/config` can name commands
(core.fsmonitor, core.pager, diff.external, filter drivers, hooks, aliases...) that
git runs on its own. So on the host we only ever run git

* with a git dir WE created in a temp folder (never the repo's own `.git`),
* with system and global config switched off and HOME pointed at an empty folder,
* with a scrubbed environment (no inherited GIT_* variables),
* with `-c` overrides that disable hooks, fsmonitor, pagers and EOL conversion,
* with our own `<gitdir>/info/attributes` (the highest-precedence attributes
  source), which neutralises any `.gitattributes` inside the work tree.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

# Unset every attribute that makes git transform file contents or run a driver.
# The sandbox's twin is tools/baseline.ATTRIBUTES (a test keeps them equal; the trust boundary means neither
# side imports the other).
NEUTRAL_ATTRIBUTES = b"* -text !eol -filter -ident !working-tree-encoding !diff !merge\n"

# Command-line config has the highest precedence of all config sources.
NEUTRAL_CONFIG: tuple[tuple[str, str], ...] = (
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("core.untrackedCache", "false"),
    ("core.autocrlf", "false"),
    ("core.safecrlf", "false"),
    ("core.bare", "false"),
    ("core.pager", "cat"),
    ("core.protectHFS", "true"),
    ("core.protectNTFS", "true"),
    # `git status` would otherwise run git inside each submodule, i.e. with the
    # submodule's own (untrusted) config.
    ("diff.ignoreSubmodules", "all"),
    ("submodule.recurse", "false"),
    ("status.submoduleSummary", "false"),
    ("protocol.allow", "never"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
)

DEFAULT_TIMEOUT = 300.0


def neutral_args() -> list[str]:
    """Global options that go between `git` and the subcommand."""
    args = ["--no-pager", "--no-replace-objects"]
    for key, value in NEUTRAL_CONFIG:
        args += ["-c", f"{key}={value}"]
    return args


def neutral_env(*, home: Path, git_dir: Path, work_tree: Path | None) -> dict[str, str]:
    """A from-scratch environment: nothing inherited can point git at other config."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home),
        "LC_ALL": "C",
        "LANG": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_SYSTEM": "/dev/null",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_ATTR_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_PAGER": "cat",
        "PAGER": "cat",
        "GIT_NO_REPLACE_OBJECTS": "1",
        "GIT_OPTIONAL_LOCKS": "0",
        "GIT_DIR": str(git_dir),
    }
    if "TMPDIR" in os.environ:
        env["TMPDIR"] = os.environ["TMPDIR"]
    if work_tree is not None:
        env["GIT_WORK_TREE"] = str(work_tree)
    return env


def run_git(
    args: Sequence[str],
    *,
    git_dir: Path,
    work_tree: Path | None,
    cwd: Path,
    input: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[bytes]:
    """Run `git <neutral options> <args>` and capture its output; never raises on exit status.

    `git_dir` must be a git dir we created (see `neutral_git_dir`), never a repo's own.
    Raises FileNotFoundError when git is not installed.
    """
    with tempfile.TemporaryDirectory(prefix="airlock-githome-") as home:
        return subprocess.run(
            ["git", *neutral_args(), *args],
            env=neutral_env(home=Path(home), git_dir=git_dir, work_tree=work_tree),
            cwd=cwd,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            timeout=timeout,
            check=False,
        )


def init_neutral_git_dir(git_dir: Path) -> None:
    """`git init` an empty, template-less git dir and install our attributes override."""
    git_dir.mkdir(parents=True, exist_ok=True)
    result = run_git(["init", "--quiet", "--template="], git_dir=git_dir, work_tree=None, cwd=git_dir)
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip()
        raise RuntimeError(f"git init failed: {message}")
    info = git_dir / "info"
    info.mkdir(exist_ok=True)
    (info / "attributes").write_bytes(NEUTRAL_ATTRIBUTES)


@contextmanager
def neutral_git_dir(prefix: str = "airlock-git-") -> Iterator[Path]:
    """Yield a fresh neutral git dir in a temp folder; it is deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        git_dir = Path(tmp) / "git"
        init_neutral_git_dir(git_dir)
        yield git_dir
