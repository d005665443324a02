"""check_patch: real diffs from real git (made with our neutral git) and hand-crafted hostile ones."""

from __future__ import annotations

import base64
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.patch.check import UNPARSEABLE, binary_content, c_unquote, check_patch, is_dotgit_like, path_problem, symlink_problem
from orchestrator.patch.neutral_git import neutral_git_dir, run_git
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
BLOB_X = b"587be6b4c3f93f93c489c0111bba5596147a26cb"  # blob of b"x\n"


class Tree:
    """A work tree plus a neutral git dir of ours: produces diffs exactly like the sandbox."""

    def __init__(self, root: Path, git_dir: Path) -> None:
        self.root, self.git_dir = root, git_dir

    def git(self, *args: str) -> bytes:
        proc = run_git(list(args), git_dir=self.git_dir, work_tree=self.root, cwd=self.root)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def write(self, rel: str, data: bytes | str, mode: int | None = None) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        if mode is not None:
            path.chmod(mode)

    def snapshot(self) -> str:
        self.git("add", "-A")
        return self.git("write-tree").decode().strip()

    def diff(self, base: str, *, as_exported: bool = True) -> bytes:
        """git's diff; as the sandbox exports it, every binary hunk a literal (tools/baseline.py)."""
        self.git("add", "-A")
        raw = self.git(*SANDBOX_DIFF, base)
        return literal_binaries(raw, lambda oid: self.git("cat-file", "blob", oid)) if as_exported else raw

    def numstat(self, base: str) -> tuple[int, int, int]:
        out = self.git("diff", "--cached", "-M", "--numstat", "-z", base)
        files = ins = dels = 0
        fields = out.split(b"\0")
        i = 0
        while i < len(fields) and fields[i]:
            added, deleted, path = fields[i].split(b"\t", 2)
            files += 1
            ins += int(added) if added != b"-" else 0
            dels += int(deleted) if deleted != b"-" else 0
            i += 3 if path == b"" else 1  # renames: "a\td\t\0old\0new\0"
        return files, ins, dels


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    root = tmp_path / "work"
    root.mkdir()
    with neutral_git_dir() as git_dir:
        yield Tree(root, git_dir)


def build_baseline(t: Tree) -> str:
    t.write("mod.txt", "one\ntwo\nthree\n")
    t.write("gone.txt", "bye\n")
    t.write("move_me.txt", "".join(f"line {i}\n" for i in range(20)))
    t.write("move_edit.txt", "".join(f"row {i}\n" for i in range(20)))
    t.write("tool.sh", "#!/bin/sh\necho hi\n")
    t.write("blob.bin", bytes(range(256)) * 4)
    t.write("crlf.txt", b"a\r\nb\r\n")
    t.write("old name with spaces.txt", "spaces\n")
    t.write("tab\there.txt", "tab\n")
    return t.snapshot()


def make_changes(t: Tree) -> None:
    t.write("mod.txt", "one\nTWO\nthree\nfour\n")
    (t.root / "gone.txt").unlink()
    (t.root / "move_me.txt").rename(t.root / "moved.txt")
    edited = (t.root / "move_edit.txt").read_text().replace("row 3\n", "row three\n")
    (t.root / "move_edit.txt").unlink()
    t.write("dir/moved_edit.txt", edited)
    (t.root / "tool.sh").chmod(0o755)
    t.write("blob.bin", bytes(range(256)) * 3 + b"\x00changed")
    t.write("new.bin", b"\x00\x01\x02binary\xff" * 50)
    t.write("empty.txt", b"")
    t.write("nonl.txt", "no newline at end")
    t.write("crlf.txt", b"a\r\nB\r\nc\r\n")
    t.write("café é.txt", "unicode\n")
    t.write("new name with spaces.txt", "more spaces\n")
    (t.root / "old name with spaces.txt").rename(t.root / "renamed with spaces.txt")
    (t.root / "tab\there.txt").rename(t.root / 'quote"and\nnewline.txt')
    t.write("deep/er/nest/file.py", "print('nested')\n")
    os.symlink("../mod.txt", t.root / "deep" / "link")


def by_path(changes: list) -> dict[str, object]:
    return {c.path: c for c in changes}


def test_real_diff_is_fully_kept_and_understood(tree: Tree) -> None:
    base = build_baseline(tree)
    make_changes(tree)
    raw = tree.diff(base)
    checked = check_patch(raw)

    assert checked.refused == []
    assert checked.patch == raw
    c = by_path(checked.changes)
    assert c["mod.txt"].kind == "modified" and (c["mod.txt"].insertions, c["mod.txt"].deletions) == (2, 1)
    assert c["gone.txt"].kind == "deleted" and c["gone.txt"].new_path is None and c["gone.txt"].deletions == 1
    assert c["moved.txt"].kind == "renamed" and c["moved.txt"].old_path == "move_me.txt"
    assert c["dir/moved_edit.txt"].kind == "renamed" and c["dir/moved_edit.txt"].insertions == 1
    assert c["tool.sh"].kind == "mode-changed"
    assert (c["tool.sh"].old_mode, c["tool.sh"].new_mode) == ("100644", "100755")
    assert c["blob.bin"].kind == "modified" and c["blob.bin"].binary
    assert c["new.bin"].kind == "added" and c["new.bin"].binary and c["new.bin"].insertions == 0
    assert c["empty.txt"].kind == "added" and c["empty.txt"].new_mode == "100644"
    assert c["nonl.txt"].insertions == 1
    assert (c["crlf.txt"].insertions, c["crlf.txt"].deletions) == (2, 1)
    assert c["café é.txt"].kind == "added"
    assert c["new name with spaces.txt"].kind == "added"
    assert c["renamed with spaces.txt"].old_path == "old name with spaces.txt"
    assert c['quote"and\nnewline.txt'].old_path == "tab\there.txt"
    assert c["deep/er/nest/file.py"].kind == "added"
    assert c["deep/link"].new_mode == "120000"

    files, ins, dels = tree.numstat(base)
    assert checked.stats() == {"files_changed": files, "insertions": ins, "deletions": dels}
    record = checked.to_record()
    assert record["stats"] == checked.stats() and record["refused"] == []


def test_quoted_names_decode() -> None:
    assert c_unquote(rb'"a/\303\251 x.txt"') == ("a/é x.txt".encode(), 18)
    assert c_unquote(rb'"t\tb\n\"\\"')[0] == b't\tb\n"\\'


def test_empty_patch() -> None:
    checked = check_patch(b"")
    assert checked.patch == b"" and checked.changes == [] and checked.refused == []
    assert check_patch(b"\n\n").refused == []


# ----------------------------------------------------------------------------- hostile diffs


def quote(path: bytes) -> bytes:
    """C-quote like git does for names with control or non-ASCII bytes."""
    out = bytearray(b'"')
    for b in path:
        if b in b'"\\':
            out += b"\\" + bytes([b])
        elif b < 0x20 or b >= 0x7F:
            out += b"\\%03o" % b
        else:
            out.append(b)
    return bytes(out + b'"')


def new_file(path: bytes, *, mode: bytes = b"100644", body: bytes = b"+x\n", count: int = 1) -> bytes:
    needs_quote = any(b < 0x20 or b >= 0x7F or b in b'"\\' for b in path)
    a = quote(b"a/" + path) if needs_quote else b"a/" + path
    b = quote(b"b/" + path) if needs_quote else b"b/" + path
    return (
        b"diff --git " + a + b" " + b + b"\n"
        b"new file mode " + mode + b"\n"
        b"index 0000000000000000000000000000000000000000.." + BLOB_X + b"\n"
        b"--- /dev/null\n"
        b"+++ " + b + b"\n"
        b"@@ -0,0 +1" + (b"" if count == 1 else b",%d" % count) + b" @@\n" + body
    )


def symlink(path: bytes, target: bytes) -> bytes:
    return new_file(path, mode=b"120000", body=b"+" + target + b"\n\\ No newline at end of file\n")


def git_base85(data: bytes) -> bytes:
    out = b""
    for i in range(0, len(data), 52):
        chunk = data[i : i + 52]
        size = len(chunk)
        char = chr(ord("A") + size - 1) if size <= 26 else chr(ord("a") + size - 27)
        out += char.encode() + base64.b85encode(chunk, pad=True) + b"\n"
    return out


GOOD_1 = new_file(b"good_one.txt")
GOOD_2 = (
    b"diff --git a/keep.txt b/keep.txt\n"
    b"index 5626abf0f72e58d7a153368ba57db4c673c0e171.." + BLOB_X + b" 100644\n"
    b"--- a/keep.txt\n"
    b"+++ b/keep.txt\n"
    b"@@ -1 +1 @@\n"
    b"-one\n"
    b"+x\n"
)

HOSTILE: list[tuple[str, bytes, str]] = [
    ("traversal", new_file(b"../evil.txt"), "path escapes the repository"),
    ("deep traversal", new_file(b"a/../../evil.txt"), "path escapes the repository"),
    ("absolute", new_file(b"/etc/evil"), "absolute path"),
    ("hook", new_file(b".git/hooks/pre-commit", mode=b"100755"), "writes inside .git"),
    ("upper case", new_file(b".GIT/config"), "writes inside .git"),
    ("trailing dot", new_file(b".git./x"), "writes inside .git"),
    ("trailing space", new_file(b"sub/.git /x"), "writes inside .git"),
    ("8.3 name", new_file(b"git~1/config"), "writes inside .git"),
    ("HFS ignorable", new_file(".g\u200cit/config".encode()), "writes inside .git"),
    ("HFS BOM", new_file(".git\ufeff/config".encode()), "writes inside .git"),
    ("nested .git", new_file(b"vendor/lib/.git/config"), "writes inside .git"),
    ("NUL", new_file(b"nul\x00byte"), "path contains a NUL byte"),
    (
        "gitlink",
        b"diff --git a/sub b/sub\nnew file mode 160000\nindex 0000000000000000000000000000000000000000.."
        + BLOB_X
        + b"\n--- /dev/null\n+++ b/sub\n@@ -0,0 +1 @@\n+Subproject commit "
        + BLOB_X
        + b"\n",
        "submodule (gitlink) changes are not exported",
    ),
    ("symlink absolute", symlink(b"passwd", b"/etc/passwd"), "symlink points outside the repository: /etc/passwd"),
    ("symlink escape", symlink(b"a/link", b"../../outside"), "symlink points outside the repository: ../../outside"),
    ("symlink into .git", symlink(b"cfg", b"sub/../.git/config"), "symlink points into .git: sub/../.git/config"),
    (
        "binary symlink",
        b"diff --git a/bl b/bl\nnew file mode 120000\nindex 0000000000000000000000000000000000000000.."
        + BLOB_X
        + b"\nGIT binary patch\nliteral 11\n"
        + git_base85(zlib.compress(b"/etc/passwd"))
        + b"\n",
        "symlink points outside the repository: /etc/passwd",
    ),
    (
        "rename into .git",
        b"diff --git a/x b/.git/hooks/post-checkout\nsimilarity index 100%\nrename from x\nrename to .git/hooks/post-checkout\n",
        "writes inside .git",
    ),
    (
        "file becomes symlink without content",
        b"diff --git a/f b/f\nold mode 100644\nnew mode 120000\n",
        "symlink change cannot be checked",
    ),
    ("garbage", b"diff --git a/foo b/foo\nthis is not a diff\n", UNPARSEABLE),
    (
        "smuggled traditional patch after a hunk",
        new_file(b"ok.txt") + b"--- a/.git/config\n+++ b/.git/config\n@@ -0,0 +1 @@\n+[core]\n",
        UNPARSEABLE,
    ),
    ("hunk longer than declared", new_file(b"long.txt", body=b"+x\n+y\n"), UNPARSEABLE),
    ("hunk shorter than declared", new_file(b"short.txt", count=3), UNPARSEABLE),
    (
        "content without a mode",
        b"diff --git a/m b/m\nindex 1111111..2222222\n--- a/m\n+++ b/m\n@@ -1 +1 @@\n-a\n+b\n",
        UNPARSEABLE,
    ),
    (
        "--- disagrees with header",
        b"diff --git a/m b/m\nindex 1111111..2222222 100644\n--- a/.git/config\n+++ b/m\n@@ -1 +1 @@\n-a\n+b\n",
        "writes inside .git",
    ),
    (
        "name mismatch",
        b"diff --git a/m b/m\nindex 1111111..2222222 100644\n--- a/n\n+++ b/m\n@@ -1 +1 @@\n-a\n+b\n",
        UNPARSEABLE,
    ),
    (
        "unquoted control character in a name",
        b"diff --git a/x b/y\nsimilarity index 100%\nrename from x\nrename to .git\tfoo\n",
        UNPARSEABLE,
    ),
    (
        "CR in header",
        b"diff --git a/m b/m\nindex 1111111..2222222 100644\r\n--- a/m\n+++ b/m\n@@ -1 +1 @@\n-a\n+b\n",
        UNPARSEABLE,
    ),
]


@pytest.mark.parametrize("name,section,reason", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_section_refused_good_ones_kept(name: str, section: bytes, reason: str) -> None:
    checked = check_patch(GOOD_1 + section + GOOD_2)
    assert [r.reason for r in checked.refused] == [reason]
    assert checked.patch == GOOD_1 + GOOD_2
    assert [c.path for c in checked.changes] == ["good_one.txt", "keep.txt"]


def test_all_hostile_sections_at_once() -> None:
    raw = GOOD_1 + b"".join(h[1] for h in HOSTILE) + GOOD_2
    checked = check_patch(raw)
    assert [r.reason for r in checked.refused] == [h[2] for h in HOSTILE]
    assert checked.patch == GOOD_1 + GOOD_2
    assert checked.stats() == {"files_changed": 2, "insertions": 2, "deletions": 1}


def test_text_before_first_file_is_refused() -> None:
    checked = check_patch(b"From: someone\n--- a/x\n+++ b/x\n" + GOOD_1)
    assert [r.reason for r in checked.refused] == ["unexpected text before the first file"]
    assert checked.patch == GOOD_1


def test_missing_final_newline_is_unparseable() -> None:
    checked = check_patch(GOOD_1 + GOOD_2[:-1])
    assert [r.reason for r in checked.refused] == [UNPARSEABLE]
    assert checked.patch == GOOD_1


def test_symlink_inside_tree_is_kept() -> None:
    checked = check_patch(symlink(b"docs/link", b"../src/./main.py"))
    assert checked.refused == [] and checked.changes[0].new_mode == "120000"


@pytest.mark.parametrize(
    "component,expected",
    [
        (b".git", True),
        (b".Git", True),
        (b".git...", True),
        (b".git . ", True),
        (b"GIT~1", True),
        (".g\u200dit".encode(), True),
        (".git\u206f".encode(), True),
        (b".git::$INDEX_ALLOCATION", True),
        (b".gitignore", False),
        (b".gitmodules", False),
        (b".gitattributes", False),
        (b"git", False),
        (b"x.git", False),
    ],
)
def test_dotgit_lookalikes(component: bytes, expected: bool) -> None:
    assert is_dotgit_like(component) is expected


def test_path_and_symlink_rules() -> None:
    assert path_problem(b".gitmodules") is None
    assert path_problem(b"a//b") == "invalid path"
    assert path_problem(b"") == "empty path"
    assert symlink_problem(b"a/b/link", b"../../x") is None
    assert symlink_problem(b"a/b/link", b"../../../x") is not None
    assert symlink_problem(b"link", b"") is not None
    assert symlink_problem(b"b", b"a/../x") == "symlink target goes up after a folder name: a/../x"


def test_refusal_paths_are_one_printable_line() -> None:
    checked = check_patch(new_file(b"x\n/.git/\xff"))
    assert [(r.path, r.reason) for r in checked.refused] == [("x\\n/.git/\\xff", "writes inside .git")]


def test_binary_hunks_must_be_literals_that_match_their_index_line(tree: Tree) -> None:
    tree.write("blob.bin", bytes(range(256)) * 40)
    base = tree.snapshot()
    tree.write("blob.bin", bytes(range(256)) * 39 + b"\x00changed")
    raw = tree.diff(base, as_exported=False)
    assert b"\ndelta " in raw  # git's own choice here: smaller than the whole file
    [refusal] = check_patch(raw).refused
    assert refusal.reason.startswith("binary delta: what it writes depends on the old file")

    exported = tree.diff(base)
    checked = check_patch(exported)
    assert not checked.refused and checked.patch == exported
    old, new = binary_content(exported)
    assert (old, new) == (bytes(range(256)) * 40, bytes(range(256)) * 39 + b"\x00changed")

    forged = exported.replace(b"literal 10240\n", b"literal 10240\nzzz\n", 1)  # not base85: unparseable
    assert check_patch(forged).refused[0].reason == UNPARSEABLE
    head, _, _ = exported.partition(b"GIT binary patch\n")
    other = head + b"GIT binary patch\nliteral 3\n" + git_base85(zlib.compress(b"abc")) + b"\n"
    assert check_patch(other).refused[0].reason == "binary content that does not match its index line"
    short = head + b"GIT binary patch\nliteral 4\n" + git_base85(zlib.compress(b"abc")) + b"\n"
    assert check_patch(short).refused[0].reason == "binary literal that does not inflate to its stated size"
