"""The setup phase, hermetic: a package index this test serves on the host's address on Docker's default
bridge, holding a wheel built here, reachable only through the egress proxy. Everything else (the real
registries, a real project) is in test_setup_registries.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import airlock, airlock_env
from package_index import PackageIndex

from orchestrator.providers.scripted import reply, text, tool_use
from orchestrator.run.setup import usage_dir
from orchestrator.sandbox.docker_environments import reference

TEST = "python3 -m pytest -q"
SECRET = "s3cr3t-token-4f1d9a"
# From inside the agent's sandbox: what network it has, and whether the index answers.
REACH = (
    'ls /sys/class/net; python3 -c "import urllib.request, sys\n'
    "try:\n    urllib.request.urlopen(sys.argv[1], timeout=3); print('index: reached')\n"
    "except Exception as e:\n    print('index: unreachable', type(e).__name__)\" {url}"
)
# A setup command probing its own sandbox: no route past the proxy, no DNS, and a host off the allowlist.
PROBE = """\
import os, socket, sys, urllib.request
direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    direct.open(sys.argv[1], timeout=3); print("direct: reached")
except OSError as e:
    print("direct: blocked", type(e).__name__)
try:
    socket.getaddrinfo("pypi.org", 443); print("dns: resolved")
except OSError:
    print("dns: none")
print("proxy:", os.environ["HTTPS_PROXY"])
urllib.request.urlopen("http://example.org/", timeout=10)
"""


def dependent_repo(folder: Path, index_url: str, host: str) -> Path:
    """A repo whose test imports a package only the index has."""
    folder.mkdir()
    (folder / "requirements.txt").write_text(f"--index-url {index_url}\n--trusted-host {host}\nairlock-testdep==1.0\n")
    (folder / "test_dep.py").write_text("import airlock_testdep\n\n\ndef test_answer():\n    assert airlock_testdep.answer() == 42\n")
    return folder


def downloads(index: PackageIndex) -> int:
    return sum(path.startswith("/files/") for path in index.requests)


def test_the_agent_runs_the_tests_after_setup_and_the_second_run_starts_from_cache(run_scripted, tmp_path: Path, index: PackageIndex, policy: Path) -> None:
    repo = dependent_repo(tmp_path / "repo", index.url, index.host)
    turns = [reply(tool_use("run_bash", command=TEST), tool_use("run_bash", command=REACH.format(url=index.url))), reply(text("Tests pass."))]
    before = downloads(index)
    first, api = run_scripted(repo, turns, "--setup", "auto", "--policy", str(policy), "--verify", TEST)

    assert first.exit_code == 0, first.stdout + first.stderr
    setup = first.record["setup"]
    assert setup["cache"] == "build" and setup["detected"] == ["python: requirements.txt installed"]
    assert setup["commands"][1:] == ["pip install -r requirements.txt"]
    assert setup["hosts"] == [{"host": index.host, "allowed": True, "requests": 2, "bytes": setup["hosts"][0]["bytes"]}]
    assert downloads(index) == before + 1
    pytest_run, reach = (call["output"] for call in first.events("tool_call"))
    assert "1 passed" in pytest_run
    assert reach.splitlines()[0] == "lo" and "index: unreachable" in reach  # the agent: loopback only, nothing answers
    assert first.record["verify"]["passed"] and first.record["sandbox"]["network"] == "none"
    assert first.patch == b""  # the virtualenv lives outside the repo
    log = (first.out / "setup.log").read_text()
    assert "$ pip install -r requirements.txt" in log and f"egress: allowed GET {index.host}" in log
    assert "egress: allowed" not in setup["log_tail"]  # the allowed requests are in setup.log only: they would crowd the tail out
    assert len(api.requests) == 2

    second, _ = run_scripted(repo, turns, "--setup", "auto", "--policy", str(policy), "--verify", TEST)
    assert second.exit_code == 0, second.stdout + second.stderr
    assert second.record["setup"]["cache"] == "hit" and second.record["setup"]["hosts"] == []
    assert second.record["setup"]["image"] == setup["image"] == reference(setup["key"])
    assert downloads(index) == before + 1  # no request at all
    assert not (second.out / "setup.log").exists()
    assert "1 passed" in second.events("tool_call")[0]["output"]


def test_setup_reaches_nothing_but_the_proxy_and_a_refused_host_is_named(run_scripted, tmp_path: Path, index: PackageIndex, policy: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "probe.py").write_text(PROBE)
    result, api = run_scripted(repo, [reply(text("never asked"))], "--setup", f"python3 probe.py {index.url}", "--policy", str(policy))

    assert result.exit_code == 1, result.stdout + result.stderr
    record = result.record
    assert record["status"] == "setup_failed" and record["steps"] == 0 and api.requests == []
    assert "refused by the egress allowlist: example.org" in record["error"]
    assert "refused by the egress allowlist: example.org" in result.stdout
    assert record["setup"]["refused"] == ["example.org"]
    assert {"host": "example.org", "allowed": False, "requests": 1} == {k: v for k, v in record["setup"]["hosts"][0].items() if k != "bytes"}
    log = (result.out / "setup.log").read_text()
    assert "direct: blocked" in log and "dns: none" in log and "egress: REFUSED GET example.org status 403" in log
    assert "403" in record["setup"]["log_tail"] and "egress: REFUSED GET example.org" in record["setup"]["log_tail"]
    assert record["verify"] is None and result.patch == b""


def test_a_failing_or_slow_setup_ends_the_run_without_agent_steps(run_scripted, tmp_path: Path, policy: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.txt").write_text("a\n")
    failed, api = run_scripted(repo, [reply(text("never asked"))], "--setup", "echo preparing; exit 3", "--policy", str(policy), "--verify", TEST)
    assert failed.exit_code == 1 and failed.record["status"] == "setup_failed" and api.requests == []
    assert failed.record["error"] == "the setup failed (exit code 3)" and "preparing" in failed.record["setup"]["log_tail"]
    assert "preparing" in failed.stdout and failed.record["verify"]["skipped"] == "not run: the run ended with setup_failed"

    slow_policy = tmp_path / "slow.toml"
    slow_policy.write_text(policy.read_text().replace("timeout = 120", "timeout = 3"))
    slow, api = run_scripted(repo, [reply(text("never asked"))], "--setup", "sleep 60", "--policy", str(slow_policy))
    assert slow.exit_code == 1 and slow.record["status"] == "setup_failed" and api.requests == []
    assert "did not finish within 3 s" in slow.record["error"]
    assert slow.record["setup"]["duration_s"] < 45


def test_a_secret_reaches_the_setup_commands_only(run_scripted, tmp_path: Path, bridge_host: str, wheel: Path, policy: Path, docker_client) -> None:
    with PackageIndex(bridge_host, [wheel], token=SECRET) as private:
        repo = dependent_repo(tmp_path / "repo", f"http://ci:${{INDEX_TOKEN}}@{private.host}:{private.port}/simple/", private.host)
        show = "env; tr '\\0' '\\n' < /proc/1/environ; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | sort -u"
        turns = [reply(tool_use("run_bash", command=f"{TEST}; {show}")), reply(text("done"))]
        secret = {"INDEX_TOKEN": SECRET}
        result, _ = run_scripted(repo, turns, "--setup", "auto", "--setup-secret-env", "INDEX_TOKEN", "--policy", str(policy), env_extra=secret)
        assert result.exit_code == 0, result.stdout + result.stderr
        assert any(path.startswith("/files/") for path in private.requests)  # the token opened the index
    out = result.out

    output = result.events("tool_call")[0]["output"]
    assert "1 passed" in output and "PATH=" in output and SECRET not in output
    for name in ("run.json", "trajectory.jsonl", "setup.log", "patch.diff"):
        assert SECRET not in (out / name).read_text(), name
    image = docker_client.images.get(result.record["setup"]["image"])
    assert SECRET not in json.dumps(image.attrs)
    saved = subprocess.run(["docker", "save", image.id], capture_output=True, check=True).stdout  # every layer, uncompressed
    assert b"airlock_testdep" in saved and SECRET.encode() not in saved

    leaky, _ = run_scripted(repo, [reply(text("never asked"))], "--setup", "echo $INDEX_TOKEN > token.txt", "--setup-secret-env", "INDEX_TOKEN",
                            "--policy", str(policy), env_extra={"INDEX_TOKEN": SECRET})  # fmt: skip
    assert leaky.record["status"] == "setup_failed" and "wrote a secret into airlock-env/workspace/token.txt" in leaky.record["error"]


def test_what_setup_made_in_the_repo_is_in_the_workspace_but_never_in_the_patch(run_scripted, tmp_path: Path, policy: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("read me\n")
    (repo / "app.py").write_text("X = 1\n")
    make = "mkdir -p build node_modules/dep && echo built > build/out.txt && echo 'module.exports = 1' > node_modules/dep/index.js && echo changed >> README"
    edit = tool_use("edit_file", path="app.py", old_str="X = 1", new_str="X = 2")
    look = tool_use("run_bash", command="cat build/out.txt node_modules/dep/index.js README && echo more >> build/out.txt && touch node_modules/new.js")
    result, _ = run_scripted(repo, [reply(edit, look), reply(text("done"))], "--setup", make, "--policy", str(policy))

    assert result.exit_code == 0, result.stdout + result.stderr
    setup = result.record["setup"]
    assert setup["created"] == ["build", "node_modules"] and setup["modified"] == ["README"]
    assert "setup changed files of the repo" in result.stdout and "README" in result.stdout
    assert result.events("tool_call")[1]["output"].startswith("built\nmodule.exports = 1\nread me\n")  # README as the user has it
    assert [change["new_path"] for change in result.record["patch"]["changes"]] == ["app.py"]
    applied = airlock("apply", str(result.out / "patch.diff"), "--repo", str(repo), "--check", "--allow-dirty")
    assert applied.returncode == 0, applied.stderr


def test_a_batch_on_one_repo_builds_its_environment_once(tmp_path: Path, index: PackageIndex, policy: Path) -> None:
    from orchestrator.providers.scripted import ScriptedModelServer

    repo = dependent_repo(tmp_path / "repo", index.url, index.host)
    (repo / "extra-requirements.txt").write_text("# makes this repo's key its own\n")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"t{n}", "repo": str(repo), "task": "run the tests"}) + "\n" for n in range(2)))
    before = downloads(index)

    def step(request: dict) -> object:  # the two runs' requests interleave: answer each by where it is
        answered = any(part.get("type") == "tool_result" for part in request["messages"][-1]["content"] if isinstance(part, dict))
        return reply(text("done")) if answered else reply(tool_use("run_bash", command=TEST))

    with ScriptedModelServer([step] * 4) as api:
        proc = airlock(
            "batch", str(tasks), "--out", str(tmp_path / "results"), "--jobs", "2", "--setup", "auto", "--policy", str(policy),
            env=airlock_env(api.base_url), timeout=600,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads((tmp_path / "results" / f"t{n}" / "run.json").read_text()) for n in range(2)]
    assert sorted(record["setup"]["cache"] for record in records) == ["build", "hit"]
    assert downloads(index) == before + 1
    assert all("1 passed" in (tmp_path / "results" / f"t{n}" / "trajectory.jsonl").read_text() for n in range(2))


def test_airlock_env_lists_and_removes_environments(run_scripted, tmp_path: Path, policy: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "requirements.txt").write_text("# nothing to install\n")
    result, _ = run_scripted(repo, [reply(text("done"))], "--setup", "auto", "--policy", str(policy))
    assert result.exit_code == 0, result.stdout + result.stderr
    key = result.record["setup"]["key"]

    listed = airlock("env", "ls")
    assert listed.returncode == 0 and key[:16] in listed.stdout and str(repo) in listed.stdout
    assert "pip install -r requirements.txt" in listed.stdout and "environment(s)" in listed.stdout
    kept = airlock("env", "prune", "--older-than", "3650d")
    assert kept.returncode == 0 and key[:16] in airlock("env", "ls").stdout
    bad = airlock("env", "rm", "not-a-key")
    assert bad.returncode == 2 and "no environment has a key starting with" in bad.stderr
    removed = airlock("env", "rm", key[:16])
    assert removed.returncode == 0 and reference(key) in removed.stdout
    assert key[:16] not in airlock("env", "ls").stdout

    (repo / "requirements.txt").write_text("# still nothing, another key\n")
    again, _ = run_scripted(repo, [reply(text("done"))], "--setup", "auto", "--policy", str(policy))
    other = again.record["setup"]["key"]
    forty_days_ago = time.time() - 40 * 86400
    os.utime(usage_dir() / other, (forty_days_ago, forty_days_ago))
    pruned = airlock("env", "prune", "--older-than", "30d")
    assert pruned.returncode == 0 and reference(other) in pruned.stdout
    assert other[:16] not in airlock("env", "ls").stdout


def test_a_setup_cannot_slip_a_rewritten_repo_file_under_the_agent_and_verify(run_scripted, tmp_path: Path, policy: Path) -> None:
    """The attack: forge the sandbox's record of the pristine repo so a rewritten test looks made by setup, to
    be carried over the real one into the agent's and the verify sandbox and left out of every patch."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "test_app.py").write_text("def test_app():\n    assert False\n")
    forge = (
        "python3 -c \"import json; p = '/var/lib/airlock/setup-before.json'; d = json.load(open(p)); d.pop('test_app.py'); json.dump(d, open(p, 'w'))\" "
        "&& printf 'def test_app():\\n    pass\\n' > test_app.py"
    )
    result, api = run_scripted(repo, [reply(text("never asked"))], "--setup", forge, "--policy", str(policy), "--verify", TEST)
    assert result.record["status"] == "setup_failed" and api.requests == []
    assert "the setup packed a path of the repo as one it made: 'test_app.py'" in result.record["error"]


def test_ctrl_c_during_setup_ends_the_run_and_removes_sandbox_proxy_and_network(tmp_path: Path, policy: Path, docker_client) -> None:
    from helpers import PROJECT

    from orchestrator.providers.scripted import ScriptedModelServer

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.txt").write_text("a\n")
    out, log = tmp_path / "out", tmp_path / "airlock.log"
    with ScriptedModelServer([reply(text("never asked"))]) as api, open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", str(repo), "--task", "t", "--out", str(out), "--setup", "sleep 300", "--policy", str(policy)],
            env=airlock_env(api.base_url), cwd=PROJECT, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while "setup $ sleep 300" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            run_id = json.loads((out / "run.json").read_text())["run_id"]
            roles = {c.labels.get("airlock.role", "sandbox") for c in docker_client.containers.list(filters={"label": f"airlock.run-id={run_id}"})}
            assert roles == {"sandbox", "proxy"}
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=60) == 130, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
        assert api.requests == []
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and record["setup"]["commands"][-1] == "sleep 300"
    assert docker_client.containers.list(all=True, filters={"label": f"airlock.run-id={run_id}"}) == []
    assert docker_client.networks.list(filters={"label": f"airlock.run-id={run_id}"}) == []
