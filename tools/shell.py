"""Running a command: its own process group, a hard timeout, a bounded output buffer, nothing left
running afterwards; and the run_bash tool."""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import confine
from runtime import program
from toolkit import Context, Param, Result, Tool, ToolError

_READ_CHUNK = 65536
# How to see what a cut dropped, said where it was dropped.
SEE_MORE = "; narrow the command with grep, head or tail, or redirect it to a file and read line ranges"
# Without a pidfd to be woken by (an old kernel, some sandbox runtimes): how often to look whether the
# main process exited while the pipe is quiet.
_POLL_SECONDS = 0.05
_DRAIN_SECONDS = 1.0  # how long to keep reading after the main process is gone


class CappedBuffer:
    """Keeps the first half and the last half of `cap` bytes of a stream, counting what falls in between."""

    def __init__(self, cap: int) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0
        self._head_cap = cap // 2
        self._tail_cap = cap - self._head_cap

    def write(self, data: bytes) -> None:
        room = self._head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if len(data) >= self._tail_cap:  # the chunk alone fills the tail: nothing older survives
            self.dropped += len(self.tail) + len(data) - self._tail_cap
            self.tail = bytearray(data[len(data) - self._tail_cap :])
            return
        self.tail += data
        excess = len(self.tail) - self._tail_cap
        if excess > 0:
            del self.tail[:excess]
            self.dropped += excess

    def text(self) -> str:
        if not self.dropped:
            return (self.head + self.tail).decode("utf-8", errors="replace")
        marker = f"\n[... {self.dropped} bytes of output dropped{SEE_MORE} ...]\n"
        return self.head.decode("utf-8", errors="replace") + marker + self.tail.decode("utf-8", errors="replace")


@dataclass
class Completed:
    output: CappedBuffer
    exit_code: int | None  # None when timed out
    timed_out: bool
    duration_ms: int


def run(argv: list[str], cwd: str, timeout: float, max_output_bytes: int, max_processes: int | None = None) -> Completed:
    """Run `argv` with stdout and stderr merged; raises OSError if it cannot be started (e.g. no pids left).

    Nothing it starts outlives the call: once the main process exits or the timeout passes, its process
    group is SIGKILLed, and then every other descendant of ours, so a process that left the group
    (`setsid`, a double fork) dies too, provided we are a subreaper (see confine.py), as the tool server is.
    """
    started = time.monotonic()
    proc = subprocess.Popen(
        [*_OOM_FIRST, *argv],
        cwd=cwd,
        env={**os.environ, "PWD": cwd},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so it can be killed as a whole
        preexec_fn=lambda: _in_the_child(max_processes),
    )
    assert proc.stdout is not None
    output = CappedBuffer(max_output_bytes)
    try:
        with _Pipe(proc.stdout.fileno(), proc.pid) as pipe:
            timed_out = not pipe.pump(output, started + timeout, until=lambda: _has_exited(proc.pid))
            _end_everything(proc.pid)  # the command on timeout, else what it left running
            pipe.pump(output, time.monotonic() + _DRAIN_SECONDS, until=pipe.closed)
    finally:
        _end_everything(proc.pid)  # the leader is still an unreaped zombie here, so its pid cannot be reused yet
        proc.stdout.close()
        proc.wait()
        confine.end_descendants()  # reaps what died as our child once the leader is reaped
    return Completed(
        output=output,
        exit_code=None if timed_out else proc.returncode,
        timed_out=timed_out,
        duration_ms=int((time.monotonic() - started) * 1000),
    )


class _Pipe:
    """The read end of the command's output pipe, read without ever blocking past a deadline.

    The main process's pidfd waits in the same selector, so its exit wakes the reader at once even
    when the pipe reached end of file first (a trivial command often closes its output a moment
    before its exit is visible): no sleeping on a poll interval.
    """

    def __init__(self, fd: int, pid: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._closed = False
        self._selector = selectors.DefaultSelector()
        self._selector.register(fd, selectors.EVENT_READ)
        self._exit_fd = _pidfd(pid)
        if self._exit_fd is not None:
            self._selector.register(self._exit_fd, selectors.EVENT_READ)

    def __enter__(self) -> _Pipe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._selector.close()
        if self._exit_fd is not None:
            os.close(self._exit_fd)

    def closed(self) -> bool:
        """Whether every writer is gone (end of file was read)."""
        return self._closed

    def pump(self, sink: CappedBuffer, deadline: float, until: Callable[[], bool]) -> bool:
        """Copy output into `sink` until `until()` holds; False if the deadline comes first."""
        while not until():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            watching_exit = self._exit_fd is not None and self._exit_fd in self._selector.get_map()
            wait = remaining if watching_exit else min(remaining, _POLL_SECONDS)
            for key, _ in self._selector.select(wait):  # with nothing registered, it just waits
                if key.fd == self._fd:
                    self._read_into(sink)
                else:  # the process exited: its pidfd stays readable, so stop watching it
                    self._selector.unregister(key.fd)
        return True

    def _read_into(self, sink: CappedBuffer) -> None:
        try:
            data = os.read(self._fd, _READ_CHUNK)
        except BlockingIOError:
            return
        if data:
            sink.write(data)
        else:
            self._closed = True
            self._selector.unregister(self._fd)


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when the (unreaped) child exits; None where the kernel has none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _has_exited(pid: int) -> bool:
    """Whether the process exited, without reaping it (WNOWAIT), so its pid stays ours for killpg."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _end_everything(leader: int) -> None:
    """The command's process group at once, then every descendant left, however it got away."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already empty
        os.killpg(leader, signal.SIGKILL)
    confine.end_descendants(spare=leader)


# Make the command, not the server, the OOM killer's first choice. A child of the non-dumpable server
# cannot write its own /proc/self/oom_score_adj (root-owned until execve), and must not become dumpable
# before execve (its memory holds the channel's key): so a first execve, of sh, sets it and execs argv.
_OOM_FIRST = [program("sh"), "-c", 'echo 1000 > /proc/self/oom_score_adj 2>/dev/null; exec "$0" "$@"']


def _in_the_child(max_processes: int | None) -> None:
    """Bound the command's processes, when asked (under gVisor, whose kernel counts only the sandbox's:
    the host's pids limit is the sentry's)."""
    if max_processes is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))


def run_bash(ctx: Context, command: str, timeout: float | None) -> Result:
    if timeout is not None and timeout <= 0:
        raise ToolError("argument 'timeout' must be a positive number of seconds")
    limit = ctx.command_timeout if timeout is None else min(timeout, ctx.command_timeout)
    shell = shutil.which("bash") or "sh"
    try:
        done = run([shell, "-c", command], ctx.root, limit, ctx.max_output_bytes, ctx.max_processes)
    except OSError as exc:  # e.g. EAGAIN: the sandbox's process limit is reached
        raise ToolError(f"could not start the command: {exc}") from None
    if done.timed_out:
        footer = f"[timed out after {limit:g} s: the command and every process it started were killed]"
    else:
        footer = f"[exit code: {_describe_exit(done.exit_code)}]"
    text = done.output.text()
    if text and not text.endswith("\n"):
        text += "\n"
    meta = {
        "exit_code": done.exit_code,
        "timed_out": done.timed_out,
        "dropped_bytes": done.output.dropped,
        "duration_ms": done.duration_ms,
    }
    return Result(text + footer, is_error=done.timed_out, meta=meta)


def _describe_exit(code: int | None) -> str:
    if code is None or code >= 0:
        return str(code)
    try:  # Popen reports death by signal N as -N
        return f"{code} (killed by {signal.Signals(-code).name})"
    except ValueError:
        return str(code)


TOOLS = (Tool("run_bash", run_bash, (Param("command", str), Param("timeout", float, None))),)
