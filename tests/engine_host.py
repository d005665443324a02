"""A second Docker engine on this machine, for the remote-engine tests: its own network namespace and
address, data root, exec root, pidfile and socket, with sshd and a TLS port in front of it.

Every resource is named airlock-test-<id> (the namespace, the veth pair, the folder under /tmp, the cgroup
parent), so nothing collides with the main dockerd or with another test session. `start()` takes a few
seconds; `close()` removes everything. The engine reaches nothing: it has no bridge and no route out.

The clients' side: `env(transport)` gives the environment under which airlock reaches the engine over
ssh through paramiko, over ssh through the OpenSSH client, or over tcp with TLS (client certificates).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import docker

TRANSPORTS = ("paramiko", "openssh", "tls")
READY_TIMEOUT_S = 90.0
DATA_ROOT_SIZE = "3g"  # the sandbox image unpacked, and the containers' layers


def _run(*cmd: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload]


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 in 10.231.0.0/16 that no interface of this machine uses."""
    used = _run("ip", "-o", "-4", "addr", "show").stdout + _run("ip", "-4", "route", "show").stdout
    for _ in range(100):
        net = ipaddress.IPv4Network(f"10.231.{secrets.randbelow(256)}.{secrets.randbelow(64) * 4}/30")
        if ".".join(str(net.network_address).split(".")[:3]) + "." not in used:
            return net
    raise RuntimeError("no free /30 in 10.231.0.0/16")


def _alive(pid: int) -> bool:
    """Running, not a zombie that nobody reaps."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class EngineHost:
    def __init__(self) -> None:
        self.id = secrets.token_hex(3)
        self.name = f"airlock-test-{self.id}"
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        net = _free_subnet()
        self.host_ip, self.address = (str(ip) for ip in net.hosts())
        self.prefix = net.prefixlen
        self.veth = f"at{self.id}h"
        self.socket = self.root / "docker.sock"
        self.tls_port = 2376
        self.alias = self.name  # the ssh Host alias the clients' configs define
        self._sshd: subprocess.Popen[bytes] | None = None
        self._dockerd: subprocess.Popen[bytes] | None = None

    # --- life ------------------------------------------------------------------------------------------

    def start(self) -> EngineHost:
        try:
            self._network()
            self._certificates()
            self._ssh()
            self.start_engine()
        except BaseException:
            self.close()
            raise
        return self

    def _in_namespace(self, *cmd: str) -> list[str]:
        # `ip netns exec` remounts /sys and hides the cgroup v1 mounts dockerd needs: change only the network.
        return ["nsenter", f"--net=/var/run/netns/{self.name}", *cmd]

    def _network(self) -> None:
        peer = f"at{self.id}n"
        _run("ip", "netns", "add", self.name)
        _run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", peer, "netns", self.name)
        _run("ip", "addr", "add", f"{self.host_ip}/{self.prefix}", "dev", self.veth)
        _run("ip", "link", "set", self.veth, "up")
        for cmd in (["ip", "addr", "add", f"{self.address}/{self.prefix}", "dev", peer], ["ip", "link", "set", peer, "up"], ["ip", "link", "set", "lo", "up"]):
            _run(*self._in_namespace(*cmd))

    def _certificates(self) -> None:
        """A CA, a server certificate for the engine's address, and a client certificate, as `docker` expects them."""
        certs = self.certs = self.root / "certs"
        certs.mkdir()

        def openssl(*args: str) -> None:
            _run("openssl", *args, cwd=certs)

        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                "-subj", f"/CN={self.name}-ca", "-keyout", "ca-key.pem", "-out", "ca.pem")  # fmt: skip
        for name, ext in (("server", f"subjectAltName=IP:{self.address}\nextendedKeyUsage=serverAuth"), ("client", "extendedKeyUsage=clientAuth")):
            (certs / f"{name}.ext").write_text(ext + "\n")
            openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={self.name}-{name}",
                    "-keyout", f"{name}-key.pem", "-out", f"{name}.csr")  # fmt: skip
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial", "-days", "2",
                    "-extfile", f"{name}.ext", "-out", f"{name}-cert.pem")  # fmt: skip
        shutil.copy(certs / "client-cert.pem", certs / "cert.pem")
        shutil.copy(certs / "client-key.pem", certs / "key.pem")

    def _ssh(self) -> None:
        root = self.root
        for key in ("host-key", "client-key"):
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.name, "-f", str(root / key))
        shutil.copy(root / "client-key.pub", root / "authorized_keys")
        (root / "sshd_config").write_text(
            f"ListenAddress {self.address}:22\nHostKey {root / 'host-key'}\nPidFile {root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            # As the README asks of an engine host: over paramiko every stream is a session of one connection, and
            # a run under load kept more than the default 10 open (seen once: "open failed: Connect failed").
            "MaxSessions 64\n"
            # `docker system dial-stdio` on this side must reach the second engine, never the main one.
            f"SetEnv DOCKER_HOST=unix://{self.socket}\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
        sshd = self._in_namespace("/usr/sbin/sshd", "-D", "-f", str(root / "sshd_config"), "-E", str(root / "sshd.log"))
        self._sshd = subprocess.Popen(sshd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # The clients: paramiko reads ~/.ssh (HOME), the OpenSSH client only its -F file (a wrapper on PATH).
        host_key = " ".join((root / "host-key.pub").read_text().split()[:2])
        home_ssh = root / "home" / ".ssh"
        home_ssh.mkdir(parents=True)
        (home_ssh / "known_hosts").write_text(f"{self.address} {host_key}\n")
        (home_ssh / "config").write_text(
            f"Host {self.alias}\n  HostName {self.address}\n  User root\n  IdentityFile {root / 'client-key'}\n"
            f"  IdentitiesOnly yes\n  UserKnownHostsFile {home_ssh / 'known_hosts'}\n  StrictHostKeyChecking yes\n  BatchMode yes\n"
        )
        (root / "bin").mkdir()
        wrapper = root / "bin" / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {home_ssh / "config"} "$@"\n')
        wrapper.chmod(0o755)

    def start_engine(self) -> None:
        """Start (or start again) the engine; returns once it answers."""
        root = self.root
        data = root / "data"
        if not data.is_mount():  # in memory: removing a data root of unpacked layers from disk takes long
            data.mkdir(exist_ok=True)
            _run("mount", "-t", "tmpfs", "-o", f"size={DATA_ROOT_SIZE},mode=0711", f"{self.name}-data", str(data))
        (root / "daemon.json").write_text("{}\n")  # not the main engine's /etc/docker/daemon.json
        certs = self.certs
        cmd = [
            "dockerd", "--config-file", str(root / "daemon.json"), "--data-root", str(data), "--exec-root", str(root / "exec"),
            "--pidfile", str(root / "docker.pid"), "-H", f"unix://{self.socket}", "-H", f"tcp://{self.address}:{self.tls_port}",
            "--tlsverify", "--tlscacert", str(certs / "ca.pem"), "--tlscert", str(certs / "server-cert.pem"), "--tlskey", str(certs / "server-key.pem"),
            "--bridge", "none", "--iptables=false", "--ip-masq=false", "--cgroup-parent", f"/{self.name}",
        ]  # fmt: skip
        with open(root / "dockerd.log", "ab") as log:
            self._dockerd = subprocess.Popen(self._in_namespace(*cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                with contextlib.closing(self.client()) as client:
                    client.ping()
                return
            except Exception:
                if self._dockerd.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the second engine did not come up: {(root / 'dockerd.log').read_text()[-2000:]}") from None
                time.sleep(0.3)

    def kill_engine(self) -> None:
        """The engine dies at once, as a crashed daemon would; its containers are not cleaned up.

        Its containerd dies with it. Left alone, containerd lives on until its next log line meets the dead
        engine's pipe; on a machine whose init reaps no orphans it then stays a zombie, which the pidfile
        still names, and a restarted dockerd waits for that zombie's socket until it gives up.
        """
        assert self._dockerd is not None
        self._dockerd.send_signal(signal.SIGKILL)
        self._dockerd.wait(timeout=30)
        pidfile = self.root / "exec" / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        pidfile.unlink(missing_ok=True)

    def client(self, timeout: float = 60) -> docker.DockerClient:
        """A client on the engine's own socket (the tests' view, not through any transport under test)."""
        return docker.DockerClient(base_url=f"unix://{self.socket}", timeout=timeout)

    def load_image(self, tag: str) -> None:
        save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
        _run("docker", "-H", f"unix://{self.socket}", "load", stdin=save.stdout)
        assert save.wait(timeout=120) == 0

    # --- the clients' side -----------------------------------------------------------------------------

    def url(self, transport: str) -> str:
        return f"tcp://{self.address}:{self.tls_port}" if transport == "tls" else f"ssh://{self.alias}"

    def env(self, transport: str) -> dict[str, str]:
        """What airlock's environment needs to reach this engine over `transport` (DOCKER_HOST not included)."""
        env = {"HOME": str(self.root / "home"), "PATH": f"{self.root / 'bin'}:{os.environ['PATH']}"}
        if transport == "openssh":
            env["AIRLOCK_DOCKER_SSH"] = "openssh"
        if transport == "tls":
            env |= {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(self.certs)}
        return env

    # --- the end ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything this host started and remove all it made, whatever state it is in."""
        if self._dockerd is not None and self._dockerd.poll() is None:
            self._dockerd.terminate()  # stops its containers and its containerd
            try:
                self._dockerd.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._dockerd.kill()
                self._dockerd.wait()
        for pidfile in (self.root / "exec" / "containerd" / "containerd.pid",):  # left running by a killed dockerd
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        self._kill_cgroup()
        if self._sshd is not None and self._sshd.poll() is None:
            self._sshd.terminate()
            self._sshd.wait(timeout=10)
        # Whatever else still lives in the namespace (sshd's sessions, whose clients' goodbyes can no longer
        # arrive once the namespace is gone): the namespace's own list of its processes.
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True, timeout=30).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        mounts = _run("findmnt", "-rn", "-o", "TARGET").stdout.split()
        for target in sorted((m for m in mounts if m.startswith(str(self.root))), key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_cgroup(self) -> None:
        """Whatever still runs in the containers' cgroup (a killed engine's shims leave them)."""
        for tasks in Path("/sys/fs/cgroup").glob(f"*/{self.name}/**/tasks"):
            with contextlib.suppress(OSError):
                for pid in tasks.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        shims = subprocess.run(["pgrep", "-f", f"containerd-shim.*{self.root}"], capture_output=True, text=True, timeout=30).stdout.split()
        for shim in shims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(shim), signal.SIGKILL)
        time.sleep(0.2)
        for folder in sorted(Path("/sys/fs/cgroup").glob(f"*/{self.name}/**/"), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()
