"""The run's plan, made once when collection is known: which requests to send, and which cases
each selected gate needs.

A gate judges its whole suite. Cases it needs that were not selected as items (``-m llm_gate``,
``--lf`` after a failed gate, ``-k gate``) are still generated and scored, by the controller,
so the gate never passes on a subset. A gate on a robustness metric needs the perturbed copies
too; the others need the clean cases. The plan waits for every selected case item as well,
so a suite's figures never depend on which worker finished first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pytest

from harness.collect import CaseItem, GateItem, case_item_name, gate_item_name, relpath
from harness.engines.client import Request
from harness.gates import parse_gate
from harness.result_store import RunResults
from harness.results import SuiteResult
from harness.suite import Case, Suite, SuiteError, suite_files_in, suite_for_dataset, suites_in

@dataclass(frozen=True, slots=True)
class CaseRef:
    nodeid: str
    suite: Suite
    case: Case
    model: str
    dataset: str  # relative to the root, as reports show it


@dataclass(frozen=True, slots=True)
class GateRef:
    nodeid: str
    suite: Suite
    expr: str
    model: str


@dataclass(slots=True, eq=False)
class Task:
    """One request to send: for a case item, or for a case a selected gate needs.

    Once its final reply is on the board (and in the cache), the controller lets the request go
    (:meth:`release`): a million built requests were half a gigabyte. The prompt as sent stays, for
    the case's result."""

    ref: CaseRef
    request: Request | None  # None: it could not be built (``error`` says why), or released once answered
    error: str | None = None
    prompt: Any = None  # the request's prompt, kept after the request is released
    released: bool = False

    def __post_init__(self) -> None:
        if self.request is not None and self.prompt is None:
            self.prompt = self.request.prompt

    def release(self) -> None:
        """The reply is final: drop the request, keep its prompt."""
        if self.request is not None:
            self.request = None
            self.released = True

    @property
    def nodeid(self) -> str:
        return self.ref.nodeid

    @property
    def model(self) -> str:
        return self.ref.model


@dataclass
class SuiteRun:
    """One suite on one model: its cases, the selected gates, and the results gathered so far."""

    suite: Suite
    model: str
    total: int  # cases of the suite (copies included) on this model
    gates: dict[str, str] = field(default_factory=dict)  # selected gate node id -> expression
    missing: set[str] = field(default_factory=set)  # needed case node ids without a result yet
    missing_size: int = 0  # the most ids ``missing`` held since its set was last made anew
    results: RunResults = field(default_factory=RunResults)  # on disk once the run spools them
    result: SuiteResult | None = None  # set once judged
    reference_for: bool = False  # another model's comparison gates need this run complete
    compared: bool = False  # its comparison gates have their verdicts


@dataclass
class Plan:
    tasks: list[Task]  # selected case items in collection order, then the cases only gates need
    pulled: list[Task]  # the cases only gates need: scored by the controller
    runs: list[SuiteRun]
    run_of: dict[str, SuiteRun]  # case or gate node id -> its suite run
    by_id: dict[str, Task]  # every planned case by node id


def refs_from_items(items: Iterable[pytest.Item], root: Path) -> tuple[list[CaseRef], list[GateRef]]:
    cases, gates = [], []
    for item in items:
        if isinstance(item, CaseItem):
            cases.append(CaseRef(item.nodeid, item.suite, item.case, item.model, relpath(item.path, root)))
        elif isinstance(item, GateItem):
            gates.append(GateRef(item.nodeid, item.suite, item.expr, item.model))
    return cases, gates


def refs_from_ids(ids: Iterable[str], root: Path, models_of: Callable[[Suite], list[str]],
                  cases_for: Callable[[Suite, Path], list[Case]]) -> tuple[list[CaseRef], list[GateRef]]:
    """The items an xdist worker collected, rebuilt from their node ids (the controller collects nothing).

    ``models_of``: the models a suite runs on, as the workers' collection decided (harness.collect.suite_models);
    a suite of more than one model has the ``[model]`` suffix on its node ids."""
    wanted = list(ids)
    files = dict.fromkeys(n.split("::", 1)[0] for n in wanted if "::" in n)
    known: dict[str, CaseRef | GateRef] = {}
    for rel in files:
        path = root / rel
        try:
            if path.suffix == ".jsonl":
                suite = suite_for_dataset(path)
                if suite is None:
                    continue
                dataset = path.resolve()
                models = models_of(suite)
                multi = len(models) > 1
                for case in cases_for(suite, dataset):
                    for model in models:
                        nodeid = f"{rel}::{case_item_name(case.id, model, multi)}"
                        known[nodeid] = CaseRef(nodeid, suite, case, model, rel)
            elif path in suite_files_in(path.parent):
                for suite in suites_in(path.parent):
                    if suite.path != path.resolve():
                        continue
                    models = models_of(suite)
                    multi = len(models) > 1
                    for expr in suite.gates:
                        expr = parse_gate(expr).expr
                        for model in models:
                            nodeid = f"{rel}::{gate_item_name(expr, model, multi)}"
                            known[nodeid] = GateRef(nodeid, suite, expr, model)
        except SuiteError:
            continue  # the worker reported it as a collection error already
    cases = [r for n in wanted if isinstance(r := known.get(n), CaseRef)]
    gates = [r for n in wanted if isinstance(r := known.get(n), GateRef)]
    return cases, gates


def make_plan(cases: list[CaseRef], gates: list[GateRef], root: Path, models_of: Callable[[Suite], list[str]],
              cases_for: Callable[[Suite, Path], list[Case]],
              build: Callable[[CaseRef], Request],
              reference_of: Callable[[str, Suite], str | None] = lambda model, suite: None) -> Plan:
    """Group the selected items by suite and model and add the cases their gates need.

    A comparison gate (``delta(f1) >= -0.02``) also needs every clean case of the same suite on the
    model it is compared against (``reference_of(model, suite)``: a suite's own ``-initial`` model, or
    the run's reference). ``models_of``: the models a suite runs on (its node ids carry ``[model]`` when
    there are several)."""
    from harness.gates import is_comparison
    from harness.robustness import is_robustness_metric

    runs: dict[tuple[int, str], SuiteRun] = {}
    run_of: dict[str, SuiteRun] = {}

    def every(suite: Suite, model: str) -> Iterator[CaseRef]:
        """Every case of a suite on a model, made as it is read (a million cases never stand as a
        second list of references beside the selected ones)."""
        multi = len(models_of(suite)) > 1
        for dataset in suite.datasets:
            rel = relpath(dataset, root)
            for case in cases_for(suite, dataset):
                yield CaseRef(f"{rel}::{case_item_name(case.id, model, multi)}", suite, case, model, rel)

    def suite_run(suite: Suite, model: str) -> SuiteRun:
        key = (id(suite), model)
        if key not in runs:
            runs[key] = SuiteRun(suite, model, sum(len(cases_for(suite, dataset)) for dataset in suite.datasets))
        return runs[key]

    for ref in cases:
        run = suite_run(ref.suite, ref.model)
        run.missing.add(ref.nodeid)
        run_of[ref.nodeid] = run
    pulled_refs: list[CaseRef] = []

    def pull(run: SuiteRun, refs: Iterable[CaseRef], with_copies: bool) -> None:
        for ref in refs:
            # run_of holds every selected case already: no second set of a million ids
            if (ref.case.attack is None or with_copies) and ref.nodeid not in run_of:
                run.missing.add(ref.nodeid)
                run_of[ref.nodeid] = run
                pulled_refs.append(ref)

    for gate in gates:
        run = suite_run(gate.suite, gate.model)
        run.gates[gate.nodeid] = gate.expr
        run_of[gate.nodeid] = run
        metric = parse_gate(gate.expr).metric
        pull(run, every(gate.suite, gate.model), is_robustness_metric(metric))
        reference = reference_of(gate.model, gate.suite) if is_comparison(metric) else None
        if reference is not None:
            other = suite_run(gate.suite, reference)
            other.reference_for = True
            pull(other, every(gate.suite, reference), False)
    tasks = [_task(ref, build) for ref in [*cases, *pulled_refs]]
    pulled = tasks[len(cases):]
    return Plan(tasks, pulled, list(runs.values()), run_of, {t.nodeid: t for t in tasks})


def _task(ref: CaseRef, build: Callable[[CaseRef], Any]) -> Task:
    try:
        return Task(ref, build(ref))
    except Exception as exc:  # noqa: BLE001 - a case whose request cannot be built is an error, not a crash
        return Task(ref, None, f"request not built: {type(exc).__name__}: {exc}")
