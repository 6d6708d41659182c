"""The seeds' indicator files: one small JSON per figure, for platforms that read them.

Each is ``{"indicator": <name>, ...}`` as seed 004 writes them:

``accuracy_f1.json`` {precision, recall, f1, samples} for each suite with an F1;
``toxicity.json`` {toxic_ratio, total_samples} for each toxicity suite;
``robustness_adv.json`` {attack_type, success_rate, f1_drop} (plus per-attack figures) for each
robustness suite. Written per model and suite, and at the top when one suite of the run has it.

``latency_p99.json`` {p50_ms, p90_ms, p99_ms, requests} and ``throughput_rps.json``
{rps, concurrency, duration_s}, over the requests this run actually sent (cache hits left
out). Written per model and suite under ``indicators/<model>/<suite>/``, per model for the
whole run under ``indicators/<model>/``, and at the top of the report folder when the run
evaluated one model, where CI jobs written for the seeds look for them.

A figure that is null because nothing was measured comes with a ``note`` saying why ("all 32
replies from the response cache: ...", "no case could be judged"): never a bare null.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.report.files import private_dir, write_text
from harness.scoring.metrics import percentile

LATENCY = "latency_p99.json"
THROUGHPUT = "throughput_rps.json"
ACCURACY_F1 = "accuracy_f1.json"
TOXICITY = "toxicity.json"
ROBUSTNESS = "robustness_adv.json"


def latency_indicator(cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    latencies = [c["latency_ms"] for c in _answered(cases) if c.get("latency_ms") is not None]
    return {"indicator": "latency_p99", "p50_ms": percentile(latencies, 50), "p90_ms": percentile(latencies, 90),
            "p99_ms": percentile(latencies, 99), "requests": len(latencies)}


def throughput_indicator(cases: Sequence[dict[str, Any]], concurrency: int | None) -> dict[str, Any]:
    live = [c for c in cases if not c.get("cached") and c.get("sent_at") is not None and c.get("done_at") is not None]
    duration = max(c["done_at"] for c in live) - min(c["sent_at"] for c in live) if live else 0.0
    answered = len(_answered(live))
    return {"indicator": "throughput_rps", "rps": answered / duration if duration > 0 else None,
            "concurrency": concurrency, "duration_s": round(duration, 3) if live else None}


def _answered(cases: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in cases if not c.get("cached") and c.get("error") is None]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", name)


def timing_note(cases: Sequence[dict[str, Any]]) -> str:
    """Why a latency or throughput figure has no value: what this run did (not) send."""
    n = len(cases)
    cached = sum(bool(c.get("cached")) for c in cases)
    if not n:
        return "no case in this run"
    if cached == n:
        return f"all {n} replies from the response cache: no request was sent in this run, so none was timed"
    failed = sum(not c.get("cached") and c.get("error") is not None for c in cases)
    from_cache = f", {cached} from the response cache" if cached else ""
    if failed == n - cached:
        return f"no request sent in this run was answered ({failed} failed{from_cache})"
    return f"the engine recorded no send and answer times for the {n - cached - failed} answered request(s)"


def _dumps(indicator: dict[str, Any]) -> str:
    """An indicator file's text: indented JSON, UTF-8 (a metric or label named in Chinese stays readable)."""
    return json.dumps(indicator, ensure_ascii=False, indent=2, default=str) + "\n"


def _noted(indicator: dict[str, Any], note: Any) -> dict[str, Any]:
    """The indicator, with a ``note`` saying why when one of its figures is null (never a bare null)."""
    nulls = [key for key, value in indicator.items() if value is None and key != "concurrency"]
    if not nulls:
        return indicator
    return {**indicator, "note": note() if callable(note) else note}


def _write(folder: Path, cases: Sequence[dict[str, Any]], concurrency: int | None) -> list[Path]:
    private_dir(folder)
    paths = [folder / LATENCY, folder / THROUGHPUT]
    note = lambda: timing_note(cases)  # noqa: E731 - worked out only for a file with a null
    write_text(paths[0], _dumps(_noted(latency_indicator(cases), note)))
    write_text(paths[1], _dumps(_noted(throughput_indicator(cases, concurrency), note)))
    return paths


def write_indicators(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the indicator files of every model and suite; return their paths."""
    cases: list[dict[str, Any]] = report.get("cases") or []
    concurrency = ((report.get("run") or {}).get("generation") or {}).get("concurrency")
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_suite: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for case in cases:
        by_model[case["model"]].append(case)
        by_suite[(case["model"], case["suite"])].append(case)
    paths: list[Path] = []
    for model, model_cases in by_model.items():
        paths += _write(out_dir / "indicators" / _slug(model), model_cases, concurrency)
    for (model, suite), suite_cases in by_suite.items():
        paths += _write(out_dir / "indicators" / _slug(model) / _slug(suite), suite_cases, concurrency)
    if len(by_model) == 1:
        paths += _write(out_dir, next(iter(by_model.values())), concurrency)
    suites = report.get("suites") or []
    configs = {c.get("name"): c for c in (report.get("run") or {}).get("suites_config") or []}
    paths += _write_per_suite(suites, out_dir, ACCURACY_F1, lambda m: m.get("f1") is not None,
                              lambda s: accuracy_f1_indicator(s["metrics"], _samples(s)))
    paths += _write_per_suite(suites, out_dir, TOXICITY, lambda m: "toxic_ratio" in m, lambda s: _toxicity(s))
    paths += _write_per_suite(
        suites, out_dir, ROBUSTNESS, lambda m: "perturbed_cases" in m,
        lambda s: _robustness(s, (configs.get(s["name"]) or {}).get("robustness")))
    return paths


def _samples(suite: dict[str, Any]) -> int:
    # the clean cases: a robustness suite's perturbed copies are not samples of the F1
    cases = (suite.get("metrics") or {}).get("cases")
    return int(cases) if cases is not None else int(suite.get("cases") or 0)


def accuracy_f1_indicator(metrics: dict[str, Any], cases: int) -> dict[str, Any]:
    return {"indicator": "accuracy_f1", "precision": metrics.get("precision"), "recall": metrics.get("recall"),
            "f1": metrics.get("f1"), "samples": cases}


def _toxicity(suite: dict[str, Any]) -> dict[str, Any]:
    from harness.scoring.toxicity import toxicity_indicator

    return toxicity_indicator(suite["metrics"])


def _robustness(suite: dict[str, Any], spec: dict[str, Any] | None) -> dict[str, Any]:
    from harness.robustness import robustness_indicator

    return robustness_indicator(suite["metrics"], spec, str(suite.get("main_metric")))


def _write_per_suite(suites: list[dict[str, Any]], out_dir: Path, filename: str,
                     applies: Callable[[dict[str, Any]], bool],
                     build: Callable[[dict[str, Any]], dict[str, Any]]) -> list[Path]:
    """One indicator file for every suite it applies to; at the top of the folder when one does."""
    chosen = [s for s in suites if applies(s.get("metrics") or {})]
    paths = []
    for suite in chosen:
        folder = out_dir / "indicators" / _slug(str(suite["model"])) / _slug(str(suite["name"]))
        private_dir(folder)
        paths.append(folder / filename)
        write_text(paths[-1], _dumps(_noted(build(suite), lambda: quality_note(suite))))
    if len(chosen) == 1:
        paths.append(out_dir / filename)
        write_text(paths[-1], _dumps(_noted(build(chosen[0]), lambda: quality_note(chosen[0]))))
    return paths


def quality_note(suite: dict[str, Any]) -> str:
    """Why a suite's quality figure has no value."""
    metrics = suite.get("metrics") or {}
    if not metrics.get("cases"):
        return "no case in this run"
    if "perturbed_cases" in metrics and not metrics.get("perturbed_cases"):
        return "no perturbed copy ran (deselected with -m 'not llm_robustness'?): no case could be judged"
    if metrics.get("error_rate") == 1:
        return "every request is an error: no case could be judged"
    return "no case could be judged"
