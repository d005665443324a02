"""Verify: the verdict is about the patch, not about the agent's box.

The verify command runs in a fresh sandbox made from the pristine repo (the same copy-in as the agent's,
hidden paths left out) plus the checked patch.diff, which is exactly what a reviewer would apply; never in
the agent's container. Whatever the agent left behind there (a protected file rewritten through the shell,
a usercustomize.py that makes every Python exit 0, a process that outlived its command and forges the tool
server's replies) cannot reach the verdict: that container is gone before this one starts.
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.run.record import VerifyRecord
from orchestrator.sandbox.driver import Sandbox

TAIL_CHARS = 4000
GRACE_S = 15.0  # beyond the command's own limit, for the round trip and the kill


def verify_patch(sandbox: Sandbox, copy_repo: Callable[[Sandbox], object], patch: bytes, verify: VerifyRecord, timeout: float) -> None:
    """Run `verify.command` on the pristine repo plus `patch` in `sandbox` (fresh, started), filling `verify` in."""
    copy_repo(sandbox)
    sandbox.install_tools()
    if problem := sandbox.apply_patch(patch):
        verify.exit_code, verify.passed = None, False
        verify.output_tail = f"patch.diff does not apply to the pristine repo: {problem}"
        return
    channel = sandbox.start_tool_server()
    try:
        reply = channel.call("run_bash", {"command": verify.command, "timeout": timeout}, timeout=timeout + GRACE_S)
    finally:
        channel.close()
    exit_code = reply.meta.get("exit_code")
    verify.exit_code = exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool) else None
    verify.passed = verify.exit_code == 0
    verify.output_tail = reply.output[-TAIL_CHARS:]
