"""The Kubernetes backend: each sandbox is one hardened Pod (orchestrator.sandbox.kube_manifests), and every
process in it runs over the exec websocket of the official client (v5.channel.k8s.io: stdin can be closed,
and the exit status comes back), through the same seam as Docker.

The cluster comes from KUBECONFIG or ~/.kube/config (its current context), or from the pod airlock runs in.
Its life is tied to its owner as on Docker: the pod's main process reads its stdin, which only the owner's
attach holds (stdinOnce), so when the owner dies the kubelet closes it and the pod ends; past its
activeDeadlineSeconds the cluster stops it anyway. A deny-all NetworkPolicy selects every sandbox pod, but
it binds only where the cluster's network plugin enforces it: so before anything else runs in a pod, a probe
inside it (tools/egress_probe.py) tries the API server, the cluster DNS and the policy's targets, and the
run is refused if anything answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes.client
import kubernetes.config
import kubernetes.stream
import urllib3.exceptions
from kubernetes.client.rest import ApiException
from kubernetes.stream import ws_client

import tools
from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import ImageBuild, Log, NoEnvironments, Stream
from orchestrator.sandbox.channel import run_command
from orchestrator.sandbox.kube_manifests import (
    CONTAINER,
    LAYOUT,
    NETWORK_POLICY,
    SELECTOR,
    deny_all_policy,
    pod_name,
    sandbox_pod,
    tools_config_map,
)
from orchestrator.sandbox.kube_stream import KubeStream, keepalive
from orchestrator.sandbox.spec import DEADLINE_LABEL, SandboxSpec

API_TIMEOUT_S = 60.0  # one API call
START_TIMEOUT_S = 300.0  # from creating the pod to its process running: scheduling and the image pull
POLL_S = 0.25
# A pod that cannot start says so in its container's waiting reason; these never get better by waiting.
HOPELESS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError"}
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _message(exc: ApiException) -> str:
    """The API's own message (a Status object's), or the HTTP reason."""
    try:
        return str(json.loads(exc.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return f"{exc.status} {exc.reason}".strip()


@contextlib.contextmanager
def _api(what: str) -> Iterator[None]:
    """The client's errors as one SandboxError line saying what was being done."""
    try:
        yield
    except ApiException as exc:
        hint = " (the namespace's RBAC must let this user do it; see the README)" if exc.status == 403 else ""
        raise SandboxError(f"Kubernetes: could not {what}: {_message(exc)}{hint}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise SandboxError(f"Kubernetes: could not {what}: the API server is not reachable ({exc})") from None


def tool_files() -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(Path(tools.__file__).parent.glob("*.py"))}


END_PROCESSES = r"""
lifeline=$(for d in /proc/[0-9]*; do [ "$(sed -n 's/^PPid:[[:space:]]*//p' "$d/status" 2>/dev/null)" = 1 ] && echo "${d#/proc/}"; done | sort -n | head -n 1)
for pass in 1 2 3; do
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    case $p in 1|$$|"$lifeline") continue ;; esac
    kill -KILL "$p" 2>/dev/null
  done
done
exit 0
"""


class KubeBox:
    """One running sandbox pod and the attach that keeps it alive."""

    layout = LAYOUT
    has_tools = True  # the tool code is a read-only ConfigMap volume

    def __init__(self, backend: KubernetesBackend, spec: SandboxSpec, name: str, lifeline: ws_client.WSClient) -> None:
        self.backend, self.spec, self.id = backend, spec, name
        self._lifeline = lifeline
        keepalive.add(lifeline)

    def attach(self, cmd: list[str], *, user: str, stdin: bool) -> Stream:
        if user != self.spec.user:  # exec has no user: every process runs as the pod's
            raise SandboxError(f"Kubernetes runs every process in the pod as {self.spec.user}, not {user}")
        try:
            ws = kubernetes.stream.stream(
                self.backend.core.connect_get_namespaced_pod_exec, self.id, self.backend.namespace, container=CONTAINER,
                command=cmd, stdin=stdin, stdout=True, stderr=True, tty=False, _preload_content=False, binary=True,
            )  # fmt: skip
        except Exception as exc:
            cause = self.failure()
            raise SandboxError(f"could not run `{cmd[0]}` in the sandbox pod: {cause or exc}") from None
        return KubeStream(ws, stdin=stdin)

    def failure(self) -> str | None:
        try:
            pod = self.backend.read_pod(self.id)
        except SandboxError:
            return None
        if pod is None:
            return "the sandbox pod was removed by someone else"
        status = pod.get("status") or {}
        if status.get("reason") == "DeadlineExceeded":
            return f"the sandbox pod outlived its activeDeadlineSeconds ({self.spec.lifetime_s:.0f} s) and was stopped"
        for container in status.get("containerStatuses") or []:
            ended = (container.get("state") or {}).get("terminated") or {}
            if ended.get("reason") == "OOMKilled":
                return f"the sandbox ran out of memory (limit {self.spec.memory // 1024**2} MiB): raise --memory (the workspace counts toward it)"
            if ended:
                return f"the sandbox pod's process ended ({ended.get('reason')}, exit code {ended.get('exitCode')})"
        if status.get("phase") not in (None, "Running"):
            return f"the sandbox pod is {status.get('phase')}" + (f" ({status['reason']}: {status.get('message')})" if status.get("reason") else "")
        return None

    def end_processes(self, user: str) -> None:
        # Exec runs everything as the pod's one uid, so kill(-1) would take the lifeline too: every process but
        # the pod's init (PID 1), the lifeline it started first (its lowest-numbered child) and this shell.
        stream = self.attach([self.layout.program("sh"), "-c", END_PROCESSES], user=user, stdin=False)
        run_command(stream, "end the agent's processes", timeout=30.0)

    def egress_log(self) -> str:
        return ""  # a pod never has egress: setup phases run on the Docker backend only

    def remove(self) -> None:
        try:
            self.backend.delete_pod(self.id)
        finally:
            keepalive.discard(self._lifeline)
            try:
                self._lifeline.close()
            except Exception:
                pass


class KubernetesBackend:
    name = "kubernetes"
    ready_before_model = True  # a pod whose egress is open is refused before the model hears of the task

    def __init__(self, namespace: str | None = None) -> None:
        self._namespace = namespace
        self._core: Any = None
        self._networking: Any = None
        self._host = ""

    # --- the cluster ---------------------------------------------------------------------------------------

    def _connect(self) -> None:
        configuration = kubernetes.client.Configuration()
        config_file = os.environ.get("KUBECONFIG") or None  # read now: the client reads it once, when imported
        try:
            kubernetes.config.load_kube_config(config_file=config_file, client_configuration=configuration)
            _, context = kubernetes.config.list_kube_config_contexts(config_file)
            namespace = (context or {}).get("context", {}).get("namespace")
        except (kubernetes.config.ConfigException, OSError) as exc:
            try:
                kubernetes.config.load_incluster_config(client_configuration=configuration)
                namespace = IN_CLUSTER_NAMESPACE.read_text().strip()
            except (kubernetes.config.ConfigException, OSError):
                where = os.environ.get("KUBECONFIG") or "~/.kube/config"
                raise SandboxError(f"no Kubernetes cluster configured: {where}: {exc} (set KUBECONFIG, or run airlock inside a cluster)") from None
        self._namespace = self._namespace or namespace or "default"
        self._host = configuration.host
        api = kubernetes.client.ApiClient(configuration)
        self._core, self._networking = kubernetes.client.CoreV1Api(api), kubernetes.client.NetworkingV1Api(api)

    @property
    def core(self) -> Any:
        if self._core is None:
            self._connect()
        return self._core

    @property
    def namespace(self) -> str:
        if self._core is None:
            self._connect()
        assert self._namespace is not None
        return self._namespace

    @property
    def api_host(self) -> str:
        self.core  # noqa: B018  (connects)
        return self._host

    def version(self) -> str:
        with _api("ask the API server for its version"):
            info = kubernetes.client.VersionApi(self.core.api_client).get_code(_request_timeout=API_TIMEOUT_S)
        return str(info.git_version)

    def read_pod(self, name: str) -> dict[str, Any] | None:
        with _api(f"read pod {name}"):
            try:
                return self._json(self.core.read_namespaced_pod(name, self.namespace, _preload_content=False, _request_timeout=API_TIMEOUT_S))
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    def delete_pod(self, name: str) -> bool:
        """False if it was already gone."""
        with _api(f"delete pod {name}"):
            try:
                self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=1, _request_timeout=API_TIMEOUT_S)
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
        return True

    @staticmethod
    def _json(response: Any) -> dict[str, Any]:
        data = json.loads(response.data)
        return data if isinstance(data, dict) else {}

    # --- the seam ----------------------------------------------------------------------------------------------

    def check(self, spec: SandboxSpec) -> None:
        pass  # the image is in a registry only the nodes see: a missing one fails the pod's start, named then

    def build_image(self, spec: SandboxSpec, build: ImageBuild) -> tuple[str, bool]:
        raise SandboxError("--backend kubernetes builds no image: build the project's image FROM airlock-sandbox, push it, and give it with --image")

    def with_tool_runtime(self, spec: SandboxSpec, log: Log) -> tuple[SandboxSpec, dict[str, Any]]:
        # The nodes pull the image from a registry airlock cannot build into: it must carry the runtime
        # itself (an image built FROM airlock-sandbox does), as the README says.
        return spec, {}

    def prepare(self, spec: SandboxSpec, log: Log) -> dict[str, Any]:
        """The deny-all NetworkPolicy and the tool code's ConfigMap, created in the namespace if missing."""
        namespace = self.namespace
        with _api(f"find the NetworkPolicy {NETWORK_POLICY} in namespace {namespace}"):
            created = _create_if_missing(
                lambda: self._networking.read_namespaced_network_policy(NETWORK_POLICY, namespace, _request_timeout=API_TIMEOUT_S),
                lambda: self._networking.create_namespaced_network_policy(namespace, deny_all_policy(namespace), _request_timeout=API_TIMEOUT_S),
            )
        if created:
            log(f"created the NetworkPolicy {NETWORK_POLICY} in namespace {namespace}: no ingress or egress for sandbox pods")
        tools_map = tools_config_map(namespace, tool_files())
        name = tools_map["metadata"]["name"]
        with _api(f"make the ConfigMap {name} of the tool code in namespace {namespace}"):
            _create_if_missing(
                lambda: self.core.read_namespaced_config_map(name, namespace, _request_timeout=API_TIMEOUT_S),
                lambda: self.core.create_namespaced_config_map(namespace, tools_map, _request_timeout=API_TIMEOUT_S),
            )
        return {"namespace": namespace, "network_policy": NETWORK_POLICY, "tools_config_map": name}

    def start(self, spec: SandboxSpec) -> KubeBox:
        box = self.start_pod(spec)
        try:
            self.check_egress(box, spec)
        except BaseException:
            with contextlib.suppress(SandboxError):
                box.remove()
            raise
        return box

    def start_pod(self, spec: SandboxSpec) -> KubeBox:
        """The pod, running, with the owner's attach; nothing checked inside it yet."""
        namespace = self.namespace
        manifest = sandbox_pod(spec, namespace, tools_config_map(namespace, tool_files())["metadata"]["name"])
        name = manifest["metadata"]["name"]
        try:
            with _api(f"create the sandbox pod in namespace {namespace}"):
                self.core.create_namespaced_pod(namespace, manifest, _request_timeout=API_TIMEOUT_S)
            self._wait_running(name, spec)
            with _api(f"attach to the sandbox pod {name}"):
                lifeline = kubernetes.stream.stream(
                    self.core.connect_get_namespaced_pod_attach, name, namespace, container=CONTAINER,
                    stdin=True, stdout=False, stderr=False, tty=False, _preload_content=False, binary=True,
                )  # fmt: skip
        except BaseException:
            with contextlib.suppress(SandboxError):
                self.delete_pod(name)
            raise
        return KubeBox(self, spec, name, lifeline)

    def _wait_running(self, name: str, spec: SandboxSpec) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            pod = self.read_pod(name)
            if pod is None:
                raise SandboxError(f"the sandbox pod {name} was removed while it started")
            status = pod.get("status") or {}
            for container in status.get("containerStatuses") or []:
                state = container.get("state") or {}
                if "running" in state and status.get("phase") == "Running":
                    return
                waiting = state.get("waiting") or {}
                if waiting.get("reason") in HOPELESS:
                    pull = "pulled" if "Image" in waiting["reason"] else "started"
                    raise SandboxError(
                        f"the sandbox image {spec.image!r} cannot be {pull} ({waiting['reason']}: {waiting.get('message', '')}); "
                        "push it to a registry the cluster pulls from, and give it with --image or the policy's sandbox.image"
                    )
                if "terminated" in state:
                    raise SandboxError(f"the sandbox pod's process ended at once: {state['terminated'].get('reason')}")
            if status.get("phase") in ("Failed", "Succeeded"):
                raise SandboxError(f"the sandbox pod {name} ended before it ran: {status.get('reason') or status.get('phase')}")
            if time.monotonic() > deadline:
                waiting_for = [c.get("message") for c in status.get("conditions") or [] if c.get("status") != "True" and c.get("message")]
                raise SandboxError(f"the sandbox pod {name} did not start within {START_TIMEOUT_S:.0f} s" + (f": {waiting_for[0]}" if waiting_for else ""))
            time.sleep(POLL_S)

    def check_egress(self, box: KubeBox, spec: SandboxSpec) -> list[str]:
        """Refuse the pod unless a probe inside it reaches nothing: the NetworkPolicy must really be enforced.
        Returns what the probe tried."""
        targets = list(spec.egress_probe)
        api = urlparse(self._host)
        if api.hostname:
            targets.append(f"{api.hostname}:{api.port or (443 if api.scheme == 'https' else 80)}")
        source = (Path(tools.__file__).parent / "egress_probe.py").read_bytes()
        stream = box.attach([box.layout.python, "-E", "-s", "-B", "-", *targets], user=spec.user, stdin=True)
        result = run_command(stream, "the egress probe", feed_stdin=lambda send: send(source), timeout=60)
        try:
            found = json.loads(result.stdout)
            reached, tried = list(found["reached"]), list(found["tried"])
        except (ValueError, KeyError, TypeError):
            raise SandboxError(f"the egress probe in the sandbox pod gave no answer: {result.stderr.strip()[-300:]}") from None
        if reached:
            raise SandboxError(
                f"egress from the sandbox pod is open: it reached {', '.join(reached)}. The NetworkPolicy {NETWORK_POLICY} in namespace "
                f"{self.namespace} is not enforced here (the cluster's network plugin must enforce NetworkPolicy, e.g. Calico or Cilium); "
                "refusing to run"
            )
        if not tried:
            raise SandboxError("the egress probe found nothing to try in the sandbox pod (no API server address, no nameserver)")
        return tried

    def remove_stale(self, *, everything: bool = False, runs: Collection[str] = ()) -> list[str]:
        selector = ",".join(f"{key}={value}" for key, value in SELECTOR.items())
        with _api(f"list the sandbox pods in namespace {self.namespace}"):
            listed = self._json(self.core.list_namespaced_pod(self.namespace, label_selector=selector, _preload_content=False, _request_timeout=API_TIMEOUT_S))
        removed = []
        wanted = {pod_name(run) for run in runs}
        for pod in listed.get("items") or []:
            name = (pod.get("metadata") or {}).get("name", "")
            if (everything or name in wanted or abandoned(pod)) and self.delete_pod(name):
                removed.append(name)
        return removed

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "namespace": self._namespace}

    def environments(self) -> NoEnvironments:
        return NoEnvironments(self.name)


def _create_if_missing(read: Callable[[], object], create: Callable[[], object]) -> bool:
    """Create an object unless it exists; whether this call made it. One made by another run meanwhile
    (409) is the same content, by its name, so it counts as there."""
    try:
        read()
        return False
    except ApiException as exc:
        if exc.status != 404:
            raise
    try:
        create()
    except ApiException as race:
        if race.status != 409:
            raise
        return False
    return True


def abandoned(pod: dict[str, Any], now: float | None = None) -> bool:
    """Whether a sandbox pod's owner is gone: it has ended (its lifeline closed, or its deadline passed), or it
    outlived the deadline its annotation carries (a pod that was never scheduled never reaches its activeDeadlineSeconds)."""
    now = time.time() if now is None else now
    deadline = ((pod.get("metadata") or {}).get("annotations") or {}).get(DEADLINE_LABEL, "")
    if deadline.isdigit() and int(deadline) < now:
        return True
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
