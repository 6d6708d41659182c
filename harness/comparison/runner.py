"""The comparisons of one run: who is compared against whom, the pairs (computed once, for gates
and reports alike), comparison gates' verdicts, and the report's ``comparison`` block.

In a run of several models each model is compared against the reference model (``--llm-reference``,
default the first); with ``--llm-baseline`` every model of the run is compared against the saved
baseline instead. A suite with models of its own (``model: {train: <job>}``) compares them among
themselves whatever the run's options say: ``<job>`` against ``<job>-initial`` (with ``compare:
false``, the trained model alone, against the baseline when there is one)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Sequence

from harness.comparison.baseline import Baseline, BaselineError
from harness.comparison.pairing import Arm
from harness.gates import Gate, base_metric
from harness.results import CaseResult, GateResult
from harness.suite import Suite

if TYPE_CHECKING:  # numpy and scipy load when a comparison is made, not with the plugin
    from harness.comparison.compare import PairComparison



def comparison_options(config: Any) -> tuple[str | None, str | None]:
    """``--llm-reference`` and ``--llm-baseline`` (or ini ``llm_reference``, ``llm_baseline``); None when unset."""

    def value(name: str) -> str | None:
        return config.getoption(name, None) or config.getini(name) or None

    return value("llm_reference"), value("llm_baseline")


def reference_model(models: Sequence[str], chosen: str | None, with_baseline: bool) -> str | None:
    """The model the others are compared against: none with a baseline or a single model."""
    if with_baseline or len(models) < 2:
        return None
    return chosen or models[0]




class Comparisons:
    """What a run compares (see the module docstring)."""

    def __init__(self, models: Sequence[str], reference: str | None = None, baseline: Baseline | None = None,
                 resamples: int | None = None, seed: int | None = None) -> None:
        self.models = list(models)
        self.baseline = baseline
        self.reference = reference_model(self.models, reference, baseline is not None)
        # None: the library's defaults, read when a comparison is made (numpy loads then, not with the plugin)
        self._resamples, self._seed = resamples, seed
        self._pairs: dict[tuple[str, str], PairComparison] = {}
        self._suite_references: dict[str, str] = {}  # suite -> its own reference model (model: {train: ...})
        self._lock = threading.Lock()

    @property
    def resamples(self) -> int:
        from harness.scoring.stats import RESAMPLES

        return RESAMPLES if self._resamples is None else self._resamples

    @property
    def seed(self) -> int:
        from harness.scoring.stats import SEED

        return SEED if self._seed is None else self._seed

    @property
    def active(self) -> bool:
        """Whether the run's models are compared (suites with models of their own: :meth:`active_for`)."""
        return self.baseline is not None or len(self.models) > 1

    def active_for(self, suite: Suite | None) -> bool:
        """Whether the models of ``suite`` are compared with something."""
        trained = getattr(suite, "trained", None)
        if trained is not None:
            return trained.compare or self.baseline is not None
        return self.active

    def reference_of(self, model: str, suite: Suite | None = None) -> str | None:
        """The model ``model`` is compared against on ``suite``; None: compared against the baseline, or not
        at all. A suite's own models answer for themselves (``<job>`` against ``<job>-initial``)."""
        trained = getattr(suite, "trained", None)
        if trained is not None:
            return trained.reference_of(model)
        return None if model == self.reference else self.reference

    def compared(self, model: str, suite: Suite | None = None) -> bool:
        trained = getattr(suite, "trained", None)
        if trained is not None and trained.compare:
            return trained.reference_of(model) is not None
        return self.baseline is not None or self.reference_of(model, suite) is not None

    def pair(self, suite: Suite, model: str, main: str, results: Sequence[CaseResult],
             reference_results: Sequence[CaseResult] | None) -> "PairComparison":
        """``model``'s clean cases of a suite against its reference's (computed once)."""
        from harness.comparison.compare import compare_suite
        key = (suite.name, model)
        with self._lock:
            if key in self._pairs:
                return self._pairs[key]
        clean = [r for r in results if r.attack is None]
        reference = self.reference_of(model, suite)
        if reference is None and self.baseline is not None:
            pair = self._against_baseline(suite, model, main, clean)
        else:
            assert reference_results is not None and reference is not None
            ref = [r for r in reference_results if r.attack is None]
            pair = compare_suite(suite, Arm.of_run(reference, ref), Arm.of_run(model, clean), main,
                                 self.resamples, self.seed)
        with self._lock:
            if getattr(suite, "trained", None) is not None and reference is not None:
                self._suite_references[suite.name] = reference
            return self._pairs.setdefault(key, pair)

    def add(self, pair: "PairComparison") -> None:
        """A pair made elsewhere (the comparison CLI), for the block."""
        with self._lock:
            self._pairs[(pair.suite, f"{pair.candidate}\0{len(self._pairs)}")] = pair

    def _against_baseline(self, suite: Suite, model: str, main: str, clean: list[CaseResult]) -> "PairComparison":
        from harness.comparison.compare import compare_suite, refused

        assert self.baseline is not None
        try:
            entry = self.baseline.entry(suite.name, model)
        except BaselineError as exc:
            return refused(suite.name, "baseline", model, str(exc))
        name = f"baseline:{entry['model']}"
        why = self.baseline.refusal(suite, entry)
        if why is not None:
            return refused(suite.name, name, model, why)
        pair = compare_suite(suite, self.baseline.arm(entry), Arm.of_run(model, clean), main, self.resamples,
                             self.seed)
        pair.warnings.extend(self.baseline.environment_warnings())
        return pair

    def judge(self, gate: Gate, pair: "PairComparison | None", suite_file: str, missing: str | None = None) -> GateResult:
        """A comparison gate's verdict. ``delta(m) >= x`` (or ``>``) is judged on the interval's lower bound
        (the whole interval must clear x: non-inferiority), ``delta(m) <= x`` (or ``<``) on its upper bound."""
        base = dict(expr=gate.expr, metric=gate.metric, op=gate.op, threshold=gate.threshold)
        if pair is None:
            why = missing or (f"{suite_file}: gate '{gate.expr}' compares two arms: run a second model "
                              f"(--llm-model A --llm-model B) or against a saved run (--llm-baseline PATH)")
            return GateResult(**base, value=None, status="failed", reason=why)
        if pair.refused:
            return GateResult(**base, value=None, status="failed", reason=f"comparison refused: {pair.refused}")
        figures = pair.figures
        metric = gate.metric
        if metric not in figures:
            known = sorted({base_metric(m) for m in figures if "(" in m})
            return GateResult(**base, value=None, status="failed",
                              reason=f"{suite_file}: gate '{gate.expr}': unknown metric {base_metric(metric)!r}; "
                                     f"this suite compares: {', '.join(known) or 'nothing (no paired case)'}")
        judged = metric
        if metric.startswith("delta(") and metric.endswith(")"):
            judged = metric + (".lower" if gate.op in (">=", ">") else ".upper" if gate.op in ("<=", "<") else "")
        value = figures.get(judged)
        against = f"{pair.candidate} - {pair.reference}"
        if value is None:
            from harness.suite_metrics import is_timing_metric

            if is_timing_metric(base_metric(metric)):
                return GateResult(**base, value=None, status="skipped",
                                  reason=f"{base_metric(metric)} not measured on both sides (replies from the "
                                         f"response cache carry no latency): not compared")
            return GateResult(**base, value=None, status="failed",
                              reason=f"{judged} has no value ({against}: no case could be judged)")
        shown = f"{judged} = {value:.4g}"
        if judged != metric:
            point = figures.get(metric)
            interval = (figures.get(metric + ".lower"), figures.get(metric + ".upper"))
            shown = (f"{metric} = {_num(point)} [{_num(interval[0])}, {_num(interval[1])}], "
                     f"judged on its {'lower' if judged.endswith('.lower') else 'upper'} bound {value:.4g}")
        status = "passed" if gate.holds(value) else "failed"
        verb = f" {gate.op}" if status == "passed" else f", needs {gate.op}"
        return GateResult(**base, value=value, status=status,
                          reason=f"{shown}{verb} {gate.threshold:g} ({against}, {len(pair.pairing.reference)} paired)")

    def block(self) -> dict[str, Any] | None:
        """The report's ``comparison`` block: every pair, with Holm-adjusted p-values over the family
        (each suite's main metric and every metric a comparison gate names, over every pair)."""
        with self._lock:
            pairs = list(self._pairs.values())
        if not pairs:
            return None
        # here, not above: a run with nothing compared does not import numpy for it
        from harness.comparison.stats import holm
        from harness.scoring.stats import CONFIDENCE

        family = [row for pair in pairs for row in pair.rows if row.get("family") and row["p"] is not None]
        for row, adjusted in zip(family, holm([row["p"] for row in family])):
            row["p_holm"] = adjusted
        with self._lock:
            own = dict(self._suite_references)
        # a suite's own models are compared among themselves: the run's reference is not theirs
        run_pairs = [p for p in pairs if p.suite not in own]
        if self.baseline is not None and run_pairs:
            reference = self.baseline.describe()
        else:
            # only suites' own pairs: their reference, when they share one
            owned = set(own.values())
            name = self.reference if run_pairs else (owned.pop() if len(owned) == 1 else None)
            reference = {"kind": "model", "name": name, "path": None, "reason": None, "created": None,
                         "git_commit": None}
        if own:
            reference["suites"] = own  # suite -> the reference of its own models (<job>-initial)
        pairs.sort(key=lambda p: (p.suite, self.models.index(p.candidate) if p.candidate in self.models else 0))
        return {"reference": reference, "resamples": self.resamples, "confidence": CONFIDENCE, "seed": self.seed,
                "family": {"size": len(family), "method": "holm",
                           "members": "each suite's main metric and every metric a comparison gate names"},
                "pairs": [pair.to_dict() for pair in pairs]}


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
