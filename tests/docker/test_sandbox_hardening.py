"""The sandbox as created and as seen from inside: hardening, clean environment, contained abuse."""

from __future__ import annotations

import time
from pathlib import Path

import docker
from helpers import SESSION_OWNER

from orchestrator.providers.scripted import reply, text, tool_use
from orchestrator.sandbox.spec import LABEL, OWNER_LABEL


def _inspect_running_sandbox(client: docker.DockerClient, seen: dict):
    """A scripted turn that inspects the live container from outside, then ends the run."""

    def turn(request: dict) -> dict:
        [container] = client.containers.list(filters={"label": [LABEL, f"{OWNER_LABEL}={SESSION_OWNER}"]})
        seen.update(container.attrs)
        return reply(text("inspected"))

    return turn


def test_container_is_created_hardened(run_scripted, calculator_repo: Path, docker_client, monkeypatch, runtime: str) -> None:
    seen: dict = {}
    monkeypatch.setenv("AIRLOCK_CANARY_SECRET", "must-not-leak")
    # The first model request does not wait for the sandbox: the turn after a tool call sees it running.
    turns = [reply(tool_use("run_bash", command="true")), _inspect_running_sandbox(docker_client, seen)]
    options = ["--cpus", "1.5", "--memory", "768m", "--disk", "256m", "--pids", "200", "--runtime", runtime]
    result, _ = run_scripted(calculator_repo, turns, *options)
    assert result.exit_code == 0, result.stderr + result.stdout
    host, config = seen["HostConfig"], seen["Config"]
    assert host["Runtime"] == runtime and result.record["sandbox"]["runtime"] == runtime

    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["ReadonlyRootfs"] is True
    assert config["User"] == "65534:65534"  # the main process: not the agent's uid (its commands run as 1000:1000)
    assert host["PidsLimit"] == (200 if runtime == "runc" else 64 + 3 * 200)  # gVisor: the sentry's room; the box's 200 is inside
    assert host["Memory"] == 768 * 1024**2 and host["MemorySwap"] == host["Memory"]
    assert host["NanoCpus"] == 1_500_000_000
    assert host["Init"] is True
    assert host["Privileged"] is False
    # Nothing from the host is mounted: no binds, no volumes, never the Docker socket.
    assert not host.get("Binds") and not host.get("Mounts") and seen["Mounts"] == []
    assert "docker.sock" not in str(seen)
    # Every writable place is a size-limited tmpfs.
    assert set(host["Tmpfs"]) == {"/workspace", "/var/lib/airlock", "/tmp", "/home/airlock", "/opt/airlock"}
    assert all("size=" in options for options in host["Tmpfs"].values())
    # Labels identify the run and its owner, so leftovers can be found.
    labels = config["Labels"]
    assert labels[LABEL] == "1" and labels["airlock.run-id"] == result.record["run_id"] and labels["airlock.pid"].isdigit()
    # A clean environment: nothing from the host, never the API key, nothing that can wait for input.
    env = dict(item.split("=", 1) for item in config["Env"])
    assert "AIRLOCK_CANARY_SECRET" not in env and "ANTHROPIC_API_KEY" not in env and "ANTHROPIC_BASE_URL" not in env
    assert "test-key-not-secret" not in str(config)
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["PAGER"] == "cat" and env["GIT_EDITOR"] == "true"
    assert config["Tty"] is False
    # Its main process reads the stdin only the owner holds (attached once): the owner gone, the sandbox stops.
    # It is the tool runtime's cat, never the image's entrypoint, and no health check of the image runs.
    assert config["Entrypoint"] == ["/opt/airlock-runtime/bin/cat"] and config["Cmd"] == ["-"] and config["Healthcheck"] == {"Test": ["NONE"]}
    assert config["OpenStdin"] is True and config["StdinOnce"] is True
    assert int(labels["airlock.deadline"]) > time.time()
    assert not any(k.lower().endswith("_proxy") for k in env)


def test_inside_the_sandbox_nothing_escapes(run_scripted, calculator_repo: Path, monkeypatch, runtime: str) -> None:
    monkeypatch.setenv("AIRLOCK_CANARY_SECRET", "must-not-leak")
    probes = {
        "identity": "id -u; grep CapEff /proc/self/status; python3 -c 'import ctypes; print(\"NoNewPrivs:\", ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))'",
        "network": "python3 -c \"import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)\" 2>&1 | tail -1; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
        "docker_socket": "ls -la /var/run/docker.sock /run/docker.sock 2>&1",
        "root_fs": 'touch /usr/bin/evil 2>&1; touch /etc/evil 2>&1; awk \'$2 == "/" {print "root", $4}\' /proc/mounts | cut -d, -f1',
        "environment": "env | sort",
        "stdin": "cat; echo stdin-closed",
        "tool_code": "echo x > /opt/airlock/tools/server.py 2>&1; echo done",
    }
    turns = [reply(tool_use("run_bash", command=command)) for command in probes.values()] + [reply(text("done"))]
    result, _ = run_scripted(calculator_repo, turns, "--runtime", runtime)
    assert result.exit_code == 0, result.stderr + result.stdout
    out = {name: call["output"] for name, call in zip(probes, result.events("tool_call"), strict=True)}

    assert out["identity"].startswith("1000\n")
    assert "CapEff:\t0000000000000000" in out["identity"] and "NoNewPrivs: 1" in out["identity"]  # PR_GET_NO_NEW_PRIVS: gVisor has no status line
    unreachable = ("Network is unreachable", "No route to host")  # runc's kernel, gVisor's
    assert any(why in out["network"] for why in unreachable) and out["network"].split("\n")[1] == "lo", out["network"]  # loopback only
    assert out["docker_socket"].count("No such file or directory") == 2
    assert "root ro\n" in out["root_fs"]  # mounted read-only; writing is refused (gVisor checks permissions first)
    assert out["root_fs"].count("Read-only file system" if runtime == "runc" else "Permission denied") == 2
    assert "must-not-leak" not in out["environment"] and "ANTHROPIC" not in out["environment"]
    assert "GIT_TERMINAL_PROMPT=0" in out["environment"]
    assert "stdin-closed" in out["stdin"]
    assert "Permission denied" in out["tool_code"]


def test_abuse_is_contained_and_the_run_finishes(run_scripted, calculator_repo: Path, runtime: str) -> None:
    abuse = {
        "fork_bomb": "bomb() { bomb | bomb & }; bomb; sleep 3",
        "after_fork_bomb": "echo alive; n=0; for p in /proc/[0-9]*; do n=$((n + 1)); done; echo processes=$n",
        "disk_fill": "dd if=/dev/zero of=filler bs=1M count=4096 2>&1 | head -1; rm -f filler",
        "output_flood": "yes flood | head -c 50000000",
        "hanging": "sleep 600",
        "background": "sleep 600 & echo started",
        "still_alive": "echo alive && ls calculator.py",
    }
    turns = [reply(tool_use("run_bash", command=command, timeout=8)) for command in abuse.values()] + [reply(text("done"))]
    result, _ = run_scripted(calculator_repo, turns, "--memory", "512m", "--disk", "64m", "--pids", "128", "--command-timeout", "8", "--runtime", runtime)
    assert result.exit_code == 0, result.stderr + result.stdout
    assert result.record["status"] == "completed"
    calls = {name: call for name, call in zip(abuse, result.events("tool_call"), strict=True)}

    # The process limit stops the bomb, and its whole process group is killed as soon as the shell returns:
    # the next command finds the box's own few processes (init, its keeper, the tool server, itself).
    after = calls["after_fork_bomb"]["output"]
    assert after.startswith("alive\nprocesses=") and int(after.split("processes=")[1].split()[0]) < 10, after
    assert "No space left on device" in calls["disk_fill"]["output"]
    flood = calls["output_flood"]
    assert flood["meta"]["dropped_bytes"] > 49_000_000 and "bytes of output dropped" in flood["output"]
    assert len(flood["output"]) < 51_000  # the default policy keeps 50,000 characters of a tool result
    assert calls["hanging"]["meta"]["timed_out"] is True and calls["hanging"]["is_error"] is True
    assert calls["background"]["duration_s"] < 8 and "started" in calls["background"]["output"]
    assert calls["still_alive"]["output"].startswith("alive\ncalculator.py")
    assert result.patch == b""


MEMORY_BOMB = "python3 -c 'a = []\nwhile True: a.append(bytearray(64 * 1024 * 1024))'; echo exit=$?"


def test_memory_exhaustion_is_contained(run_scripted, calculator_repo: Path, runtime: str) -> None:
    turns = [reply(tool_use("write_file", path="kept.txt", content="x\n")), reply(tool_use("run_bash", command=MEMORY_BOMB, timeout=20))]
    turns += [reply(tool_use("run_bash", command="echo alive")), reply(text("done"))]
    result, _ = run_scripted(calculator_repo, turns, "--memory", "512m", "--disk", "64m", "--runtime", runtime)

    assert "Traceback" not in result.stdout + result.stderr
    events = result.events()
    assert events[-1]["type"] == "run_end"
    if runtime == "runc":  # the kernel's OOM killer takes the command (the server made it the first choice)
        assert result.exit_code == 0 and result.record["status"] == "completed", result.stdout
        bomb, after = result.events("tool_call")[1:]
        assert "exit=137" in bomb["output"] or "MemoryError" in bomb["output"]
        assert after["output"].startswith("alive") and b"kept.txt" in result.patch
    else:  # gVisor's kernel is one host process: the host's OOM killer ends the whole sandbox, and its work
        assert result.exit_code == 3 and result.record["status"] == "sandbox_error", result.stdout
        assert events[-1]["status"] == "sandbox_error" and result.record["patch"]["exported"] is False
