"""Output extraction: a pipeline of steps that turns raw model text into a prediction.

A step that cannot find what it looks for raises :class:`ExtractionError`; the case then
scores 0 with that reason and an empty prediction, never an exception out of the run.
``{first_of: [A, B, ...]}`` chains alternatives (each a step or a list of steps): the
first that succeeds wins.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any, Callable

from harness.scoring.normalize import canonical_number, normalize


class ExtractionError(Exception):
    """The output did not contain what an extraction step looks for."""


_JSON_BLOCK = re.compile(r"```json\s*\n?(.*?)```", re.DOTALL | re.IGNORECASE)


def strip_think(text: str) -> str:
    """Drop everything up to and including the last `</think>`."""
    return text.rsplit("</think>", 1)[-1] if "</think>" in text else text


def json_block(text: str) -> str:
    """The body of the last ```json fenced block; the text itself when there is none."""
    blocks = _JSON_BLOCK.findall(text)
    return blocks[-1].strip() if blocks else text


def last_paragraph(text: str) -> str:
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if not paragraphs:
        raise ExtractionError("empty output: no paragraph")
    return paragraphs[-1]


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    raise ExtractionError("empty output: no line")


def strip(text: str) -> str:
    return text.strip()


def first_json_object(text: str) -> str:
    """The first balanced {...} in the text (strings and escapes respected)."""
    start = text.find("{")
    while start != -1:
        depth, in_string, escaped = 0, False, False
        for index in range(start, len(text)):
            char = text[index]
            if in_string:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return text[start : index + 1]
        start = text.find("{", start + 1)
    raise ExtractionError("no balanced JSON object in output")


def parse_json(text: Any) -> Any:
    """Parse JSON: the last ```json block, else the whole text, else the first {...}."""
    if not isinstance(text, str):
        return text
    body = json_block(text)
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        pass
    try:
        return json.loads(first_json_object(body))
    except json.JSONDecodeError as exc:
        raise ExtractionError(f"output is not valid JSON: {exc.msg}") from exc


def normalize_step(text: str) -> str:
    """The answer as scorers compare it: NFKC, whitespace, case, edge punctuation, numbers."""
    return normalize(text, numbers=True)


_ANY_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


def number(text: str) -> str:
    """The last number in the text, canonical: "The total is 1,234.50 yuan." -> "1234.5"."""
    matches = _ANY_NUMBER.findall(unicodedata.normalize("NFKC", text))
    if not matches:
        raise ExtractionError("no number in output")
    return canonical_number(matches[-1]) or matches[-1]


def regex(pattern: str, group: int | str = 1, flags: str = "") -> Callable[[str], str]:
    """A step taking the last match's group (the whole match when the pattern has no group)."""
    compiled = re.compile(pattern, _flags(flags))
    if compiled.groups and not (
        group in compiled.groupindex
        or (isinstance(group, int) and not isinstance(group, bool) and 0 <= group <= compiled.groups)
    ):
        raise ValueError(f"regex {pattern!r} has no group {group!r}")

    def step(text: str) -> str:
        matches = list(compiled.finditer(text))
        if not matches:
            raise ExtractionError(f"regex {pattern!r} did not match")
        value = matches[-1].group(group if compiled.groups else 0)
        if value is None:
            raise ExtractionError(f"regex {pattern!r} matched without group {group!r}")
        return value

    return step


def _flags(names: str) -> int:
    table = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}
    value = 0
    for name in names:
        if name not in table:
            raise ValueError(f"unknown regex flag {name!r}; use i, m, s")
        value |= table[name]
    return value


SIMPLE_STEPS: dict[str, Callable[[str], Any]] = {
    "strip_think": strip_think,
    "json_block": json_block,
    "last_paragraph": last_paragraph,
    "first_line": first_line,
    "strip": strip,
    "first_json_object": first_json_object,
    "json": parse_json,
    "normalize": normalize_step,
    "number": number,
}


def build_step(spec: Any) -> Callable[[Any], Any]:
    """A step from its suite-file form: a name, ``{regex: PATTERN, group: N, flags: "i"}``, or
    ``{first_of: [ALTERNATIVE, ...]}`` where an alternative is a step or a list of steps."""
    if isinstance(spec, str):
        if spec not in SIMPLE_STEPS:
            known = ", ".join([*SIMPLE_STEPS, "regex", "first_of"])
            raise ValueError(f"unknown extraction step {spec!r}; known: {known}")
        return SIMPLE_STEPS[spec]
    if isinstance(spec, dict) and "regex" in spec:
        unknown = set(spec) - {"regex", "group", "flags"}
        if unknown:
            raise ValueError(f"unknown regex option {sorted(unknown)[0]!r}; use regex, group, flags")
        try:
            return regex(spec["regex"], spec.get("group", 1), spec.get("flags", ""))
        except re.error as exc:
            raise ValueError(f"bad regex {spec['regex']!r}: {exc}") from exc
    if isinstance(spec, dict) and "first_of" in spec:
        if set(spec) != {"first_of"}:
            raise ValueError(f"first_of takes no options, got {sorted(set(spec) - {'first_of'})[0]!r}")
        alternatives = spec["first_of"]
        if not isinstance(alternatives, list) or not alternatives:
            raise ValueError("first_of needs a non-empty list of alternatives (each a step or a list of steps)")
        chains = [tuple(alt) if isinstance(alt, list) else (alt,) for alt in alternatives]
        for chain in chains:
            validate_steps(list(chain))
        return _first_of(chains)
    raise ValueError(f"bad extraction step {spec!r}: a step name, {{regex: ...}} or {{first_of: [...]}}")


def _first_of(chains: list[tuple[Any, ...]]) -> Callable[[Any], Any]:
    def step(text: Any) -> Any:
        reasons = []
        for chain in chains:
            try:
                return run_pipeline(chain, text)
            except ExtractionError as exc:
                reasons.append(f"{_describe(chain)}: {exc}")
        raise ExtractionError("no alternative succeeded (" + "; ".join(reasons) + ")")

    step.accepts_any = True  # type: ignore[attr-defined]
    return step


def _describe(chain: tuple[Any, ...]) -> str:
    return " > ".join(s if isinstance(s, str) else next(iter(s)) for s in chain)


def validate_steps(specs: list[Any]) -> None:
    for spec in specs:
        build_step(spec)


_BUILT: dict[str, Callable[[Any], Any]] = {}


def _step(spec: Any) -> Callable[[Any], Any]:
    """build_step, memoised: a first_of or regex step is compiled once, not once per case."""
    if isinstance(spec, str):
        return build_step(spec)
    key = json.dumps(spec, sort_keys=True, default=str)
    if key not in _BUILT:
        _BUILT[key] = build_step(spec)
    return _BUILT[key]


def run_pipeline(specs: tuple[Any, ...], text: Any) -> Any:
    """Apply each step in order to the output; raises ExtractionError on the first failure."""
    value: Any = text
    for spec in specs:
        step = _step(spec)
        if not isinstance(value, str) and step is not parse_json and not getattr(step, "accepts_any", False):
            raise ExtractionError(f"step {spec!r} needs text, got {type(value).__name__}")
        value = step(value)
    return value
