"""`airlock apply PATCH --repo REPO`: check an exported patch and apply it to a local repo.

Why we never run git with the repo's own git dir: REPO/.git/config (and the hooks,
attributes and submodule configs it leads to) is as untrusted as the patch. Options such as
core.fsmonitor, core.pager, diff.external or a filter driver named by .gitattributes make git
run arbitrary commands as soon as it reads that config. So every git call here uses a fresh
temp git dir of ours with neutral settings (see `orchestrator.patch.neutral_git`); the repo's
`.git` is only ever read as plain data (refs, index, objects via `alternates`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import AirlockError, UsageError
from orchestrator.patch.check import (
    CheckedPatch,
    FileChange,
    change_stats,
    check_patch,
    display,
    display_str,
    symlink_problem,
)
from orchestrator.patch.neutral_git import neutral_git_dir, run_git

MAX_LISTED = 5


class ApplyError(AirlockError):
    """git itself could not be run (missing, broken), as opposed to a bad patch or repo (exit 1)."""

    exit_code = 1


@dataclass
class ApplyResult:
    repo: Path
    changes: list[FileChange] = field(default_factory=list)
    applied: bool = False  # False for --check and for an empty patch
    check_only: bool = False
    message: str = ""

    def stats(self) -> dict[str, int]:
        return change_stats(self.changes)

    @property
    def files_changed(self) -> int:
        return len(self.changes)


def apply_patch(patch_file: Path, repo: Path, *, allow_dirty: bool = False, check_only: bool = False) -> ApplyResult:
    """Check `patch_file` and apply it to the work tree of `repo`, all or nothing.

    Raises UsageError for a missing patch file or repo, a dirty (or uncheckable) repo without
    `allow_dirty`, a patch with refused sections, and a patch that does not apply;
    ApplyError when git cannot be run.
    """
    patch_file, repo = Path(patch_file), Path(repo)
    if patch_file.is_dir():  # a run's folder: its patch
        if not (patch_file / "patch.diff").is_file():
            raise UsageError(f"{patch_file} is a folder without a patch.diff: give a patch file, or a run's folder (one holding patch.diff)")
        patch_file = patch_file / "patch.diff"
    if not patch_file.is_file():
        raise UsageError(f"patch file not found: {patch_file}")
    if not repo.is_dir():
        raise UsageError(f"repo folder not found: {repo}")
    repo = repo.resolve()
    try:
        raw = patch_file.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read patch file {patch_file}: {exc.strerror}") from None
    checked = check_patch(raw)
    if checked.refused:
        listed = "; ".join(f"{r.path}: {r.reason}" for r in checked.refused[:MAX_LISTED])
        more = f" (and {len(checked.refused) - MAX_LISTED} more)" if len(checked.refused) > MAX_LISTED else ""
        raise UsageError(f"refusing to apply {patch_file}: {listed}{more}")
    result = ApplyResult(repo=repo, changes=checked.changes, check_only=check_only)
    if not checked.patch:
        result.message = "nothing to apply"
        return result
    if not allow_dirty:
        _require_clean(repo)
    _check_moved_symlinks(checked, repo)
    with _git_errors(), neutral_git_dir(prefix="airlock-apply-") as git_dir:
        _git_apply(checked.patch, repo, git_dir, check=True)
        if not check_only:
            _git_apply(checked.patch, repo, git_dir, check=False)
            result.applied = True
    s = result.stats()
    verb = "would apply" if check_only else "applied"
    files = f"{s['files_changed']} file" + ("" if s["files_changed"] == 1 else "s")
    result.message = f"{verb} {files} (+{s['insertions']} -{s['deletions']})"
    return result


@contextmanager
def _git_errors() -> Iterator[None]:
    """Turn "git is missing or broken" into ApplyError; AirlockErrors pass through."""
    try:
        yield
    except FileNotFoundError as exc:
        raise ApplyError(f"git is not installed or a folder vanished: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ApplyError(f"git timed out after {exc.timeout:.0f}s") from exc
    except RuntimeError as exc:  # neutral git dir could not be created
        raise ApplyError(str(exc)) from exc


def _git_apply(patch: bytes, repo: Path, git_dir: Path, *, check: bool) -> None:
    # No --reject/--3way: git apply then writes nothing unless every section applies.
    args = ["apply", "--whitespace=nowarn", *(["--check"] if check else []), "-"]
    proc = run_git(args, git_dir=git_dir, work_tree=repo, cwd=repo, input=patch)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        detail = "; ".join(lines[:3]) or f"git apply exited with {proc.returncode}"
        raise UsageError(f"patch does not apply to {repo}: {detail}")


def _check_moved_symlinks(checked: CheckedPatch, repo: Path) -> None:
    """A pure rename/copy carries no mode, so only the repo tells whether it moves a symlink,
    whose target then means something else from its new folder."""
    for change in checked.changes:
        if change.kind not in ("renamed", "copied") or change.new_mode is not None:
            continue
        assert change.old_path is not None and change.new_path is not None
        source = os.fsencode(repo) + b"/" + os.fsencode(change.old_path)
        if not os.path.islink(source):
            continue
        problem = symlink_problem(os.fsencode(change.new_path), os.readlink(source))
        if problem:
            raise UsageError(f"refusing to apply: {display_str(change.new_path)}: {problem}")


# ----------------------------------------------------------------------------- dirty check


class _Uncheckable(Exception):
    pass


def _require_clean(repo: Path) -> None:
    try:
        dirty = _dirty_paths(repo)
    except _Uncheckable as exc:
        raise UsageError(f"cannot check whether {repo} has uncommitted changes ({exc}); pass --allow-dirty to apply anyway") from None
    if dirty:
        more = f" and {len(dirty) - MAX_LISTED} more" if len(dirty) > MAX_LISTED else ""
        listed = ", ".join(dirty[:MAX_LISTED]) + more
        raise UsageError(f"{repo} has uncommitted changes ({listed}); commit or stash them, or pass --allow-dirty")


def _dirty_paths(repo: Path) -> list[str]:
    """Paths `git status` reports, computed from a neutral copy of the repo's refs and index."""
    dotgit = repo / ".git"
    if dotgit.is_symlink() or not dotgit.is_dir():
        what = "is a file (worktree or submodule?)" if dotgit.exists() else "is missing"
        raise _Uncheckable(f"{dotgit} {what}")
    with _git_errors(), neutral_git_dir(prefix="airlock-status-") as git_dir:
        _mirror_state(dotgit, git_dir)
        proc = run_git(
            ["status", "--porcelain=v1", "-z", "--untracked-files=normal", "--ignore-submodules=all", "--no-renames"],
            git_dir=git_dir,
            work_tree=repo,
            cwd=repo,
        )
    if proc.returncode != 0:
        first = proc.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
        raise _Uncheckable(f"git status failed: {first[0] if first else proc.returncode}")
    # -z entries are "XY <path>"; with --no-renames there is never a second path.
    return [display(entry[3:]) for entry in proc.stdout.split(b"\0") if entry]


def _mirror_state(dotgit: Path, git_dir: Path) -> None:
    """Copy what `git status` needs as plain files; objects are shared read-only via alternates."""
    objects = os.fsdecode(os.path.abspath(dotgit / "objects"))
    if "\n" in objects or objects.startswith(('"', "#")):
        raise _Uncheckable("unusual repo path")
    (git_dir / "objects" / "info").mkdir(parents=True, exist_ok=True)
    (git_dir / "objects" / "info" / "alternates").write_text(objects + "\n")
    _copy_file(dotgit / "HEAD", git_dir / "HEAD", required=True)
    _copy_file(dotgit / "packed-refs", git_dir / "packed-refs")
    _copy_file(dotgit / "index", git_dir / "index")  # copy2 keeps mtime: git's racy-clean logic needs it
    _copy_file(dotgit / "info" / "exclude", git_dir / "info" / "exclude")
    for shared in dotgit.glob("sharedindex.*"):  # split index
        _copy_file(shared, git_dir / shared.name)
    _copy_tree(dotgit / "refs", git_dir / "refs")


def _copy_file(src: Path, dst: Path, *, required: bool = False) -> None:
    if src.is_symlink():
        raise _Uncheckable(f"{src} is a symlink")
    if not src.is_file():
        if required:
            raise _Uncheckable(f"{src} is missing")
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def _copy_tree(src: Path, dst: Path) -> None:
    if src.is_symlink():
        raise _Uncheckable(f"{src} is a symlink")
    for folder, dirs, files in os.walk(src):  # os.walk does not follow symlinked folders
        rel = Path(folder).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in files + [d for d in dirs if (Path(folder) / d).is_symlink()]:
            _copy_file(Path(folder) / name, dst / rel / name)
