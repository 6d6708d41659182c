"""Tool-call metrics: name-level and parameter-level P/R/F1, and strict per-sample match.

Definitions follow seed 001 (``metric.py``): every sample's label and prediction is a list of
calls ``{"toolName": str, "paramList": {param: value}}``. Name level counts each tool's
occurrences, a hit being ``min(label count, prediction count)`` per sample; parameter level
does the same over ``toolName-param:value`` keys with normalised values; strict match rates
are per sample, split into single-tool and multi-tool labels. Where the seed's code breaks
its own stated rule or crashes, this module keeps the rule; each such place says "seed:".
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any, Sequence

ToolCall = dict[str, Any]
"""``{"toolName": str, "paramList": dict[str, Any]}``, the seed's shape of one call."""

NEGATIVE_TOOL = "__NEGATIVE__"
"""Pseudo-tool for a sample with no calls (name level, ``negative=True`` only)."""

RAW_ARGUMENTS = "__raw__"
"""paramList key holding OpenAI ``arguments`` that are not a JSON object."""

# The seed's value-type keys: for these tools a value is right only together with its type,
# so "truckType=车长 (length), value=17.5" also yields the key "truckCheck-truckType-车长:17.5".
TYPED_VALUE_KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "truckCheck": ("truckType", ("车长", "车型")),  # truck length, truck model
    "priceCheck": ("priceType", ("到车价", "总价")),  # price on arrival, total price
}

Samples = Sequence[Sequence[Mapping[str, Any]]]


# ---------------------------------------------------------------------------- input shapes

def from_openai_tool_calls(tool_calls: list[dict] | None) -> list[ToolCall]:
    """OpenAI chat ``tool_calls`` as seed-shape calls; None (no calls) gives [].

    ``function.arguments`` (a JSON string) becomes ``paramList`` when it is a JSON object;
    empty or absent arguments become ``{}``; anything else (bad JSON, a JSON array or
    scalar) becomes ``{"__raw__": arguments}``, so a malformed call still counts by name.
    A structurally wrong entry (no ``function.name``) raises ValueError."""
    if tool_calls is None:
        return []
    if not isinstance(tool_calls, (list, tuple)):
        raise ValueError(f"OpenAI tool_calls must be a list or None, got {type(tool_calls).__name__}")
    return [_from_openai_call(call, i) for i, call in enumerate(tool_calls)]


def parse_tool_calls(value: Any) -> list[ToolCall]:
    """Calls from a seed-shape list, a JSON string of one, or an OpenAI ``tool_calls`` list.

    Seed-shape calls come back canonical: exactly ``toolName`` and ``paramList``, a missing
    or null ``paramList`` as ``{}``, so parsed labels compare like for like with mapped
    OpenAI predictions under :func:`strict_match`. Anything else raises ValueError."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tool calls string is not valid JSON: {exc}") from None
        if not isinstance(value, list):
            raise ValueError(f"tool calls JSON must be a list, got {type(value).__name__}")
    if not isinstance(value, (list, tuple)):
        raise ValueError("tool calls must be a list of {toolName, paramList}, a JSON string of one, "
                         f"or an OpenAI tool_calls list; got {type(value).__name__}")
    calls = []
    for i, item in enumerate(value):
        if isinstance(item, Mapping) and "toolName" in item:
            calls.append(_seed_call(item, i))
        elif isinstance(item, Mapping) and "function" in item:
            calls.append(_from_openai_call(item, i))
        else:
            raise ValueError(f"tool call {i} has neither 'toolName' nor an OpenAI 'function': {item!r:.200}")
    return calls


def _seed_call(item: Mapping[str, Any], index: int) -> ToolCall:
    name = item["toolName"]
    if not isinstance(name, str):
        raise ValueError(f"tool call {index}: toolName must be a string, got {type(name).__name__}")
    params = item.get("paramList")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ValueError(f"tool call {index} ({name}): paramList must be an object, got {type(params).__name__}")
    return {"toolName": name, "paramList": dict(params)}


def _from_openai_call(call: Any, index: int) -> ToolCall:
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or call.get("type", "function") != "function":
        raise ValueError(f"tool call {index} is not an OpenAI function call: {call!r:.200}")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"tool call {index} has no function name: {call!r:.200}")
    return {"toolName": name, "paramList": _arguments(function.get("arguments"))}


def _arguments(arguments: Any) -> dict[str, Any]:
    if arguments is None:
        return {}
    if isinstance(arguments, Mapping):  # some clients hand arguments over already decoded
        return dict(arguments)
    if not isinstance(arguments, str):
        return {RAW_ARGUMENTS: repr(arguments)}
    if not arguments.strip():  # servers send "" for a call without arguments
        return {}
    try:
        decoded = json.loads(arguments)
    except json.JSONDecodeError:
        return {RAW_ARGUMENTS: arguments}
    return decoded if isinstance(decoded, dict) else {RAW_ARGUMENTS: arguments}


# ---------------------------------------------------------------------------- normalisation

def normalise_value(tool: str, param: str, value: Any) -> str:
    """A parameter value as the seed's comparable string.

    A string is kept as is; a list is sorted by (length, string) and JSON-dumped; a dict has
    its top-level keys sorted and is JSON-dumped (nested dicts and lists keep their order,
    as in the seed); anything else is ``str(value)`` (``True``, ``3``, ``2.5``, ``None``).
    JSON uses ``json.dumps`` defaults (ASCII escapes, ", " and ": "), as the seed does.
    The seed has no per-tool value rule: ``tool`` and ``param`` only name the value."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return json.dumps(sorted(value, key=_list_sort_key), default=str)
    if isinstance(value, dict):
        return json.dumps({k: value[k] for k in sorted(value, key=str)}, default=str)
    return str(value)


def _list_sort_key(item: Any) -> tuple[int, int, str]:
    if isinstance(item, str):
        return 0, len(item), item
    # seed: key (len(x), x) raises on numbers and on equal-length dicts; order those by their
    # JSON text instead, which keeps "same items in any order" equal
    text = json.dumps(item, default=str)
    return 1, len(text), text


def param_keys(call: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (``toolName-param``, normalised value) pairs a call is scored on at parameter level.

    The seed's key is ``f"{group}:{value}"``. One pair per parameter, plus for
    :data:`TYPED_VALUE_KEYS` tools whose type is one of the listed kinds and that have a
    ``value``, the pair (``toolName-typeParam-kind``, value). A call without parameters
    yields none: the seed leaves such calls out of parameter metrics."""
    tool = call["toolName"]
    params = call.get("paramList")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ValueError(f"paramList of {tool!r} must be an object, got {type(params).__name__}")
    keys = [(f"{tool}-{name}", normalise_value(tool, str(name), value)) for name, value in params.items()]
    typed = TYPED_VALUE_KEYS.get(tool)
    if typed is not None:
        type_param, kinds = typed
        kind = params.get(type_param)
        if kind in kinds and "value" in params:
            keys.append((f"{tool}-{type_param}-{kind}", normalise_value(tool, "value", params["value"])))
    return keys


# ---------------------------------------------------------------------------- metrics

def tool_metrics(labels: Sequence[list[ToolCall]], predictions: Sequence[list[ToolCall]],
                 negative: bool = False) -> dict[str, Any]:
    """Name-level precision, recall and F1 per tool, micro and macro.

    Per sample and tool, hits are ``min(label count, prediction count)``; counts add up
    over samples. With ``negative``, a sample whose label is empty counts one label of
    ``__NEGATIVE__``, an empty prediction one prediction, both empty one hit. A 0/0 ratio
    is 0. Micro pools all tools' counts; macro is the plain mean over every tool seen in
    labels or predictions (``__NEGATIVE__`` included; a tool only ever predicted adds 0).
    No tool at all gives 0 for every average.

    Returns ``{"per_tool": {tool: row}, "micro": row, "macro": {precision, recall, f1}}``
    where a row has precision, recall, f1, support (label count), predicted, hits."""
    _check(labels, predictions)
    counts: dict[str, list[int]] = {}
    for label, pred in zip(labels, predictions):
        if negative and (not label or not pred):
            _add(counts, NEGATIVE_TOOL, int(not label), int(not pred), int(not label and not pred))
        label_tools = Counter(call["toolName"] for call in label)
        pred_tools = Counter(call["toolName"] for call in pred)
        for tool in label_tools.keys() | pred_tools.keys():
            _add(counts, tool, label_tools[tool], pred_tools[tool], min(label_tools[tool], pred_tools[tool]))
    return _table(counts, "per_tool")


def param_metrics(labels: Sequence[list[ToolCall]], predictions: Sequence[list[ToolCall]]) -> dict[str, Any]:
    """Parameter-level precision, recall and F1 per ``toolName-param`` group, micro and macro.

    Keys are ``toolName-param:value`` with :func:`normalise_value` values (see
    :func:`param_keys`); per sample, a key's hits are ``min(label count, prediction
    count)`` and they add up in the key's ``toolName-param`` group. No ``__NEGATIVE__``;
    calls without parameters do not count. Averages as in :func:`tool_metrics`.

    Returns ``{"per_param": {group: row}, "micro": row, "macro": {...}}``."""
    _check(labels, predictions)
    counts: dict[str, list[int]] = {}
    for label, pred in zip(labels, predictions):
        label_keys = Counter(key for call in label for key in param_keys(call))
        pred_keys = Counter(key for call in pred for key in param_keys(call))
        # seed: its loop adds a hit for every key of the shorter list found in the longer
        # one, so a key repeated on the shorter side can hit more often than it occurs on
        # the longer one (precision above 1); min of counts is its stated rule
        for key in label_keys.keys() | pred_keys.keys():
            _add(counts, key[0], label_keys[key], pred_keys[key], min(label_keys[key], pred_keys[key]))
    return _table(counts, "per_param")


def strict_match(labels: Sequence[list[ToolCall]], predictions: Sequence[list[ToolCall]]) -> dict[str, Any]:
    """Share of samples whose predicted calls equal the labelled calls exactly.

    "Strict": the prediction has the same number of calls and they equal the label's calls
    as a multiset of whole call dicts, compared with ``==`` on the raw values (no
    normalisation: ``["a", "b"]`` and ``["b", "a"]`` differ, so do a missing ``paramList``
    and ``{}``), in any order. Samples with one labelled call are single-tool, more than
    one multi-tool; samples with an empty label are in neither and not in the overall
    rate. A rate with no samples is None.

    Returns the rates ``strict_match`` (single and multi together), ``strict_match_single``,
    ``strict_match_multi`` and the counts ``single_hits``, ``single_total``,
    ``multi_hits``, ``multi_total``."""
    _check(labels, predictions)
    hits = {"single": 0, "multi": 0}
    totals = {"single": 0, "multi": 0}
    for label, pred in zip(labels, predictions):
        if not label:
            continue
        kind = "single" if len(label) == 1 else "multi"
        totals[kind] += 1
        # seed: it sorts multi-tool calls by toolName only (stable), so two calls of one
        # tool in swapped order fail; the sort is there to ignore order, so ignore it fully
        hits[kind] += len(pred) == len(label) and _same_calls(label, pred)
    return {
        "strict_match": _rate(hits["single"] + hits["multi"], totals["single"] + totals["multi"]),
        "strict_match_single": _rate(hits["single"], totals["single"]),
        "strict_match_multi": _rate(hits["multi"], totals["multi"]),
        "single_hits": hits["single"], "single_total": totals["single"],
        "multi_hits": hits["multi"], "multi_total": totals["multi"],
    }


def toolcall_report(labels: Sequence[list[ToolCall]], predictions: Sequence[list[ToolCall]],
                    negative: bool = False) -> dict[str, Any]:
    """All tool-call metrics as flat suite metrics plus tables for reports.

    Flat: ``{tool,param}_{precision,recall,f1}_{micro,macro}``, ``strict_match``,
    ``strict_match_single``, ``strict_match_multi`` (floats; a strict rate may be None).
    Nested: ``per_tool`` and ``per_param_tool`` (rows as in :func:`tool_metrics`) and
    ``strict_counts`` (hits and totals of single- and multi-tool samples)."""
    tools = tool_metrics(labels, predictions, negative)
    params = param_metrics(labels, predictions)
    strict = strict_match(labels, predictions)
    report: dict[str, Any] = {}
    for prefix, table in (("tool", tools), ("param", params)):
        for average in ("micro", "macro"):
            for stat in ("precision", "recall", "f1"):
                report[f"{prefix}_{stat}_{average}"] = table[average][stat]
    for name in ("strict_match", "strict_match_single", "strict_match_multi"):
        report[name] = strict[name]
    report["per_tool"] = tools["per_tool"]
    report["per_param_tool"] = params["per_param"]
    report["strict_counts"] = {k: strict[k] for k in ("single_hits", "single_total", "multi_hits", "multi_total")}
    return report


# ---------------------------------------------------------------------------- helpers

def _check(labels: Samples, predictions: Samples) -> None:
    """The seed's input errors, plus the shape its name-level metric insists on."""
    if len(labels) != len(predictions):
        raise ValueError(f"labels and predictions differ in length: {len(labels)} vs {len(predictions)}")
    if not labels:
        raise ValueError("labels and predictions are empty: nothing to score")
    for side, samples in (("labels", labels), ("predictions", predictions)):
        for i, sample in enumerate(samples):
            if not isinstance(sample, (list, tuple)):
                raise ValueError(f"{side}[{i}] must be a list of tool calls, got {type(sample).__name__}")
            for j, call in enumerate(sample):
                if not isinstance(call, Mapping) or not isinstance(call.get("toolName"), str):
                    raise ValueError(f"{side}[{i}][{j}] must be a dict with a string 'toolName': {call!r:.200}")


def _add(counts: dict[str, list[int]], key: str, label: int, pred: int, hits: int) -> None:
    row = counts.setdefault(key, [0, 0, 0])
    row[0] += label
    row[1] += pred
    row[2] += hits


def _table(counts: Mapping[str, list[int]], rows_name: str) -> dict[str, Any]:
    # sorted keys and fsum: the same samples in any order give bit-identical averages
    rows = {key: _row(*counts[key]) for key in sorted(counts)}
    total = [sum(column) for column in zip(*counts.values())] or [0, 0, 0]
    n = len(rows)
    macro = {stat: math.fsum(row[stat] for row in rows.values()) / n if n else 0.0
             for stat in ("precision", "recall", "f1")}
    return {rows_name: rows, "micro": _row(*total), "macro": macro}


def _row(label: int, pred: int, hits: int) -> dict[str, Any]:
    precision = hits / pred if pred else 0.0
    recall = hits / label if label else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": label, "predicted": pred, "hits": hits}


def _same_calls(label: Sequence[Mapping[str, Any]], pred: Sequence[Mapping[str, Any]]) -> bool:
    # greedy matching is exact here: == on calls is an equivalence relation
    rest = list(pred)
    for call in label:
        for i, other in enumerate(rest):
            if call == other:
                del rest[i]
                break
        else:
            return False
    return not rest


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None
