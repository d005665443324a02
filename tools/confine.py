"""Keeping the agent's commands away from the tool server, and ending everything they start.

The commands run as the server's own uid (the sandbox has no capability to switch uids), so the uid
alone protects nothing. Two process attributes do, both standard Linux, set through prctl:

- The server makes itself non-dumpable. Opening /proc/<pid>/fd/*, /proc/<pid>/mem or attaching with
  ptrace to a non-dumpable process needs CAP_SYS_PTRACE, which nobody in the sandbox has: its pipes
  (the requests and the replies), its memory and its registers are out of the commands' reach. The
  flag is reset by execve, so the commands themselves stay ordinary processes.
- The server becomes a child subreaper. Whatever a command leaves running (`setsid`, a double fork,
  `nohup`, a daemon) is re-parented to the server instead of to the container's init, so it stays in
  the server's process tree, where `end_descendants` finds and kills it after every call.

Under gVisor the server sweeps by uid instead ("uid"): it is no subreaper, and ends every other process
of its uid, which in the sandbox are only the commands' (the container's init runs as another uid). The
reason is gVisor's: when a subreaper started by `docker exec` dies while it has descendants (the agent
can kill the server), gVisor sometimes kills the container's init with it, and the whole box, with the
agent's work, is gone before the host can export it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time

PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4
PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37
_GONE = ("Z", "X")  # a zombie awaits its reaper; dead is dead
SWEEPS = ("tree", "uid")
_sweep = "tree"  # how end_descendants finds what the commands left: set once by protect()
_FIRST_PAUSE_S = 0.001
_MAX_PAUSE_S = 0.05


def protect(sweep: str = "tree") -> dict[str, object]:
    """Make this process non-dumpable and, for the "tree" sweep, a child subreaper; says what holds afterwards."""
    global _sweep
    _sweep = sweep
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        if sweep == "tree":
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        reaper = ctypes.c_int(0)
        libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(reaper), 0, 0, 0)
        return {"dumpable": libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0, "subreaper": reaper.value == 1, "sweep": sweep}
    except (OSError, AttributeError):  # no C library to call (not Linux): nothing holds
        return {"dumpable": True, "subreaper": False, "sweep": sweep}


def _uid(pid: int) -> int | None:
    """The real uid of a process (its /proc folder is root's while it is non-dumpable: the status says)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _ours(me: int, table: dict[int, tuple[int, str]]) -> list[int]:
    """What the sweep ends: our descendants, or (sweeping by uid) every other process of our uid."""
    if _sweep == "tree":
        return _descendants(me, table)
    uid = os.getuid()
    return [pid for pid in table if pid != me and _uid(pid) == uid]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process this one can see."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # exited while we looked
            continue
        fields = stat.rsplit(b")", 1)[-1].split()  # the command name, in parentheses, may hold anything
        if len(fields) >= 2 and fields[1].isdigit():
            table[int(name)] = (int(fields[1]), fields[0].decode("ascii", "replace"))
    return table


def _descendants(root: int, table: dict[int, tuple[int, str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, pending = [], list(children.get(root, []))
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending += children.get(pid, [])
    return found


def end_descendants(spare: int | None = None, within: float = 5.0) -> int:
    """SIGKILL every living descendant of this process, again and again until none is left, and reap
    those that ended as our children; `spare` is a child whose exit status the caller reaps itself.

    Processes forked while we look are children of processes we kill, so they come back to us (we are
    their subreaper) and are found in the next round. Sweeping by uid, the dead are the container
    init's to reap, and are waited for too: until then they hold the uid's process slots, which the next
    command needs. Returns how many processes were still alive after `within` seconds (0: none; only a
    process stuck in the kernel can outlast SIGKILL)."""
    me = os.getpid()
    deadline = time.monotonic() + within
    pause = _FIRST_PAUSE_S
    while True:
        _kill_our_uid()  # before reading /proc, which takes seconds while a fork bomb runs (measured under gVisor)
        table = _processes()
        tree = _ours(me, table)
        for pid in tree:
            if table[pid][0] == me and table[pid][1] in _GONE and pid != spare:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
        living = [pid for pid in tree if table[pid][1] not in _GONE]
        unreaped = _sweep == "uid" and any(table[pid][0] != me and table[pid][1] == "Z" for pid in tree)
        if (not living and not unreaped) or time.monotonic() > deadline:
            return len(living)
        for pid in living:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(pause)  # SIGKILL is delivered asynchronously: give the kernel a moment
        pause = min(pause * 2, _MAX_PAUSE_S)


def _kill_our_uid() -> None:
    """Sweeping by uid, SIGKILL every process of our uid but ours and init's in one call, so a fork bomb cannot
    outrun the sweep (never as root, which would reach every process it sees)."""
    if _sweep == "uid" and os.getuid() != 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # ESRCH: nothing of ours is left
            os.kill(-1, signal.SIGKILL)
