"""What in a change needs a reviewer's special attention, and the names and text that could fool one.

The agent controls every byte of a patch: its file names, its content and its modes. Two kinds of
trouble follow, and each finding is a `Flag`:

- **Spoofing** (`danger`): names that do not read as what they are. Control characters and line
  breaks (a name that looks like two lines), C1 controls, bidirectional overrides and isolates (the
  "Trojan Source" trick: `notes\\u202ecod.sh` reads as `noteshs.doc`), zero-width and other
  invisible characters, odd spaces, bytes that are not UTF-8, and look-alikes of sensitive names
  (`.gіthub` with a Cyrillic і, full-width letters, `1` for `l`). The same characters in *added
  lines* of a file are flagged too: that is how Trojan Source hides code.
- **Sensitive places** (`attention`): files that run code or change how code is built, tested,
  checked or reviewed, usually outside the reviewer's view: CI (`.github/`, `.gitlab-ci.yml`,
  `.circleci/`, `Jenkinsfile`, ...), build scripts (`Makefile`, `*.mk`, `CMakeLists.txt`,
  `setup.py`, `pyproject.toml`, `package.json` whose scripts npm runs on install, `Dockerfile`,
  ...), git's own files (`.gitattributes` filters and diff drivers, `.gitmodules`), hooks
  (`.pre-commit-config.yaml`, `.husky/`), editor and agent configuration that runs commands or
  steers the next agent (`.vscode/`, `.idea/`, `.devcontainer/`, `.claude/`, `.cursor/`,
  `AGENTS.md`, `CLAUDE.md`, `.envrc`, ...), package-manager configuration, dependency lists, code
  Python runs at start-up (`sitecustomize.py`, `*.pth`), `conftest.py` (pytest loads it for every
  test), shell scripts, new executable files and added executable bits, and symlinks.
- **Binary** files are shown decoded, control bytes escaped. A file that was text, or has a source
  extension, and is binary now is `danger`: one NUL byte makes git carry the whole file as an opaque
  binary patch, which is how an appended payload would pass a review that shows only text diffs.
- **Notes** (`note`): worth a glance, rarely a problem: `.gitignore` (it can hide files from later
  diffs), other binary files, a removed executable bit, changed test files.

Matching is case-insensitive (case-insensitive filesystems treat `MAKEFILE` as `Makefile`) and
applies at any depth (a nested `Makefile` or `.vscode/` is just as live in a monorepo). False
positives are cheap for a reviewer; a missed workflow change is not.
"""

from __future__ import annotations

import fnmatch
import unicodedata
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from orchestrator.patch.check import SYMLINK_MODE, FileChange
from orchestrator.terminal import HIDDEN_RE, hidden_kind

Severity = Literal["danger", "attention", "note"]
SEVERITY_ORDER: dict[str, int] = {"danger": 0, "attention": 1, "note": 2}


class Flag(BaseModel):
    """One finding. `path` is the raw name (surrogateescape str): renderers show it escaped."""

    model_config = ConfigDict(frozen=True)

    severity: Severity
    code: str  # short stable id: "bidi", "ci", "exec-bit", ...
    message: str
    path: str | None = None


# ----------------------------------------------------------------------------- hidden characters

_CONTROL_NAMES = {
    0x00: "NUL", 0x07: "BELL", 0x08: "BACKSPACE", 0x09: "TAB", 0x0A: "LINE FEED", 0x0B: "LINE TABULATION",
    0x0C: "FORM FEED", 0x0D: "CARRIAGE RETURN", 0x1B: "ESCAPE", 0x7F: "DELETE", 0x85: "NEXT LINE",
}  # fmt: skip


def describe_char(ch: str) -> str:
    """`U+202E RIGHT-TO-LEFT OVERRIDE`, for tooltips and messages."""
    cp = ord(ch)
    if 0xDC80 <= cp <= 0xDCFF:
        return f"byte 0x{cp - 0xDC00:02X}"
    name = _CONTROL_NAMES.get(cp) or unicodedata.name(ch, "CONTROL CHARACTER" if unicodedata.category(ch) == "Cc" else "UNNAMED")
    return f"U+{cp:04X} {name}"


# ----------------------------------------------------------------------------- look-alikes

# Latin look-alikes from other scripts (a small, high-value part of Unicode's confusables list);
# NFKC already folds full-width and mathematical letters. Digits that pass for letters are folded on
# both sides of the comparison, so ".g1thub" and ".githuЬ" both come out as ".github".
_CONFUSABLES = str.maketrans(
    {
        "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k", "м": "m",
        "н": "h", "о": "o", "р": "p", "ԛ": "q", "ѕ": "s", "т": "t", "у": "y", "х": "x", "ԝ": "w", "ь": "b",
        "ɡ": "g", "ı": "i", "ȷ": "j", "ℓ": "l", "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v",
        "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ϲ": "c", "ϳ": "j", "ԍ": "g", "ɑ": "a", "ʏ": "y",
        "0": "o", "1": "l", "|": "l", "i": "l", "5": "s", "ꓲ": "l", "ǀ": "l", "−": "-", "‐": "-", "‑": "-",
        "–": "-", "—": "-", "․": ".", "﹒": ".", "｡": ".", "٠": ".", "۔": ".",
    }
)  # fmt: skip
_LOOKALIKE_SCRIPTS = ("CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "COPTIC", "LISU")


def skeleton(text: str) -> str:
    """A folded form under which names that look the same compare equal."""
    text = "".join(ch for ch in text if not hidden_kind(ch))
    text = unicodedata.normalize("NFKC", text).casefold()
    return text.translate(_CONFUSABLES).translate(_CONFUSABLES).rstrip(". ")  # twice: "ı" -> "i" -> "l"


def _scripts(component: str) -> set[str]:
    scripts = set()
    for ch in component:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            scripts.add(name.split(" ", 1)[0] if name else "UNKNOWN")
    return scripts


# ----------------------------------------------------------------------------- sensitive places

CI = "CI configuration: it runs code in CI, often with the repository's secrets"
BUILD = "build script: it runs code on every build or install"
CONTAINER = "container build: it decides what runs in the image"
GIT = "git configuration in the tree: filters, diff drivers and attributes change what git shows and runs"
SUBMODULES = "submodule list: git fetches these URLs"
HOOKS = "git hooks configuration: it runs code on commit or push"
EDITOR = "editor configuration: tasks, launch settings and extensions can run commands when the folder is opened"
AGENT = "instructions or settings for coding agents: they steer the next agent that works here"
PKGCONF = "package-manager configuration: registries and install scripts"
DEPS = "dependency list: what gets downloaded and run"
STARTUP = "Python runs it at every interpreter start"
SHELL = "direnv runs it when someone enters the folder"
TESTS_HOOK = "pytest loads it for every test in its folder: it can change any test's outcome"
SCRIPT = "shell script"
OWNERS = "review rules: who must approve changes"

# folder name (any depth) -> why
SENSITIVE_DIRS: dict[str, tuple[str, str]] = {
    ".github": ("ci", CI), ".gitlab": ("ci", CI), ".circleci": ("ci", CI), ".buildkite": ("ci", CI),
    ".ci": ("ci", CI), ".woodpecker": ("ci", CI), ".forgejo": ("ci", CI), ".gitea": ("ci", CI),
    ".azure-pipelines": ("ci", CI), ".tekton": ("ci", CI),
    ".husky": ("hooks", HOOKS), ".githooks": ("hooks", HOOKS),
    ".vscode": ("editor", EDITOR), ".idea": ("editor", EDITOR), ".devcontainer": ("editor", EDITOR),
    ".fleet": ("editor", EDITOR), ".zed": ("editor", EDITOR), ".theia": ("editor", EDITOR),
    ".claude": ("agent", AGENT), ".cursor": ("agent", AGENT), ".windsurf": ("agent", AGENT),
    ".continue": ("agent", AGENT), ".codex": ("agent", AGENT), ".gemini": ("agent", AGENT),
    ".amazonq": ("agent", AGENT), ".roo": ("agent", AGENT), ".clinerules": ("agent", AGENT),
    ".junie": ("agent", AGENT), ".aider": ("agent", AGENT),
}  # fmt: skip

# file name (any depth, case-insensitive; fnmatch patterns allowed) -> why
SENSITIVE_FILES: dict[str, tuple[str, str]] = {
    ".gitlab-ci.yml": ("ci", CI), "jenkinsfile": ("ci", CI), ".travis.yml": ("ci", CI),
    "azure-pipelines.yml": ("ci", CI), "bitbucket-pipelines.yml": ("ci", CI), ".drone.yml": ("ci", CI),
    "appveyor.yml": ("ci", CI), ".cirrus.yml": ("ci", CI), "cloudbuild.yaml": ("ci", CI), "cloudbuild.yml": ("ci", CI),
    "codeowners": ("owners", OWNERS),
    "makefile": ("build", BUILD), "gnumakefile": ("build", BUILD), "*.mk": ("build", BUILD),
    "cmakelists.txt": ("build", BUILD), "*.cmake": ("build", BUILD), "meson.build": ("build", BUILD),
    "setup.py": ("build", BUILD), "setup.cfg": ("build", BUILD), "pyproject.toml": ("build", BUILD),
    "noxfile.py": ("build", BUILD), "tox.ini": ("build", BUILD), "manifest.in": ("build", BUILD),
    "package.json": ("build", BUILD + " (npm runs its scripts: preinstall, postinstall, test, ...)"),
    "build.gradle": ("build", BUILD), "build.gradle.kts": ("build", BUILD), "settings.gradle": ("build", BUILD),
    "settings.gradle.kts": ("build", BUILD), "gradle-wrapper.properties": ("build", BUILD), "pom.xml": ("build", BUILD),
    "build.xml": ("build", BUILD), "build.rs": ("build", BUILD), "cargo.toml": ("build", BUILD),
    "rakefile": ("build", BUILD), "*.gemspec": ("build", BUILD), "justfile": ("build", BUILD),
    "taskfile.yml": ("build", BUILD), "taskfile.yaml": ("build", BUILD), "sconstruct": ("build", BUILD),
    "build.bazel": ("build", BUILD), "workspace": ("build", BUILD), "workspace.bazel": ("build", BUILD),
    "module.bazel": ("build", BUILD), "*.bzl": ("build", BUILD), "configure": ("build", BUILD),
    "configure.ac": ("build", BUILD), "go.mod": ("deps", DEPS),
    "dockerfile": ("container", CONTAINER), "dockerfile.*": ("container", CONTAINER),
    "*.dockerfile": ("container", CONTAINER), "containerfile": ("container", CONTAINER),
    "docker-compose*.yml": ("container", CONTAINER), "docker-compose*.yaml": ("container", CONTAINER),
    "compose.yml": ("container", CONTAINER), "compose.yaml": ("container", CONTAINER), ".dockerignore": ("container", CONTAINER),
    ".gitattributes": ("git", GIT), ".gitmodules": ("git", SUBMODULES), ".lfsconfig": ("git", GIT),
    ".pre-commit-config.yaml": ("hooks", HOOKS), ".pre-commit-hooks.yaml": ("hooks", HOOKS),
    "lefthook.yml": ("hooks", HOOKS), "lefthook.yaml": ("hooks", HOOKS), ".lintstagedrc*": ("hooks", HOOKS),
    "agents.md": ("agent", AGENT), "claude.md": ("agent", AGENT), "claude.local.md": ("agent", AGENT),
    "gemini.md": ("agent", AGENT), ".cursorrules": ("agent", AGENT), ".windsurfrules": ("agent", AGENT),
    "copilot-instructions.md": ("agent", AGENT), ".mcp.json": ("agent", AGENT), "mcp.json": ("agent", AGENT),
    ".aider.conf.yml": ("agent", AGENT), ".goosehints": ("agent", AGENT),
    ".editorconfig": ("editor", EDITOR), "*.code-workspace": ("editor", EDITOR), ".envrc": ("shell", SHELL),
    ".npmrc": ("pkgconf", PKGCONF), ".yarnrc": ("pkgconf", PKGCONF), ".yarnrc.yml": ("pkgconf", PKGCONF),
    ".pypirc": ("pkgconf", PKGCONF), "pip.conf": ("pkgconf", PKGCONF), ".condarc": ("pkgconf", PKGCONF),
    "uv.toml": ("pkgconf", PKGCONF), ".cargo/config.toml": ("pkgconf", PKGCONF), "nuget.config": ("pkgconf", PKGCONF),
    "requirements*.txt": ("deps", DEPS), "constraints*.txt": ("deps", DEPS), "pipfile": ("deps", DEPS),
    "pipfile.lock": ("deps", DEPS), "poetry.lock": ("deps", DEPS), "uv.lock": ("deps", DEPS),
    "package-lock.json": ("deps", DEPS), "yarn.lock": ("deps", DEPS), "pnpm-lock.yaml": ("deps", DEPS),
    "cargo.lock": ("deps", DEPS), "go.sum": ("deps", DEPS), "gemfile": ("deps", DEPS), "gemfile.lock": ("deps", DEPS),
    "sitecustomize.py": ("startup", STARTUP), "usercustomize.py": ("startup", STARTUP), "*.pth": ("startup", STARTUP),
    "conftest.py": ("tests", TESTS_HOOK), "pytest.ini": ("tests", "pytest configuration: it decides which tests run and how"),
    "*.sh": ("script", SCRIPT), "*.bash": ("script", SCRIPT), "*.zsh": ("script", SCRIPT),
    "*.ps1": ("script", "PowerShell script"), "*.bat": ("script", "Windows batch script"), "*.cmd": ("script", "Windows batch script"),
}  # fmt: skip

_TEST_FILE_PATTERNS = ("test_*.py", "*_test.py", "*_test.go", "*.test.[jt]s", "*.spec.[jt]s", "*.test.[jt]sx", "*.spec.[jt]sx", "*test.java")
_TEST_DIRS = {"tests", "test", "__tests__", "spec"}


def sensitive_reason(path: str) -> tuple[str, str] | None:
    """(category, why) when the path is in a sensitive place, else None. Case-insensitive, any depth."""
    parts = path.lower().split("/")
    for folder in parts[:-1]:
        if folder in SENSITIVE_DIRS:
            return SENSITIVE_DIRS[folder]
    name = parts[-1]
    if name in SENSITIVE_DIRS:  # the folder itself (a symlink or a file named like one)
        return SENSITIVE_DIRS[name]
    if name in SENSITIVE_FILES:
        return SENSITIVE_FILES[name]
    for pattern, reason in SENSITIVE_FILES.items():
        if "/" in pattern and ("/" + path.lower()).endswith("/" + pattern):
            return reason
        if "*" in pattern and fnmatch.fnmatchcase(name, pattern):
            return reason
    return None


def _is_test_file(path: str) -> bool:
    parts = path.lower().split("/")
    return any(p in _TEST_DIRS for p in parts[:-1]) or any(fnmatch.fnmatchcase(parts[-1], p) for p in _TEST_FILE_PATTERNS)


# How the imitated names are usually spelled, for messages.
_USUAL_SPELLING = {
    "makefile": "Makefile", "gnumakefile": "GNUmakefile", "dockerfile": "Dockerfile", "containerfile": "Containerfile",
    "jenkinsfile": "Jenkinsfile", "rakefile": "Rakefile", "gemfile": "Gemfile", "justfile": "justfile", "pipfile": "Pipfile",
    "cmakelists.txt": "CMakeLists.txt", "codeowners": "CODEOWNERS", "agents.md": "AGENTS.md", "claude.md": "CLAUDE.md",
    "gemini.md": "GEMINI.md", "claude.local.md": "CLAUDE.local.md", "sconstruct": "SConstruct", "workspace": "WORKSPACE",
    "build.bazel": "BUILD.bazel", "module.bazel": "MODULE.bazel", "manifest.in": "MANIFEST.in",
}  # fmt: skip

_LOOKALIKE_TARGETS: dict[str, str] = {
    skeleton(name): name for name in [".git", *SENSITIVE_DIRS, *(n for n in SENSITIVE_FILES if "*" not in n and "/" not in n)]
}


def _lookalike_of(path: str) -> tuple[str, str] | None:
    """(sensitive name imitated, its reason) when a component only looks like a sensitive or .git name."""
    for component in path.split("/"):
        target = _LOOKALIKE_TARGETS.get(skeleton(component))
        if target is not None and component.lower() != target:
            why = SENSITIVE_DIRS.get(target) or SENSITIVE_FILES.get(target) or ("git", "git's own folder")
            return _USUAL_SPELLING.get(target, target), why[1]
    return None


# ----------------------------------------------------------------------------- names


def _char_list(chars: Iterable[str]) -> str:
    unique = list(dict.fromkeys(chars))
    shown = ", ".join(describe_char(ch) for ch in unique[:3])
    return shown + (f" and {len(unique) - 3} more" if len(unique) > 3 else "")


_NAME_MESSAGES: dict[str, tuple[Severity, str, str]] = {
    "line break": ("danger", "newline", "name contains a line break ({chars}): it can pass for two names or a fake line"),
    "tab": ("danger", "control", "name contains a tab ({chars})"),
    "control character": ("danger", "control", "name contains control characters ({chars})"),
    "C1 control character": ("danger", "control", "name contains C1 control characters ({chars})"),
    "bidirectional control": ("danger", "bidi", "name contains bidirectional controls ({chars}): it displays in a different order than it is"),
    "invisible character": ("danger", "invisible", "name contains invisible characters ({chars}): two names can look identical"),
    "unusual space": ("attention", "space", "name contains unusual spaces ({chars})"),
    "invalid UTF-8 byte": ("danger", "encoding", "name is not valid UTF-8 ({chars})"),
    "unassigned or private character": ("attention", "unassigned", "name contains unassigned or private-use characters ({chars})"),
}


def name_flags(path: str) -> list[Flag]:
    """Spoofing findings for one name (surrogateescape str, as `FileChange` carries it)."""
    found: dict[str, list[str]] = {}
    for ch in path:
        if kind := hidden_kind(ch):
            found.setdefault(kind, []).append(ch)
    flags = []
    for kind, chars in found.items():
        severity, code, message = _NAME_MESSAGES[kind]
        flags.append(Flag(severity=severity, code=code, message=message.format(chars=_char_list(chars)), path=path))
    if lookalike := _lookalike_of(path):
        flags.append(Flag(severity="danger", code="lookalike", message=f"name looks like {lookalike[0]} but is not: {lookalike[1]}", path=path))
    components = path.split("/")
    if any(c != c.strip(" ") or c.endswith(".") and c not in (".", "..") for c in components):
        flags.append(Flag(severity="attention", code="space", message="name has leading or trailing spaces or a trailing dot", path=path))
    if "\\" in path:
        flags.append(Flag(severity="attention", code="backslash", message="name contains a backslash: it reads as a folder on Windows", path=path))
    for component in components:
        scripts = _scripts(component)
        if "LATIN" in scripts and scripts & set(_LOOKALIKE_SCRIPTS):
            mixed = " and ".join(sorted(s.title() for s in scripts))
            flags.append(Flag(severity="attention", code="mixed-script", message=f"name mixes {mixed} letters, which can look alike", path=path))
            break
    return flags


# ----------------------------------------------------------------------------- content


_CONTENT_MESSAGES: dict[str, tuple[Severity, str, str]] = {
    "bidirectional control": (
        "danger",
        "bidi-content",
        "added lines contain bidirectional controls ({chars}): code can read differently from how it runs",
    ),
    "invisible character": ("attention", "invisible-content", "added lines contain invisible characters ({chars})"),
    "control character": ("attention", "control-content", "added lines contain control characters ({chars})"),
    "C1 control character": ("attention", "control-content", "added lines contain C1 control characters ({chars})"),
    "line break": ("attention", "control-content", "added lines contain unusual line breaks ({chars})"),
}


def content_flags(path: str, added_lines: Iterable[str]) -> list[Flag]:
    """Trojan-Source-style findings in the lines a change adds (a CR ending a line and tabs are ordinary)."""
    found: dict[str, list[str]] = {}
    for line in added_lines:
        if not HIDDEN_RE.search(line.removesuffix("\r")):
            continue
        for ch in line.removesuffix("\r"):
            kind = hidden_kind(ch)
            if kind in _CONTENT_MESSAGES and ch != "\x0c":  # form feed: a page break some old code keeps
                found.setdefault(kind, []).append(ch)
    flags = []
    for kind, chars in found.items():
        severity, code, message = _CONTENT_MESSAGES[kind]
        flags.append(Flag(severity=severity, code=code, message=message.format(chars=_char_list(chars)), path=path))
    return flags


# ----------------------------------------------------------------------------- one change


# Source and text files: binary content in one of these is a disguise, not an asset.
SOURCE_SUFFIXES = frozenset(
    ".py .pyi .js .mjs .cjs .jsx .ts .tsx .vue .svelte .rb .go .rs .java .kt .kts .scala .groovy .gradle .c .h .cc .cpp .hpp .cs .m .swift "
    ".php .pl .pm .lua .r .sh .bash .zsh .fish .ps1 .bat .cmd .sql .html .htm .css .scss .less .json .yaml .yml .toml .ini .cfg .conf .xml "
    ".md .rst .txt .mk .cmake .tf .dockerfile .env .lock".split()
)


def change_flags(change: FileChange, added_lines: Iterable[str] = (), symlink_target: str | None = None, *, binary_was_text: bool | None = None) -> list[Flag]:
    """Everything worth a reviewer's attention about one file change, most severe first.

    `binary_was_text`: for a binary change, whether the old content was text (None: no old content known)."""
    path = change.path
    names = list(dict.fromkeys(p for p in (change.old_path, change.new_path) if p is not None))
    flags: list[Flag] = []
    for name in names:
        flags += name_flags(name)
    for name in names:
        if reason := sensitive_reason(name):
            category, why = reason
            severity: Severity = "note" if category == "deps" else "attention"
            flags.append(Flag(severity=severity, code=category, message=why, path=name))
            break
    else:
        if any(n.lower().rsplit("/", 1)[-1] == ".gitignore" for n in names):
            flags.append(Flag(severity="note", code="gitignore", message="ignore rules: they can hide files from later diffs and reviews", path=path))
    flags += _mode_flags(change, symlink_target)
    if change.binary:
        flags.append(_binary_flag(change, bool(binary_was_text)))
    if _is_test_file(path) and change.kind in ("modified", "deleted", "renamed"):
        severity = "attention" if change.kind == "deleted" else "note"
        flags.append(Flag(severity=severity, code="tests", message=f"test file {change.kind}: check that no test was weakened", path=path))
    flags += content_flags(path, added_lines)
    return sorted(dict.fromkeys(flags), key=lambda f: SEVERITY_ORDER[f.severity])


def _binary_flag(change: FileChange, was_text: bool) -> Flag:
    shown = "its content is shown decoded, with NUL and control bytes escaped"
    name = change.path.lower().rsplit("/", 1)[-1]
    source = name in ("makefile", "dockerfile") or any(name.endswith(suffix) for suffix in SOURCE_SUFFIXES)
    if was_text or (source and change.kind != "deleted"):
        why = "was text and is binary now" if was_text else "is a source file, but binary"
        message = f"{why}: a NUL or control byte makes git carry the whole file as an opaque binary patch; {shown}"
        return Flag(severity="danger", code="binary-text", message=message, path=change.path)
    return Flag(severity="note", code="binary", message=f"binary file: {shown}", path=change.path)


def _mode_flags(change: FileChange, symlink_target: str | None) -> list[Flag]:
    old, new, path = change.old_mode, change.new_mode, change.path
    if new == SYMLINK_MODE and (old != SYMLINK_MODE or change.kind in ("added", "renamed", "copied") or symlink_target is not None):
        target = f" to {symlink_target}" if symlink_target is not None else ""
        return [Flag(severity="attention", code="symlink", message=f"symbolic link{target}: tools that follow it read or write elsewhere", path=path)]
    if change.kind == "added" and new == "100755":
        return [Flag(severity="attention", code="exec-bit", message="new executable file", path=path)]
    if old == "100644" and new == "100755":
        return [Flag(severity="attention", code="exec-bit", message="executable bit added (mode 100644 → 100755)", path=path)]
    if old == "100755" and new == "100644":
        return [Flag(severity="note", code="exec-bit", message="executable bit removed (mode 100755 → 100644)", path=path)]
    return []
