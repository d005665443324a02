"""A fake Kubernetes API server, for tests only: no cluster can run on these machines, so this one runs each
pod it is given as a real, equally hardened container on the local Docker engine. Never offered to users.

It speaks the part of the API airlock uses: /version; pods (create, read, list by label, delete), their
exec and attach as websockets (v5.channel.k8s.io, or v4 when told), configmaps and networkpolicies. Every
object it is given must validate against the Kubernetes 1.33 schema (strict), as an API server would refuse it.

The kubelet's part: the container gets the pod's user, read-only root, capabilities dropped, no privilege
escalation, CPU and memory limits (swap none), a pids limit (a node setting on a real cluster), tmpfs mounts
with the emptyDirs' size limits, the ConfigMaps written by root into root-owned tmpfs mounts (so the pod's
user cannot change them), its stdin held open until the first attach ends (stdinOnce), and it is stopped
past activeDeadlineSeconds. Its network: none while a NetworkPolicy denying all egress selects it and the
fake enforces NetworkPolicy (`enforce`); otherwise an internal Docker network where a stand-in for the
cluster's API service listens (KUBERNETES_SERVICE_HOST), as a cluster whose network plugin ignores
NetworkPolicy would leave it. Every container and network it makes is labelled airlock.fake-kube=<id>.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import re
import secrets
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import docker
import docker.errors
import kubernetes_validate
import yaml
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping
from wsproto.utilities import LocalProtocolError

from orchestrator.sandbox.hijack import pipe_of

FAKE_LABEL = "airlock.fake-kube"
K8S_VERSION = "1.33"
V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"
NODE_PIDS_LIMIT = 512  # the kubelet's podPidsLimit on a real node
CLUSTER_DNS, API_SERVICE = "10.96.0.10", "10.96.0.1"  # as a cluster would give them; unreachable from a pod without network
SERVICE_PORT = 8443
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_STDOUT, _STDERR = 1, 2
STAND_IN = (  # the stand-in for the API service: accepts connections, says nothing
    "import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {SERVICE_PORT})); s.listen(16)\nwhile True: s.accept()[0].close()\n"
)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def quantity(value: str) -> float:
    """A Kubernetes quantity ("1500m", "2", "512Mi", "4294967296") as a number."""
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, value
    return float(match.group(1)) * suffixes.get(match.group(2), 1)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code}


@dataclass
class Pod:
    manifest: dict[str, Any]
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: str = field(default_factory=_now)
    phase: str = "Pending"
    reason: str | None = None
    message: str | None = None
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    terminated: dict[str, Any] | None = None
    started: float | None = None  # time.monotonic() when it began to run
    container: Any = None  # the Docker container

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])

    @property
    def spec(self) -> dict[str, Any]:
        return self.manifest["spec"]

    def to_json(self) -> dict[str, Any]:
        [container] = self.spec["containers"]
        if self.terminated is not None:
            state: dict[str, Any] = {"terminated": self.terminated}
        elif self.waiting is not None:
            state = {"waiting": {"reason": self.waiting[0], "message": self.waiting[1]}}
        else:
            state = {"running": {"startedAt": self.created}}
        status: dict[str, Any] = {
            "phase": self.phase,
            "startTime": self.created,
            "containerStatuses": [
                {"name": container["name"], "image": container["image"], "imageID": "", "ready": "running" in state, "restartCount": 0, "state": state}
            ],
        }
        if self.reason:
            status |= {"reason": self.reason, "message": self.message or ""}
        meta = {**self.manifest["metadata"], "uid": self.uid, "creationTimestamp": self.created, "resourceVersion": "1"}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": self.spec, "status": status}


class FakeCluster:
    def __init__(self, client: docker.DockerClient, *, enforce: bool = True, protocols: tuple[str, ...] = (V5, V4)) -> None:
        self.client = client
        self.enforce = enforce  # whether NetworkPolicy binds (a network plugin that enforces it)
        self.protocols = protocols  # the exec/attach subprotocols it speaks
        self.id = secrets.token_hex(4)
        self.token = secrets.token_urlsafe(16)
        self.pods: dict[tuple[str, str], Pod] = {}
        self.config_maps: dict[tuple[str, str], dict[str, Any]] = {}
        self.network_policies: dict[tuple[str, str], dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []  # every object created, as received (after validation)
        self.lock = threading.RLock()
        self._network: Any = None
        self._service_ip: str | None = None
        self._stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True

    # --- life -------------------------------------------------------------------------------------------------

    def __enter__(self) -> FakeCluster:
        threading.Thread(target=self.server.serve_forever, name="fake-kube-api", daemon=True).start()
        threading.Thread(target=self._kubelet, name="fake-kubelet", daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def kubeconfig(self, path: Path, namespace: str) -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": self.token}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
                }
            )  # fmt: skip
        )
        return path

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        for container in self.client.containers.list(all=True, filters={"label": f"{FAKE_LABEL}={self.id}"}, ignore_removed=True):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True)
        for network in self.client.networks.list(filters={"label": f"{FAKE_LABEL}={self.id}"}):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                network.remove()

    # --- objects ----------------------------------------------------------------------------------------------

    def validate(self, body: Any, kind: str, namespace: str) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("kind") != kind:
            raise ApiError(400, "BadRequest", f"expected a {kind}")
        try:
            kubernetes_validate.validate(body, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise ApiError(422, "Invalid", f"{kind} is invalid: {exc.message}") from None
        meta = body.setdefault("metadata", {})
        if meta.setdefault("namespace", namespace) != namespace:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match the namespace of the request")
        self.created.append(json.loads(json.dumps(body)))
        return body

    def create_pod(self, namespace: str, body: Any) -> dict[str, Any]:
        manifest = self.validate(body, "Pod", namespace)
        if manifest["spec"].get("runtimeClassName"):
            raise ApiError(403, "Forbidden", f"pod rejected: RuntimeClass {manifest['spec']['runtimeClassName']!r} not found")
        key = (namespace, manifest["metadata"]["name"])
        with self.lock:
            if key in self.pods:
                raise ApiError(409, "AlreadyExists", f'pods "{key[1]}" already exists')
            pod = self.pods[key] = Pod(manifest)
        threading.Thread(target=self._run_pod, args=(namespace, pod), daemon=True).start()
        return pod.to_json()

    def delete_pod(self, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            pod = self.pods.pop((namespace, name), None)
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        if pod.container is not None:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                pod.container.remove(force=True)
        return pod.to_json()

    def pod(self, namespace: str, name: str) -> Pod:
        with self.lock:
            pod = self.pods.get((namespace, name))
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        return pod

    def selects(self, policy: dict[str, Any], labels: dict[str, str]) -> bool:
        spec = policy.get("spec") or {}
        wanted = (spec.get("podSelector") or {}).get("matchLabels") or {}
        denies_egress = "Egress" in (spec.get("policyTypes") or []) and not spec.get("egress")
        return denies_egress and all(labels.get(key) == value for key, value in wanted.items())

    # --- the kubelet ------------------------------------------------------------------------------------------

    def _isolated(self, namespace: str, labels: dict[str, str]) -> bool:
        with self.lock:
            policies = [policy for (ns, _), policy in self.network_policies.items() if ns == namespace]
        return self.enforce and any(self.selects(policy, labels) for policy in policies)

    def _pod_network(self) -> tuple[str, str]:
        """An internal network with the stand-in API service on it (made once): what a pod without enforced policy reaches."""
        with self.lock:
            if self._network is None:
                self._network = self.client.networks.create(f"airlock-test-kube-{self.id}", internal=True, labels={FAKE_LABEL: self.id})
                service = self.client.containers.run(
                    "airlock-sandbox:latest", ["python3", "-c", STAND_IN], detach=True, network=self._network.name, user="1000:1000",
                    read_only=True, cap_drop=["ALL"], labels={FAKE_LABEL: self.id}, name=f"airlock-test-kube-{self.id}-api",
                )  # fmt: skip
                service.reload()
                self._service_ip = service.attrs["NetworkSettings"]["Networks"][self._network.name]["IPAddress"]
            assert self._service_ip is not None
            return self._network.name, self._service_ip

    def _run_pod(self, namespace: str, pod: Pod) -> None:
        [spec] = pod.spec["containers"]
        try:
            self.client.images.get(spec["image"])
        except docker.errors.ImageNotFound:
            pod.waiting = ("ErrImagePull", f'failed to pull image "{spec["image"]}": not found in any registry this node reaches')
            return
        try:
            pod.container = self.client.containers.create(**self._container(namespace, pod))
            pod.container.start()
            self._populate_volumes(namespace, pod)
        except docker.errors.DockerException as exc:
            pod.waiting = ("CreateContainerError", str(exc))
            return
        pod.waiting, pod.phase, pod.started = None, "Running", time.monotonic()

    def _container(self, namespace: str, pod: Pod) -> dict[str, Any]:
        spec = pod.spec
        [container] = spec["containers"]
        security = {**(spec.get("securityContext") or {}), **(container.get("securityContext") or {})}
        if security.get("runAsNonRoot") and not security.get("runAsUser"):
            raise docker.errors.DockerException("container has runAsNonRoot and no non-root runAsUser")
        volumes = {volume["name"]: volume for volume in spec.get("volumes") or []}
        tmpfs = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            if "emptyDir" in volume:
                size = int(quantity(volume["emptyDir"].get("sizeLimit", "64Mi")))
                tmpfs[mount["mountPath"]] = f"rw,nosuid,nodev,exec,size={size}"
            elif "configMap" in volume:
                tmpfs[mount["mountPath"]] = "rw,nosuid,nodev,noexec,size=4m,mode=0755"  # root's: the pod's user cannot write
            else:
                raise docker.errors.DockerException(f"the fake kubelet mounts no {sorted(volume)} volume")
        labels = pod.manifest["metadata"].get("labels") or {}
        isolated = self._isolated(namespace, labels)
        network, service = ("none", API_SERVICE) if isolated else self._pod_network()
        limits = (container.get("resources") or {}).get("limits") or {}
        memory = int(quantity(limits["memory"])) if "memory" in limits else None
        env = {item["name"]: item.get("value", "") for item in container.get("env") or []}
        env |= {"KUBERNETES_SERVICE_HOST": service, "KUBERNETES_SERVICE_PORT": str(SERVICE_PORT)}  # what a kubelet always adds
        capabilities = (security.get("capabilities") or {}).get("drop") or []
        return dict(
            image=container["image"], entrypoint=container.get("command"), command=container.get("args"),
            user=f"{security.get('runAsUser', 0)}:{security.get('runAsGroup', 0)}", working_dir=container.get("workingDir"),
            environment=env, hostname=spec.get("hostname"), labels={**labels, FAKE_LABEL: self.id, "airlock.fake-pod": f"{namespace}.{pod.name}"},
            network_mode=network, dns=[service if not isolated else CLUSTER_DNS], read_only=bool(security.get("readOnlyRootFilesystem")),
            cap_drop=["ALL"] if "ALL" in capabilities else capabilities,
            security_opt=["no-new-privileges:true"] if security.get("allowPrivilegeEscalation") is False else [],
            privileged=bool(security.get("privileged")), tmpfs=tmpfs, pids_limit=NODE_PIDS_LIMIT, mem_limit=memory, memswap_limit=memory,
            nano_cpus=int(quantity(limits["cpu"]) * 1e9) if "cpu" in limits else None,
            stdin_open=bool(container.get("stdin")), tty=bool(container.get("tty")), init=False, use_config_proxy=False,
        )  # fmt: skip

    def _as_root(self, pod: Pod, cmd: list[str], stdin: bytes | None = None) -> None:
        exec_id = self.client.api.exec_create(pod.container.id, cmd, stdin=stdin is not None, user="0:0")["Id"]
        pipe = pipe_of(self.client.api.exec_start(exec_id, socket=True))
        if stdin is not None:
            pipe.send(stdin)
            pipe.close_write()
        while pipe.recv(time.monotonic() + 60):
            pass
        pipe.close()
        if self.client.api.exec_inspect(exec_id)["ExitCode"] != 0:
            raise docker.errors.DockerException(f"the fake kubelet's {cmd[0]} failed in pod {pod.name}")

    def _populate_volumes(self, namespace: str, pod: Pod) -> None:
        """emptyDirs are world-writable (0777, root's) on a kubelet; ConfigMaps are written as root, read-only to the pod."""
        [container] = pod.spec["containers"]
        volumes = {volume["name"]: volume for volume in pod.spec.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            if "emptyDir" in volumes[mount["name"]]:
                self._as_root(pod, ["chmod", "0777", mount["mountPath"]])
            source = volumes[mount["name"]].get("configMap")
            if source is None:
                continue
            with self.lock:
                config = self.config_maps.get((namespace, source["name"]))
            if config is None:
                raise docker.errors.DockerException(f'configmap "{source["name"]}" not found')
            archive = io.BytesIO()
            with tarfile.open(fileobj=archive, mode="w") as tar:
                for name, text in (config.get("data") or {}).items():
                    data = text.encode()
                    info = tarfile.TarInfo(name)
                    info.size, info.mode = len(data), source.get("defaultMode", 0o644)
                    tar.addfile(info, io.BytesIO(data))
            self._as_root(pod, ["tar", "-x", "--no-same-owner", "-f", "-", "-C", mount["mountPath"]], archive.getvalue())

    def _kubelet(self) -> None:
        """Notice containers that ended, and stop pods past their activeDeadlineSeconds."""
        while not self._stop.wait(0.3):
            with self.lock:
                running = [pod for pod in self.pods.values() if pod.phase == "Running" and pod.container is not None]
            for pod in running:
                deadline = pod.spec.get("activeDeadlineSeconds")
                if deadline is not None and pod.started is not None and time.monotonic() - pod.started > deadline:
                    with contextlib.suppress(docker.errors.DockerException):
                        pod.container.kill()
                    pod.phase, pod.reason = "Failed", "DeadlineExceeded"
                    pod.message = "Pod was active on the node longer than the specified deadline"
                    pod.terminated = {"exitCode": 137, "reason": "DeadlineExceeded"}
                    continue
                try:
                    pod.container.reload()
                except docker.errors.DockerException:
                    continue
                state = pod.container.attrs["State"]
                if state["Status"] in ("exited", "dead"):
                    code = state.get("ExitCode", 0)
                    reason = "OOMKilled" if state.get("OOMKilled") else ("Completed" if code == 0 else "Error")
                    pod.terminated = {"exitCode": code, "reason": reason}
                    pod.phase = "Succeeded" if code == 0 else "Failed"


# --- HTTP and websockets ---------------------------------------------------------------------------------------

ROUTES: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(pattern))
    for name, pattern in [
        ("version", r"^/version/?$"),
        ("namespace", r"^/api/v1/namespaces/(?P<ns>[^/]+)$"),
        ("pods", r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$"),
        ("pod", r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)$"),
        ("stream", r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/(?P<kind>exec|attach)$"),
        ("configmaps", r"^/api/v1/namespaces/(?P<ns>[^/]+)/configmaps$"),
        ("configmap", r"^/api/v1/namespaces/(?P<ns>[^/]+)/configmaps/(?P<name>[^/]+)$"),
        ("netpols", r"^/apis/networking.k8s.io/v1/namespaces/(?P<ns>[^/]+)/networkpolicies$"),
        ("netpol", r"^/apis/networking.k8s.io/v1/namespaces/(?P<ns>[^/]+)/networkpolicies/(?P<name>[^/]+)$"),
    ]
]


def _handler(cluster: FakeCluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            try:
                if self.headers.get("Authorization") != f"Bearer {cluster.token}":
                    raise ApiError(401, "Unauthorized", "Unauthorized")
                for name, pattern in ROUTES:
                    if match := pattern.match(url.path):
                        if name == "stream" and self.headers.get("Upgrade", "").lower() == "websocket":
                            self._stream(match["ns"], match["name"], match["kind"], query)
                            return
                        self._reply(200 if method != "POST" else 201, self._rest(name, method, match.groupdict(), query, body))
                        return
                raise ApiError(404, "NotFound", f"the fake API has no {method} {url.path}")
            except ApiError as exc:
                self._reply(exc.code, exc.status())

        def _rest(self, route: str, method: str, args: dict[str, str], query: dict[str, list[str]], body: Any) -> dict[str, Any]:
            ns = args.get("ns", "")
            if route == "version":
                return {
                    "major": "1", "minor": "33", "gitVersion": "v1.33.0-airlock-fake", "gitCommit": "0" * 40, "gitTreeState": "clean",
                    "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
                }  # fmt: skip
            if route == "namespace":
                return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "status": {"phase": "Active"}}
            if route == "pods" and method == "POST":
                return cluster.create_pod(ns, body)
            if route == "pods":
                wanted = dict(part.split("=", 1) for part in (query.get("labelSelector") or [""])[0].split(",") if "=" in part)
                with cluster.lock:
                    pods = [pod for (pod_ns, _), pod in cluster.pods.items() if pod_ns == ns]
                items = [pod.to_json() for pod in pods if all((pod.manifest["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())]
                return {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items}
            if route == "pod" and method == "DELETE":
                return cluster.delete_pod(ns, args["name"])
            if route == "pod":
                return cluster.pod(ns, args["name"]).to_json()
            store, kind = (cluster.config_maps, "ConfigMap") if route.startswith("configmap") else (cluster.network_policies, "NetworkPolicy")
            if method == "POST":
                obj = cluster.validate(body, kind, ns)
                key = (ns, obj["metadata"]["name"])
                with cluster.lock:
                    if key in store:
                        raise ApiError(409, "AlreadyExists", f'{kind} "{key[1]}" already exists')
                    store[key] = obj
                return obj
            with cluster.lock:
                found = store.get((ns, args.get("name", "")))
            if found is None:
                raise ApiError(404, "NotFound", f'{kind} "{args.get("name")}" not found')
            return found

        def _reply(self, code: int, data: dict[str, Any]) -> None:
            payload = json.dumps(data).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        # --- exec and attach -----------------------------------------------------------------------------------

        def _stream(self, ns: str, name: str, kind: str, query: dict[str, list[str]]) -> None:
            pod = cluster.pod(ns, name)
            if pod.phase != "Running":
                raise ApiError(400, "BadRequest", f"pod {name} is not running ({pod.phase})")
            offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
            protocol = next((p for p in cluster.protocols if p in offered), None)
            if protocol is None:
                raise ApiError(400, "BadRequest", f"none of the offered subprotocols {offered} is spoken here")
            flag = lambda key: (query.get(key) or ["false"])[0] in ("true", "1")  # noqa: E731
            api = cluster.client.api
            if kind == "exec":
                exec_id = api.exec_create(pod.container.id, query.get("command") or [], stdin=flag("stdin"), stdout=True, stderr=True)["Id"]
                pipe = pipe_of(api.exec_start(exec_id, socket=True))
            else:
                exec_id, pipe = None, pipe_of(api.attach_socket(pod.container.id, params={"stdin": 1, "stream": 1}))
            accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest()).decode()
            self.send_response(101)
            for header, value in (("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept), ("Sec-WebSocket-Protocol", protocol)):
                self.send_header(header, value)
            self.end_headers()
            self.wfile.flush()
            self.close_connection = True
            socket = _Socket(self.connection)
            to_client = threading.Thread(target=self._from_docker, args=(socket, pipe, exec_id, protocol), daemon=True)
            to_client.start()
            self._from_client(socket, pipe, protocol, kind)
            pipe.close()  # the client is gone: so is the process's stream (the process itself goes on, as on a kubelet)
            to_client.join(30)

        def _from_client(self, socket: _Socket, pipe: Any, protocol: str, kind: str) -> None:
            message = bytearray()
            while not socket.closed:
                data = self.rfile.read1(65536)
                if not data:
                    break
                socket.ws.receive_data(data)
                for event in socket.ws.events():
                    if isinstance(event, Ping):
                        socket.send(event.response())
                    elif isinstance(event, CloseConnection):
                        if not socket.closed:  # the client closes first: answer, as the protocol asks
                            socket.send(event.response())
                        socket.closed = True
                    elif isinstance(event, BytesMessage):
                        message += event.data
                        if not event.message_finished:
                            continue
                        channel, payload = message[0], bytes(message[1:])
                        message.clear()
                        if channel == 0:
                            with contextlib.suppress(OSError):
                                pipe.send(payload)
                        elif channel == 255 and protocol == V5 and payload[:1] == b"\0":
                            with contextlib.suppress(OSError):
                                pipe.close_write()

        def _from_docker(self, socket: _Socket, pipe: Any, exec_id: str | None, protocol: str) -> None:
            """The process's stdout and stderr (Docker's frames) as channels 1 and 2; then its status on channel 3."""
            buffer = bytearray()
            try:
                while chunk := pipe.recv(None):
                    buffer += chunk
                    while len(buffer) >= 8 and len(buffer) >= 8 + (size := int.from_bytes(buffer[4:8], "big")):
                        stream, data = buffer[0], bytes(buffer[8 : 8 + size])
                        del buffer[: 8 + size]
                        if exec_id is not None and stream in (_STDOUT, _STDERR) and data:
                            socket.send_message(bytes([stream]) + data)
            except OSError:
                pass
            if exec_id is not None:
                code = cluster.client.api.exec_inspect(exec_id).get("ExitCode")
                status: dict[str, Any] = {"metadata": {}, "status": "Success"}
                if code:
                    status = {
                        "metadata": {}, "status": "Failure", "message": f"command terminated with non-zero exit code: {code}",
                        "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
                    }  # fmt: skip
                socket.send_message(b"\3" + json.dumps(status).encode())
            socket.close()

    return Handler


class _Socket:
    """One websocket's sending side, shared by the two threads of a stream."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.ws = Connection(ConnectionType.SERVER)
        self.lock = threading.Lock()
        self.closed = False

    def send(self, event: Any) -> None:
        with self.lock, contextlib.suppress(OSError, LocalProtocolError):  # the peer may be gone, or have closed
            self.connection.sendall(self.ws.send(event))

    def send_message(self, data: bytes) -> None:
        if not self.closed:
            self.send(BytesMessage(data=data))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self.send(CloseConnection(code=1000))
