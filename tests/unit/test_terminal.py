"""The one function that makes untrusted text safe for a terminal (the CLI is checked in a real pty
by tests/docker/test_terminal_safety.py)."""

from __future__ import annotations

import io
import re

from rich.console import Console

from orchestrator.terminal import ESCAPE_STYLE, safe


def rendered(*objects: object) -> str:
    console = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=200, highlight=False)  # as the CLI
    console.print(*objects)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_every_control_invisible_and_bidi_character_becomes_a_visible_escape() -> None:
    hostile = "a\x1b]0;t\x07b\x1b[2Jc\rd\x08e\x9bf\u202eg\u200bh\x00i\udcffj"
    assert safe(hostile).plain == "a\\x1b]0;t\\x07b\\x1b[2Jc\\rd\\x08e\\x9bf\\u202eg\\u200bh\\x00i\\xffj"
    spans = safe(hostile).spans
    assert len(spans) == 10 and {span.style for span in spans} == {ESCAPE_STYLE}


def test_newlines_and_tabs_are_kept_unless_asked_and_ordinary_text_is_untouched() -> None:
    assert safe("line 1\n\tline 2 — ünïcode ✓").plain == "line 1\n\tline 2 — ünïcode ✓"
    assert safe("a\nb\tc", keep="").plain == "a\\nb\\tc"
    assert safe(None).plain == "" and safe(42).plain == "42"


def test_markup_in_untrusted_text_is_text_and_the_markup_form_round_trips() -> None:
    hostile = "[bold red]not markup[/] \x1b[2J"
    assert "[bold red]not markup[/]" in rendered(safe(hostile))
    assert "[bold red]not markup[/]" in rendered(f"[dim]{safe(hostile).markup}[/]")
    for output in (rendered(safe(hostile)), rendered(f"x {safe(hostile).markup}")):
        assert "\x1b[2J" not in output and "\\x1b[2J" in re.sub("\x1b\\[[0-9;]*m", "", output)  # shown, between colours
