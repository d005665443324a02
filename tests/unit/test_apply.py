"""apply_patch: real repos (made with our neutral git), dirty checks, atomicity, and a hostile repo."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.errors import UsageError
from orchestrator.patch.apply import apply_patch
from orchestrator.patch.neutral_git import NEUTRAL_ATTRIBUTES, neutral_git_dir, run_git
from tools.baseline import literal_binaries

SANDBOX_DIFF = [
    "diff",
    "--cached",
    "--binary",
    "--full-index",
    "-M",
    "--no-color",
    "--no-ext-diff",
    "--no-textconv",
    "--src-prefix=a/",
    "--dst-prefix=b/",
]
IDENTITY = ["-c", "user.name=airlock test", "-c", "user.email=test@example.invalid"]


def git(repo: Path, *args: str, git_dir: Path | None = None) -> bytes:
    proc = run_git(list(args), git_dir=git_dir or repo / ".git", work_tree=repo, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def write(root: Path, rel: str, data: bytes | str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def make_repo(root: Path) -> Path:
    """A real repo with one commit, created by our neutral git (its .git is ours to write)."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "--quiet", "--template=")
    (root / ".git" / "info").mkdir(exist_ok=True)
    (root / ".git" / "info" / "attributes").write_bytes(NEUTRAL_ATTRIBUTES)
    git(root, "add", "-A")
    git(root, *IDENTITY, "commit", "--quiet", "--allow-empty", "-m", "baseline")
    return root


def tree_state(root: Path, *, include_git: bool = False) -> dict[str, tuple]:
    """Everything that matters about a tree: type, exec bit / mode, bytes or link target."""
    state: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        if not include_git and Path(folder) == root and ".git" in dirs:
            dirs.remove(".git")
        for name in sorted(dirs + files):
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                state[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                state[rel] = ("dir",)
            else:
                mode = stat.S_IMODE(st.st_mode) if include_git else bool(st.st_mode & 0o100)
                state[rel] = ("file", mode, path.read_bytes())
    return state


class Scenario:
    """A sandbox-like work tree (neutral git dir) and a target repo holding the same baseline."""

    def __init__(self, tmp: Path, git_dir: Path) -> None:
        self.tmp, self.git_dir = tmp, git_dir
        self.work = tmp / "work"
        self.work.mkdir()
        self.target = tmp / "target"

    def baseline(self, files: dict[str, bytes | str]) -> None:
        for rel, data in files.items():
            write(self.work, rel, data)
        shutil.copytree(self.work, self.target, symlinks=True)
        make_repo(self.target)
        git(self.work, "add", "-A", git_dir=self.git_dir)
        self.base = git(self.work, "write-tree", git_dir=self.git_dir).decode().strip()

    def patch(self) -> Path:
        """The change as the sandbox exports it: git's diff with every binary hunk a literal."""
        git(self.work, "add", "-A", git_dir=self.git_dir)
        out = self.tmp / "change.patch"
        raw = git(self.work, *SANDBOX_DIFF, self.base, git_dir=self.git_dir)
        out.write_bytes(literal_binaries(raw, lambda oid: git(self.work, "cat-file", "blob", oid, git_dir=self.git_dir)))
        return out


@pytest.fixture
def sc(tmp_path: Path) -> Iterator[Scenario]:
    with neutral_git_dir() as git_dir:
        yield Scenario(tmp_path, git_dir)


BASELINE: dict[str, bytes | str] = {
    "mod.txt": "one\ntwo\nthree\n",
    "gone.txt": "bye\n",
    "move_me.txt": "".join(f"line {i}\n" for i in range(20)),
    "move_edit.txt": "".join(f"row {i}\n" for i in range(20)),
    "tool.sh": "#!/bin/sh\necho hi\n",
    "blob.bin": bytes(range(256)) * 4,
    "crlf.txt": b"a\r\nb\r\n",
    "old name.txt": "spaces\n",
    "tab\there.txt": "tab\n",
    " lead.txt": "leading space\n",
}


def change_everything(work: Path) -> None:
    write(work, "mod.txt", "one\nTWO\nthree\nfour\n")
    (work / "gone.txt").unlink()
    (work / "move_me.txt").rename(work / "moved.txt")
    edited = (work / "move_edit.txt").read_text().replace("row 3\n", "row three\n")
    (work / "move_edit.txt").unlink()
    write(work, "dir/moved_edit.txt", edited)
    (work / "tool.sh").chmod(0o755)
    write(work, "blob.bin", bytes(range(256)) * 3 + b"\x00changed")
    write(work, "new.bin", b"\x00\x01binary\xff" * 50)
    write(work, "empty.txt", b"")
    write(work, "nonl.txt", "no newline at end")
    write(work, "crlf.txt", b"a\r\nB\r\nc\r\n")
    write(work, "café é.txt", "unicode\n")
    (work / "old name.txt").rename(work / "new name.txt")
    (work / "tab\there.txt").rename(work / 'quote"and\nnewline.txt')
    (work / " lead.txt").rename(work / "trailing space.txt ")
    write(work, "deep/er/nest/file.py", "print('nested')\n")
    os.symlink("../mod.txt", work / "deep" / "link")


def test_clean_repo_applies_and_trees_match(sc: Scenario) -> None:
    sc.baseline(BASELINE)
    change_everything(sc.work)
    result = apply_patch(sc.patch(), sc.target)
    assert result.applied and result.files_changed == 16
    assert tree_state(sc.target) == tree_state(sc.work)


def test_check_only_changes_nothing(sc: Scenario) -> None:
    sc.baseline(BASELINE)
    change_everything(sc.work)
    before = tree_state(sc.target, include_git=True)
    result = apply_patch(sc.patch(), sc.target, check_only=True)
    assert not result.applied and result.files_changed == 16 and result.message.startswith("would apply")
    assert tree_state(sc.target, include_git=True) == before


def test_empty_patch_is_nothing_to_apply(sc: Scenario) -> None:
    sc.baseline({"a.txt": "a\n"})
    result = apply_patch(sc.patch(), sc.target)
    assert result.message == "nothing to apply" and result.files_changed == 0 and not result.applied


@pytest.mark.parametrize("dirt", ["modified", "untracked"])
def test_dirty_repo_refused_unless_allowed(sc: Scenario, dirt: str) -> None:
    sc.baseline({"a.txt": "a\n", "b.txt": "b\n", ".gitignore": "*.log\n"})
    write(sc.work, "a.txt", "A\n")
    patch = sc.patch()
    write(sc.target, "ignored.log", "ignored files do not count\n")
    assert apply_patch(patch, sc.target, check_only=True).files_changed == 1
    write(sc.target, "b.txt" if dirt == "modified" else "stray.txt", "dirt\n")
    with pytest.raises(UsageError, match="uncommitted changes.*--allow-dirty") as err:
        apply_patch(patch, sc.target)
    assert ("b.txt" if dirt == "modified" else "stray.txt") in str(err.value)
    assert (sc.target / "a.txt").read_text() == "a\n"
    assert apply_patch(patch, sc.target, allow_dirty=True).applied
    assert (sc.target / "a.txt").read_text() == "A\n"


def test_repo_whose_dotgit_is_a_file_needs_allow_dirty(sc: Scenario) -> None:
    sc.baseline({"a.txt": "a\n"})
    write(sc.work, "a.txt", "A\n")
    patch = sc.patch()
    shutil.rmtree(sc.target / ".git")
    write(sc.target, ".git", "gitdir: /somewhere/else\n")
    with pytest.raises(UsageError, match="cannot check.*--allow-dirty"):
        apply_patch(patch, sc.target)
    assert apply_patch(patch, sc.target, allow_dirty=True).applied


def test_missing_inputs(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    with pytest.raises(UsageError, match="patch file not found"):
        apply_patch(tmp_path / "nope.patch", repo)
    (tmp_path / "p.patch").write_bytes(b"")
    with pytest.raises(UsageError, match="repo folder not found"):
        apply_patch(tmp_path / "p.patch", tmp_path / "no-repo")


def test_a_run_folder_is_applied_through_its_patch(sc: Scenario, tmp_path: Path) -> None:
    """`airlock apply runs/x`: the folder a run wrote, as the user has it at hand."""
    sc.baseline({"a.txt": "a\n"})
    write(sc.work, "a.txt", "A\n")
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    shutil.copy(sc.patch(), run / "patch.diff")
    assert apply_patch(run, sc.target).message == "applied 1 file (+1 -1)"
    assert (sc.target / "a.txt").read_text() == "A\n"
    with pytest.raises(UsageError, match=r"is a folder without a patch.diff: give a patch file, or a run's folder"):
        apply_patch(tmp_path / "runs", sc.target)


def test_patch_that_does_not_apply_leaves_repo_byte_identical(sc: Scenario) -> None:
    sc.baseline({"a.txt": "a\n", "b.txt": "b\n"})
    write(sc.work, "a.txt", "A\n")
    write(sc.work, "b.txt", "B\n")
    write(sc.work, "c.txt", "new\n")
    patch = sc.patch()
    write(sc.target, "b.txt", "someone else changed this\n")  # second section no longer applies
    git(sc.target, *IDENTITY, "commit", "--quiet", "-am", "diverge")
    before = tree_state(sc.target, include_git=True)
    with pytest.raises(UsageError, match="patch does not apply.*b.txt"):
        apply_patch(patch, sc.target)
    assert tree_state(sc.target, include_git=True) == before


def test_refused_sections_block_the_whole_patch(sc: Scenario) -> None:
    sc.baseline({"a.txt": "a\n"})
    write(sc.work, "a.txt", "A\n")
    good = sc.patch().read_bytes()
    evil = (
        b"diff --git a/.git/hooks/post-checkout b/.git/hooks/post-checkout\nnew file mode 100755\n"
        b"index 0000000000000000000000000000000000000000..587be6b4c3f93f93c489c0111bba5596147a26cb\n"
        b"--- /dev/null\n+++ b/.git/hooks/post-checkout\n@@ -0,0 +1 @@\n+x\n"
    )
    hostile = sc.tmp / "hostile.patch"
    hostile.write_bytes(evil + good)
    before = tree_state(sc.target, include_git=True)
    with pytest.raises(UsageError, match=r"refusing to apply .*\.git/hooks/post-checkout: writes inside \.git"):
        apply_patch(hostile, sc.target)
    assert tree_state(sc.target, include_git=True) == before

    from orchestrator.patch.check import check_patch  # the surviving sections still apply on their own

    kept = sc.tmp / "kept.patch"
    kept.write_bytes(check_patch(hostile.read_bytes()).patch)
    assert apply_patch(kept, sc.target).applied
    assert (sc.target / "a.txt").read_text() == "A\n"


def test_pure_rename_of_symlink_that_would_escape_is_refused(sc: Scenario) -> None:
    sc.baseline({"sub/x": "x\n"})
    os.symlink("../x", sc.work / "sub" / "l")
    os.symlink("../x", sc.target / "sub" / "l")
    git(sc.target, "add", "-A")
    git(sc.target, *IDENTITY, "commit", "--quiet", "-m", "link")
    git(sc.work, "add", "-A", git_dir=sc.git_dir)
    sc.base = git(sc.work, "write-tree", git_dir=sc.git_dir).decode().strip()
    (sc.work / "sub" / "l").rename(sc.work / "l")  # "../x" from the top escapes the repo
    with pytest.raises(UsageError, match="symlink points outside the repository: ../x"):
        apply_patch(sc.patch(), sc.target)


def test_no_writes_beyond_a_symlink_in_the_repo(sc: Scenario) -> None:
    outside = sc.tmp / "outside"
    outside.mkdir()
    write(outside, "victim", "secret\n")
    sc.baseline({"d/victim": "secret\n"})
    (sc.work / "d" / "victim").unlink()
    patch = sc.patch()
    shutil.rmtree(sc.target / "d")
    os.symlink(outside, sc.target / "d")
    with pytest.raises(UsageError, match="patch does not apply"):
        apply_patch(patch, sc.target, allow_dirty=True)
    assert (outside / "victim").read_text() == "secret\n"


# ----------------------------------------------------------------------------- hostile repo

HOOK_NAMES = [
    "pre-commit",
    "post-checkout",
    "post-index-change",
    "pre-applypatch",
    "post-applypatch",
    "applypatch-msg",
    "reference-transaction",
    "fsmonitor-watchman",
    "post-rewrite",
    "pre-auto-gc",
]


def trap(path: Path, marker: Path) -> Path:
    """An executable script that leaves `marker` behind (and passes stdin through, for filters)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\ntouch '{marker}'\ncat\n")
    path.chmod(0o755)
    return path


def arm(dotgit: Path, markers: Path, traps: Path, tag: str) -> list[Path]:
    """Write an evil config and hooks into `dotgit`; return the scripts (to prove they work)."""
    scripts = [trap(dotgit / "hooks" / name, markers / f"{tag}-hook-{name}") for name in HOOK_NAMES]
    evil_hooks = traps / f"{tag}-evil-hooks"
    scripts += [trap(evil_hooks / name, markers / f"{tag}-hookspath-{name}") for name in HOOK_NAMES]
    fsmonitor = trap(traps / f"{tag}-fsmonitor.sh", markers / f"{tag}-fsmonitor")
    external = trap(traps / f"{tag}-external-diff.sh", markers / f"{tag}-diff-external")
    scripts += [fsmonitor, external]
    m = markers
    with open(dotgit / "config", "a") as config:
        config.write(
            f"[core]\n"
            f"\tfsmonitor = {fsmonitor}\n"
            f"\thooksPath = {evil_hooks}\n"
            f"\tpager = touch {m}/{tag}-pager; cat\n"
            f"\tworktree = /\n"
            f"[diff]\n\texternal = {external}\n"
            f'[diff "evil"]\n\ttextconv = touch {m}/{tag}-textconv; cat\n'
            f'[filter "evil"]\n'
            f"\tclean = touch {m}/{tag}-clean; cat\n"
            f"\tsmudge = touch {m}/{tag}-smudge; cat\n"
            f"\tprocess = touch {m}/{tag}-process\n"
            f"\trequired = true\n"
            f"[alias]\n\tapply = !touch {m}/{tag}-alias\n"
            f"[status]\n\tsubmoduleSummary = true\n"
        )
    return scripts


def test_hostile_repo_config_never_runs(sc: Scenario) -> None:
    markers = sc.tmp / "markers"
    markers.mkdir()
    sc.baseline({"a.txt": "a\n", "b.txt": "b\n", ".gitattributes": "* filter=evil diff=evil\n"})
    # A nested repo registered as a submodule: `git status` would normally recurse into it.
    sub = make_repo(sc.target / "sub")
    write(sub, "s.txt", "s\n")
    git(sub, "add", "-A")
    git(sub, *IDENTITY, "commit", "--quiet", "-m", "s")
    sub_head = git(sub, "rev-parse", "HEAD").decode().strip()
    git(sc.target, "update-index", "--add", "--cacheinfo", f"160000,{sub_head},sub")
    git(sc.target, *IDENTITY, "-c", "diff.ignoreSubmodules=none", "commit", "--quiet", "-m", "submodule")

    write(sc.work, "a.txt", "A\n")
    write(sc.work, "c.txt", "new file\n")
    patch = sc.patch()

    traps = sc.tmp / "traps"  # outside the repo, so they do not make it dirty
    scripts = arm(sc.target / ".git", markers, traps, "repo") + arm(sub / ".git", markers, traps, "sub")
    for script in scripts:  # the traps are real: each one leaves its marker when run
        subprocess.run([script], input=b"", check=True, capture_output=True)
    assert len(list(markers.iterdir())) == len(scripts)
    shutil.rmtree(markers)
    markers.mkdir()
    os.utime(sc.target / "a.txt", (1, 1))  # stat mismatch: status must re-read (and would clean-filter) it
    os.utime(sc.target / "b.txt", (1, 1))

    result = apply_patch(patch, sc.target)

    assert result.applied and result.files_changed == 2
    assert (sc.target / "a.txt").read_bytes() == b"A\n"
    assert (sc.target / "c.txt").read_bytes() == b"new file\n"
    assert list(markers.iterdir()) == []
