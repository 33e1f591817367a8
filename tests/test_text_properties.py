"""Property tests: names with control characters never reach an output raw (issue 22)."""

from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.report import html_table, md_table
from cnnlab.text import visible

names = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40)


def has_control(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" or c in "\u2028\u2029" for c in text)


@settings(max_examples=300, deadline=None)
@given(names)
def test_visible_text_has_no_control_characters_and_keeps_the_rest(name):
    shown = visible(name)
    assert not has_control(shown)
    assert visible(shown) == shown  # nothing left to escape
    if not has_control(name):
        assert shown == name


@settings(max_examples=200, deadline=None)
@given(st.lists(names, min_size=1, max_size=5))
def test_report_tables_show_control_characters_as_escapes(class_names):
    header = ["class", *class_names]
    rows = [[name, "0.5"] for name in class_names]
    html, md = html_table("t", header, rows), md_table("t", header, rows)
    assert not has_control(html) and not has_control(md.replace("\n", ""))
    assert len(md.split("\n")) == 4 + len(rows)  # no name breaks a table row (or starts a heading)
