"""The operator's policy is a ceiling: a batch task's own policy may tighten it, never loosen it.

Whoever writes a tasks file (or a policy file it names) should not be able to give a run more than the
operator who starts the batch allows: more steps, time, memory or output, a larger budget, fewer hidden or
protected paths, fewer command rules, or cheaper prices that keep a cost budget from ever triggering. So
each task runs under the meet of both: every limit and budget the lower, the hidden and protected paths
and the deny rules of both, only the commands both allow lists allow, gVisor if either asks for it, the
operator's sandbox user, and always the operator's prices (the built-in table, or the operator's policy).

`--trust-task-policies` lets a task's policy replace the operator's instead; the prices still come from
the operator. What a task's policy asked for beyond the ceiling (a value it set, unlike the built-in
default, that the ceiling overrules) is returned, to be said once, up front.
"""

from __future__ import annotations

from typing import Any

from orchestrator.policy.commands import allowed_by_both
from orchestrator.policy.model import SIZE_FIELDS, Policy, PolicyError
from orchestrator.sizes import human_size

_OPTIONAL = {("limits", "context_window"), ("budget", "max_input_tokens"), ("budget", "max_output_tokens"), ("budget", "max_cost_usd")}


def _lower(ceiling: Any, asked: Any) -> Any:
    """The tighter of two limits, None being no limit."""
    return asked if ceiling is None else ceiling if asked is None else min(ceiling, asked)


def within(ceiling: Policy, task: Policy, *, trust_task: bool = False) -> tuple[Policy, list[str]]:
    """The policy a task runs under, and what its own policy asked for beyond the ceiling (one line each)."""
    top, own, default = ceiling.model_dump(), task.model_dump(), Policy().model_dump()
    held: list[str] = []
    merged: dict[str, Any] = {section: dict(values) for section, values in own.items()}

    def asked(section: str, key: str) -> bool:
        return bool(own[section][key] != default[section][key])

    if asked("budget", "prices") and own["budget"]["prices"] != top["budget"]["prices"]:
        held.append("[budget.prices]: prices come from the operator, not from a task")
    merged["budget"]["prices"] = top["budget"]["prices"]
    if not trust_task:
        for section in ("limits", "budget"):
            for key, value in own[section].items():
                if key == "prices":
                    continue
                lower = _lower(top[section][key], value)
                if lower != value and asked(section, key):
                    held.append(f"[{section}] {key} = {_shown(value, (section, key))}: kept at the operator's {_shown(lower, (section, key))}")
                merged[section][key] = lower
        for key in ("hidden", "protected"):
            added = [pattern for pattern in top["paths"][key] if pattern not in own["paths"][key]]
            if added and asked("paths", key):
                held.append(f"[paths] {key}: the operator's {', '.join(added)} added")
            merged["paths"][key] = [*own["paths"][key], *added]
        merged["commands"], narrowed = _commands(top["commands"], own["commands"])
        held += narrowed if asked("commands", "allow") or asked("commands", "deny") else []
        if top["sandbox"]["runtime"] == "runsc":
            merged["sandbox"]["runtime"] = "runsc"  # gVisor if either asks for it
        if own["sandbox"]["user"] != top["sandbox"]["user"] and asked("sandbox", "user"):
            held.append(f"[sandbox] user = {own['sandbox']['user']!r}: kept at the operator's {top['sandbox']['user']!r}")
        merged["sandbox"]["user"] = top["sandbox"]["user"]
    try:
        policy = Policy.model_validate(merged)
    except ValueError as exc:  # cannot happen for two valid policies; say so plainly if it ever does
        raise PolicyError(f"cannot combine the task's policy {task.source} with the operator's {ceiling.source}: {exc}") from None
    how = "in place of" if trust_task else "within"
    policy._source = f"{task.source}, {how} the operator's {ceiling.source}"
    return policy, held


def _commands(top: dict[str, Any], own: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The deny rules of both and an allow list both permit; and what that changed of the task's."""
    notes = []
    added = [rule for rule in top["deny"] if rule not in own["deny"]]
    if added:
        notes.append(f"[commands] deny: the operator's {', '.join(added)} added")
    allow = allowed_by_both(top["allow"], own["allow"])
    if allow != own["allow"]:
        dropped = sorted(set(own["allow"] or ["every command"]) - set(allow or []))
        notes.append(f"[commands] allow: only what the operator's list allows too ({', '.join(dropped) or 'narrowed'} not allowed)")
    return {"allow": allow, "deny": [*own["deny"], *added]}, notes


def _shown(value: Any, where: tuple[str, str]) -> str:
    if value is None and where in _OPTIONAL:
        return "not set (no limit)"
    return human_size(value) if where[1] in SIZE_FIELDS else str(value)
