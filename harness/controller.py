"""The controller's side of a run: plan and run generation, gather case results, judge gates.

Runs in the only process without xdist, and in the xdist controller with it, so metrics and
gates are computed once, on the complete set of results, whichever worker ran which case.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pytest
from _pytest.reports import TestReport

from harness.aggregate import judge_suite
from harness.collect import CaseItem, cases_of, item_name, suite_cases
from harness.cache import cache_key
from harness.board import Board
from harness.generation import Generation, Task, build_request
from harness.results import CaseResult, GateResult, SuiteResult
from harness.run import RunState
from harness.suite import Suite, SuiteError, suite_for_dataset


class Controller:
    def __init__(self, config: pytest.Config, state: RunState) -> None:
        self.config = config
        self.state = state
        self.root = config.rootpath
        self.started_at = datetime.now(timezone.utc)
        self.results: list[CaseResult] = []
        self.suite_results: list[SuiteResult] = []
        self.suites: dict[str, Suite] = {}  # by suite name
        self.generation: dict[str, Any] = {}
        self.planned = False
        self.report_path: Path | None = None
        self._keys: dict[str, tuple[str, str]] = {}  # node id -> (cache key, model)
        self._generation: Generation | None = None

    # -- generation -------------------------------------------------------------------------
    def plan_from_items(self, items: Iterable[pytest.Item]) -> list[Task]:
        return [Task(i.nodeid, i.suite, i.case, i.model) for i in items if isinstance(i, CaseItem)]

    def plan_from_ids(self, ids: Iterable[str]) -> list[Task]:
        """Rebuild the tasks of the items an xdist worker collected, from their node ids."""
        wanted = [nodeid for nodeid in ids if ".jsonl::" in nodeid]
        by_file: dict[str, None] = dict.fromkeys(n.split("::", 1)[0] for n in wanted)
        multi = len(self.state.models) > 1
        known: dict[str, Task] = {}
        for relpath in by_file:
            path = self.root / relpath
            try:
                suite = suite_for_dataset(path)
            except SuiteError:
                continue  # the worker reported this as a collection error already
            if suite is None:
                continue
            for case in cases_of(suite, path.resolve()):
                for model in self.state.model_names:
                    nodeid = f"{relpath}::{item_name(case.id, model, multi)}"
                    known[nodeid] = Task(nodeid, suite, case, model)
        return [known[n] for n in wanted if n in known]

    def generate(self, tasks: list[Task], writer: Any, board: Board) -> None:
        """Answer what the cache holds, start the engines the rest needs, start sending it.

        Returns once the first case is answered; the rest arrives on ``board`` while items run."""
        if self.planned or not tasks:
            return
        self.planned = True
        self.state.use_board(board)
        board.plan(t.nodeid for t in tasks)
        pending = self._from_cache(tasks, board, writer)
        self.generation = {"cases": len(tasks), "cached": len(tasks) - len(pending)}
        if not pending:
            board.finish()
            return
        models = list(dict.fromkeys(t.model for t in pending))
        clients = {model: self._client(model, writer) for model in models}
        settings = self.state.settings
        self._generation = Generation(pending, clients, settings.concurrency, board, self._to_cache,
                                      passes=settings.retry_passes, stream=settings.stream)
        if writer is not None:
            writer.line(f"llm-harness: sending {len(pending)} requests to {', '.join(models)}, "
                        f"at most {settings.concurrency} in flight")
        self._generation.start()
        try:
            self._generation.wait_first()
        except BaseException:
            self._generation.cancel()
            raise

    def finish_generation(self) -> None:
        """After the items: stop what is still being sent (-x, Ctrl-C), keep the run's figures."""
        generation = self._generation
        if generation is None:
            return
        if not generation.finished():
            generation.cancel()
        generation.join()
        self.generation.update(generation.stats())
        self._generation = None

    def _from_cache(self, tasks: list[Task], board: Board, writer: Any) -> list[Task]:
        """Put cached replies on the board; return the tasks still to send."""
        cache = self.state.response_cache()
        if cache is None:
            return tasks
        identities = {model: self.state.model_identity(model) for model in dict.fromkeys(t.model for t in tasks)}
        self._keys = {t.nodeid: (cache_key(identities[t.model], build_request(t.suite, t.case, t.model)), t.model)
                      for t in tasks}
        hits = cache.get_many(key for key, _ in self._keys.values())
        cached = [(t.nodeid, {**hits[self._keys[t.nodeid][0]], "cached": True}) for t in tasks
                  if self._keys[t.nodeid][0] in hits]
        board.put_many(cached)
        if cached and writer is not None:
            writer.line(f"llm-harness: {len(cached)} of {len(tasks)} replies from the cache ({cache.path})")
        return [t for t in tasks if self._keys[t.nodeid][0] not in hits]

    def _to_cache(self, replies: list[tuple[str, dict[str, Any]]]) -> None:
        """Successful replies go into the cache as they arrive: a killed run resumes."""
        cache = self.state.response_cache()
        if cache is not None:
            cache.put_many((*self._keys[nodeid], reply) for nodeid, reply in replies)

    def _client(self, model: str, writer: Any) -> Any:
        spec = self.state.spec(model)
        started = time.monotonic()
        loads = spec.managed or spec.in_process
        if loads and writer is not None:
            note = " (a first run also converts the model: 1-2 min)" if spec.engine == "bundled" else ""
            writer.line(f"llm-harness: starting {spec.engine} for {model}{note}")
        client = self.state.client(model)
        if loads and writer is not None:
            where = self.state.engine(model).get("base_url") or "in this process"
            writer.line(f"llm-harness: {model} ready at {where} in {time.monotonic() - started:.1f} s")
        return client

    # -- results ----------------------------------------------------------------------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        raw = getattr(report, "llm_case", None)
        if raw is not None and report.when == "call":
            self.results.append(CaseResult.from_dict(raw))

    def _suite_of(self, result: CaseResult) -> Suite | None:
        if result.suite not in self.suites:
            suite = suite_for_dataset(self.root / result.dataset)
            if suite is None:
                return None
            self.suites[result.suite] = suite
        return self.suites[result.suite]

    def judge(self) -> list[SuiteResult]:
        """Suite metrics and gates for every suite and model that has results."""
        # reports list cases in data order, whichever worker finished first
        models = {name: index for index, name in enumerate(self.state.model_names)}
        self.results.sort(key=lambda r: (r.suite, r.dataset, r.line, models.get(r.model, 0)))
        groups: dict[tuple[str, str], list[CaseResult]] = defaultdict(list)
        for result in self.results:
            groups[(result.suite, result.model)].append(result)
        totals: dict[str, int] = {}
        self.suite_results = []
        for (name, model), results in groups.items():
            suite = self._suite_of(results[0])
            if suite is None:
                continue
            if name not in totals:
                totals[name] = len(suite_cases(suite))
            self.suite_results.append(judge_suite(suite, model, results, totals[name]))
        return self.suite_results

    def suite_relpath(self, suite: Suite) -> str:
        return suite.path.relative_to(self.root).as_posix() if suite.path.is_relative_to(self.root) \
            else str(suite.path)

    def gate_nodeid(self, suite: Suite, gate: GateResult, model: str) -> str:
        tail = f"[{model}]" if len(self.state.models) > 1 else ""
        return f"{self.suite_relpath(suite)}::gate[{gate.expr}]{tail}"

    def emit_gates(self) -> None:
        """Each gate becomes a test outcome: terminal, JUnit XML and exit code see it."""
        for suite_result in self.suite_results:
            suite = self.suites[suite_result.name]
            for gate in suite_result.gates:
                nodeid = self.gate_nodeid(suite, gate, suite_result.model)
                emit_report(self.config, nodeid, self.suite_relpath(suite), gate, suite_result)


def emit_report(config: pytest.Config, nodeid: str, path: str, gate: GateResult, suite: SuiteResult) -> None:
    location = (path, None, nodeid.split("::", 1)[1])
    hook = config.hook
    hook.pytest_runtest_logstart(nodeid=nodeid, location=location)
    properties = [("metric", gate.metric), ("value", gate.value), ("threshold", gate.threshold),
                  ("op", gate.op), ("cases", suite.cases), ("total_cases", suite.total_cases)]
    message = (f"gate {gate.expr} on suite {suite.name} ({suite.model}): {gate.status}: {gate.reason}; "
               f"judged {suite.cases} of {suite.total_cases} cases")
    phases: list[tuple[str, str, Any]]
    if gate.status == "skipped":
        phases = [("setup", "skipped", (path, 0, f"Skipped: {gate.reason}")), ("teardown", "passed", None)]
    else:
        phases = [("setup", "passed", None), ("call", gate.status, message if gate.status == "failed" else None),
                  ("teardown", "passed", None)]
    now = time.time()
    for when, outcome, longrepr in phases:
        report = TestReport(nodeid, location, {"llm_gate": 1}, outcome, longrepr, when,  # type: ignore[arg-type]
                            duration=0.0,
                            start=now, stop=now, user_properties=properties)
        report.llm_gate = gate.to_dict()  # type: ignore[attr-defined]
        hook.pytest_runtest_logreport(report=report)
    hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)
