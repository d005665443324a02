"""Credentials the setup's code cannot read: the egress proxy adds a private index's Authorization header, and
the setup sandbox, its logs, the records and the image never hold it. Against indexes served as in conftest.py."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import docker
from helpers import PROJECT, SESSION_OWNER, airlock, airlock_env
from package_index import PackageIndex

from orchestrator.providers.scripted import ScriptedModelServer, reply, text, tool_use
from orchestrator.sandbox.docker_egress import ROLE_LABEL

SECRET = "pr1vate-index-7c2e"
# The setup's own code looks for the credential everywhere it can, and uses the index itself.
PROBE = r"""{ env; cat /proc/*/environ | tr '\0' '\n'; ls -la /var/lib/airlock /tmp; cat /var/lib/airlock/* /tmp/* ~/.netrc ~/.pypirc;
python3 -c "import urllib.request, sys; print('index answered', urllib.request.urlopen(sys.argv[1], timeout=10).status)" {url}; } > probe.txt 2>&1; sleep 4"""


def test_the_proxy_adds_the_credential_and_the_setup_never_holds_it(tmp_path: Path, bridge_host: str, wheel: Path, policy: Path, docker_client) -> None:
    secrets = [SECRET, base64.b64encode(f"ci:{SECRET}".encode()).decode()]
    with PackageIndex(bridge_host, [wheel], token=SECRET) as private, PackageIndex(bridge_host, []) as public:
        repo = tmp_path / "repo"
        repo.mkdir()
        (repo / "requirements.txt").write_text(
            f"--index-url {private.url}\n--extra-index-url {public.url}\n--trusted-host {bridge_host}\nairlock-testdep==1.0\n"
        )
        out, log = tmp_path / "out", tmp_path / "airlock.log"
        turns = [
            reply(tool_use("run_bash", command="cat probe.txt; python3 -c 'import airlock_testdep; print(airlock_testdep.answer())'")),
            reply(text("done")),
        ]
        command = [
            sys.executable, "-m", "orchestrator", "run", str(repo), "--task", "t", "--out", str(out), "--policy", str(policy),
            "--setup", "pip install -r requirements.txt", "--setup", PROBE.replace("{url}", private.url + "airlock-testdep/"),
            "--setup-secret", f"{bridge_host}:{private.port}=INDEX_CREDENTIAL",
        ]  # fmt: skip
        with ScriptedModelServer(turns) as api, open(log, "wb") as sink:
            proc = subprocess.Popen(command, env=airlock_env(api.base_url, INDEX_CREDENTIAL=f"ci:{SECRET}"), cwd=PROJECT, stdout=sink, stderr=subprocess.STDOUT)
            proxy_config = ""
            deadline = time.monotonic() + 240
            while proc.poll() is None and time.monotonic() < deadline and not proxy_config:  # the proxy, as the engine holds it
                for proxy in docker_client.containers.list(filters={"label": [f"{ROLE_LABEL}=proxy", f"airlock.owner={SESSION_OWNER}"]}):
                    try:
                        proxy_config = json.dumps(docker_client.api.inspect_container(proxy.id))
                    except docker.errors.NotFound:
                        continue
                time.sleep(0.2)
            assert proc.wait(timeout=300) == 0, log.read_text()
        assert any(path.startswith("/files/") for path in private.requests)  # the credential opened the private index
        assert public.authorizations and set(public.authorizations) == {None}  # the other index (another port) never got it
        assert "include /tmp/credentials.conf" in proxy_config

    events = [json.loads(line) for line in (out / "trajectory.jsonl").read_text().splitlines()]
    probe = next(event["output"] for event in events if event["type"] == "tool_call")
    assert "index answered 200" in probe and "PATH=" in probe and "\n42\n" in probe  # the setup used the index, and installed from it
    for where, textual in {
        "probe": probe,
        "proxy": proxy_config,
        "terminal": log.read_text(),
        **{name: (out / name).read_text() for name in ("run.json", "trajectory.jsonl", "setup.log")},
    }.items():
        assert not any(secret in textual for secret in secrets), where
    record = json.loads((out / "run.json").read_text())
    saved = subprocess.run(["docker", "save", record["setup"]["image"]], capture_output=True, check=True).stdout
    assert b"airlock_testdep" in saved and not any(secret.encode() in saved for secret in secrets)


def test_a_credential_for_a_host_off_the_allowlist_or_an_unset_variable_is_refused_in_one_line(tmp_path: Path, policy: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    off_list = airlock("run", str(repo), "--task", "t", "--policy", str(policy), "--setup", "true", "--setup-secret", "index.corp.example=CRED",
                       env=airlock_env("http://127.0.0.1:9", CRED="ci:x"))  # fmt: skip
    assert off_list.returncode == 2 and off_list.stderr.strip().endswith("index.corp.example is not on the setup's allowlist ([setup] allow_hosts)")
    unset = airlock("run", str(repo), "--task", "t", "--policy", str(policy), "--setup", "true", "--setup-secret", "pypi.org=NOT_SET_ANYWHERE")
    assert unset.returncode == 2 and "NOT_SET_ANYWHERE: the variable is not set" in unset.stderr and "Traceback" not in unset.stderr
    assert len(unset.stderr.strip().splitlines()) == 1
