"""Git URLs for a batch: cloned on the host by a hardened git into a cache, then copied in like a local repo.

Cloning runs git on the host against an untrusted remote, so nothing but us configures that git: no
system or global config and an empty HOME (no user config, credential helpers or templates), no hooks
(`core.hooksPath=/dev/null` and an empty template), no submodules, every protocol refused but the ones
the user allows, and our own attributes in the clone, so checkout applies no filter, line-ending or
encoding conversion: the files are the commit's exact bytes. The clone's `.git/config` is written by
this git, never taken from the remote. A clone is reused for the same URL and ref.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from orchestrator.patch.neutral_git import NEUTRAL_ATTRIBUTES, neutral_args, neutral_env

CLONE_TIMEOUT_S = 900.0
GIT_TIMEOUT_S = 120.0

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_HELPER = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)::")  # git's "<transport>::<address>", e.g. ext::
_SCP_LIKE = re.compile(r"^[^/\s:@]+@[^/\s:]+:")  # git@host:org/repo
_SSH_SCHEMES = {"ssh", "git+ssh", "ssh+git"}


class CloneError(Exception):
    """A clone or checkout failed; the message names the URL (without credentials) and git's reason."""


def is_url(repo: str) -> bool:
    return bool(_SCHEME.match(repo) or _HELPER.match(repo) or _SCP_LIKE.match(repo))


def protocol_of(url: str) -> str:
    """The name git's `protocol.<name>.allow` uses for this URL."""
    if match := _SCHEME.match(url) or _HELPER.match(url):
        scheme = match.group(1).lower()
        return "ssh" if scheme in _SSH_SCHEMES else scheme
    return "ssh"  # scp-like


def redact(url: str) -> str:
    """The URL without a password or token, for messages, records and the clone's own config."""
    if not _SCHEME.match(url):
        return url
    parts = urlsplit(url)
    if parts.password is None and not (parts.username and parts.scheme.lower() in ("http", "https")):
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def url_basename(url: str) -> str:
    """'https://host/org/widget.git' -> 'widget'."""
    path = urlsplit(url).path if _SCHEME.match(url) else url.split(":")[-1]
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name[: -len(".git")] if name.endswith(".git") else name


def check_ref(ref: str) -> str | None:
    """Why `ref` cannot be a branch, tag or commit name (a leading '-' would read as an option), or None."""
    if ref.startswith("-"):
        return "cannot start with '-'"
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in ref) or ".." in ref or any(c in ref for c in "~^:?*[\\"):
        return "is not a valid branch, tag or commit name"
    return None


class RepoCache:
    """Clones under `root`, one folder per (URL, ref); safe to use from several threads."""

    def __init__(self, root: Path, allowed_protocols: Sequence[str]) -> None:
        self.root = root
        self.allowed = tuple(allowed_protocols)
        self._locks: dict[Path, threading.Lock] = {}
        self._guard = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._aborted = False

    def path_for(self, url: str, ref: str | None) -> Path:
        key = hashlib.sha256(f"{url}\n{ref or ''}".encode()).hexdigest()[:24]
        return self.root / f"{url_basename(url)[:40] or 'repo'}-{key}"

    def fetch(self, url: str, ref: str | None) -> Path:
        """The work tree of `url` at `ref` (the default branch when None), cloning it unless cached."""
        target = self.path_for(url, ref)
        with self._guard:
            lock = self._locks.setdefault(target, threading.Lock())
        with lock:
            if target.is_dir():
                return target
            self.root.mkdir(parents=True, exist_ok=True)
            # Clone next to the target and rename it in place: a half-made clone is never reused.
            staging = Path(tempfile.mkdtemp(prefix=".cloning-", dir=self.root))
            try:
                self._clone(url, ref, staging / "tree")
                os.replace(staging / "tree", target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return target

    def abort(self) -> None:
        """Stop clones in progress (the batch was interrupted)."""
        with self._guard:
            self._aborted = True
            for proc in self._running:
                proc.kill()

    def _clone(self, url: str, ref: str | None, tree: Path) -> None:
        protocols = [arg for name in self.allowed for arg in ("-c", f"protocol.{name}.allow=always")]
        self._git(["clone", "--quiet", "--no-checkout", "--no-recurse-submodules", "--template=", "--", url, str(tree)],
                  url, git_dir=None, protocols=protocols, timeout=CLONE_TIMEOUT_S)  # fmt: skip
        git_dir = tree / ".git"
        (git_dir / "info").mkdir(exist_ok=True)
        (git_dir / "info" / "attributes").write_bytes(NEUTRAL_ATTRIBUTES)
        if redact(url) != url:  # the clone is copied into the sandbox: the model must not read a token
            self._git(["remote", "set-url", "origin", redact(url)], url, git_dir=git_dir)
        commit = self._resolve(url, ref, git_dir)
        self._git(["checkout", "--quiet", "--force", "--detach", "--no-recurse-submodules", commit], url, git_dir=git_dir)

    def _resolve(self, url: str, ref: str | None, git_dir: Path) -> str:
        candidates = ["HEAD"] if ref is None else [f"refs/remotes/origin/{ref}", f"refs/tags/{ref}", ref]
        for candidate in candidates:
            found = self._git(["rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}"], url, git_dir=git_dir, check=False)
            if found:
                return found.strip()
        raise CloneError(f"{redact(url)}: " + (f"no branch, tag or commit {ref!r}" if ref else "the repository has no default branch"))

    def _git(
        self, args: list[str], url: str, *, git_dir: Path | None, protocols: Sequence[str] = (), timeout: float = GIT_TIMEOUT_S, check: bool = True
    ) -> str:
        """Run hardened git; its stdout, or '' on failure when check is False. Raises CloneError otherwise."""
        with tempfile.TemporaryDirectory(prefix="airlock-githome-") as home:
            env = neutral_env(home=Path(home), git_dir=git_dir or Path(home), work_tree=git_dir.parent if git_dir else None)
            if git_dir is None:  # `git clone` makes its own git dir
                del env["GIT_DIR"]
            cwd = git_dir.parent if git_dir else self.root
            with self._guard:
                if self._aborted:
                    raise CloneError(f"{redact(url)}: cancelled")
                proc = subprocess.Popen(
                    ["git", *neutral_args(), *protocols, *args],
                    env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                )  # fmt: skip
                self._running.add(proc)
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise CloneError(f"{redact(url)}: git {args[0]} took longer than {timeout:.0f} s") from None
            finally:
                with self._guard:
                    self._running.discard(proc)
        if proc.returncode != 0 and check:
            lines = [line for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
            reason = lines[-1].strip() if lines else f"exit status {proc.returncode}"
            raise CloneError(f"git {args[0]} of {redact(url)} failed: {reason.replace(url, redact(url))}")
        return out.decode("utf-8", "replace") if proc.returncode == 0 else ""
