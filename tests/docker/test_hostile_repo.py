"""A repo whose git config and hooks run commands on whatever host runs git in it.

The full path: `airlock run` on the hostile repo (the agent may run git in the sandbox: that is
contained), then `airlock apply` to a copy of the same hostile repo. No trap may fire on the host,
and the repo's filter may not change a byte of the exported change. The traps are proven armed at
the end, both one by one with `sh -c` and with plain host git, so this test cannot pass vacuously.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

from helpers import airlock

from orchestrator.patch.neutral_git import run_git
from orchestrator.providers.scripted import reply, text, tool_use

IDENTITY = ["-c", "user.name=airlock test", "-c", "user.email=test@example.invalid"]

HOOK_NAMES = [
    "applypatch-msg", "pre-applypatch", "post-applypatch", "pre-commit", "pre-merge-commit",
    "prepare-commit-msg", "commit-msg", "post-commit", "pre-rebase", "post-checkout", "post-merge",
    "pre-push", "pre-auto-gc", "post-rewrite", "post-index-change", "reference-transaction",
    "fsmonitor-watchman", "push-to-checkout", "sendemail-validate",
]  # fmt: skip

START_FILES = {
    ".gitattributes": b"* filter=evil diff=evil\n",
    "hello.txt": b"hello world\n",
    "notes.txt": b"some notes\nthat stay as they are\n",
}
NEW_HELLO = "hello airlock\nsecond line\n"
NEW_FILE = "brand new file\n"


def git(repo: Path, *args: str) -> bytes:
    """Our neutral git on a repo we are still building (before it is armed)."""
    proc = run_git(list(args), git_dir=repo / ".git", work_tree=repo, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def tree_state(root: Path) -> dict[str, tuple]:
    """Every entry below root, .git included: kind, full permission bits, bytes or link target."""
    state: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                state[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                state[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                state[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return state


class HostileRepo:
    """A committed repo, then armed: every trap touches its own marker under `markers` (on the host)."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "hostile"
        self.markers = tmp / "markers"  # outside the repo, an absolute host path
        self.traps = tmp / "traps"  # scripts the config points at, outside the repo
        self.hooks: dict[str, Path] = {}  # marker name -> executable hook
        self.commands: dict[str, str] = {}  # marker name -> shell command string from the config
        self._build()
        self._arm()

    def touch(self, name: str) -> str:
        m = shlex.quote(str(self.markers))
        return f"mkdir -p {m} && touch {m}/{name}"

    def fired(self) -> list[str]:
        return sorted(p.name for p in self.markers.iterdir()) if self.markers.exists() else []

    def _build(self) -> None:
        self.root.mkdir()
        for rel, data in START_FILES.items():
            (self.root / rel).write_bytes(data)
        git(self.root, "init", "--quiet", "--template=")
        git(self.root, "add", "-A")
        git(self.root, *IDENTITY, "commit", "--quiet", "-m", "start")
        # Nothing neutral stays behind: the repo's own git would read this config as it is.
        assert not (self.root / ".git" / "info" / "attributes").exists()
        assert not (self.root / ".git" / "hooks").exists()

    def _hook(self, path: Path, marker: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/sh\n{self.touch(marker)}\nexit 0\n")
        path.chmod(0o755)
        self.hooks[marker] = path

    def _arm(self) -> None:
        dotgit = self.root / ".git"
        for name in HOOK_NAMES:
            self._hook(dotgit / "hooks" / name, f"hook-{name}")
            self._hook(self.traps / "hooks" / name, f"hookspath-{name}")
        t = self.touch
        # Commands git runs through the shell; where git appends arguments ("$@"), a trailing `#` drops them.
        self.commands = {
            "fsmonitor": f"{t('fsmonitor')}; exit 1 #",
            "pager": f"{t('pager')}; cat",
            "diff-external": f"{t('diff-external')}; exit 0 #",
            "textconv": f'{t("textconv")}; cat "$1" #',
            "filter-clean": f"{t('filter-clean')}; tr a-z A-Z",
            "filter-smudge": f"{t('filter-smudge')}; tr A-Z a-z",
            "filter-process": f"{t('filter-process')}; exit 1",
            "alias": f"{t('alias')}",
            "editor": f"{t('editor')}; exit 0 #",
            "gpg": f"{t('gpg')}; exit 1 #",
            "credential": f"{t('credential')}; exit 0 #",
            "ssh": f"{t('ssh')}; exit 1 #",
        }
        c = {k: v.replace("\\", "\\\\").replace('"', '\\"') for k, v in self.commands.items()}
        with open(dotgit / "config", "a") as config:
            config.write(
                "[core]\n"
                f'\tfsmonitor = "{c["fsmonitor"]}"\n'
                f"\thooksPath = {self.traps / 'hooks'}\n"
                f'\tpager = "{c["pager"]}"\n'
                f'\teditor = "{c["editor"]}"\n'
                f'\tsshCommand = "{c["ssh"]}"\n'
                f'[diff]\n\texternal = "{c["diff-external"]}"\n'
                f'[diff "evil"]\n\ttextconv = "{c["textconv"]}"\n'
                f'[filter "evil"]\n'
                f'\tclean = "{c["filter-clean"]}"\n'
                f'\tsmudge = "{c["filter-smudge"]}"\n'
                f'\tprocess = "{c["filter-process"]}"\n'
                f'[alias]\n\tst = "!{c["alias"]}"\n'
                f'[gpg]\n\tprogram = "{c["gpg"]}"\n'
                f"[commit]\n\tgpgSign = true\n"
                f'[credential]\n\thelper = "!{c["credential"]}"\n'
            )


def expected_patch(old: bytes, new: bytes, added: bytes) -> bytes:
    """The exact bytes `git diff --binary --full-index` gives with no filter: what the model wrote."""
    return (
        b"diff --git a/hello.txt b/hello.txt\n"
        b"index %s..%s 100644\n"
        b"--- a/hello.txt\n+++ b/hello.txt\n"
        b"@@ -1 +1,2 @@\n-hello world\n+hello airlock\n+second line\n"
        b"diff --git a/new.txt b/new.txt\n"
        b"new file mode 100644\n"
        b"index 0000000000000000000000000000000000000000..%s\n"
        b"--- /dev/null\n+++ b/new.txt\n"
        b"@@ -0,0 +1 @@\n+brand new file\n"
    ) % (blob_id(old).encode(), blob_id(new).encode(), blob_id(added).encode())


def test_hostile_repo_runs_nothing_on_the_host(run_scripted, tmp_path: Path) -> None:
    repo = HostileRepo(tmp_path)
    before = tree_state(repo.root)
    markers = shlex.quote(str(repo.markers))
    in_sandbox = f"git status; git diff; git st; git log --oneline -1; echo FIRED:; ls -1 {markers}"
    turns = [
        reply(
            tool_use("write_file", path="hello.txt", content=NEW_HELLO),
            tool_use("write_file", path="new.txt", content=NEW_FILE),
            tool_use("run_bash", command=in_sandbox),
        ),
        reply(text("done")),
    ]
    result, _ = run_scripted(repo.root, turns)

    assert result.exit_code == 0, result.stdout + result.stderr
    record = result.record
    assert record["status"] == "completed" and record["patch"]["refused"] == []
    assert (record["patch"]["files_changed"], record["patch"]["insertions"], record["patch"]["deletions"]) == (2, 3, 1)
    # The repo's .git (its config, hooks and traps) never entered the sandbox: git there works on the
    # history airlock rebuilt, and sets nothing off either.
    [call] = [c for c in result.events("tool_call") if c["name"] == "run_bash"]
    shown, fired_inside = call["output"].split("FIRED:", 1)
    assert "start" in shown and "modified:   hello.txt" in shown, call["output"]
    assert "No such file or directory" in fired_inside, call["output"]
    # Nothing ran on the host, and the host repo is untouched, .git included.
    assert repo.fired() == []
    assert tree_state(repo.root) == before

    # The exported change is exactly what the model wrote: no clean filter (it upper-cases), no textconv.
    assert result.patch == expected_patch(START_FILES["hello.txt"], NEW_HELLO.encode(), NEW_FILE.encode())

    # Apply to a copy of the same hostile repo. It is clean per its own index (the hooks and traps are in
    # .git or outside the tree), so no --allow-dirty: the dirty check (a git status) runs, and must not run
    # the traps either. Had it used the clean filter (upper-case), the re-read files would look modified.
    copy = tmp_path / "copy"
    shutil.copytree(repo.root, copy, symlinks=True)
    for rel in START_FILES:  # stat data no longer matches the index: git must re-read (and would clean-filter) them
        os.utime(copy / rel, (1, 1))
    dirty = tmp_path / "dirty"  # the dirty check really looks: an untracked file is reported, the apply refused
    shutil.copytree(copy, dirty, symlinks=True)
    (dirty / "stray.txt").write_bytes(b"stray\n")
    refused = airlock("apply", str(result.out / "patch.diff"), "--repo", str(dirty))
    assert refused.returncode == 2 and "uncommitted changes (stray.txt)" in refused.stderr, refused.stdout + refused.stderr
    assert (dirty / "hello.txt").read_bytes() == START_FILES["hello.txt"] and repo.fired() == []
    applied = airlock("apply", str(result.out / "patch.diff"), "--repo", str(copy))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "applied 2 files (+3 -1)" in applied.stdout
    assert repo.fired() == []
    assert (copy / "hello.txt").read_bytes() == NEW_HELLO.encode()  # no smudge filter either
    assert (copy / "new.txt").read_bytes() == NEW_FILE.encode()
    after = tree_state(copy)
    expected = {**before, "hello.txt": after["hello.txt"], "new.txt": after["new.txt"]}
    assert after == expected  # nothing else moved, .git included
    assert after["new.txt"][0] == "file" and not after["new.txt"][1] & 0o111

    # The traps are armed: each one leaves its marker when run as git would run it, on a throwaway copy.
    armed = tmp_path / "armed"
    shutil.copytree(repo.root, armed, symlinks=True)
    for marker, hook in repo.hooks.items():
        subprocess.run([hook], cwd=armed, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        assert marker in repo.fired(), f"hook {hook} is not armed"
    for marker, command in repo.commands.items():
        subprocess.run(["sh", "-c", command, "git-arg"], cwd=armed, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        assert marker in repo.fired(), f"{marker} command {command!r} is not armed"
    # And host git run with the repo's own config sets them off (so a host git call would fail this test).
    shutil.rmtree(repo.markers)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "empty-home"), "GIT_CONFIG_NOSYSTEM": "1"}
    (armed / "hello.txt").write_bytes(b"changed\n")
    no_process = ["-c", "filter.evil.process="]  # the failing process filter makes git stop early
    for args in (["status"], ["st"], [*no_process, "diff"], [*no_process, "diff", "--no-ext-diff"]):
        subprocess.run(["git", *args], cwd=armed, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    fired = set(repo.fired())
    assert {"fsmonitor", "filter-process", "alias", "diff-external", "textconv", "hookspath-post-index-change"} <= fired, fired
