"""The setup phase's parts that need no Docker: the allowlist and squid's config and log, detection, the
environment key, the check of a packed environment, the in-sandbox change listing, policy and batch rules."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import PROJECT

from orchestrator.batch.tasks import Defaults, load_tasks
from orchestrator.errors import UsageError
from orchestrator.policy.model import PolicyError, load_policy
from orchestrator.run.detect import EDITABLE_LATER, detect
from orchestrator.run.environments import parse_age
from orchestrator.run.setup import environment_key
from orchestrator.run.setup_inputs import gather
from orchestrator.sandbox.egress import (
    Credential,
    check_host,
    covers,
    credentials_config,
    normalise_hosts,
    parse_credential_target,
    parse_log,
    squid_config,
    summarise,
)
from orchestrator.sandbox.env_archive import EXCLUDE, UnsafeEnvironment, copy_checked, gitignore_line, in_repo


def test_allowlist_entries_are_host_names_wildcards_or_ipv4() -> None:
    assert [check_host(h) for h in ("PyPI.org", "*.corp.example", ".corp.example", "10.0.0.7")] == ["pypi.org", ".corp.example", ".corp.example", "10.0.0.7"]
    for bad in ("https://pypi.org", "pypi.org:443", "pypi.org/simple", "", "*.10.0.0.7", "exa mple.org"):
        with pytest.raises(ValueError):
            check_host(bad)
    assert normalise_hosts(["a.corp.example", ".corp.example", "pypi.org", "pypi.org"]) == (".corp.example", "pypi.org")
    assert covers([".corp.example"], "index.corp.example") and covers(["pypi.org"], "pypi.org")
    assert not covers(["pypi.org"], "evil.org") and not covers(["index.corp.example"], ".corp.example")


def test_squid_forwards_only_the_allowlist_to_setup_clients() -> None:
    config = squid_config(["pypi.org", "*.corp.example"], "172.30.0.0/16")
    assert "acl setup_clients src 172.30.0.0/16\nhttp_access deny !setup_clients" in config
    assert "acl allowlist dstdomain -n .corp.example pypi.org\nhttp_access allow allowlist\nhttp_access deny all" in config
    assert "cache deny all" in config and "strip_query_terms on" in config
    assert "allowlist" not in squid_config([], "172.30.0.0/16")  # an empty allowlist refuses everything


def test_squid_log_lines_become_requests_per_host() -> None:
    log = (
        "2026/12/01 08:38:06| Accepting HTTP Socket connections at conn2\n"
        "1796114290.659 TCP_TUNNEL/200 7469 781 CONNECT pypi.org:443\n"
        "1796114290.665 TCP_DENIED/403 3406 133 GET http://example.org/path\n"
        "1796114290.700 TCP_TUNNEL/200 100 50 CONNECT pypi.org:443\n"
    )
    requests = parse_log(log)
    assert [(r.host, r.allowed, r.status) for r in requests] == [("pypi.org", True, 200), ("example.org", False, 403), ("pypi.org", True, 200)]
    assert summarise(requests) == [
        {"host": "pypi.org", "allowed": True, "requests": 2, "bytes": 7569},
        {"host": "example.org", "allowed": False, "requests": 1, "bytes": 3406},
    ]


def test_auto_detects_python_and_node_projects(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[project.optional-dependencies]\ntest = ["pytest"]\ndocs = ["sphinx"]\n')
    (tmp_path / "requirements-dev.txt").write_text("ruff\n")
    (tmp_path / "package.json").write_text("{}")
    (tmp_path / "yarn.lock").write_text("")
    (tmp_path / "poetry.lock").write_text("")
    found = detect(tmp_path)
    assert found.ecosystems == ["python", "node"]
    assert found.commands == [
        "pip install -r requirements-dev.txt", EDITABLE_LATER, "pip install 'setuptools>=64' wheel pytest",
        "npx --yes yarn@1 install --frozen-lockfile --non-interactive",
    ]  # fmt: skip
    assert found.whole_repo is None  # static metadata: the project's dependencies from pyproject.toml alone
    assert any("poetry.lock" in note for note in found.notes)
    assert detect(tmp_path / "missing").commands == []


def test_key_files_are_plain_root_manifests_never_symlinks_or_hidden(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("a\n")
    (tmp_path / "package-lock.json").symlink_to("/etc/hostname")
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "deps.txt").write_text("b\n")
    assert list(gather(tmp_path, []).files) == ["requirements.txt"]
    assert list(gather(tmp_path, ["extra/*.txt"]).files) == ["extra/deps.txt", "requirements.txt"]
    assert list(gather(tmp_path, [], hidden=["requirements.txt"]).files) == []


def test_the_environment_key_changes_with_each_input() -> None:
    base = environment_key("sha256:a", ["pip install ."], {"pyproject.toml": b"x"}, ("pypi.org",))
    assert base == environment_key("sha256:a", ["pip install ."], {"pyproject.toml": b"x"}, ("pypi.org",))
    others = [
        environment_key("sha256:b", ["pip install ."], {"pyproject.toml": b"x"}, ("pypi.org",)),
        environment_key("sha256:a", ["pip install -e ."], {"pyproject.toml": b"x"}, ("pypi.org",)),
        environment_key("sha256:a", ["pip install ."], {"pyproject.toml": b"y"}, ("pypi.org",)),
        environment_key("sha256:a", ["pip install ."], {"setup.py": b"x"}, ("pypi.org",)),
        environment_key("sha256:a", ["pip install ."], {"pyproject.toml": b"x"}, ("pypi.org", "corp.example")),
        environment_key("sha256:a", ["pip install ."], {"pyproject.toml": b"x"}, ("pypi.org",), tree="t1"),
        environment_key("sha256:a", ["pip install ."], {"pyproject.toml": b"x"}, ("pypi.org",), tree="t2"),
        environment_key("sha256:a", ["pip install ."], {"pyproject.toml": b"x"}, ("pypi.org",), repo="/src/a"),
    ]
    assert len({base, *others}) == 9


def _archive(members: list[tuple[tarfile.TarInfo, bytes]]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    buffer.seek(0)
    return buffer


def _file(name: str, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info


def test_a_packed_environment_is_checked_member_by_member(tmp_path: Path) -> None:
    dest = tmp_path / "env.tar"
    source = _archive([(_file("airlock-env/venv/bin/tool", 0o4755), b"#!/bin/sh\n"), (_file("airlock-env/workspace/node_modules/x.js"), b"1"),
                       (_file("airlock-env/workspace/a*b"), b"")])  # fmt: skip
    stats = copy_checked(source, dest, ["never-written"], limit=1 << 20)
    assert stats.files == 3 and stats.workspace_paths == ["a*b"]
    with tarfile.open(dest) as tar:
        assert tar.getmember("airlock-env/venv/bin/tool").mode == 0o755  # no set-uid
        assert tar.extractfile(EXCLUDE).read() == b"/a\\*b\n"  # type: ignore[union-attr]
    assert "node_modules" not in stats.workspace_paths  # only topmost created entries are listed
    for bad, why in (
        ([(_file("etc/passwd"), b"x")], "outside"),
        ([(_file("airlock-env/../etc/passwd"), b"x")], "outside"),
        ([(_file("airlock-env/venv/token"), b"the value TOPSECRET here")], "secret"),
    ):
        with pytest.raises(UnsafeEnvironment, match=why):
            copy_checked(_archive(bad), tmp_path / "bad.tar", ["TOPSECRET"], limit=1 << 20)
    fifo = tarfile.TarInfo("airlock-env/venv/pipe")
    fifo.type = tarfile.FIFOTYPE
    with pytest.raises(UnsafeEnvironment, match="special file"):
        copy_checked(_archive([(fifo, b"")]), tmp_path / "bad.tar", [], limit=1 << 20)
    assert gitignore_line("#notes ") == "/#notes\\ "
    claims = _archive([(_file("airlock-env/workspace/test_app.py"), b"def test(): pass\n")])
    with pytest.raises(UnsafeEnvironment, match="a path of the repo"):
        copy_checked(claims, tmp_path / "bad.tar", [], limit=1 << 20, in_repo=lambda path: path == "test_app.py")


def test_in_repo_sees_paths_under_symlinks_and_files(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("")
    (tmp_path / "link").symlink_to("/etc")
    assert in_repo(tmp_path, "src/a.py") and in_repo(tmp_path, "src") and in_repo(tmp_path, "link/passwd") and in_repo(tmp_path, "src/a.py/x")
    assert not in_repo(tmp_path, "src/b.py") and not in_repo(tmp_path, "node_modules")


def test_the_sandbox_side_lists_what_setup_created_modified_and_deleted(tmp_path: Path) -> None:
    root, state = tmp_path / "repo", tmp_path / "state"
    root.mkdir(), state.mkdir()
    (root / "keep.txt").write_text("a")
    (root / "gone.txt").write_text("b")
    (root / "src").mkdir()
    tool = [sys.executable, str(PROJECT / "tools" / "environment.py")]
    script = "mkdir -p build/deep src/pkg.egg-info __pycache__ && echo x > build/deep/f && echo y >> keep.txt && rm gone.txt"
    run = subprocess.run([*tool, "run", "--root", str(root), "--state", str(state)], input=json.dumps({"commands": [script, "false"], "secrets": {}}),
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 1 and run.stdout.startswith(f"$ {script}\n$ false\n[exit 1]")
    found = json.loads(subprocess.run([*tool, "changes", "--root", str(root), "--state", str(state)], capture_output=True, check=True).stdout)
    assert (found["created"], found["modified"], found["deleted"]) == (["build", "src/pkg.egg-info"], ["keep.txt"], ["gone.txt"])


def test_setup_policy_keys_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    for text, message in (
        ('[setup]\ncommands = ["auto", "npm ci"]\n', "give it alone"),
        ('[setup]\nallow_hosts = ["https://pypi.org"]\n', "not a host name"),
        ("[setup]\ntimeout = 0\n", "greater than 0"),
        ('[setup]\nfiles = ["../x"]\n', "cannot contain '..'"),
    ):
        path.write_text(text)
        with pytest.raises(PolicyError, match=message):
            load_policy(path)
    assert parse_age("30d") == 30 * 86400 and parse_age("90m") == 5400
    with pytest.raises(UsageError):
        parse_age("soon")


def test_a_batch_task_sets_up_within_the_operators_allowlist(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    operator = tmp_path / "operator.toml"
    operator.write_text('[setup]\nallow_hosts = ["pypi.org", ".corp.example"]\n')
    tasks = tmp_path / "tasks.jsonl"
    lines = [
        {"id": "ok", "repo": "repo", "task": "t", "setup": {"commands": ["auto"], "allow_hosts": ["index.corp.example"]}},
        {"id": "wide", "repo": "repo", "task": "t", "setup": {"commands": ["auto"], "allow_hosts": ["evil.org"]}},
        {"id": "plain", "repo": "repo", "task": "t", "setup": "npm ci"},
        {"id": "bad", "repo": "repo", "task": "t", "setup": {"timeout": -1}},
    ]
    tasks.write_text("".join(json.dumps(line) + "\n" for line in lines))
    loaded = load_tasks(tasks, Defaults(policy=operator))
    assert [task.id for task in loaded.tasks] == ["ok", "plain"]
    assert "evil.org not allowed by the batch's policy" in loaded.problems[0] and "setup: timeout" in loaded.problems[1]
    ok, plain = loaded.tasks
    assert load_policy_text(tmp_path, ok.policy.to_toml()).setup.allow_hosts == ["index.corp.example"]
    assert load_policy_text(tmp_path, plain.policy.to_toml()).setup.commands == ["npm ci"]
    assert "--policy" in ok.run_options(tmp_path / "ok.policy.toml")


def load_policy_text(tmp_path: Path, text: str | None):
    assert text is not None
    path = tmp_path / "written.toml"
    path.write_text(text)
    return load_policy(path)


def test_a_credential_becomes_squid_lines_that_replace_the_clients_authorization_for_its_host_only() -> None:
    basic, bearer = Credential("index.corp.example", 8080, "ci:s3cret"), Credential("pypi.org", None, "tok_en.1")
    assert credentials_config([basic, bearer]) == (
        "acl airlock_credential_0 dstdomain -n index.corp.example\nacl airlock_credential_0_port port 8080\n"
        "request_header_access Authorization deny airlock_credential_0 airlock_credential_0_port\n"
        'request_header_add Authorization "Basic Y2k6czNjcmV0" airlock_credential_0 airlock_credential_0_port\n'
        "acl airlock_credential_1 dstdomain -n pypi.org\nrequest_header_access Authorization deny airlock_credential_1\n"
        'request_header_add Authorization "Bearer tok_en.1" airlock_credential_1\n'
    )
    assert "s3cret" not in repr(basic) and "include /tmp/credentials.conf" in squid_config(["pypi.org"], "172.30.0.0/16")
    with pytest.raises(ValueError, match="a token must be"):
        Credential("pypi.org", None, 'x" all\nhttp_access allow all').header()  # no squid directive smuggled in a token
    assert parse_credential_target("Index.Corp.Example:443") == ("index.corp.example", 443)
    for bad in ("*.corp.example", "pypi.org:0", "pypi.org:http", "https://pypi.org"):
        with pytest.raises(ValueError):
            parse_credential_target(bad)
