"""Reading a judge's reply: :func:`parse_verdict`, :func:`combine`, :func:`score_of`, :func:`passes`.

The parser is strict: the last line of the reply that starts with ``VERDICT:`` must hold
exactly one value of the spec's scale. Anything else raises :class:`VerdictError`, which quotes
the reply; a reply that cannot be read is an error, never a silent 0.

What a verdict line may look like (the value ``4`` on a 1 to 5 scale, or a label)::

    VERDICT: 4                 verdict: 4.0            VERDICT：4   (full-width colon, Chinese replies)
    **VERDICT:** 4             **VERDICT: 4**          `VERDICT: 4`          VERDICT: **answer**
    VERDICT: 4.                VERDICT: <answer>       VERDICT: "answer"     - VERDICT: answer

Markdown emphasis (``*``, `````, a ``__`` pair) and a leading ``#``/``>``/``-`` are ignored, the
line is NFKC-normalised (full-width digits and colon become ASCII), one trailing ``.``/``。`` and
one pair of quotes or brackets around the value are dropped. Numbers are plain integers or
decimals (``4``, ``-1``, ``0.67``, ``.5``), within the scale, ends included; ``4/5``, ``4 out of
5`` and ``1e0`` are refused. Labels match one of the scale's labels exactly after stripping and
case-folding (``Answer`` is ``answer``; ``not toxic`` is not ``not_toxic``).

Decisions:

- **Label scores.** A label verdict scores 1 when it is the spec's ``positive`` label (the
  ``positive`` option; a built-in rubric's own, e.g. ``not_toxic``; else the first label listed),
  0 otherwise. A numeric verdict scores ``(v - lo) / (hi - lo)``.
- **Samples.** ``combine`` takes the mean of numeric verdicts, and the label most samples gave
  (a plurality) for labels. A tie for the most votes is a :class:`VerdictError` naming the tied
  labels: breaking it by list order would bias every tie towards the first label (often the
  "bad" one), so an undecided judge shows as an error, as an unreadable one does.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from harness.judging.spec import JudgeSpec
from harness.textsafe import visible

__all__ = ["Verdict", "VerdictError", "combine", "parse_verdict", "passes", "quote_reply", "score_of"]

QUOTE_LIMIT = 500
_QUOTE_HEAD = 200  # the rest of the quote is the reply's end, where the verdict line should be

# a verdict line once markdown emphasis is dropped: optional list/quote/heading marks, VERDICT
# (maybe __bold__), a colon (NFKC made the full-width one ASCII), the value
_LINE = re.compile(r"[\s>#-]*(?:__)?verdict(?:__)?\s*:\s*(?P<body>.*?)\s*", re.IGNORECASE)
_EMPHASIS = str.maketrans("", "", "*`")
_PAIRS = (("<", ">"), ("[", "]"), ("(", ")"), ('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"),
          ("\u300c", "\u300d"), ("\u3010", "\u3011"), ("\u300a", "\u300b"))
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_ANY_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:[.,][0-9]+)*|\.[0-9]+)")


@dataclass(frozen=True)
class Verdict:
    """What the judge decided: ``value`` (numeric scales) or ``label`` (label scales), its
    reasoning (the reply without the verdict line) and the raw reply. A combined verdict
    (``samples`` > 1) joins the samples' reasoning and replies; for labels, ``agreement`` is the
    share of samples that gave the winning label."""

    value: float | None
    label: str | None
    reasoning: str
    raw: str
    samples: int = 1
    agreement: float | None = None


def quote_reply(raw: str, limit: int = QUOTE_LIMIT) -> str:
    """The reply quoted for an error message: control characters escaped, line breaks as ``\\n``,
    at most ``limit`` characters of it (its start and its end, where the verdict should be)."""
    text = raw
    if len(raw) > limit:
        tail = limit - _QUOTE_HEAD
        text = f"{raw[:_QUOTE_HEAD]} [... {len(raw) - limit} characters left out ...] {raw[-tail:]}"
    return '"' + visible(text, keep_newlines=False).replace('"', '\\"') + '"'


class VerdictError(Exception):
    """A judge reply with no readable verdict. ``message`` says why, ``raw`` keeps the whole reply;
    ``str()`` quotes the reply (see :func:`quote_reply`)."""

    def __init__(self, message: str, raw: str) -> None:
        self.message = message
        self.raw = raw
        super().__init__(f"{message}; the judge replied ({len(raw)} characters): {quote_reply(raw)}")


def _unwrap(body: str) -> str:
    if body.startswith("__") and body.endswith("__") and len(body) > 4:
        body = body[2:-2].strip()
    body = _drop_full_stop(body)
    for left, right in _PAIRS:
        if len(body) >= 2 and body.startswith(left) and body.endswith(right):
            return _drop_full_stop(body[1:-1].strip())
    return body


def _drop_full_stop(body: str) -> str:
    # "VERDICT: answer." ends a sentence; "4." is already a number
    if body[-1:] in (".", "\u3002") and not _NUMBER.fullmatch(body):
        return body[:-1].rstrip()
    return body


def _fmt(value: float) -> str:
    return f"{value:g}"


def _read_number(spec: JudgeSpec, body: str, raw: str) -> float:
    span = f"a number from {_fmt(spec.lo)} to {_fmt(spec.hi)}"
    if _NUMBER.fullmatch(body):
        value = float(body)
        if not spec.lo <= value <= spec.hi:
            raise VerdictError(f"the verdict {body} is outside the scale: expected {span}", raw)
        return value
    found = _ANY_NUMBER.findall(body)
    if len(found) > 1:
        raise VerdictError(f"the VERDICT line holds {len(found)} values ({', '.join(found)}), "
                           f"not exactly one: expected {span}", raw)
    raise VerdictError(f"the verdict {body!r} is not a plain number: expected {span}", raw)


def _read_label(spec: JudgeSpec, body: str, raw: str) -> str:
    key = body.casefold()
    for label in spec.labels:
        if unicodedata.normalize("NFKC", label).casefold() == key:
            return label
    choices = "|".join(spec.labels)
    named = [label for label in spec.labels
             if re.search(rf"(?<!\w){re.escape(unicodedata.normalize('NFKC', label).casefold())}(?!\w)", key)]
    if len(named) > 1:
        raise VerdictError(f"the VERDICT line holds {len(named)} labels ({', '.join(named)}), "
                           f"not exactly one of {choices}", raw)
    raise VerdictError(f"the verdict {body!r} is not one of {choices}", raw)


def parse_verdict(spec: JudgeSpec, raw: str) -> Verdict:
    """The verdict in a judge's reply: the last ``VERDICT:`` line's value, checked against the
    spec's scale. Raises :class:`VerdictError` (quoting the reply) for an empty reply, no verdict
    line, an empty value, a value that is not exactly one number in range or one label."""
    if raw is None or not str(raw).strip():
        raise VerdictError("the judge's reply is empty", "" if raw is None else str(raw))
    raw = str(raw)
    lines = raw.splitlines()
    found: tuple[int, str] | None = None
    for number, line in enumerate(lines):
        text = unicodedata.normalize("NFKC", line).translate(_EMPHASIS).strip()
        match = _LINE.fullmatch(text)
        if match:
            found = (number, match.group("body"))  # the last one wins: earlier ones are drafts or quotes
    if found is None:
        raise VerdictError("the judge's reply has no 'VERDICT:' line", raw)
    number, body = found
    body = _unwrap(body.strip())
    if not body:
        raise VerdictError("the VERDICT line holds no value", raw)
    reasoning = "\n".join(lines[:number] + lines[number + 1:]).strip()
    if spec.numeric:
        return Verdict(value=_read_number(spec, body, raw), label=None, reasoning=reasoning, raw=raw)
    return Verdict(value=None, label=_read_label(spec, body, raw), reasoning=reasoning, raw=raw)


def _check_kind(spec: JudgeSpec, verdict: Verdict) -> None:
    if spec.numeric and verdict.value is None:
        raise ValueError(f"a numeric scale needs a numeric verdict, not the label {verdict.label!r}")
    if not spec.numeric and verdict.label is None:
        raise ValueError(f"a label scale needs a label verdict, not the value {verdict.value!r}")


def score_of(spec: JudgeSpec, verdict: Verdict) -> float:
    """The verdict as a score in [0, 1]: ``(v - lo) / (hi - lo)`` for numbers; for labels 1.0 when
    it is the spec's positive label, else 0.0."""
    _check_kind(spec, verdict)
    if spec.numeric:
        assert verdict.value is not None
        return (verdict.value - spec.lo) / (spec.hi - spec.lo)
    return 1.0 if verdict.label == spec.positive else 0.0


def passes(spec: JudgeSpec, verdict: Verdict) -> bool | None:
    """Whether a verdict passes: the positive label; a number at or above ``pass_threshold``
    (None when a numeric spec sets no threshold: the suite's ``pass:`` rule decides)."""
    _check_kind(spec, verdict)
    if not spec.numeric:
        return verdict.label == spec.positive
    if spec.pass_threshold is None:
        return None
    assert verdict.value is not None
    return verdict.value >= spec.pass_threshold


def _sample_header(index: int, total: int, verdict: Verdict) -> str:
    shown = verdict.label if verdict.label is not None else _fmt(verdict.value or 0.0)
    return f"--- judge sample {index} of {total}: {shown} ---"


def combine(spec: JudgeSpec, verdicts: Sequence[Verdict]) -> Verdict:
    """One verdict from a case's judge samples: the mean value (numbers) or the label most samples
    gave (labels; ``agreement`` is its share). A tie for the most votes raises :class:`VerdictError`
    naming the tied labels, with every sample's reply. One verdict is returned as it is."""
    if not verdicts:
        raise ValueError("combine needs at least one verdict")
    for verdict in verdicts:
        _check_kind(spec, verdict)
    if len(verdicts) == 1:
        return verdicts[0]
    total = len(verdicts)
    raw = "\n".join(f"{_sample_header(i, total, v)}\n{v.raw}" for i, v in enumerate(verdicts, 1))
    reasoning = "\n".join(f"{_sample_header(i, total, v)}\n{v.reasoning}" for i, v in enumerate(verdicts, 1))
    if spec.numeric:
        mean = sum(v.value or 0.0 for v in verdicts) / total
        return Verdict(value=mean, label=None, reasoning=reasoning, raw=raw, samples=total)
    votes = Counter(v.label for v in verdicts)
    top = max(votes.values())
    leaders = [label for label in spec.labels if votes.get(label) == top]
    if len(leaders) > 1:
        counts = ", ".join(f"{label} {votes[label]}" for label in spec.labels if votes.get(label))
        raise VerdictError(f"the {total} judge samples tie between {' and '.join(leaders)} ({counts}): "
                           f"no label has the most votes (an odd samples count avoids ties between two labels)",
                           raw)
    return Verdict(value=None, label=leaders[0], reasoning=reasoning, raw=raw, samples=total,
                   agreement=top / total)
