"""The setup phase inside its sandbox: run the setup commands, say what they changed in the repo, pack the result.

    python3 -E -s -S -B environment.py run     --root /workspace --state /var/lib/airlock < request.json
    python3 -E -s -S -B environment.py changes --root /workspace --state /var/lib/airlock
    python3 -E -s -S -B environment.py pack    --root /workspace --state /var/lib/airlock --env /opt/airlock-env > env.tar

`run` reads {"commands": [...], "secrets": {NAME: value}} on stdin, so secrets never appear on a command
line or in the sandbox's own environment; they reach the setup commands' processes only. Each command's
output (stdout and stderr) goes to our stdout as it comes. The repo is snapshotted first (lstat of every
entry: ctime cannot be forged by an unprivileged process), so `changes` can tell what setup created,
modified or deleted. `pack` writes one tar: the environment folder, plus what setup created in the repo.
Nothing here is trusted by the host, which checks every member of the archive.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import signal
import subprocess
import sys
import tarfile

# What is never carried from setup into later workspaces: caches the baseline ignores anyway.
CACHE_NAMES = ("__pycache__", "*.pyc", "*.pyo", ".pytest_cache", ".mypy_cache", ".ruff_cache")
MAX_LISTED = 1000  # of each kind of change; the counts are always whole
ARCHIVE_ROOT = "airlock-env"


def snapshot(root: str) -> dict[str, list[int]]:
    """Every entry below root: [mode, size, mtime_ns, ctime_ns, inode], by relative path."""
    entries: dict[str, list[int]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            entries[os.path.relpath(path, root)] = [st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    return entries


def _is_cache(path: str) -> bool:
    return any(fnmatch.fnmatch(part, pattern) for part in path.split("/") for pattern in CACHE_NAMES)


def changes(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, list[str]]:
    """What setup did to the repo: the topmost entries it created, the files it modified or deleted."""
    created = [path for path in after if path not in before and _parent_existed(path, before) and not _is_cache(path)]
    modified = [path for path, old in before.items() if path in after and not _is_dir(old[0]) and after[path] != old and not _is_cache(path)]
    deleted = [path for path in before if path not in after and not _is_cache(path)]
    return {"created": sorted(created), "modified": sorted(modified), "deleted": sorted(deleted)}


def _parent_existed(path: str, before: dict[str, list[int]]) -> bool:
    parent = os.path.dirname(path)
    return parent == "" or parent in before


def _is_dir(mode: int) -> bool:
    return (mode & 0o170000) == 0o040000


def run(root: str, state: str) -> int:
    request = json.loads(sys.stdin.read())
    commands, secrets = request["commands"], request.get("secrets", {})
    with open(os.path.join(state, "setup-before.json"), "w", encoding="utf-8") as f:
        json.dump(snapshot(root), f)
    out = sys.stdout.buffer
    env = {**os.environ, **secrets}
    for command in commands:
        out.write(f"$ {command}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            ["bash", "-c", command], cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        code = proc.wait()
        try:  # whatever it left running (a daemon, a watcher) must not outlive it
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if code != 0:
            out.write(f"[exit {code}]\n".encode())
            out.flush()
            return code
    return 0


def report(root: str, state: str) -> int:
    with open(os.path.join(state, "setup-before.json"), encoding="utf-8") as f:
        before = json.load(f)
    found = changes(before, snapshot(root))
    json.dump({kind: paths[:MAX_LISTED] for kind, paths in found.items()} | {f"{kind}_count": len(paths) for kind, paths in found.items()}, sys.stdout)
    return 0


def _add(tar: tarfile.TarFile, path: str, arcname: str) -> None:
    """Add one entry and, for a folder, everything in it; hard links become copies, special files are left out."""
    info = tar.gettarinfo(path, arcname)
    if info.islnk():
        info.type, info.linkname, info.size = tarfile.REGTYPE, "", os.lstat(path).st_size
    if info.isreg():
        with open(path, "rb") as f:
            tar.addfile(info, f)
    elif info.isdir() or info.issym():
        tar.addfile(info)
    if info.isdir():
        for name in sorted(os.listdir(path)):
            if not _is_cache(name):
                _add(tar, os.path.join(path, name), f"{arcname}/{name}")


def pack(root: str, state: str, env_root: str) -> int:
    with open(os.path.join(state, "setup-before.json"), encoding="utf-8") as f:
        before = json.load(f)
    created = changes(before, snapshot(root))["created"]
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(env_root)):
            if name != "workspace":
                _add(tar, os.path.join(env_root, name), f"{ARCHIVE_ROOT}/{name}")
        for path in created:
            _add(tar, os.path.join(root, path), f"{ARCHIVE_ROOT}/workspace/{path}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["run", "changes", "pack"])
    parser.add_argument("--root", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--env")
    args = parser.parse_args()
    if args.command == "run":
        return run(args.root, args.state)
    if args.command == "changes":
        return report(args.root, args.state)
    return pack(args.root, args.state, args.env)


if __name__ == "__main__":
    sys.exit(main())
