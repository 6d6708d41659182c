"""The seeds' indicator files: one small JSON per figure, for platforms that read them.

``accuracy_f1.json`` {precision, recall, f1, samples} for each suite with an F1.

``latency_p99.json`` {p50_ms, p90_ms, p99_ms, requests} and ``throughput_rps.json``
{rps, concurrency, duration_s}, over the requests this run actually sent (cache hits left
out). Written per model and suite under ``indicators/<model>/<suite>/``, per model for the
whole run under ``indicators/<model>/``, and at the top of the report folder when the run
evaluated one model, where CI jobs written for the seeds look for them.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from harness.scoring.metrics import percentile

LATENCY = "latency_p99.json"
THROUGHPUT = "throughput_rps.json"
ACCURACY_F1 = "accuracy_f1.json"


def latency_indicator(cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    latencies = [c["latency_ms"] for c in _answered(cases) if c.get("latency_ms") is not None]
    return {"p50_ms": percentile(latencies, 50), "p90_ms": percentile(latencies, 90),
            "p99_ms": percentile(latencies, 99), "requests": len(latencies)}


def throughput_indicator(cases: Sequence[dict[str, Any]], concurrency: int | None) -> dict[str, Any]:
    live = [c for c in cases if not c.get("cached") and c.get("sent_at") is not None and c.get("done_at") is not None]
    duration = max(c["done_at"] for c in live) - min(c["sent_at"] for c in live) if live else 0.0
    answered = len(_answered(live))
    return {"rps": answered / duration if duration > 0 else None, "concurrency": concurrency,
            "duration_s": round(duration, 3) if live else None}


def _answered(cases: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in cases if not c.get("cached") and c.get("error") is None]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", name)


def _write(folder: Path, cases: Sequence[dict[str, Any]], concurrency: int | None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / LATENCY, folder / THROUGHPUT]
    paths[0].write_text(json.dumps(latency_indicator(cases), indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(json.dumps(throughput_indicator(cases, concurrency), indent=2) + "\n", encoding="utf-8")
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
    paths += _write_accuracy_f1(report.get("suites") or [], out_dir)
    return paths


def accuracy_f1_indicator(metrics: dict[str, Any], cases: int) -> dict[str, Any]:
    return {"precision": metrics.get("precision"), "recall": metrics.get("recall"), "f1": metrics.get("f1"),
            "samples": cases}


def _write_accuracy_f1(suites: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """accuracy_f1.json for every suite that has an F1 (classification, tool calls); at the top when one does."""
    scored = [s for s in suites if (s.get("metrics") or {}).get("f1") is not None]
    paths = []
    for suite in scored:
        folder = out_dir / "indicators" / _slug(str(suite["model"])) / _slug(str(suite["name"]))
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(folder / ACCURACY_F1)
        paths[-1].write_text(json.dumps(accuracy_f1_indicator(suite["metrics"], suite.get("cases", 0)), indent=2)
                             + "\n", encoding="utf-8")
    if len(scored) == 1:
        paths.append(out_dir / ACCURACY_F1)
        paths[-1].write_text(json.dumps(accuracy_f1_indicator(scored[0]["metrics"], scored[0].get("cases", 0)),
                                        indent=2) + "\n", encoding="utf-8")
    return paths
