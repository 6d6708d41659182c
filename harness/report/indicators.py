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
import math
import re
from array import array
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

from harness.report.files import private_dir, write_text
from harness.scoring.metrics import percentile

LATENCY = "latency_p99.json"
THROUGHPUT = "throughput_rps.json"
ACCURACY_F1 = "accuracy_f1.json"
TOXICITY = "toxicity.json"
ROBUSTNESS = "robustness_adv.json"


class Timings:
    """The columns the latency and throughput files are computed from, gathered in one pass over
    the cases (each read once, none kept): the answered requests' latencies, the counts, and the
    first send and last answer of the requests this run sent."""

    __slots__ = ("cases", "cached", "failed", "latencies", "live", "live_answered", "first_sent", "last_done")

    def __init__(self) -> None:
        self.cases = self.cached = self.failed = 0  # failed: sent in this run and errored
        self.latencies = array("d")  # answered in this run (cache hits left out)
        self.live = self.live_answered = 0  # sent in this run with send and answer times
        self.first_sent, self.last_done = math.inf, -math.inf

    @classmethod
    def of(cls, cases: Iterable[dict[str, Any]]) -> "Timings":
        timings = cls()
        for case in cases:
            timings.add(case)
        return timings

    def add(self, case: dict[str, Any]) -> None:
        self.cases += 1
        if case.get("cached"):
            self.cached += 1
            return
        ok = case.get("error") is None
        if not ok:
            self.failed += 1
        elif case.get("latency_ms") is not None:
            self.latencies.append(case["latency_ms"])
        sent, done = case.get("sent_at"), case.get("done_at")
        if sent is not None and done is not None:
            self.live += 1
            self.live_answered += ok
            self.first_sent = min(self.first_sent, sent)
            self.last_done = max(self.last_done, done)

    def latency(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {"indicator": "latency_p99", "p50_ms": percentile(ordered, 50), "p90_ms": percentile(ordered, 90),
                "p99_ms": percentile(ordered, 99), "requests": len(ordered)}

    def throughput(self, concurrency: int | None) -> dict[str, Any]:
        duration = self.last_done - self.first_sent if self.live else 0.0
        return {"indicator": "throughput_rps", "rps": self.live_answered / duration if duration > 0 else None,
                "concurrency": concurrency, "duration_s": round(duration, 3) if self.live else None}

    def note(self) -> str:
        """Why a latency or throughput figure has no value: what this run did (not) send."""
        n, cached, failed = self.cases, self.cached, self.failed
        if not n:
            return "no case in this run"
        if cached == n:
            return f"all {n} replies from the response cache: no request was sent in this run, so none was timed"
        from_cache = f", {cached} from the response cache" if cached else ""
        if failed == n - cached:
            return f"no request sent in this run was answered ({failed} failed{from_cache})"
        return f"the engine recorded no send and answer times for the {n - cached - failed} answered request(s)"


def latency_indicator(cases: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return Timings.of(cases).latency()


def throughput_indicator(cases: Iterable[dict[str, Any]], concurrency: int | None) -> dict[str, Any]:
    return Timings.of(cases).throughput(concurrency)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", name)


def _dumps(indicator: dict[str, Any]) -> str:
    """An indicator file's text: indented JSON, UTF-8 (a metric or label named in Chinese stays readable)."""
    return json.dumps(indicator, ensure_ascii=False, indent=2, default=str) + "\n"


def _noted(indicator: dict[str, Any], note: Any) -> dict[str, Any]:
    """The indicator, with a ``note`` saying why when one of its figures is null (never a bare null)."""
    nulls = [key for key, value in indicator.items() if value is None and key != "concurrency"]
    if not nulls:
        return indicator
    return {**indicator, "note": note() if callable(note) else note}


def _write(folder: Path, timings: Timings, concurrency: int | None) -> list[Path]:
    private_dir(folder)
    paths = [folder / LATENCY, folder / THROUGHPUT]
    write_text(paths[0], _dumps(_noted(timings.latency(), timings.note)))
    write_text(paths[1], _dumps(_noted(timings.throughput(concurrency), timings.note)))
    return paths


def write_indicators(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the indicator files of every model and suite; return their paths."""
    concurrency = ((report.get("run") or {}).get("generation") or {}).get("concurrency")
    # one pass, columns only: a million cases are read one at a time, none kept
    by_model: dict[str, Timings] = defaultdict(Timings)
    by_suite: dict[tuple[str, str], Timings] = defaultdict(Timings)
    for case in report.get("cases") or []:
        by_model[case["model"]].add(case)
        by_suite[(case["model"], case["suite"])].add(case)
    paths: list[Path] = []
    for model, timings in by_model.items():
        paths += _write(out_dir / "indicators" / _slug(model), timings, concurrency)
    for (model, suite), timings in by_suite.items():
        paths += _write(out_dir / "indicators" / _slug(model) / _slug(suite), timings, concurrency)
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
