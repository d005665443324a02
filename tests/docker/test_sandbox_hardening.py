"""The sandbox as created and as seen from inside: hardening, clean environment, contained abuse."""

from __future__ import annotations

import time
from pathlib import Path

import docker
from helpers import SESSION_OWNER

from orchestrator.providers.scripted import reply, text, tool_use
from orchestrator.sandbox.docker_backend import LABEL, OWNER_LABEL


def _inspect_running_sandbox(client: docker.DockerClient, seen: dict):
    """A scripted turn that inspects the live container from outside, then ends the run."""

    def turn(request: dict) -> dict:
        [container] = client.containers.list(filters={"label": [LABEL, f"{OWNER_LABEL}={SESSION_OWNER}"]})
        seen.update(container.attrs)
        return reply(text("inspected"))

    return turn


def test_container_is_created_hardened(run_scripted, calculator_repo: Path, docker_client, monkeypatch) -> None:
    seen: dict = {}
    monkeypatch.setenv("AIRLOCK_CANARY_SECRET", "must-not-leak")
    # The first model request does not wait for the sandbox: the turn after a tool call sees it running.
    turns = [reply(tool_use("run_bash", command="true")), _inspect_running_sandbox(docker_client, seen)]
    result, _ = run_scripted(calculator_repo, turns, "--cpus", "1.5", "--memory", "768m", "--disk", "256m", "--pids", "200")
    assert result.exit_code == 0, result.stderr + result.stdout
    host, config = seen["HostConfig"], seen["Config"]

    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["ReadonlyRootfs"] is True
    assert config["User"] == "1000:1000"
    assert host["PidsLimit"] == 200
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
    assert config["Cmd"] == ["cat"] and config["OpenStdin"] is True and config["StdinOnce"] is True
    assert int(labels["airlock.deadline"]) > time.time()
    assert not any(k.lower().endswith("_proxy") for k in env)


def test_inside_the_sandbox_nothing_escapes(run_scripted, calculator_repo: Path, monkeypatch) -> None:
    monkeypatch.setenv("AIRLOCK_CANARY_SECRET", "must-not-leak")
    probes = {
        "identity": "id -u; grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status",
        "network": "python3 -c \"import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)\" 2>&1 | tail -1; ls /sys/class/net",
        "docker_socket": "ls -la /var/run/docker.sock /run/docker.sock 2>&1",
        "root_fs": "touch /usr/bin/evil 2>&1; touch /etc/evil 2>&1; echo done",
        "environment": "env | sort",
        "stdin": "cat; echo stdin-closed",
        "tool_code": "echo x > /opt/airlock/tools/server.py 2>&1; echo done",
    }
    turns = [reply(tool_use("run_bash", command=command)) for command in probes.values()] + [reply(text("done"))]
    result, _ = run_scripted(calculator_repo, turns)
    assert result.exit_code == 0, result.stderr + result.stdout
    out = {name: call["output"] for name, call in zip(probes, result.events("tool_call"), strict=True)}

    assert out["identity"].startswith("1000\n")
    assert "CapEff:\t0000000000000000" in out["identity"] and "NoNewPrivs:\t1" in out["identity"]
    assert "Network is unreachable" in out["network"] and out["network"].split("\n")[1].strip() == "lo"
    assert out["docker_socket"].count("No such file or directory") == 2
    assert out["root_fs"].count("Read-only file system") == 2
    assert "must-not-leak" not in out["environment"] and "ANTHROPIC" not in out["environment"]
    assert "GIT_TERMINAL_PROMPT=0" in out["environment"]
    assert "stdin-closed" in out["stdin"]
    assert "Permission denied" in out["tool_code"]


def test_abuse_is_contained_and_the_run_finishes(run_scripted, calculator_repo: Path) -> None:
    abuse = {
        "fork_bomb": "bomb() { bomb | bomb & }; bomb",
        "after_fork_bomb": "echo alive",
        "memory_bomb": "python3 -c 'a = []\nwhile True: a.append(bytearray(64 * 1024 * 1024))'; echo exit=$?",
        "disk_fill": "dd if=/dev/zero of=filler bs=1M count=4096 2>&1 | head -1; rm -f filler",
        "output_flood": "yes flood | head -c 50000000",
        "hanging": "sleep 600",
        "background": "sleep 600 & echo started",
        "still_alive": "echo alive && ls calculator.py",
    }
    turns = [reply(tool_use("run_bash", command=command, timeout=8)) for command in abuse.values()] + [reply(text("done"))]
    result, _ = run_scripted(calculator_repo, turns, "--memory", "512m", "--disk", "64m", "--pids", "128", "--command-timeout", "8")
    assert result.exit_code == 0, result.stderr + result.stdout
    assert result.record["status"] == "completed"
    calls = {name: call for name, call in zip(abuse, result.events("tool_call"), strict=True)}

    # The process limit stops the bomb, and its whole process group is killed as soon as the shell returns.
    bomb = calls["fork_bomb"]
    assert "Resource temporarily unavailable" in bomb["output"] or bomb["meta"]["timed_out"] or bomb["duration_s"] < 8
    assert calls["after_fork_bomb"]["output"].startswith("alive")
    assert "exit=137" in calls["memory_bomb"]["output"] or "MemoryError" in calls["memory_bomb"]["output"]
    assert "No space left on device" in calls["disk_fill"]["output"]
    flood = calls["output_flood"]
    assert flood["meta"]["dropped_bytes"] > 49_000_000 and "bytes of output dropped" in flood["output"]
    assert len(flood["output"]) < 51_000  # the default policy keeps 50,000 characters of a tool result
    assert calls["hanging"]["meta"]["timed_out"] is True and calls["hanging"]["is_error"] is True
    assert calls["background"]["duration_s"] < 8 and "started" in calls["background"]["output"]
    assert calls["still_alive"]["output"].startswith("alive\ncalculator.py")
    assert result.patch == b""
