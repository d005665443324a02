"""Every kind of change survives a full `airlock run` + `airlock apply` byte for byte; escapes are refused.

The agent's work is one bash script run in the sandbox. The same script, ours and trusted, run on a
host copy of the start repo gives the expected tree; the exported patch applied to another fresh copy
must give exactly that tree (bytes, exec bits, symlink targets).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from helpers import airlock, tree_snapshot

from orchestrator.patch.neutral_git import run_git
from orchestrator.providers.scripted import reply, text, tool_use

IDENTITY = ["-c", "user.name=airlock test", "-c", "user.email=test@example.invalid"]

START: dict[str, bytes] = {
    "README.md": b"# start repo\n",
    "text/mod.txt": b"one\ntwo\nthree\n",
    "gone.txt": b"this file will be deleted\n",
    "move_me.txt": b"".join(b"line %d\n" % i for i in range(20)),
    "move_edit.txt": b"".join(b"row %d\n" % i for i in range(20)),
    "bin/blob.bin": bytes(range(256)) * 4,
    "scripts/tool.sh": b"#!/bin/sh\necho tool\n",
    "scripts/run.sh": b"#!/bin/sh\necho run\n",
    "crlf.txt": b"alpha\r\nbeta\r\ngamma\r\n",
    "nonl.txt": b"no final newline",
    "nonl2.txt": b"gets a newline",
    "ünï cødé.txt": b"unicode name\n",
    "with space/file name.txt": b"spaces\n",
    "with space/stays.txt": b"keeps the folder\n",
    "deep/nested/keep.txt": b"deep\n",
}
START_EXECUTABLE = ["scripts/run.sh"]
START_LINKS = {"links/current": "../text/mod.txt", "links/stay": "../crlf.txt"}

# The agent's whole change, run once in the sandbox and once (trusted, ours) on a host copy.
SCRIPT = r"""set -euo pipefail
printf 'one\nTWO\nthree\nfour\n' > text/mod.txt
printf 'a brand new file\n' > added.txt
rm gone.txt
mv move_me.txt moved.txt
mkdir -p dir && mv move_edit.txt dir/moved_edit.txt && sed -i 's/^row 3$/row three/' dir/moved_edit.txt
printf 'tail\000\377\001' >> bin/blob.bin
for i in $(seq 0 255); do printf "\\$(printf '%03o' "$i")"; done > bin/new.bin
chmod +x scripts/tool.sh
chmod -x scripts/run.sh
: > empty.txt
printf 'no final newline, changed' > nonl.txt
printf 'gets a newline\n' > nonl2.txt
printf 'alpha\r\nBETA\r\ngamma\r\ndelta\r\n' > crlf.txt
mkdir -p é && printf 'unicode folder\n' > 'é/ü ñ.txt'
printf 'unicode name, edited\n' > 'ünï cødé.txt'
mv 'with space/file name.txt' 'with space/new name.txt'
printf 'spaces everywhere\n' > 'a file with spaces.txt'
mkdir -p a/b/c && printf 'd\n' > a/b/c/d.txt
ln -s ../text/mod.txt a/link-to-mod
ln -sfn ../added.txt links/current
printf 'deeper\n' >> deep/nested/keep.txt
echo SCRIPT-DONE
"""

# (kind, old path, new path, binary) of every change the script makes, as run.json lists them.
EXPECTED_CHANGES = {
    ("modified", "text/mod.txt", "text/mod.txt", False),
    ("added", None, "added.txt", False),
    ("deleted", "gone.txt", None, False),
    ("renamed", "move_me.txt", "moved.txt", False),
    ("renamed", "move_edit.txt", "dir/moved_edit.txt", False),
    ("modified", "bin/blob.bin", "bin/blob.bin", True),
    ("added", None, "bin/new.bin", True),
    ("mode-changed", "scripts/tool.sh", "scripts/tool.sh", False),
    ("mode-changed", "scripts/run.sh", "scripts/run.sh", False),
    ("added", None, "empty.txt", False),
    ("modified", "nonl.txt", "nonl.txt", False),
    ("modified", "nonl2.txt", "nonl2.txt", False),
    ("modified", "crlf.txt", "crlf.txt", False),
    ("added", None, "é/ü ñ.txt", False),
    ("modified", "ünï cødé.txt", "ünï cødé.txt", False),
    ("renamed", "with space/file name.txt", "with space/new name.txt", False),
    ("added", None, "a file with spaces.txt", False),
    ("added", None, "a/b/c/d.txt", False),
    ("added", None, "a/link-to-mod", False),
    ("modified", "links/current", "links/current", False),
    ("modified", "deep/nested/keep.txt", "deep/nested/keep.txt", False),
}


def git(repo: Path, *args: str) -> bytes:
    proc = run_git(list(args), git_dir=repo / ".git", work_tree=repo, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def make_repo(root: Path, files: dict[str, bytes], *, executable: Sequence[str] = (), links: dict[str, str] | None = None) -> Path:
    """A committed repo (made with our neutral git), clean, so `airlock apply` needs no --allow-dirty."""
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if rel in executable else 0o644)
    for rel, target in (links or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / rel)
    git(root, "init", "--quiet", "--template=")
    git(root, "add", "-A")
    git(root, *IDENTITY, "commit", "--quiet", "-m", "start")
    return root


def copy_repo(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def run_script_on_host(repo: Path, script: str) -> None:
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOME": str(repo)}
    done = subprocess.run(["bash", "-c", script], cwd=repo, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0 and b"SCRIPT-DONE" in done.stdout, done.stderr


def test_every_kind_of_change_round_trips_exactly(run_scripted, tmp_path: Path, runtime: str) -> None:
    start = make_repo(tmp_path / "start", START, executable=START_EXECUTABLE, links=START_LINKS)
    start_snapshot = tree_snapshot(start)

    expected_repo = copy_repo(start, tmp_path / "expected")
    run_script_on_host(expected_repo, SCRIPT)
    expected = tree_snapshot(expected_repo)
    # The script really makes the changes this test is about (so a match below means something).
    assert expected["bin/new.bin"] == ("file", 0, bytes(range(256)))
    assert expected["bin/blob.bin"][2] == START["bin/blob.bin"] + b"tail\x00\xff\x01"
    assert expected["scripts/tool.sh"][1] and not expected["scripts/run.sh"][1]
    assert expected["crlf.txt"][2] == b"alpha\r\nBETA\r\ngamma\r\ndelta\r\n"
    assert expected["nonl.txt"][2] == b"no final newline, changed" and expected["nonl2.txt"][2] == b"gets a newline\n"
    assert expected["empty.txt"] == ("file", 0, b"")
    assert expected["a/link-to-mod"] == ("link", None, b"../text/mod.txt")
    assert expected["links/current"] == ("link", None, b"../added.txt")
    assert expected["é/ü ñ.txt"][2] == b"unicode folder\n"
    assert "gone.txt" not in expected and "move_me.txt" not in expected and "with space/file name.txt" not in expected

    result, _ = run_scripted(start, [reply(tool_use("run_bash", command=SCRIPT)), reply(text("done"))], "--runtime", runtime)

    assert result.exit_code == 0, result.stdout + result.stderr
    [call] = result.events("tool_call")
    assert call["meta"]["exit_code"] == 0 and "SCRIPT-DONE" in call["output"], call["output"]
    assert tree_snapshot(start) == start_snapshot  # the host repo is never touched

    patch = result.record["patch"]
    assert patch["exported"] is True and patch["refused"] == []
    changes = {(c["kind"], c["old_path"], c["new_path"], c["binary"]) for c in patch["changes"]}
    assert changes == EXPECTED_CHANGES
    assert patch["files_changed"] == len(patch["changes"]) == len(EXPECTED_CHANGES)
    assert patch["insertions"] == sum(c["insertions"] for c in patch["changes"]) > 0
    assert patch["deletions"] == sum(c["deletions"] for c in patch["changes"]) > 0
    by_path = {c["new_path"] or c["old_path"]: c for c in patch["changes"]}
    assert (by_path["scripts/tool.sh"]["old_mode"], by_path["scripts/tool.sh"]["new_mode"]) == ("100644", "100755")
    assert (by_path["scripts/run.sh"]["old_mode"], by_path["scripts/run.sh"]["new_mode"]) == ("100755", "100644")
    assert by_path["a/link-to-mod"]["new_mode"] == by_path["links/current"]["new_mode"] == "120000"
    assert result.patch.count(b"diff --git ") == len(EXPECTED_CHANGES)

    target = copy_repo(start, tmp_path / "target")  # clean per its index: no --allow-dirty
    applied = airlock("apply", str(result.out / "patch.diff"), "--repo", str(target))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"applied {len(EXPECTED_CHANGES)} files (+{patch['insertions']} -{patch['deletions']})" in applied.stdout
    assert tree_snapshot(target) == expected


OUTSIDE_SCRIPT = (
    "ln -s /etc/passwd leak && ln -s ../../.. up && mkdir '[' && ln -s /etc/shadow '[/x]' && "
    "mkdir -p 'sub/.g\u200cit' && printf '[core]\\n\\tfsmonitor = touch /tmp/pwned\\n' > 'sub/.g\u200cit/config' && "
    "find . -print | sort"
)


def test_escaping_symlinks_and_dotgit_lookalikes_are_refused_and_the_rest_is_kept(run_scripted, tmp_path: Path) -> None:
    start = make_repo(tmp_path / "start", {"hello.txt": b"hello\n", "sub/keep.txt": b"keep\n"})
    turns = [
        reply(
            tool_use("run_bash", command=OUTSIDE_SCRIPT),
            tool_use("write_file", path="hello.txt", content="hello, kept edit\n"),
        ),
        reply(text("done")),
    ]
    result, _ = run_scripted(start, turns)

    assert result.exit_code == 0, result.stdout + result.stderr
    listed = result.events("tool_call")[0]["output"].splitlines()  # the sandbox did create them all
    assert {"./leak", "./up", "./[/x]", "./sub/.g\u200cit/config"} <= set(listed), listed
    patch = result.record["patch"]
    refused = {r["path"]: r["reason"] for r in patch["refused"]}
    assert refused == {
        "leak": "symlink points outside the repository: /etc/passwd",
        "up": "symlink points outside the repository: ../../..",
        "[/x]": "symlink points outside the repository: /etc/shadow",
        "sub/.g\\u200cit/config": "writes inside .git",
    }
    for path, reason in refused.items():  # also said on the terminal, verbatim
        assert f"refused from the patch: {path}: {reason}" in result.stdout
    assert [(c["kind"], c["new_path"]) for c in patch["changes"]] == [("modified", "hello.txt")]
    assert patch["files_changed"] == 1
    assert b"/etc/passwd" not in result.patch and b"fsmonitor" not in result.patch and b"../.." not in result.patch

    target = copy_repo(start, tmp_path / "target")
    applied = airlock("apply", str(result.out / "patch.diff"), "--repo", str(target))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    expected = {**tree_snapshot(start), "hello.txt": ("file", 0, b"hello, kept edit\n")}
    assert tree_snapshot(target) == expected


@pytest.mark.parametrize(
    ("make_bad", "bad_path"),
    [
        ("mkdir -p sub/.GIT && echo evil > sub/.GIT/config", "sub/.GIT/config"),
        ("mkdir -p sub/git~1 && echo evil > sub/git~1/config", "sub/git~1/config"),
        ("git init -q nested && echo x > nested/file.txt", "nested"),
    ],
    ids=["dotGIT", "git~1", "uncommitted-nested-repo"],
)
def test_a_path_git_cannot_record_does_not_lose_the_rest_of_the_patch(run_scripted, tmp_path: Path, make_bad: str, bad_path: str) -> None:
    """git itself refuses to index these (`git add --all` fails on them): the export skips and names them."""
    start = make_repo(tmp_path / "start", {"hello.txt": b"hello\n"})
    turns = [reply(tool_use("write_file", path="hello.txt", content="kept\n"), tool_use("run_bash", command=make_bad)), reply(text("done"))]
    result, _ = run_scripted(start, turns)
    assert result.events("tool_call")[1]["meta"]["exit_code"] == 0
    assert result.exit_code == 0 and result.record["status"] == "completed", result.stdout
    assert b"+kept\n" in result.patch and bad_path.encode() not in result.patch
    assert [(c["kind"], c["new_path"]) for c in result.record["patch"]["changes"]] == [("modified", "hello.txt")]
    # What git could not record is named, not silently lost: in run.json and on the terminal.
    refused = result.record["patch"]["refused"]
    assert refused and all(bad_path in r["path"] and r["reason"] == "git cannot record this path in a patch" for r in refused), refused
    for r in refused:
        assert f"refused from the patch: {r['path']}: {r['reason']}" in result.stdout
