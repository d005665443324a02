"""Token benchmark: what a run's input tokens are billed as, step by step, next to a loop without caching.

Runs go through the real CLI and the real Anthropic SDK against the scripted model server, which
counts tokens (4 characters a token) and simulates the API's prompt cache by its documented rules.
Per step: input billed at full price, cache writes (1.25x) and cache reads (0.1x), the full-price
equivalent of those, and the baseline: the same step's prompt with no cache breakpoints, all at full
price, as a loop that neither caches nor trims would send it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator.demo import CALCULATOR_REPO, CALCULATOR_TASK, calculator_script, long_run_script
from orchestrator.providers.scripted import ANTHROPIC, ScriptedModelServer, Turn, prompt_tokens

CACHE_WRITE, CACHE_READ = 1.25, 0.1  # price multipliers of the 5-minute cache, against full-price input
LONG_STEPS = 40
LONG_WINDOW = 20_000  # tokens: small, so the 40-step run has to be trimmed


@dataclass(frozen=True)
class Step:
    full: int  # uncached input, billed at full price
    write: int
    read: int
    baseline: int  # the whole prompt at full price

    @property
    def equivalent(self) -> float:
        return self.full + CACHE_WRITE * self.write + CACHE_READ * self.read


def measure(script: list[Turn], *options: str) -> tuple[list[Step], int]:
    """Run `airlock run` on the calculator repo with this script; per-step billing, and the number of trims."""
    with ScriptedModelServer(script) as api, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        env = {**os.environ, "ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": api.base_url}
        command = [sys.executable, "-m", "orchestrator", "run", str(CALCULATOR_REPO), "--task", CALCULATOR_TASK, "--out", str(out), *options]
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=600)
        events = [json.loads(line) for line in (out / "trajectory.jsonl").read_text().splitlines()]
        requests = list(api.requests)
    usages = [event["usage"] for event in events if event["type"] == "model_response"]
    trims = sum(event["type"] == "context_trimmed" for event in events)
    steps = [
        Step(u["input_tokens"], u["cache_creation_input_tokens"], u["cache_read_input_tokens"], prompt_tokens(ANTHROPIC, request))
        for u, request in zip(usages, requests, strict=True)
    ]
    return steps, trims


def report(title: str, steps: list[Step], baseline: list[int], note: str) -> None:
    print(title)
    print(f"  {note}")
    print(f"  {'step':>4}  {'full price':>10}  {'cache write':>11}  {'cache read':>10}  {'= full-price equiv.':>19}  {'baseline (no cache)':>19}")
    for number, (step, base) in enumerate(zip(steps, baseline, strict=True), 1):
        print(f"  {number:>4}  {step.full:>10,}  {step.write:>11,}  {step.read:>10,}  {step.equivalent:>19,.0f}  {base:>19,}")
    total = sum(step.equivalent for step in steps)
    print(
        f"  {'all':>4}  {sum(s.full for s in steps):>10,}  {sum(s.write for s in steps):>11,}  {sum(s.read for s in steps):>10,}  "
        f"{total:>19,.0f}  {sum(baseline):>19,}"
    )
    print(f"  input billed: {total / sum(baseline):.0%} of the baseline ({sum(baseline) / total:.1f}x fewer full-price tokens)\n")


def main() -> None:
    steps, _ = measure(calculator_script())
    report("tokens: the calculator exercise (5 steps)", steps, [s.baseline for s in steps], "baseline: the same prompts without cache breakpoints")

    # The baseline run neither caches nor trims: the same script, with a window it never nears.
    untrimmed, _ = measure(long_run_script(LONG_STEPS), "--max-steps", str(LONG_STEPS + 5))
    steps, trims = measure(long_run_script(LONG_STEPS), "--max-steps", str(LONG_STEPS + 5), "--context-window", str(LONG_WINDOW))
    note = f"airlock: cached, trimmed {trims} times near a {LONG_WINDOW:,}-token window; baseline: the same run neither cached nor trimmed"
    report(f"tokens: a {LONG_STEPS}-step scripted run", steps, [s.baseline for s in untrimmed], note)
