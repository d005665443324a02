"""The attention and spoofing analysis of `airlock review`/`show`: a table of names, modes and contents."""

from __future__ import annotations

import pytest

from orchestrator.patch.check import FileChange
from orchestrator.review.flags import change_flags, content_flags, name_flags, sensitive_reason, skeleton
from orchestrator.terminal import escape_char

# (name, codes that must be flagged, the most severe severity) -- () and None: nothing to flag.
NAMES = [
    ("src/app.py", (), None),
    ("ünï cødé.txt", (), None),
    ("with space/file name.txt", (), None),
    ("报告/总结.md", (), None),
    ("notes\u202ecod.sh", ("bidi",), "danger"),
    ("a\u2066b\u2069.txt", ("bidi",), "danger"),
    ("x\u200e.txt", ("bidi",), "danger"),
    ("zero\u200bwidth.py", ("invisible",), "danger"),
    ("bom\ufeff.py", ("invisible",), "danger"),
    ("tag\U000e0041.py", ("invisible",), "danger"),
    ("two\nlines.txt", ("newline",), "danger"),
    ("carriage\rreturn.txt", ("newline",), "danger"),
    ("tab\tname.txt", ("control",), "danger"),
    ("bell\x07.txt", ("control",), "danger"),
    ("esc\x1b[31mred.txt", ("control",), "danger"),
    ("c1\x85.txt", ("newline",), "danger"),
    ("c1\x9b.txt", ("control",), "danger"),
    ("nbsp\u00a0name.txt", ("space",), "attention"),
    ("bad\udcffbyte.bin", ("encoding",), "danger"),
    (".gіthub/workflows/ci.yml", ("lookalike",), "danger"),  # Cyrillic і
    (".g1thub/workflows/ci.yml", ("lookalike",), "danger"),
    ("ＭＡＫＥＦＩＬＥ", ("lookalike",), "danger"),  # full-width
    (".gіt/config", ("lookalike",), "danger"),
    ("Makefi1e", ("lookalike",), "danger"),
    ("СLAUDE.md", ("lookalike",), "danger"),  # Cyrillic С
    ("pаypal.txt", ("mixed-script",), "attention"),  # Latin with a Cyrillic а
    ("trailing. ", ("space",), "attention"),
    ("win\\path.txt", ("backslash",), "attention"),
]


@pytest.mark.parametrize(("name", "codes", "worst"), NAMES, ids=[repr(n[0]) for n in NAMES])
def test_name_flags(name: str, codes: tuple[str, ...], worst: str | None) -> None:
    flags = name_flags(name)
    assert {f.code for f in flags} >= set(codes)
    if worst is None:
        assert flags == []
    else:
        assert min(flags, key=lambda f: ["danger", "attention", "note"].index(f.severity)).severity == worst
    assert all(f.path == name for f in flags)


# (path, category) -- None: not a sensitive place.
PLACES = [
    (".github/workflows/ci.yml", "ci"),
    (".GITHUB/dependabot.yml", "ci"),
    ("services/api/.github/CODEOWNERS", "ci"),
    (".gitlab-ci.yml", "ci"),
    (".circleci/config.yml", "ci"),
    ("Jenkinsfile", "ci"),
    ("CODEOWNERS", "owners"),
    ("Makefile", "build"),
    ("sub/dir/makefile", "build"),
    ("rules.mk", "build"),
    ("CMakeLists.txt", "build"),
    ("setup.py", "build"),
    ("pyproject.toml", "build"),
    ("web/package.json", "build"),
    ("Dockerfile", "container"),
    ("Dockerfile.dev", "container"),
    ("docker-compose.override.yml", "container"),
    (".gitattributes", "git"),
    (".gitmodules", "git"),
    (".pre-commit-config.yaml", "hooks"),
    (".husky/pre-commit", "hooks"),
    (".vscode/tasks.json", "editor"),
    (".idea/workspace.xml", "editor"),
    (".devcontainer/devcontainer.json", "editor"),
    (".claude/settings.json", "agent"),
    (".cursor/rules/x.mdc", "agent"),
    ("AGENTS.md", "agent"),
    ("CLAUDE.md", "agent"),
    (".envrc", "shell"),
    (".npmrc", "pkgconf"),
    ("requirements-dev.txt", "deps"),
    ("uv.lock", "deps"),
    ("src/sitecustomize.py", "startup"),
    ("site-packages/evil.pth", "startup"),
    ("tests/conftest.py", "tests"),
    ("scripts/deploy.sh", "script"),
    ("tools/build.ps1", "script"),
    ("src/app.py", None),
    ("README.md", None),
    ("docs/github.md", None),
    ("makefile_notes.txt", None),
    (".gitignore", None),  # a note, not a sensitive place: see test_change_flags
]


@pytest.mark.parametrize(("path", "category"), PLACES, ids=[p[0] for p in PLACES])
def test_sensitive_places(path: str, category: str | None) -> None:
    reason = sensitive_reason(path)
    assert (reason[0] if reason else None) == category


def change(kind: str, old: str | None, new: str | None, old_mode: str | None = "100644", new_mode: str | None = "100644", **kw: object) -> FileChange:
    return FileChange(kind=kind, old_path=old, new_path=new, old_mode=old_mode, new_mode=new_mode, **kw)  # type: ignore[arg-type]


CHANGES = [
    (change("modified", "src/a.py", "src/a.py"), set()),
    (change("mode-changed", "run.py", "run.py", "100644", "100755"), {("attention", "exec-bit")}),
    (change("mode-changed", "run.py", "run.py", "100755", "100644"), {("note", "exec-bit")}),
    (change("added", None, "tool", None, "100755"), {("attention", "exec-bit")}),
    (change("added", None, "link", None, "120000"), {("attention", "symlink")}),
    (change("added", None, "logo.png", None, "100644", binary=True), {("note", "binary")}),
    (change("modified", ".gitignore", ".gitignore"), {("note", "gitignore")}),
    (change("deleted", "tests/test_core.py", None, "100644", None), {("attention", "tests")}),
    (change("modified", "tests/test_core.py", "tests/test_core.py"), {("note", "tests")}),
    (change("renamed", ".github/workflows/ci.yml", "ci.yml.bak"), {("attention", "ci")}),  # moving a workflow away counts
    (change("added", None, ".github/workflows/x\u202e.yml", None, "100755"), {("danger", "bidi"), ("attention", "ci"), ("attention", "exec-bit")}),
]


@pytest.mark.parametrize(("file_change", "expected"), CHANGES, ids=[c[0].path for c in CHANGES])
def test_change_flags(file_change: FileChange, expected: set[tuple[str, str]]) -> None:
    flags = change_flags(file_change)
    assert {(f.severity, f.code) for f in flags} == expected
    assert [f.severity for f in flags] == sorted((f.severity for f in flags), key=["danger", "attention", "note"].index)


def test_symlink_flag_names_the_target() -> None:
    [flag] = change_flags(change("added", None, "docs/link", None, "120000"), ["../../etc/passwd"], "../../etc/passwd")
    assert flag.code == "symlink" and "../../etc/passwd" in flag.message


def test_trojan_source_in_added_lines() -> None:
    lines = ["if access_level != 'user\u202e \u2066// Check if admin\u2069 \u2066':", "    x = 1\r", "\tindented", "page\x0cbreak"]
    flags = content_flags("auth.py", lines)
    assert [(f.severity, f.code) for f in flags] == [("danger", "bidi-content")]
    assert "U+202E RIGHT-TO-LEFT OVERRIDE" in flags[0].message
    assert content_flags("ok.py", ["plain\r", "\ttab", "naïve café"]) == []
    assert [f.code for f in content_flags("z.py", ["a\u200bb"])] == ["invisible-content"]
    assert [f.code for f in content_flags("e.py", ["\x1b[2J"])] == ["control-content"]


def test_skeleton_and_escapes() -> None:
    assert skeleton(".gіthub") == skeleton(".github") == skeleton(".GitHub") == skeleton(".g1thub")
    assert skeleton("src") != skeleton(".github")
    assert [escape_char(c) for c in ("\u202e", "\n", "\x1b", "\udcff", "\U000e0041")] == ["\\u202e", "\\n", "\\x1b", "\\xff", "\\U000e0041"]


@pytest.mark.parametrize(
    "kind, path, was_text, severity",
    [
        ("modified", "app.js", True, "danger"),  # text before, binary now: the NUL trick
        ("modified", "data/blob", True, "danger"),  # whatever its name
        ("added", "src/evil.py", None, "danger"),  # a new source file that git carries as binary
        ("added", "Makefile", None, "danger"),
        ("modified", "logo.png", False, "note"),  # binary before and after: an asset
        ("added", "logo.png", None, "note"),
        ("deleted", "old.js", None, "note"),
    ],
)
def test_a_text_or_source_file_that_is_binary_is_danger(kind: str, path: str, was_text: bool | None, severity: str) -> None:
    old, new = (None if kind == "added" else path), (None if kind == "deleted" else path)
    flags = [f for f in change_flags(change(kind, old, new, binary=True), binary_was_text=was_text) if f.code.startswith("binary")]
    assert [f.severity for f in flags] == [severity]
    assert "shown decoded, with NUL and control bytes escaped" in flags[0].message
