"""The setup phase: install the project's dependencies once, with egress to an allowlist only, and keep the
result as an environment image that the agent and verify sandboxes start from, network-less as ever.

The environment is found by a key that covers everything its build could read (orchestrator.run.setup_inputs):
the base image's id, the setup commands, the allowlist and the key files, which are all the setup sandbox
gets when the setup can run from them alone; when it needs the whole repo, a digest of every file copied
in and the repo's path too. With an image for the key there is no setup and no network at all. Otherwise a
setup sandbox is started under a name derived from the key, so two airlock processes never build the same
environment at once: the second waits for the first's image (or, if the first died, removes its stopped
sandbox and builds).

Secrets (`--setup-secret-env`) reach the setup commands' processes only: they travel on the setup tool's
stdin, are replaced by *** in every log, and an environment that holds one is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.errors import AirlockError, UsageError
from orchestrator.policy.model import AUTO_SETUP, SetupPolicy
from orchestrator.run.detect import VENV_COMMAND, VENV_WITHOUT_PIP, detect
from orchestrator.run.project_image import ProjectImage
from orchestrator.run.record import SetupRecord
from orchestrator.run.setup_causes import CauseWatch
from orchestrator.run.setup_inputs import SetupInputs, UnsafeReference, gather, tree_digest
from orchestrator.run.trace import Trace
from orchestrator.sandbox.base import OUT_OF_MEMORY, Backend, Environment, NameInUse
from orchestrator.sandbox.driver import Sandbox
from orchestrator.sandbox.egress import Credential, EgressRequest, covers, normalise_hosts, parse_credential_target, parse_log, summarise
from orchestrator.sandbox.env_archive import UnsafeEnvironment
from orchestrator.sandbox.repo_tar import RepoScan
from orchestrator.sandbox.spec import SandboxSpec
from orchestrator.sizes import human_size

SETUP_LOG = "setup.log"
TAIL_CHARS = 4000
MAX_LOG_BYTES = 32 * 1024**2
KEY_VERSION = b"airlock-env/v2"
WAIT_POLL_S = 2.0
CA_PATH = "/var/lib/airlock/setup-ca.pem"  # the state tmpfs: never part of the environment
HOST_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")
CA_VARIABLES = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "npm_config_cafile")
CACHE_ENV = "AIRLOCK_CACHE"  # where airlock keeps host-side state; default ~/.cache/airlock


class SetupFailed(AirlockError):
    """The setup commands failed, timed out or made an environment that cannot be kept (status setup_failed)."""


def environment_key(
    base_image_id: str, commands: list[str], files: dict[str, bytes], allow_hosts: tuple[str, ...], *, tree: str | None = None, repo: str | None = None
) -> str:
    """`tree`: the digest of every file copied in, when the setup gets the whole repo; `repo`: the repo's path,
    when its own code may run during the build (the environment is then this repo's alone)."""
    digest = hashlib.sha256(KEY_VERSION + b"\0" + base_image_id.encode())
    digest.update(json.dumps({"commands": commands, "allow_hosts": list(allow_hosts), "tree": tree, "repo": repo}).encode())
    for path, data in sorted(files.items()):
        digest.update(b"\0" + path.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def usage_dir() -> Path:
    """One file per environment key, touched whenever a run uses it: its mtime is the last use."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "airlock") / "env-usage"


def touch_used(key: str) -> None:
    try:
        usage_dir().mkdir(parents=True, exist_ok=True)
        (usage_dir() / key).touch()
    except OSError:
        pass  # bookkeeping only


def last_used(key: str) -> float | None:
    try:
        return (usage_dir() / key).stat().st_mtime
    except OSError:
        return None


def read_secrets(names: list[str]) -> dict[str, str]:
    """The values of --setup-secret-env variables, from airlock's own environment."""
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        raise UsageError(f"--setup-secret-env {missing[0]}: the variable is not set (or empty) in airlock's environment")
    return {name: os.environ[name] for name in names}


def read_credentials(setup: SetupPolicy) -> tuple[Credential, ...]:
    """The credentials the egress proxy adds (`[setup] credentials`, --setup-secret), their values read from
    airlock's own environment; UsageError naming the first one that cannot be used."""
    found = []
    for target, variable in setup.credentials.items():
        host, port = parse_credential_target(target)
        value = os.environ.get(variable)
        if not value:
            raise UsageError(f"--setup-secret {target}={variable}: the variable is not set (or empty) in airlock's environment")
        if not covers(setup.allow_hosts, host):
            raise UsageError(f"--setup-secret {target}: {host} is not on the setup's allowlist ([setup] allow_hosts)")
        credential = Credential(host, port, value)
        try:
            credential.header()
        except ValueError as exc:
            raise UsageError(f"--setup-secret {target}={variable}: {exc}") from None
        found.append(credential)
    return tuple(found)


def host_ca_bundle() -> str | None:
    """This machine's own CA bundle, found as OpenSSL and Python find it (on a network whose egress inspects
    TLS, the host trusts the inspecting proxy's CA there), else at the usual Debian, RHEL and Alpine places."""
    paths = ssl.get_default_verify_paths()
    for path in (paths.cafile, paths.openssl_cafile, *HOST_BUNDLES):
        if path and os.path.isfile(path):
            return path
    return None


def setup_trust(policy: SetupPolicy) -> tuple[bytes | None, str]:
    """The CA certificates the setup trusts, and which they are: the policy's (--setup-ca), else the host's
    own bundle (unless `host_ca = false`), else the sandbox image's (nothing to send)."""
    if policy.ca_bundle is not None:
        return read_ca_bundle(policy.ca_bundle), f"the CA bundle {policy.ca_bundle} (--setup-ca)"
    path = host_ca_bundle() if policy.host_ca else None
    try:
        data = read_ca_bundle(path)
    except UsageError:  # unreadable or empty: the image's own certificates are all there is
        data = None
    if data is None:
        return None, "the sandbox image's own CA certificates" + ("" if policy.host_ca else " ([setup] host_ca = false)")
    return data, f"the host's CA bundle {path}"


def read_ca_bundle(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the setup's CA bundle {path}: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise UsageError(f"the setup's CA bundle {path} holds no PEM certificate")
    return data


class _Log:
    """setup.log on the host, secrets replaced line by line; keeps the tail for run.json and the terminal."""

    def __init__(self, path: Path, secrets: list[str], on_command: Callable[[str], None]) -> None:
        self._file = path.open("ab")
        self.causes = CauseWatch()
        self._secrets = [secret for secret in secrets if secret]
        self._partial = b""
        self._written = 0
        self._tail = ""
        self._on_command = on_command

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def write(self, chunk: bytes) -> None:
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        if len(self._partial) > 65536:  # a very long line without a newline: write it in parts
            lines.append(self._partial)
            self._partial = b""
        for line in lines:
            self.line(line.decode("utf-8", "replace"))

    def line(self, text: str, *, tail: bool = True) -> None:
        """One line into setup.log, and into the tail unless `tail` is False."""
        text = self.redact(text)
        self.causes.line(text)
        if text.startswith("$ "):
            self._on_command(text[2:])
        if tail:
            self._tail = (self._tail + text + "\n")[-TAIL_CHARS:]
        if self._written < MAX_LOG_BYTES:
            data = (text + "\n").encode()
            self._file.write(data)
            self._written += len(data)

    @property
    def tail(self) -> str:
        return self._tail

    def close(self) -> None:
        if self._partial:
            self.line(self._partial.decode("utf-8", "replace"))
            self._partial = b""
        self._file.close()


@dataclass
class SetupPhase:
    """One run's setup phase; `record` is filled in as it goes, so a failure still says how far it got."""

    backend: Backend
    spec: SandboxSpec  # the agent's sandbox: the setup sandbox is made from it
    setup: SetupPolicy
    repo: Path
    hidden: list[str]
    out: Path
    trace: Trace
    copy_repo: Callable[[Sandbox], object]
    scan: RepoScan  # what copy_repo sends
    secrets: dict[str, str]
    rebuild: bool = False
    # Wraps the removal of the setup sandbox (the runner defers Ctrl-C there, as for the agent's).
    finishing: Callable[[], AbstractContextManager[object]] = field(default=nullcontext)
    project: ProjectImage | None = None  # the environment the repo describes: its commands are the setup's

    def __post_init__(self) -> None:
        self.record = SetupRecord(allow_hosts=list(normalise_hosts(self.setup.allow_hosts)))
        self.ca_bundle, self.record.trust = setup_trust(self.setup)

    def run(self) -> Environment | None:
        """The environment the agent starts from (found or built), or None when `auto` found nothing to install."""
        started = time.monotonic()
        try:
            return self._run()
        finally:
            self.record.duration_s = round(time.monotonic() - started, 2)

    def _commands(self) -> tuple[list[str], str | None] | None:
        """The commands to run, and why they need the whole repo (None: the key files are enough)."""
        if self.project is not None:
            if not self.project.commands:
                self.trace.note(f"setup: {self.project.source} names no command to run: its image is the environment")
                return None
            return list(self.project.commands), f"the commands of {self.project.source} may read any file of the repo"
        if self.setup.commands != [AUTO_SETUP]:
            return [VENV_COMMAND, *self.setup.commands], "setup commands given by hand may read any file of the repo"
        found = detect(self.repo, self.hidden)
        self.record.detected, self.record.ecosystems = found.notes, found.ecosystems
        for note in found.notes:
            self.trace.note(f"setup auto: {note}")
        if not found.commands:
            self.trace.note("setup auto: nothing to install found (no pyproject.toml, setup.py, requirements*.txt or package.json at the root)")
            return None
        return [VENV_COMMAND if "python" in found.ecosystems else VENV_WITHOUT_PIP, *found.commands], found.whole_repo

    def _inputs(self, whole_repo: str | None) -> SetupInputs:
        try:
            inputs = gather(self.repo, self.setup.files, self.hidden, whole_repo=whole_repo)
        except UnsafeReference as exc:
            raise SetupFailed(str(exc)) from None
        self.record.key_files = list(inputs.files)
        self.record.inputs = inputs.record(self.scan.stats.files)
        if inputs.whole_repo:
            self.trace.note(f"setup: the environment is keyed by every file of the repo, and by the repo, since {inputs.whole_repo}")
        elif inputs.repo_code:
            self.trace.note(f"setup: the environment is this repo's alone, since {inputs.repo_code}")
        return inputs

    def _run(self) -> Environment | None:
        found = self._commands()
        if found is None:
            return None
        commands, whole_repo = found
        self.record.commands = commands
        inputs = self._inputs(whole_repo)
        store = self.backend.environments()
        key = environment_key(
            store.image_id(self.spec.image), commands, inputs.files, tuple(self.record.allow_hosts),
            tree=tree_digest(self.scan) if inputs.whole_repo else None, repo=str(self.repo.resolve()) if inputs.repo_code else None,
        )  # fmt: skip
        self.record.key = key
        rebuild = self.rebuild
        give_up = time.monotonic() + self.setup.timeout + 300
        waiting = False
        while True:
            env = None if rebuild else store.find(key)
            if env is not None:
                self.record.cache, self.record.image = "hit", env.image
                self.trace.note(f"setup: environment {env.image} from the cache (no setup, no network)")
                touch_used(key)
                return env
            try:
                env = self._build(key, commands, inputs)
            except NameInUse:
                if time.monotonic() > give_up:
                    raise SetupFailed("gave up waiting for another airlock process building the same environment") from None
                if not waiting:
                    self.trace.note(f"setup: another airlock process is building this environment (key {key[:12]}); waiting for it")
                    waiting = True
                time.sleep(WAIT_POLL_S)
                self.backend.remove_stale()  # a builder that died has stopped: its sandbox goes, the name is free
                rebuild = False  # the other process's image is as fresh as ours would be
                continue
            self.record.cache, self.record.image = "build", env.image
            touch_used(key)
            return env

    def _build(self, key: str, commands: list[str], inputs: SetupInputs) -> Environment:
        setup = self.setup
        try:
            credentials = read_credentials(setup)
        except UsageError as exc:
            raise SetupFailed(str(exc)) from None
        hidden = [*self.secrets.values(), *(c.value for c in credentials), *(c.header().split(" ", 1)[1] for c in credentials)]
        spec = replace(
            self.spec, egress=normalise_hosts(setup.allow_hosts), egress_credentials=credentials, env_disk=setup.disk, memory=setup.memory, environment=False,
            name=f"airlock-envbuild-{key[:24]}", lifetime_s=setup.timeout + 1800,
        )  # fmt: skip
        log = _Log(self.out / SETUP_LOG, hidden, lambda command: self.trace.note(f"setup $ {command}"))
        hosts = ", ".join(self.record.allow_hosts) or "none"
        for credential in credentials:
            where = credential.host + (f":{credential.port}" if credential.port else "")
            self.trace.note(f"setup: the egress proxy adds a credential to plain-http requests to {where} (the setup never holds it)")
        self.trace.note(f"setup: building the environment (key {key[:12]}) in a sandbox whose only way out is a proxy to: {hosts}")
        sandbox: Sandbox | None = None
        try:
            sandbox = Sandbox(self.backend.start(spec), spec)
            if inputs.whole_repo:
                self.copy_repo(sandbox)
            else:  # manifest-first: nothing else of the repo is there for the install's code to read
                sandbox.copy_files(inputs.files)
                names = list(inputs.files)
                shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
                self.trace.note(f"setup: the setup sandbox holds only the files of the key: {shown or 'none'}")
            sandbox.install_tools()
            env_vars = dict(self.secrets)
            self.trace.note(f"setup: trusting {self.record.trust}")
            if self.ca_bundle is not None:
                sandbox.write_file(CA_PATH, self.ca_bundle)
                env_vars |= {name: CA_PATH for name in CA_VARIABLES}
            try:
                code = sandbox.run_setup(commands, env_vars, log.write, deadline=time.monotonic() + setup.timeout)
            except TimeoutError:
                code = None
                log.line(f"[the setup did not finish within {setup.timeout:g} s]")
            self._egress(sandbox.box.egress_log(), log)
            self.record.exit_code = code
            if code != 0:
                failure = sandbox.box.failure()
                raise SetupFailed(self._failure(code, log.causes, failure if failure and failure.startswith(OUT_OF_MEMORY) else None))
            self._changes(sandbox.setup_changes())
            with tempfile.TemporaryDirectory(prefix="airlock-env-") as tmp:
                archive = Path(tmp) / "environment.tar"
                try:
                    stats = sandbox.pack_environment(archive, hidden, timeout=setup.timeout, repo=self.repo)
                except UnsafeEnvironment as exc:
                    raise SetupFailed(str(exc)) from None
                self.record.env_bytes = stats.bytes
                labels = {
                    "airlock.env.repo": str(self.repo), "airlock.env.base": self.spec.image,
                    "airlock.env.commands": json.dumps(commands), "airlock.env.bytes": str(stats.bytes),
                    "airlock.env.workspace-files": str(len(stats.workspace_paths)),
                }  # fmt: skip
                store = self.backend.environments()
                env = store.save(key, store.image_id(self.spec.image), archive, labels)
            self.trace.note(f"setup: saved {env.image} ({stats.bytes / 1024**2:.1f} MiB, {stats.files} files)")
            return env
        finally:
            log.close()
            self.record.log_tail = log.tail
            if sandbox is not None:
                with self.finishing():
                    sandbox.remove()

    def _egress(self, text: str, log: _Log) -> None:
        requests: list[EgressRequest] = parse_log(text)
        for request in requests:
            verdict = "allowed" if request.allowed else "REFUSED"
            # A thousand allowed requests would fill the tail: only refused ones are kept there (all are in setup.log).
            log.line(f"egress: {verdict} {request.method} {request.host} status {request.status}, {request.bytes} bytes", tail=not request.allowed)
        self.record.hosts = summarise(requests)
        self.record.refused = sorted({request.host for request in requests if not request.allowed})
        for host in self.record.refused:
            self.trace.note(f"setup: refused by the egress allowlist: {host}")

    def _failure(self, code: int | None, causes: CauseWatch, out_of_memory: str | None) -> str:
        """One line: what failed, then why, when the log or the box can tell."""
        what = f"the setup did not finish within {self.setup.timeout:g} s ([setup] timeout)" if code is None else f"the setup failed (exit code {code})"
        if self.record.refused:
            return f"{what}; refused by the egress allowlist: {', '.join(self.record.refused)}"
        why = causes.explain(ca_source=self.record.trust, out_of_memory=out_of_memory, memory=human_size(self.setup.memory), disk=human_size(self.setup.disk))
        return f"{what}: {why}" if why else what

    def _changes(self, found: dict[str, Any]) -> None:
        def paths(kind: str) -> list[str]:
            value = found.get(kind)
            return [path for path in value if isinstance(path, str)] if isinstance(value, list) else []

        self.record.created, self.record.modified, self.record.deleted = paths("created"), paths("modified"), paths("deleted")
        if self.record.modified or self.record.deleted:
            changed = ", ".join([*self.record.modified, *self.record.deleted][:10])
            self.trace.note(f"setup changed files of the repo (the agent gets them as they were, and the patch is against them): {changed}")
