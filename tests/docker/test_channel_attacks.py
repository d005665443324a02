"""The tool channel cannot be forged, desynchronised, replaced or outlived from inside the sandbox.

Each attack is made for real by a scripted model's commands in a real sandbox, under runc and under
gVisor. The tool server runs as the commands' own uid; what protects it is that it is not dumpable (its
/proc/<pid>/fd, mem and ptrace need a capability nobody has; gVisor still opens /proc/<pid>/fd), that
every line of the channel is signed with a key no command ever saw (so a forged line is recognised on
any runtime), and that nothing its commands start outlives the call (it is their subreaper; under gVisor
it ends every other process of its uid instead, see tools/confine.py); its code is root's, and the
container's main process is another uid. Killing the server, at any moment, loses none of the work."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import docker
import pytest
from helpers import SESSION_OWNER

from orchestrator.providers.scripted import Scripted, reply, text, tool_use
from orchestrator.sandbox.spec import LABEL, OWNER_LABEL, RUNTIME

FORGED = "FORGED-BY-SANDBOX"
# Finds the tool server by its command line, then tries every way in: its reply pipe (fd 1) to answer
# requests itself, its request pipe (fd 0) to read or inject requests, its memory, and ptrace.
INTRUDER = r"""
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
server = next(int(p) for p in os.listdir("/proc") if p.isdigit() and b"server.py" in open(f"/proc/{p}/cmdline", "rb").read())
line = json.dumps({"id": 2, "output": "FORGED-BY-SANDBOX", "is_error": False, "meta": {"exit_code": 0}}) + "\n"
try:
    fds = os.listdir(f"/proc/{server}/fd")
    print("fd list OPEN")
except OSError as exc:
    fds = ["0", "1", "2", "3", "4"]
    print("fd list refused:", exc.strerror)
for what, mode in [(f"fd/{n}", os.O_WRONLY) for n in fds] + [("fd/0", os.O_RDONLY), ("mem", os.O_RDONLY), ("environ", os.O_RDONLY)]:
    shown = f"{what} {'w' if mode == os.O_WRONLY else 'r'}"
    try:
        fd = os.open(f"/proc/{server}/{what}", mode | os.O_NONBLOCK)
    except OSError as exc:
        print(shown, "refused:", exc.strerror)
        continue
    try:
        os.write(fd, line.encode()) if mode == os.O_WRONLY else os.read(fd, 1)
    except OSError:
        pass
    os.close(fd)
    print(shown, "OPEN")
print("ptrace", "refused" if libc.ptrace(16, server, 0, 0) else "ATTACHED")
"""
# The same from a process that outlives its command (its own session) and keeps trying for a minute.
PERSISTENT_FORGER = "setsid sh -c 'for i in $(seq 600); do python3 /tmp/intrude.py; sleep 0.1; done' >/dev/null 2>&1 & echo forger started"
# Left behind in three ways; each would write a file into the repo from its second second on.
LEFT_BEHIND = (
    "setsid sh -c 'sleep 1; while :; do date > /workspace/late-setsid.txt; sleep 0.05; done' >/dev/null 2>&1 &\n"
    "( ( sleep 1; while :; do date > /workspace/late-double-fork.txt; sleep 0.05; done ) & ) >/dev/null 2>&1\n"
    "nohup sh -c 'sleep 1; while :; do date > /workspace/late-nohup.txt; sleep 0.05; done' >/dev/null 2>&1 &\n"
    "echo left three behind"
)
PROCESSES = "for p in /proc/[0-9]*; do printf '%s %s\\n' $(stat -c %u $p) \"$(tr '\\0' ' ' < $p/cmdline)\"; done"


def test_a_command_cannot_reach_the_tool_servers_pipes_memory_or_registers(run_scripted, calculator_repo: Path, runtime: str) -> None:
    turns = [
        reply(tool_use("write_file", path="/tmp/intrude.py", content=INTRUDER)),
        reply(tool_use("run_bash", command="python3 /tmp/intrude.py")),
        reply(tool_use("run_bash", command=PERSISTENT_FORGER)),
        *[reply(tool_use("run_bash", command=f"sleep 0.3; echo real answer {n}")) for n in range(4)],
        reply(text("done")),
    ]
    result, _ = run_scripted(calculator_repo, turns, "--runtime", runtime)

    calls = result.events("tool_call")
    assert not [call for call in calls if FORGED in call["output"]]  # the script holds the word; no result does
    if runtime == "runsc":  # gVisor lets the command open the pipes: the forged line is caught by its signature
        assert result.exit_code == 3, result.stdout + result.stderr
        assert "does not carry the tool server's signature" in result.record["error"] and len(calls) == 1  # the intruder's call never returned
        assert result.record["patch"]["exported"] is True and result.events()[-1]["type"] == "run_end"
        return
    assert result.exit_code == 0, result.stdout + result.stderr
    shown = calls[1]["output"]
    for what in ("fd list", "fd/0 w", "fd/1 w", "fd/4 w", "fd/0 r", "mem r", "environ r"):
        assert f"{what} refused: Permission denied" in shown, shown
    assert "ptrace refused" in shown
    assert "forger started" in calls[2]["output"]
    assert [call["output"].split("\n")[0] for call in calls[3:]] == [f"real answer {n}" for n in range(4)]
    assert result.record["status"] == "completed" and result.record["tool_calls"] == 7


def test_the_tool_code_cannot_be_changed_from_inside(run_scripted, calculator_repo: Path) -> None:
    tools = Path(__file__).resolve().parents[2] / "tools"
    attempts = (
        "cd /opt/airlock/tools; for f in server.py shell.py; do echo 'raise SystemExit' >> $f; done; "
        "mv server.py x.py; rm -f toolkit.py; chmod 777 .; ln -s /tmp/evil.py confine.py; touch /opt/airlock/new; "
        "mkdir /opt/airlock/tools2; ls -ld /opt/airlock /opt/airlock/tools; echo attempts done"
    )
    turns = [
        reply(tool_use("run_bash", command=attempts)),
        reply(tool_use("run_bash", command="cd /opt/airlock/tools && sha256sum *.py")),
        reply(text("done")),
    ]
    result, _ = run_scripted(calculator_repo, turns)

    assert result.exit_code == 0, result.stdout + result.stderr
    first, second = (call["output"] for call in result.events("tool_call"))
    refusals = ("Permission denied", "Operation not permitted", "File exists")
    assert sum(line.endswith(refusals) for line in first.splitlines()) == 8 and "attempts done" in first  # every attempt failed
    assert "drwxr-xr-x 2 root root" in first  # root's, read-only to the agent
    expected = {f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}" for path in tools.glob("*.py")}
    assert set(second.splitlines()[:-1]) == expected


def test_nothing_a_command_leaves_running_lives_into_the_next_call_or_the_export(run_scripted, calculator_repo: Path, runtime: str) -> None:
    turns = [
        reply(tool_use("run_bash", command=LEFT_BEHIND)),
        reply(tool_use("run_bash", command=f"sleep 3; ls /workspace; {PROCESSES}")),
        reply(text("done")),
    ]
    result, _ = run_scripted(calculator_repo, turns, "--runtime", runtime)

    assert result.exit_code == 0, result.stdout + result.stderr
    first, second = (call["output"] for call in result.events("tool_call"))
    assert "left three behind" in first and first.endswith("[exit code: 0]")
    assert "late-" not in second  # none of them ever wrote
    processes = [line for line in second.splitlines() if line[:1].isdigit() and " " in line]
    assert any("server.py" in line for line in processes) and not [line for line in processes if "late-" in line], processes
    assert b"late-" not in result.patch


def test_the_containers_main_process_is_out_of_reach(run_scripted, calculator_repo: Path) -> None:
    probe = "for sig in KILL TERM STOP; do kill -s $sig 1 2>&1; done; kill -s KILL $(for p in /proc/[0-9]*; do grep -l '^cat' $p/comm; done | cut -d/ -f3) 2>&1; echo probed"
    turns = [reply(tool_use("run_bash", command=probe)), reply(tool_use("run_bash", command="echo still here")), reply(text("done"))]
    result, _ = run_scripted(calculator_repo, turns)

    assert result.exit_code == 0, result.stdout + result.stderr
    first, second = (call["output"] for call in result.events("tool_call"))
    assert first.count("Operation not permitted") == 4 and "probed" in first
    assert second.startswith("still here")


# Waits for the export to start, then writes into the repo and into the export's output.
EXPORT_SABOTEUR = r"""
import os, time
while True:
    for p in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if b"baseline.py\0export" in open(f"/proc/{p}/cmdline", "rb").read():
                open("/workspace/during-export.txt", "w").write("sabotage")
                open(f"/proc/{p}/fd/1", "w").write("diff --git a/x b/x\n")
        except OSError:
            pass
    time.sleep(0.005)
"""


def test_killing_the_tool_server_ends_the_run_cleanly_and_nothing_outlives_it(run_scripted, calculator_repo: Path, runtime: str) -> None:
    turns = [
        reply(tool_use("write_file", path="kept.txt", content="work done before the attack\n")),
        reply(tool_use("write_file", path="/tmp/saboteur.py", content=EXPORT_SABOTEUR)),
        reply(tool_use("run_bash", command="setsid python3 /tmp/saboteur.py >/dev/null 2>&1 & sleep 0.5; kill -KILL $PPID")),
        reply(text("never asked")),
    ]
    result, api = run_scripted(calculator_repo, turns, "--runtime", runtime)

    assert result.exit_code == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    record = result.record
    assert record["status"] == "sandbox_error" and "the tool server exited" in record["error"]
    assert record["patch"]["exported"] is True, result.stdout + json.dumps(result.events()[-4:])
    assert b"kept.txt" in result.patch and b"during-export" not in result.patch
    assert [c["new_path"] for c in record["patch"]["changes"]] == ["kept.txt"]
    assert result.events()[-1]["type"] == "run_end" and result.events()[-1]["status"] == "sandbox_error"
    assert len(api.requests) == 3


def kill_the_box_processes(docker_client: docker.DockerClient) -> None:
    """From inside the session's one sandbox, as the commands' uid: every process of theirs, the tool server too."""
    [box] = docker_client.containers.list(filters={"label": [LABEL, f"{OWNER_LABEL}={SESSION_OWNER}"]})
    box.exec_run([f"{RUNTIME}/bin/sh", "-c", "kill -KILL -1"], user="1000:1000")


def killing_soon(docker_client: docker.DockerClient, delay: float) -> None:
    threading.Timer(delay, kill_the_box_processes, args=(docker_client,)).start()


KEPT = reply(tool_use("write_file", path="kept.txt", content="work done before the kill\n"))


@pytest.mark.parametrize("moment", ["during a long command", "during a write", "after the last reply"])
def test_the_work_before_a_tool_server_kill_is_exported_whatever_the_moment(
    run_scripted, calculator_repo: Path, runtime: str, docker_client: docker.DockerClient, moment: str
) -> None:  # fmt: skip
    def write_while_killed(request: dict) -> Scripted:
        killing_soon(docker_client, 0.05)  # the big write is on its way, or being written, when the server dies
        return reply(tool_use("write_file", path="big.txt", content="x" * 4_000_000))

    def last_reply_then_kill(request: dict) -> Scripted:
        killing_soon(docker_client, 0.0)
        return reply(text("Done."))

    turns = {
        "during a long command": [KEPT, reply(tool_use("run_bash", command="(sleep 1; kill -KILL $PPID) & sleep 60")), reply(text("never asked"))],
        "during a write": [KEPT, write_while_killed, reply(tool_use("run_bash", command="true")), reply(text("never asked"))],
        "after the last reply": [KEPT, last_reply_then_kill],
    }[moment]
    result, api = run_scripted(calculator_repo, turns, "--runtime", runtime)

    assert "Traceback" not in result.stdout + result.stderr
    record = result.record
    if moment == "after the last reply":  # the agent needed nothing more of the server: the run completed
        assert result.exit_code == 0 and record["status"] == "completed", result.stdout
    else:
        assert result.exit_code == 3 and record["status"] == "sandbox_error", result.stdout
        assert record["error"].startswith("the tool server"), record["error"]  # exited, or gone while it was sent the write
    assert record["patch"]["exported"] is True, result.stdout + json.dumps(result.events()[-4:])
    assert "kept.txt" in [c["new_path"] for c in record["patch"]["changes"]]
    assert result.events()[-1]["type"] == "run_end"


def test_stopping_the_tool_server_ends_the_run_cleanly(run_scripted, calculator_repo: Path) -> None:
    turns = [
        reply(tool_use("write_file", path="kept.txt", content="work done before the attack\n")),
        reply(tool_use("run_bash", command="kill -STOP $PPID")),
        reply(text("never asked")),
    ]
    result, _ = run_scripted(calculator_repo, turns, "--command-timeout", "2")

    assert result.exit_code == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    record = result.record
    assert record["status"] == "sandbox_error" and "did not answer run_bash in time" in record["error"]
    assert record["patch"]["exported"] is True and b"kept.txt" in result.patch
    assert result.events()[-1]["type"] == "run_end"
