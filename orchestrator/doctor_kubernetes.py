"""`airlock doctor --backend kubernetes`: can we reach the cluster, create pods, exec in them, and is egress
really denied? Answered the only sure way: a real sandbox pod is started (its image pulled), a command run
in it, the egress probe run, and the pod removed."""

from __future__ import annotations

import contextlib
import time

from orchestrator.doctor import Check, model_checks
from orchestrator.errors import AirlockError, SandboxError
from orchestrator.run.config import new_run_id
from orchestrator.sandbox.backends import get_backend
from orchestrator.sandbox.channel import run_command
from orchestrator.sandbox.spec import SandboxSpec

RBAC_FIX = "let this user create pods, pods/exec, pods/attach, configmaps and networkpolicies in the namespace (a Role; see the README)"


def run_checks(image: str, namespace: str | None) -> list[Check]:
    """All checks, in the order a person would fix them."""
    return kubernetes_checks(image, namespace) + model_checks()


def kubernetes_checks(image: str, namespace: str | None) -> list[Check]:
    try:
        backend = get_backend("kubernetes", namespace)  # one line saying what to install when the client is missing
        from orchestrator.sandbox.kubernetes_backend import KubernetesBackend

        assert isinstance(backend, KubernetesBackend)
        version = backend.version()
    except AirlockError as exc:
        skipped = "skipped: the cluster is not reachable"
        return [
            Check("Kubernetes API", False, str(exc), "set KUBECONFIG (or ~/.kube/config), and check that `kubectl version` works"),
            *(Check(name, False, skipped) for name in ("NetworkPolicy", "sandbox pod", "exec", "egress")),
        ]
    where = f"{backend.api_host}, namespace {backend.namespace}"
    checks = [Check("Kubernetes API", True, f"{version} at {where}")]
    spec = SandboxSpec(image=image, run_id=f"doctor-{new_run_id()}", cpus=0.5, memory=512 * 1024**2, disk=64 * 1024**2, lifetime_s=600)
    notes: list[str] = []
    try:
        prepared = backend.prepare(spec, notes.append)
    except SandboxError as exc:
        return [*checks, Check("NetworkPolicy", False, str(exc), RBAC_FIX), *(Check(name, False, "skipped") for name in ("sandbox pod", "exec", "egress"))]
    made = " (created now)" if notes else ""
    checks.append(Check("NetworkPolicy", True, f"{prepared['network_policy']} denies all ingress and egress of sandbox pods{made}"))
    started = time.monotonic()
    try:
        box = backend.start_pod(spec)
    except SandboxError as exc:
        fix = f"push it: docker push {image} (and give that name with --image)" if "pulled" in str(exc) else RBAC_FIX
        return [*checks, Check("sandbox pod", False, str(exc), fix), Check("exec", False, "skipped"), Check("egress", False, "skipped")]
    try:
        checks.append(Check("sandbox pod", True, f"image {image} pulled, pod {box.id} running in {time.monotonic() - started:.1f} s"))
        try:
            result = run_command(box.attach(["python3", "-c", "print(6 * 7)"], user=spec.user, stdin=False), "python3", timeout=60)
            ok = result.exit_code == 0 and result.stdout.strip() == b"42"
            checks.append(Check("exec", ok, "python3 runs in the pod (exit status and output came back)" if ok else f"unexpected answer: {result}", RBAC_FIX))
        except SandboxError as exc:
            checks.append(Check("exec", False, str(exc), RBAC_FIX))
        try:
            tried = backend.check_egress(box, spec)
            checks.append(Check("egress", True, f"denied: the probe in the pod reached nothing ({', '.join(tried)})"))
        except SandboxError as exc:
            fix = "use a network plugin that enforces NetworkPolicy (Calico, Cilium, ...), or a namespace where it is enforced"
            checks.append(Check("egress", False, str(exc), fix))
    finally:
        with contextlib.suppress(SandboxError):
            box.remove()
    return checks
