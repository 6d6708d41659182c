"""Untrusted text (model output, dataset values) made safe to show in a terminal or a report.

A model can answer with ANSI escape sequences (clear the screen, set the window title, hide a
link), bidirectional overrides that reorder what a reader sees, or a lone UTF-16 surrogate that
no UTF-8 file can hold. Shown raw, the first two act on the reader's terminal or fool the eye;
the last makes a writer raise. ``visible`` turns each such character into a printable escape
(``\\x1b``, ``\\u202e``, ``\\ud83d``), so the text shows what the model sent, not what it does.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls, bidi embeddings/overrides/isolates,
# line/paragraph separators, and lone surrogates
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str, keep_newlines: bool = True) -> str:
    """text with every control, bidi and surrogate character written as a printable escape."""
    safe = _UNSAFE.sub(_escape, text)
    return safe if keep_newlines else safe.replace("\n", "\\n")


def has_unsafe(text: str) -> bool:
    """Whether ``visible`` would change text."""
    return _UNSAFE.search(text) is not None
