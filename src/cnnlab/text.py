"""Text from users' data (class and folder names, paths) as every output shows it: control characters
replaced by visible escapes, so a carriage return or a bell in a name cannot rewrite a line, a
Markdown heading or a log."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def visible(text) -> str:
    """str(text) with each control character written as an escape: '\\r', '\\x07', '\\u2028'."""
    def escape(match: re.Match) -> str:
        char = match.group()
        return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")

    return _CONTROL.sub(escape, str(text))
