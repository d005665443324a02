"""The static HTML report of `airlock review`: one self-contained file a reviewer opens from disk.

Almost every string in a run folder comes from the agent or the repo it worked on (file names,
diff lines, plans, tool outputs, even error messages), so all of them go through `_t()`/`_attr()`:
`html.escape`, and every invisible, control or bidirectional character shown as a red escape
rather than as itself. No string from a run reaches markup, a URL or the script unescaped.

Defence in depth: a Content-Security-Policy meta tag allows no network load at all and only the
report's own script and stylesheet, by hash. Even a string that slipped through escaping could not
run (`<img onerror>`, `<script>`) nor send anything anywhere. The stylesheet and script are inline
(from `assets/`), the language colours are classes of that stylesheet: no external file.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from orchestrator.errors import UsageError
from orchestrator.review.data import Attempt, Collection, RunData, Step, ToolCall, model_label
from orchestrator.review.diff import DiffLine, FileDiff
from orchestrator.review.flags import SEVERITY_ORDER, Flag, describe_char
from orchestrator.review.highlight import Tokens, highlight
from orchestrator.sizes import plural
from orchestrator.terminal import HIDDEN_RE, escape_char, hidden_kind

ASSETS = Path(__file__).parent / "assets"
PREVIEW_LINES = 8  # lines of a long output shown before "show all"
SHORT_OUTPUT_LINES = 14  # outputs up to this many lines are shown whole
COLLAPSE_LINES = 250  # a file diff longer than this starts folded (unless flagged)

STATUS_CLASS = {
    "completed": "st-ok",
    "verify_failed": "st-bad",
    "model_error": "st-bad",
    "sandbox_error": "st-bad",
    "patch_rejected": "st-bad",
    "setup_failed": "st-bad",
    "max_steps": "st-warn",
    "timeout": "st-warn",
    "budget_exceeded": "st-warn",
    "stuck": "st-warn",
    "interrupted": "st-warn",
    "running": "st-info",
}
STATUS_RANK = {s: i for i, s in enumerate(["completed", "verify_failed", "max_steps", "timeout", "budget_exceeded", "stuck", "patch_rejected", "setup_failed",
                                            "model_error", "sandbox_error", "interrupted", "running"])}  # fmt: skip
SEVERITY_TITLE = {"danger": "Possible spoofing or tampering", "attention": "Needs attention", "note": "Notes"}

# ----------------------------------------------------------------------------- escaping


def _t(text: str | None, *, keep: str = "\t\n", strict: bool = False) -> str:
    """HTML for untrusted text: escaped, with hidden characters shown as flagged escapes.

    `keep` are the characters left as they are (a tab or newline is ordinary in code and prose,
    not in a name). `strict` also shows unusual spaces (in names and code, where they deceive)."""
    if not text:
        return ""
    if "\n" in keep:
        text = text.replace("\r\n", "\n")
    out, pos = [], 0
    for match in HIDDEN_RE.finditer(text):
        ch = match.group()
        if ch in keep or (not strict and hidden_kind(ch) == "unusual space"):
            continue
        out.append(html.escape(text[pos : match.start()]))
        out.append(f'<span class="esc" title="{html.escape(describe_char(ch))}">{html.escape(escape_char(ch))}</span>')
        pos = match.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _name(path: str | None) -> str:
    """A file name: nothing kept, tabs and newlines included."""
    return _t(path, keep="", strict=True)


def _code(text: str) -> str:
    return _t(text, keep="\t", strict=True)


def _code_lines(text: str) -> str:
    """Code shown as a block: its line breaks are line breaks, every other hidden character an escape."""
    return _t(text, keep="\t\n", strict=True)


def _attr(text: str) -> str:
    """An attribute value: escaped, hidden characters replaced by their escapes (no markup possible there)."""
    return html.escape(HIDDEN_RE.sub(lambda m: escape_char(m.group()), text), quote=True)


def _first_line(text: str, limit: int = 160) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    return f"{minutes} min {sec:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _cost(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:60]


def _rel_link(report: Path, target: Path) -> str:
    """A relative link from the report to a file next to it, URL-quoted (a folder name cannot become a scheme)."""
    rel = os.path.relpath(target, report.parent)
    return "./" + quote(Path(rel).as_posix(), safe="/")


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii") + "'"


# ----------------------------------------------------------------------------- the page


def write_report(collection: Collection, out: Path | None = None) -> Path:
    """Write the report (default: <root>/report.html) atomically and return its path."""
    target = out or collection.root / "report.html"
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {target}: {target.parent} is not a folder")
    page = render_report(collection, target)
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_text(page, encoding="utf-8", errors="replace")  # lone surrogates cannot reach here; belt and braces
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target


def render_report(collection: Collection, target: Path, now: datetime | None = None) -> str:
    css = (ASSETS / "report.css").read_text(encoding="utf-8")
    js = (ASSETS / "report.js").read_text(encoding="utf-8")
    csp = f"default-src 'none'; script-src {_csp_hash(js)}; style-src {_csp_hash(css)}; img-src data:; base-uri 'none'; form-action 'none'"
    anchors = _anchors(collection.runs)
    generated = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    title = "airlock review" + (f" · {collection.runs[0].heading}" if collection.single else f" · {len(collection.runs)} tasks")
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n',
        '<meta name="referrer" content="no-referrer">\n<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f'<meta name="generator" content="airlock review">\n<title>{_attr(title)}</title>\n',
        f'<link rel="icon" href="{_FAVICON}">\n',
        f"<style>{css}</style>\n<script>{js}</script>\n</head>\n<body>\n",
        _topbar(collection, generated),
        '<main class="wrap">\n',
        _index(collection, anchors),
        *(_run(run, i, anchors, target) for i, run in enumerate(collection.runs)),
        _FOOTER,
        "</main>\n</body>\n</html>\n",
    ]
    return "".join(parts)


_FOOTER = (
    "<footer>Generated by <b>airlock review</b> from the run folders next to this file. Nothing in this page loads from the network. "
    "Keys: <kbd>j</kbd> / <kbd>k</kbd> next / previous task, <kbd>Esc</kbd> back to the index.</footer>\n"
)
_FAVICON = "data:image/svg+xml," + quote(
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="4" fill="#24292f"/>'
    '<rect x="4" y="7" width="8" height="6" rx="1" fill="#7ee2a8"/><path d="M5.5 7V5.5a2.5 2.5 0 0 1 5 0V7" stroke="#7ee2a8" fill="none" stroke-width="1.5"/></svg>'
)


def _anchors(runs: list[RunData]) -> list[str]:
    seen: set[str] = set()
    anchors = []
    for i, run in enumerate(runs, 1):
        anchor = f"run-{_slug(run.name) or i}"
        if anchor in seen or anchor == "run-":
            anchor = f"run-{i}-{_slug(run.name)}".rstrip("-")
        seen.add(anchor)
        anchors.append(anchor)
    return anchors


def _topbar(collection: Collection, generated: str) -> str:
    return (
        '<header class="topbar"><div class="wrap">'
        '<a class="brand" href="#index"><span class="lock">■</span> airlock review</a>'
        f'<span class="where">{_t(str(collection.root))}</span>'
        f'<span class="when">generated {generated}</span></div></header>\n'
    )


# ----------------------------------------------------------------------------- index


def _status_pill(status: str) -> str:
    label = "partial" if status == "running" else status.replace("_", " ")
    return f'<span class="pill {STATUS_CLASS.get(status, "")}" title="{_attr(status)}">{_t(label)}</span>'


def _verify_cell(run: RunData) -> tuple[int, str]:
    verify = run.summary.verify
    if verify is None:
        return 3, '<span class="faint">—</span>'
    if verify.skipped:
        return 2, f'<span class="muted" title="{_attr(verify.skipped)}">skipped</span>'
    if verify.passed:
        return 0, '<span class="verdict-ok">✓ passed</span>'
    if verify.exit_code is None:
        return 2, '<span class="muted">not run</span>'
    return 1, f'<span class="verdict-bad">✗ failed (exit {verify.exit_code})</span>'


def _flag_chips(run: RunData) -> str:
    chips = []
    for severity in ("danger", "attention", "note"):
        if n := run.count(severity):
            chips.append(f'<span class="chip sev-{severity}">{n} {severity}</span>')
    return "".join(chips) or '<span class="faint">—</span>'


def _change_cell(run: RunData) -> str:
    ins, dels, files = run.insertions, run.deletions, run.files_changed
    if not files:
        return '<span class="faint">no change</span>'
    return f'{files} file{"s" if files != 1 else ""} <ins class="n">+{ins:,}</ins> <del class="n">−{dels:,}</del>{_blocks(ins, dels)}'


def _blocks(insertions: int, deletions: int) -> str:
    """A five-block diffstat bar, as git hosts draw it (no inline styles: the CSP allows none)."""
    total = insertions + deletions
    if not total:
        return ""
    adds = min(max(round(5 * insertions / total), 1 if insertions else 0), 5 if not deletions else 4)
    dels = min(max(round(5 * deletions / total), 1 if deletions else 0), 5 - adds)
    return '<span class="bar" aria-hidden="true">' + '<i class="a"></i>' * adds + '<i class="d"></i>' * dels + "<i></i>" * (5 - adds - dels) + "</span>"


def _index(collection: Collection, anchors: list[str]) -> str:
    runs = collection.runs
    tasks = len(runs) + len(collection.not_run)
    done = sum(r.succeeded for r in runs)  # with a verify command, its verdict decides
    attention = sum(bool(r.count("danger") or r.count("attention")) for r in runs)
    known = [r.summary.cost_usd for r in runs if r.summary.cost_usd is not None]
    unknown = len(runs) - len(known)
    tokens_in = sum(r.summary.usage.input_tokens + r.summary.usage.cache_read_input_tokens + r.summary.usage.cache_creation_input_tokens for r in runs)
    tokens_out = sum(r.summary.usage.output_tokens for r in runs)
    # A total with unknown parts is unknown: the known part is said beside it, never passed off as the total.
    cost = _cost(sum(known)) if not unknown else "unknown"
    cost_label = "cost" if not unknown else f"cost: {unknown} of {len(runs)} unknown" + (f", {_cost(sum(known))} known" if known else "")
    cards = [
        ("", f"{tasks}", "tasks" if tasks != 1 else "task"),
        ("ok" if done else "", f"{done}", "succeeded"),
        ("bad" if tasks - done else "", f"{tasks - done}", "did not succeed"),
        ("warn" if attention else "", f"{attention}", "need attention"),
        ("", cost, cost_label),
        ("", f"{_short(tokens_in)} / {_short(tokens_out)}", "tokens in / out"),
        ("", f"{(files := sum(r.files_changed for r in runs)):,}", "file changed" if files == 1 else "files changed"),
    ]
    out = ['<section id="index">\n<div class="cards">']
    out += [f'<div class="card {cls}"><div class="v">{value}</div><div class="k">{label}</div></div>' for cls, value, label in cards]
    out.append("</div>\n")
    if collection.batch:
        meta = [(k, v) for k, v in collection.batch.items() if isinstance(v, (str, int, float, bool)) or v is None][:24]
        if meta:
            out.append('<div class="batch-meta">' + "".join(f"<span>{_t(str(k))} <b>{_t(_short_value(v))}</b></span>" for k, v in meta) + "</div>\n")
    out.append('<h3>Tasks</h3>\n<div class="panel"><table class="runs" id="runs-table"><thead><tr>')
    columns = [("task", "Task", "", "asc"), ("status", "Status", "", "asc"), ("verify", "Verify", "", "asc"),
               ("flags", "Attention", "", "desc"), ("change", "Change", "", "desc"), ("steps", "Steps", "num", "desc"),
               ("cost", "Cost", "num", "desc"), ("duration", "Duration", "num", "desc")]  # fmt: skip
    out += [f'<th data-key="{key}" data-first="{first}" class="{cls}">{label}</th>' for key, label, cls, first in columns]
    out.append("</tr></thead>\n<tbody>\n")
    for pos, (run, anchor) in enumerate(zip(runs, anchors, strict=True)):
        verify_rank, verify_html = _verify_cell(run)
        summary = run.summary
        flag_rank = run.count("danger") * 10_000 + run.count("attention") * 100 + run.count("note")
        out.append(
            f'<tr data-pos="{pos}" data-run="{_attr(run.name)}" data-href="{anchor}">'
            f'<td class="task" data-v="{_attr(run.name.lower())}"><a class="task-name" href="#{anchor}">{_name(run.heading)}</a>'
            f'<div class="task-line">{_t(_first_line(summary.task))}</div></td>'
            f'<td data-v="{STATUS_RANK.get(run.status, 99)}">{_status_pill(run.status)}</td>'
            f'<td class="nowrap" data-v="{verify_rank}">{verify_html}</td>'
            f'<td data-v="{flag_rank}">{_flag_chips(run)}</td>'
            f'<td class="nowrap" data-v="{run.insertions + run.deletions}">{_change_cell(run)}</td>'
            f'<td class="num" data-v="{summary.steps}">{summary.steps}</td>'
            f'<td class="num" data-v="{summary.cost_usd if summary.cost_usd is not None else -1}">{_cost(summary.cost_usd)}</td>'
            f'<td class="num" data-v="{summary.duration_s or 0}">{_duration(summary.duration_s or None)}</td></tr>\n'
        )
    for pos, missing in enumerate(collection.not_run, start=len(runs)):
        out.append(
            f'<tr data-pos="{pos}" data-run="{_attr(missing.name)}">'
            f'<td class="task" data-v="{_attr(missing.name.lower())}"><span class="task-name">{_name(missing.name)}</span>'
            f'<div class="task-line">{_t(missing.error or "no run folder")}</div></td>'
            f'<td data-v="{STATUS_RANK.get(missing.status, 99)}">{_status_pill(missing.status)}</td>'
            '<td class="nowrap" data-v="3"><span class="faint">—</span></td><td data-v="0"><span class="faint">—</span></td>'
            '<td class="nowrap" data-v="0"><span class="faint">no run</span></td><td class="num" data-v="0">—</td>'
            '<td class="num" data-v="-1">—</td><td class="num" data-v="0">—</td></tr>\n'
        )
    out.append("</tbody></table></div>\n</section>\n")
    return "".join(out)


def _short(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else f"{n:,}"


def _short_value(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 120 else text[:119] + "…"


# ----------------------------------------------------------------------------- one run


def _run(run: RunData, i: int, anchors: list[str], target: Path) -> str:
    anchor, summary = anchors[i], run.summary
    prev_link = f'<a href="#{anchors[i - 1]}">‹ previous</a>' if i > 0 else '<span class="faint">‹ previous</span>'
    next_link = f'<a href="#{anchors[i + 1]}">next ›</a>' if i + 1 < len(anchors) else '<span class="faint">next ›</span>'
    out = [
        f'<section class="run" id="{anchor}" data-run="{_attr(run.name)}" data-title="{_attr(run.heading)}">\n',
        (
            f'<nav class="crumbs"><a href="#index">← All tasks</a><span class="pos">task {i + 1} of {len(anchors)}</span>'
            f'<span class="spacer"></span>{prev_link}{next_link}</nav>\n'
        ),
        f'<div class="run-head"><h2>{_name(run.heading)}</h2>{_status_pill(run.status)}</div>\n',
        _facts(run, target),
        _banners(run, anchor),
    ]
    if run.problems:
        out.append(
            '<div class="banner note problems"><h4>Incomplete run folder</h4><ul>' + "".join(f"<li>{_t(p)}</li>" for p in run.problems) + "</ul></div>\n"
        )
    out.append(f'<h3>Task</h3>\n<div class="box prose task clamp">{_t(summary.task) or "<span class=faint>(no task recorded)</span>"}</div>\n')
    if summary.error:
        out.append(f'<h3>Error</h3>\n<div class="box"><pre class="out">{_t(summary.error)}</pre></div>\n')
    out.append(_setup(run))
    out.append(_verify(run))
    out.append(_attempts(run, anchor))
    out.append(_diff_section(run, anchor))
    out.append(_timeline(run, anchor))
    out += [_attempt_changes(attempt, f"{anchor}~a{attempt.number}") for attempt in run.attempts if attempt.run is not None and not attempt.chosen]
    out.append("</section>\n")
    return "".join(out)


def _attempts(run: RunData, anchor: str) -> str:
    """A run of several attempts: each side by side, the chosen one first, its changes one click away."""
    if not run.attempts:
        return ""
    why = (run.summary.attempts or {}).get("why")
    rows = []
    for attempt in run.attempts:
        verify = (
            '<span class="faint">—</span>'
            if attempt.verify is None
            else '<span class="verdict-ok">✓ passed</span>'
            if attempt.verify
            else '<span class="verdict-bad">✗ failed</span>'
        )
        if attempt.run is None:
            change = f'<span class="faint">{_t(attempt.note or "did not run")}</span>'
        else:
            target = f"#{anchor}~changes" if attempt.chosen else f"#{anchor}~a{attempt.number}~changes"
            change = f'<a href="{target}">{_change_cell(attempt.run)}</a>'
        temperature = "default" if attempt.temperature is None else f"{attempt.temperature:g}"
        rows.append(
            f"<tr><td>{attempt.number}{' <b>chosen</b>' if attempt.chosen else ''}</td><td>{_status_pill(attempt.status)}</td>"
            f'<td class="nowrap">{verify}</td><td class="nowrap">{change}</td><td class="num">{attempt.steps}</td>'
            f'<td class="num">{_cost(attempt.cost_usd)}</td><td class="num">{temperature}</td></tr>'
        )
    head = "".join(f"<th>{label}</th>" for label in ("Attempt", "Status", "Verify", "Change", "Steps", "Cost", "Temperature"))
    note = (
        f'<div class="box muted">{_t(("Chosen: " if run.summary.attempts and run.summary.attempts.get("chosen") else "None chosen: ") + why)}</div>\n'
        if why
        else ""
    )
    return f'<h3>Attempts</h3>\n{note}<div class="panel"><table class="files attempts"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>\n'


def _attempt_changes(attempt: Attempt, anchor: str) -> str:
    assert attempt.run is not None
    return _diff_section(attempt.run, anchor, title=f"Attempt {attempt.number}: changes")


def _facts(run: RunData, target: Path) -> str:
    s, u = run.summary, run.summary.usage
    facts = [
        ("model", _t(model_label(s)) or "—"),
        ("run id", _t(s.run_id) or "—"),
        ("steps", f"{s.steps} · {plural(s.tool_calls, 'tool call')}"),
        (
            "tokens",
            f"in {u.input_tokens:,} · cache read {u.cache_read_input_tokens:,} · cache write {u.cache_creation_input_tokens:,} · out {u.output_tokens:,}",
        ),
        ("cost", _cost(s.cost_usd)),
        ("duration", _duration(s.duration_s or None)),
        ("started", _t(s.started_at) or "—"),
    ]
    links = " · ".join(
        f'<a href="{_rel_link(target, run.folder / name)}">{name}</a>'
        for name in ("patch.diff", "patch.rejected.diff", "run.json", "trajectory.jsonl")
        if (run.folder / name).is_file()
    )
    items = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts)
    items += f'<div class="long"><dt>repo</dt><dd class="mono">{_t(s.repo) or "—"}</dd></div>' if s.repo else ""
    items += f"<div><dt>files</dt><dd>{links}</dd></div>" if links else ""
    return f'<dl class="facts">{items}</dl>\n'


def _flag_line(flag: Flag, file_ids: dict[str, str]) -> str:
    where = ""
    if flag.path is not None:
        fid = file_ids.get(flag.path)
        shown = _name(flag.path)
        where = f'<a class="flag-path" href="#{fid}">{shown}</a>' if fid else f'<span class="flag-path">{shown}</span>'
        where += " — "
    return f'<li><span class="chip sev-{flag.severity}">{flag.severity}</span><span>{where}{_t(flag.message)}</span></li>'


def _file_ids(run: RunData, anchor: str) -> dict[str, str]:
    ids: dict[str, str] = {}
    for n, diff in enumerate(run.diffs):
        for path in (diff.change.old_path, diff.change.new_path) if diff.change else (diff.label,):
            if path is not None:
                ids.setdefault(path, f"{anchor}~f{n}")
    return ids


def _banners(run: RunData, anchor: str) -> str:
    flags = run.all_flags
    if not flags:
        return ""
    ids = _file_ids(run, anchor)
    out = []
    for severity in ("danger", "attention", "note"):
        group = [f for f in flags if f.severity == severity]
        if group:
            out.append(
                f'<div class="banner {severity}"><h4>{"⚠ " if severity != "note" else ""}{SEVERITY_TITLE[severity]} ({len(group)})</h4><ul>'
                + "".join(_flag_line(f, ids) for f in group)
                + "</ul></div>\n"
            )
    return "".join(out)


def _setup(run: RunData) -> str:
    setup = run.summary.setup
    if setup is None:
        return ""
    first, *rest = setup.lines()
    details = "".join(f"<li>{_t(line)}</li>" for line in rest)
    return f'<h3>Setup</h3>\n<div class="box"><div class="verify-line">{_t(first)}</div>{f"<ul>{details}</ul>" if details else ""}</div>\n'


def _verify(run: RunData) -> str:
    verify = run.summary.verify
    if verify is None:
        return ""
    if verify.skipped:
        verdict = f'<span class="muted">skipped: {_t(verify.skipped)}</span>'
    elif verify.passed:
        verdict = '<span class="verdict-ok">✓ passed</span>'
    elif verify.exit_code is None:
        verdict = '<span class="muted">not run</span>'
    else:
        verdict = f'<span class="verdict-bad">✗ failed{"" if verify.exit_code is None else f" (exit {verify.exit_code})"}</span>'
    tail = _output(verify.output_tail) if verify.output_tail else ""
    return f'<h3>Verify</h3>\n<div class="box"><div class="verify-line"><code>{_code(verify.command)}</code>{verdict}</div>{tail}</div>\n'


# ----------------------------------------------------------------------------- diff


def _diff_section(run: RunData, anchor: str, title: str = "Changes") -> str:
    out = [f'<h3 id="{anchor}~changes">{_t(title)}</h3>\n']
    if run.diff_source is None:
        return out[0] + '<div class="box muted">No patch file in this run folder.</div>\n'
    if not run.diffs:
        return out[0] + f'<div class="box muted">No change: {_t(run.diff_source)} is empty.</div>\n'
    source = "" if run.diff_source == "patch.diff" else f" · <b>from {_t(run.diff_source)}</b>"
    out.append(
        '<div class="diff-bar">'
        f"<span>{plural(run.files_changed, 'file')} changed, "
        f'<ins class="n">+{run.insertions:,}</ins> <del class="n">−{run.deletions:,}</del>{source}</span>'
        '<span class="spacer"></span>'
        '<span class="seg js-only" role="group" aria-label="diff layout">'
        '<button type="button" data-action="view-unified" aria-pressed="true">Unified</button>'
        '<button type="button" data-action="view-split" aria-pressed="false">Side by side</button></span></div>\n'
    )
    out.append('<div class="panel"><table class="files">')
    for n, diff in enumerate(run.diffs):
        chips = "".join(f'<span class="chip sev-{f.severity}" title="{_attr(f.message)}">{_t(f.code)}</span>' for f in _top_flags(diff.flags))
        out.append(
            f"<tr><td>{_kind(diff)}</td>"
            f'<td class="path"><a href="#{anchor}~f{n}">{_path_label(diff)}</a></td><td class="chips">{chips}</td>'
            f'<td class="num"><ins class="n">+{diff.insertions:,}</ins> <del class="n">−{diff.deletions:,}</del>{_blocks(diff.insertions, diff.deletions)}</td></tr>'
        )
    out.append("</table></div>\n")
    out += [_file(diff, f"{anchor}~f{n}", run.diff_source) for n, diff in enumerate(run.diffs)]
    return "".join(out)


def _kind(diff: FileDiff) -> str:
    label = {"mode-changed": "mode"}.get(diff.kind, diff.kind)
    return f'<span class="kind kind-{diff.kind}">{label}</span>'


def _top_flags(flags: list[Flag]) -> list[Flag]:
    return list({f.code: f for f in sorted(flags, key=lambda f: SEVERITY_ORDER[f.severity], reverse=True)}.values())[::-1]


def _path_label(diff: FileDiff) -> str:
    change = diff.change
    if change is None:
        return _t(diff.label)
    if change.kind in ("renamed", "copied") and change.old_path != change.new_path:
        return f'{_name(change.old_path)} <span class="faint">→</span> {_name(change.new_path)}'
    return _name(change.path)


def _file(diff: FileDiff, fid: str, source: str) -> str:
    worst = min((SEVERITY_ORDER[f.severity] for f in diff.flags), default=9)
    cls = {0: " flag-danger", 1: " flag-attention"}.get(worst, "")
    change = diff.change
    mode = ""
    if change and change.old_mode and change.new_mode and change.old_mode != change.new_mode:
        mode = f'<span class="mode">{change.old_mode} → {change.new_mode}</span>'
    elif change and change.kind == "added" and change.new_mode not in (None, "100644"):
        mode = f'<span class="mode">mode {change.new_mode}</span>'
    similarity = f'<span class="mode">{diff.similarity}% similar</span>' if diff.similarity is not None else ""
    chips = "".join(f'<span class="chip sev-{f.severity}" title="{_attr(f.message)}">{_t(f.code)}</span>' for f in _top_flags(diff.flags))
    head = (
        f'<summary>{_kind(diff)}<span class="path">{_path_label(diff)}</span>'
        f"{mode}{similarity}{chips}"
        f'<span class="hint">{diff.insertions + diff.deletions:,} changed lines: click to show</span>'
        f'<span class="stat"><ins class="n">+{diff.insertions:,}</ins> <del class="n">−{diff.deletions:,}</del></span></summary>'
    )
    body = []
    if diff.flags:
        body.append(
            '<div class="file-flags">'
            + "".join(f'<div><span class="chip sev-{f.severity}">{_t(f.code)}</span>{_t(f.message)}</div>' for f in diff.flags)
            + "</div>"
        )
    if not diff.lines and not diff.hidden_lines and not (change is not None and change.binary):  # binary: its flag says so
        body.append(f'<div class="file-note">{_empty_note(diff)}</div>')
    if diff.lines or diff.hidden_lines:
        body.append(_diff_table(diff, source))
    is_open = " open" if worst <= 1 or len(diff.lines) <= COLLAPSE_LINES else ""  # big files start folded, flagged ones never
    return f'<details class="file{cls}" id="{fid}"{is_open}>{head}{"".join(body)}</details>\n'


def _empty_note(diff: FileDiff) -> str:
    change = diff.change
    if change is None:
        return "Nothing to show."
    if change.kind == "mode-changed":
        return "Mode change only: the content is the same."
    if change.kind in ("renamed", "copied"):
        return f"{change.kind.capitalize()} without a content change."
    return "Empty file." if change.kind in ("added", "deleted") else "No content change."


def _diff_table(diff: FileDiff, source: str) -> str:
    tokens = highlight(diff.path, diff.lines) if diff.change is not None else [None] * len(diff.lines)
    rows = [_row(line, toks) for line, toks in zip(diff.lines, tokens, strict=True)]
    if diff.hidden_lines:
        rows.append(f'<tr class="more"><td colspan="3">… {diff.hidden_lines:,} more lines not shown here: see {_t(source)} next to this report.</td></tr>')
    return '<table class="diff unified"><colgroup><col class="lnc"><col class="lnc"><col></colgroup><tbody>' + "".join(rows) + "</tbody></table>"


def _line_html(line: DiffLine, tokens: Tokens | None) -> str:
    text = line.text
    cr = text.endswith("\r")
    if tokens is None:
        body = _code(text[:-1] if cr else text)
    else:
        body = "".join(f'<span class="tk-{css}">{_code(part)}</span>' if css else _code(part) for css, part in tokens)
    if cr:
        body += '<span class="esc soft" title="carriage return: this line ends with CRLF">␍</span>'
    if line.cut:
        body += f'<span class="faint"> … {line.cut:,} more characters</span>'
    return body


def _row(line: DiffLine, tokens: Tokens | None) -> str:
    if line.kind == "hunk":
        return f'<tr class="hunk"><td class="ln"></td><td class="ln"></td><td class="code">{_code(line.text)}</td></tr>'
    if line.kind == "nonl":
        return f'<tr class="nonl"><td class="ln"></td><td class="ln"></td><td class="code">{_code(line.text)}</td></tr>'
    if line.kind == "raw":
        return f'<tr class="raw"><td class="ln"></td><td class="ln"></td><td class="code">{_code(line.text)}</td></tr>'
    kind = {"context": "ctx", "add": "add", "del": "del"}[line.kind]
    old = "" if line.old is None else str(line.old)
    new = "" if line.new is None else str(line.new)
    return f'<tr class="{kind}"><td class="ln" data-n="{old}"></td><td class="ln" data-n="{new}"></td><td class="code">{_line_html(line, tokens)}</td></tr>'


# ----------------------------------------------------------------------------- trajectory


def _timeline(run: RunData, anchor: str) -> str:
    traj = run.trajectory
    head = (
        '<h3>Trajectory</h3>\n<div class="timeline-bar"><span class="muted">'
        f"{plural(len(traj.steps), 'step')} · "
        f'{plural(sum(len(s.tool_calls) for s in traj.steps), "tool call")}</span><span class="spacer"></span>'
        '<button type="button" class="btn js-only" data-action="expand">Expand all</button>'
        '<button type="button" class="btn js-only" data-action="collapse">Collapse all</button></div>\n'
    )
    if not traj.present:
        return head + '<div class="box muted">No trajectory.jsonl in this run folder.</div>\n'
    items = [_step(step, anchor, last=step is traj.steps[-1]) for step in traj.steps]
    for error in traj.errors:
        items.append(f'<li class="end bad"><span class="step-no">!</span><div class="step-head"><b>internal error</b></div>{_output(error)}</li>')
    if traj.ended:
        bad = "" if traj.end_status == "completed" else " bad"
        err = f'<div class="plan prose">{_t(traj.end_error)}</div>' if traj.end_error else ""
        items.append(
            f'<li class="end{bad}"><span class="step-no">■</span><div class="step-head"><b>run ended</b> · {_status_pill(traj.end_status or "unknown")}</div>{err}</li>'
        )
    else:
        items.append(
            '<li class="end bad"><span class="step-no">…</span><div class="step-head"><b>no end recorded</b>: the run was killed or is still going</div></li>'
        )
    return head + '<ol class="timeline">' + "\n".join(items) + "</ol>\n"


def _step(step: Step, anchor: str, *, last: bool) -> str:
    final = last and step.stop_reason == "end_turn"
    info = [f"<b>step {step.number}</b>"]
    if step.t is not None:
        info.append(f"at {_duration(step.t)}")
    if step.duration_s is not None:
        info.append(f"model {_duration(step.duration_s)}")
    if step.output_tokens is not None:
        info.append(f"{step.output_tokens:,} tokens out")
    if final:
        info.append("final answer")
    parts = [f'<li class="step{" final" if final else ""}" id="{anchor}~s{step.number}"><span class="step-no">{step.number}</span>']
    parts.append(f'<div class="step-head">{" · ".join(info)}</div>')
    if step.thinking:
        parts.append(f'<details class="more"><summary>thinking</summary><div class="plan prose thinking">{_t(step.thinking)}</div></details>')
    parts += [f'<div class="step-head">{_t(note)}</div>' for note in step.notes]
    if step.text:
        parts.append(f'<div class="plan prose">{_t(step.text)}</div>')
    parts += [_call(call) for call in step.tool_calls]
    parts.append("</li>")
    return "".join(parts)


def _arg(call: ToolCall, key: str) -> str | None:
    value = call.input.get(key) if isinstance(call.input, dict) else None
    return value if isinstance(value, str) else None


def _call_summary(call: ToolCall) -> str:
    """The one line that says what the call did (command, path, pattern, ...)."""
    args: dict[str, Any] = call.input if isinstance(call.input, dict) else {}
    for key in ("command", "path", "pattern"):
        text = args.get(key)
        if isinstance(text, str):
            first = text.split("\n", 1)[0]
            extra = ""
            if key == "path" and (args.get("start_line") or args.get("end_line")):
                extra = f" lines {args.get('start_line') or 1}–{args.get('end_line') or 'end'}"
            if key == "pattern" and isinstance(args.get("path"), str) and args["path"] != ".":
                extra = f" in {args['path']}"
            return first + (" …" if first != text else "") + extra
    return json.dumps(call.input, ensure_ascii=False, default=str)[:200] if call.input is not None else ""


def _call(call: ToolCall) -> str:
    result = []
    if call.meta.get("timed_out"):
        result.append('<span class="bad">timed out</span>')
    if call.exit_code is not None:
        result.append(f'<span class="{"ok" if call.exit_code == 0 else "bad"}">exit {call.exit_code}</span>')
    elif call.is_error:
        result.append('<span class="bad">error</span>')
    if call.duration_s is not None:
        result.append(_duration(call.duration_s))
    details = _call_input(call)
    summary = "" if details.startswith('<pre class="cmd">') else _call_summary(call)  # the command is shown whole below
    head = (
        f'<div class="call-head"><span class="tool">{_t(call.name)}</span>'
        f'<span class="call-arg" title="{_attr(summary[:300])}">{_code(summary)}</span>'
        f'<span class="call-res">{" · ".join(result)}</span></div>'
    )
    body = [details]
    if call.output:
        body.append(_output(call.output, call.output_chars))
    return f'<div class="call{" error" if call.is_error else ""}">{head}<div class="call-body">{"".join(body)}</div></div>'


def _call_input(call: ToolCall) -> str:
    args = call.input if isinstance(call.input, dict) else None
    if args is None:
        return ""
    command = _arg(call, "command")
    if call.name == "run_bash" and command is not None and ("\n" in command or len(command) > 110):
        return f'<pre class="cmd">{_code_lines(command)}</pre>'
    if call.name == "write_file" and (content := _arg(call, "content")) is not None:
        lines = content.count("\n") + (not content.endswith("\n"))
        return f'<details class="more"><summary>content written ({lines:,} line{"s" if lines != 1 else ""})</summary><pre class="out">{_code_lines(content)}</pre></details>'
    if call.name == "edit_file" and (_arg(call, "old_str") is not None or _arg(call, "new_str") is not None):
        old = "".join(f'<span class="del">-{_code(ln)}</span>' for ln in (_arg(call, "old_str") or "").split("\n"))
        new = "".join(f'<span class="add">+{_code(ln)}</span>' for ln in (_arg(call, "new_str") or "").split("\n"))
        return f'<details class="more" open><summary>edit</summary><pre class="out mini-diff">{old}{new}</pre></details>'
    known = {"run_bash": {"command", "timeout"}, "read_file": {"path", "start_line", "end_line"}, "list_dir": {"path", "depth"},
             "search": {"pattern", "path"}}  # fmt: skip
    if set(args) <= known.get(call.name, set()):
        return ""
    shown = json.dumps(args, ensure_ascii=False, indent=2, default=str)
    return f'<details class="more"><summary>input</summary><pre class="out">{_t(shown)}</pre></details>'


def _output(text: str, full_chars: int | None = None) -> str:
    """A tool output or log: short ones whole, long ones as a preview that expands to the whole."""
    text = text.rstrip("\n")
    lines = text.split("\n")
    if len(lines) <= SHORT_OUTPUT_LINES and len(text) <= 2400:
        return f'<pre class="out">{_t(text)}</pre>'
    preview = "\n".join(line[:300] for line in lines[:PREVIEW_LINES])
    size = f"{(full_chars or len(text)):,} characters"
    return (
        f'<pre class="out preview">{_t(preview)}\n<span class="faint">… {len(lines) - PREVIEW_LINES:,} more lines</span></pre>'
        f'<details class="more"><summary>show all {len(lines):,} lines ({size})</summary><pre class="out">{_t(text)}</pre></details>'
    )
