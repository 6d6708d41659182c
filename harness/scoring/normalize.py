"""Answer normalisation: compare answers as people do, not byte for byte.

``normalize`` folds Unicode (NFKC: full-width letters, digits and punctuation become their
ASCII forms), whitespace, case and the punctuation around an answer. ``canonical_numbers``
writes every number in one form, so "1,000", "1000" and "1000.0" compare equal.
"""

from __future__ import annotations

import re
import string
import unicodedata
from decimal import Decimal, InvalidOperation
from typing import Any

EDGE_CHARS = string.punctuation + string.whitespace + "。，、；：？！“”‘’（）《》【】"

# a number standing alone: thousands groups of exactly three ("1,000", not "3,14"), an optional
# decimal part; not part of a word, a version ("1.2.3") or a longer number
_NUMBER = re.compile(r"(?<![\w.,])[-+]?(?:[1-9]\d{0,2}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w]|[.,]\d)"
                     r"|(?<![\w.,])[-+]?\.\d+(?![\w]|[.,]\d)")


def strip_edges(value: str) -> str:
    """Drop punctuation and spaces at both ends, keeping what starts a number ("-5", ".5", "-.5")."""
    stripped = value.rstrip(EDGE_CHARS)
    cut = len(stripped) - len(stripped.lstrip(EDGE_CHARS))
    if stripped[cut : cut + 1].isdigit():
        if cut and stripped[cut - 1] == ".":
            cut -= 1
        if cut and stripped[cut - 1] in "+-":
            cut -= 1
    return stripped[cut:].strip()


def normalize(text: Any, case_sensitive: bool = False, numbers: bool = False) -> str:
    """NFKC (full-width to half-width), whitespace collapsed, case folded, edge punctuation dropped.

    Punctuation inside the answer is kept: "3.14" and "3,14" are different answers. With
    ``numbers``, numbers are written canonically (see :func:`canonical_numbers`)."""
    value = unicodedata.normalize("NFKC", str(text))
    # str.split knows more whitespace than string.whitespace (\x1c-\x1f, \x85): collapse it first
    value = " ".join(strip_edges(" ".join(value.split())).split())
    if numbers:
        value = canonical_numbers(value)
    return value if case_sensitive else value.casefold()


def canonical_number(token: str) -> str | None:
    """"1,234.50" -> "1234.5", "+7" -> "7", "-0.0" -> "0", ".5" -> "0.5"; None when not a number.

    Integers with leading zeros ("007") are left alone: they are codes, not quantities."""
    token = unicodedata.normalize("NFKC", token).strip()
    if re.fullmatch(r"[-+]?0\d+", token):
        return None
    try:
        value = Decimal(token.replace(",", "")) if _NUMBER.fullmatch(token) else None
    except InvalidOperation:
        return None
    if value is None or not value.is_finite():
        return None
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def canonical_numbers(text: str) -> str:
    """Every standalone number of the text in canonical form (see :func:`canonical_number`)."""
    text = unicodedata.normalize("NFKC", text)
    return _NUMBER.sub(lambda m: canonical_number(m.group()) or m.group(), text)
