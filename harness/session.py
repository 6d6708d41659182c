"""The run on the controller: the one object that plans generation, gathers case results, concludes
each suite once its cases are in (metrics, then gate verdicts) and hands the report writers a
plain record.

Created in ``pytest_configure`` only where it belongs (no xdist, or the xdist controller), kept
in ``config.stash``, registered as a plugin for its own hooks and unregistered in
``pytest_unconfigure``, as pytest's ``LogXML`` is. xdist workers never hold one: they read
replies and verdicts from the run's board.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator, Iterable, NoReturn, Sequence

import pytest

from harness.board import Board
from harness.cache import cache_key
from harness.engines.client import Reply
from harness.engines.managed import EngineStartError
from harness.collect import catalog, relpath
from harness.interruptible import join_thread
from harness.metadata import GitProbe
from harness.plan import CaseRef, Plan, SuiteRun, Task, make_plan, refs_from_ids, refs_from_items
from harness.result_store import ResultSpool, RunResults, merged
from harness.results import CaseResult, SuiteResult
from harness.run import RunState
from harness.suite import Suite

if TYPE_CHECKING:
    from harness.comparison.runner import Comparisons
    from harness.progress import Monitor, TerminalSink

SESSION_KEY = pytest.StashKey["EvalSession"]()
PLUGIN_NAME = "llm-harness-session"


class EvalSession:
    """Owns one evaluation run on the controller (see the module docstring)."""

    def __init__(self, config: pytest.Config, state: RunState) -> None:
        self.config = config
        self.state = state
        self.root = config.rootpath
        self.started_at = datetime.now(timezone.utc)
        self.session: pytest.Session | None = None
        self.plan: Plan | None = None
        self.generation_stats: dict[str, Any] = {}
        self.suite_results: list[SuiteResult] = []
        self.report_path: Path | None = None
        self._report_failures: list[str] = []
        self._stopped: str | None = None
        self.unaccounted: list[str] = []
        self.skipped: list[str] = []
        self.reconciliation: dict[str, Any] = {}
        self._board: Board | None = None
        self._generation: Any = None
        self._progress: Monitor | None = None
        self._terminal: TerminalSink | None = None  # the progress lines' terminal, pumped between items
        self._cached: dict[str, int] = {}  # model -> replies the cache answered
        self._keys: dict[str, tuple[str, str]] = {}  # node id -> (cache key, model)
        self._lock = threading.Lock()
        self._pulled: threading.Thread | None = None
        self._git: GitProbe | None = None  # report.json's commit and dirty flag, asked once requests are in flight
        self._warmed = False  # _warm_sending ran
        self._failures = 0
        self._stray: list[CaseResult] = []  # results of cases outside the plan (none expected)
        self._spool: ResultSpool | None = None  # every case result, on disk (harness.result_store)
        self.comparisons = comparisons_of(config, state.model_names)
        self.comparison: dict[str, Any] | None = None  # the report's comparison block
        self.baseline_path: Path | None = None
        from harness.audit import audit_size

        self.audit_k = audit_size(config)  # --llm-audit K (0: off)
        self.audits: list[Any] = []  # harness.audit.AuditRecord per audited suite run
        self.training: dict[str, dict[str, Any]] = {}  # job name -> its report entry (harness.report.training_plots)
        state.before_gate = self._before_gate

    @property
    def xdist(self) -> bool:
        return self.config.pluginmanager.hasplugin("dsession")

    # -- pytest hooks --------------------------------------------------------------------------
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.session = session

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, Any, Any]:
        config = session.config
        collection_failed = session.testsfailed and not config.option.continue_on_collection_errors
        if not self.xdist and not config.option.collectonly and not collection_failed:
            from harness.board import MemoryBoard

            cases, gates = refs_from_items(session.items, self.root)
            self._start(cases, gates, MemoryBoard())
        try:
            return (yield)
        finally:
            self._finish_generation()

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodeready(self, node: Any) -> None:
        """A worker has started and now collects: import what sending needs while the controller waits for it."""
        if not self._warmed and not self.config.option.collectonly:
            self._warmed = True
            self._warm_sending()

    def _warm_sending(self) -> None:
        """Import the modules that planning and sending the first requests need (jinja2 renders the prompts,
        aiohttp sends them: about 0.2 s on 2 cores), on the main thread, as every import of a run is (see
        harness.report.warm_writers). Under xdist that is done while the workers collect, so the requests start
        as soon as their collection arrives."""
        from harness import generation, prompts  # noqa: F401
        from harness.engines.registry import engine_class
        from harness.templates import jinja_env

        jinja_env()
        # the registry's kinds only: a pytest_llm_make_engine hook is asked when the run starts, not before; a kind
        # that fails to load says so then, where the run reports it
        try:
            served_over_http = any(kind is None or not kind.in_process
                                   for kind in (engine_class(spec.engine) for spec in self.state.all_models))
        except Exception:  # noqa: BLE001
            served_over_http = True
        if served_over_http:
            import aiohttp  # noqa: F401  # the HTTP client's

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if self.config.option.collectonly:
            return
        if self.plan is None:
            self._load_conftests(ids)
            cases, gates = refs_from_ids(ids, self.root, self._models_of, catalog(self.config).cases)
            self._start(cases, gates, self.state.board())
        if self.plan is not None:
            _share_ids(ids, self.plan.by_id)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        training = getattr(report, "llm_training", None)
        if training is not None:
            from harness.report.training_plots import add_training_gate

            add_training_gate(self.training, training)
            del report.llm_training  # the log history is kept once, here
        if self.plan is None:
            return
        raw = getattr(report, "llm_case", None)
        if raw is not None and report.when == "call":
            self._add(CaseResult.from_dict(raw))
            # the terminal reporter keeps every report to the end: it need not keep the case twice
            del report.llm_case
        elif report.failed and report.nodeid in self.plan.by_id:
            # a case item that ended without a result (a crashed worker, an internal error): an error, never lost
            self._add(self._lost(report))
        elif report.skipped and report.when in ("setup", "call") and report.nodeid in self.plan.run_of:
            self._skip(report.nodeid)
        if report.failed and report.when in ("call", "???"):
            self._failures += 1
            maxfail = self.config.getoption("maxfail", 0) or 0
            if maxfail and self._failures >= maxfail:
                self._abandon(f"the run stopped after {self._failures} failure(s) (-x/--maxfail)")

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        if self._terminal is not None and not self.xdist:
            self._terminal.busy = True  # an item runs here: its output is captured until it ends

    @pytest.hookimpl(trylast=True)  # after the terminal's own percentage at the end of a line
    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        if self._terminal is not None:
            self._terminal.busy = False
            self._terminal.pump()  # a progress line waiting for the end of an item

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", None) or {}
        if output.get("shouldfail") or output.get("shouldstop"):
            self._abandon("the run stopped before every case ran")

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        self._abandon("interrupted")

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        from harness.engines.lease import stop_engines

        # stopped before the reports are written, so each engine's log is complete
        engines = stop_engines(self.state.runtime_dir)
        if self.plan is None:
            return
        if self._pulled is not None:
            join_thread(self._pulled)
        self._conclude_rest()
        results = self.results()
        if not results and not self.training:
            return
        from harness.envelope import RunRecord, build_envelope, point_latest, report_dir
        from harness.report import ReportsIncomplete, write_reports

        out, is_run_dir = report_dir(self.root, self.config.getoption("llm_report_dir"),
                                     self.config.getini("llm_reports"), self.state.run_id)
        workers = int(getattr(self.config.option, "numprocesses", 0) or 0) if self.xdist else 0
        record = RunRecord(self.state, self.started_at, self.root, self.suites(), results, self.suite_results,
                           self.generation_stats, self.reconciliation, self._git.result() if self._git else None)
        envelope = build_envelope(record, list(self.config.invocation_params.args), workers, engines)
        if self.comparison is not None:
            envelope["comparison"] = self.comparison
        selection = catalog(self.config).selection
        if selection.active:  # a quick run: which part of each suite ran
            envelope["run"]["selection"] = {**selection.to_dict(), "suites": catalog(self.config).sampled_suites()}
        if self.training:
            from harness.redact import redact_data

            # a run's error may quote a URL with credentials, as a case's may
            envelope["training"] = redact_data(list(self.training.values()))
        if self.audit_k:
            from harness.audit import audit_block

            envelope["audit"] = audit_block(self.audits, self.state.all_model_names)
        folder_made = True
        try:
            write_reports(envelope, out)
        except ReportsIncomplete as exc:
            self._report_failures.extend(exc.failures)
        except OSError as exc:  # the folder itself could not be made (a read-only disk, a file in the way)
            self._report_failures.append(f"no report written: {out}: {type(exc).__name__}: {exc}")
            folder_made = False
        self._save_baseline(envelope)
        if not folder_made:
            return
        try:
            self.config.hook.pytest_llm_write_report(record=envelope, out_dir=out)
        except Exception as exc:  # noqa: BLE001 - a user's report must not cost the run its summary and its own reports
            from harness.hookspec import raised

            self._report_failures.append(f"pytest_llm_write_report raised {raised(exc, self.root)}")
        for engine in engines:
            if engine.get("log") and Path(engine["log"]).exists():
                shutil.copy(engine["log"], out / Path(engine["log"]).name)
        if is_run_dir:
            point_latest(out)
        self.report_path = out

    def _save_baseline(self, envelope: dict[str, Any]) -> None:
        """--llm-baseline-save: this run's per-case rows and fingerprints, never from a stopped run."""
        path = self.config.getoption("llm_baseline_save", None)
        if not path:
            return
        if self._stopped:
            self._report_failures.append(f"baseline not saved to {path}: {self._stopped}")
            return
        from harness.comparison.baseline import build_baseline, save_baseline

        run = envelope["run"]
        metrics = {(r.name, r.model): r.metrics for r in self.suite_results}
        document = build_baseline(self.config.getoption("llm_baseline_reason"), self.root, self.suites(), self.results(),
                                  run["models"], run["git_commit"], run["git_dirty"], metrics)
        try:
            self.baseline_path = save_baseline(self.root / path, document)
        except OSError as exc:
            self._report_failures.append(f"baseline not saved to {path}: {exc}")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.suite_results:
            return
        from harness.summary import render_table, summary_rows

        terminalreporter.section("llm-harness summary")
        if self._terminal is not None and self._progress is not None and self._progress.final_line:
            terminalreporter.write_line(self._progress.final_line)
        for line in render_table(summary_rows(self.suite_results)):
            terminalreporter.write_line(line)
        if self.comparison is not None:
            from harness.comparison.summary import comparison_lines

            terminalreporter.section("llm-harness comparison")
            for line in comparison_lines(self.comparison):
                terminalreporter.write_line(line)
        if self.audit_k and self.audits:
            from harness.audit import audit_block, audit_lines

            terminalreporter.section("llm-harness determinism audit")
            for line in audit_lines(audit_block(self.audits, self.state.all_model_names)):
                terminalreporter.write_line(line, red="UNSTABLE" in line)
        if self.report_path is not None:
            terminalreporter.write_line(f"reports: {self.report_path}")
        if self.baseline_path is not None:
            terminalreporter.write_line(f"baseline saved: {self.baseline_path}")
        if self.unaccounted:
            terminalreporter.write_line(
                f"llm-harness: {len(self.unaccounted)} planned case(s) have no result, recorded as errors "
                f"({self._stopped or 'no result reached the controller'}): {', '.join(self.unaccounted[:5])}"
                + (" ..." if len(self.unaccounted) > 5 else ""), red=not self._stopped, bold=not self._stopped)
        for failure in self._report_failures:
            terminalreporter.write_line(f"llm-harness: {failure}", red=True, bold=True)

    # -- planning and generation ----------------------------------------------------------------
    def _models_of(self, suite: Suite) -> list[str]:
        """The models a suite runs on (its own, registered here too, or the run's): as collection decides."""
        from harness.collect import suite_models

        return suite_models(self.config, suite)

    def _hook(self, suite: Suite) -> Any:
        """The hooks that apply to a suite's folder (conftest.py files above it included)."""
        return self.session.gethookproxy(suite.path) if self.session is not None else self.config.hook

    def _load_conftests(self, ids: Iterable[str]) -> None:
        """Load the conftest.py files of every folder the workers collected, as collection would:
        scorers and hooks they define then work on the controller too."""
        if self.session is None:
            return
        folders = dict.fromkeys((self.root / nodeid.split("::", 1)[0]).parent for nodeid in ids if "::" in nodeid)
        for folder in folders:
            if folder.is_dir():
                # a Dir's collect report is where pytest loads a folder's conftest.py files
                self.config.hook.pytest_make_collect_report(collector=pytest.Dir.from_parent(self.session, path=folder))

    def _start(self, cases: list[CaseRef], gates: list[Any], board: Board) -> None:
        """Plan; answer what the cache holds; start the engines the rest needs and start sending it.

        Returns once the first case is answered; the rest arrives on the board while items run."""
        from harness.prompts import build_request

        stream = self.state.settings.stream
        self.state.use_board(board)
        self._board = board
        self.plan = plan = make_plan(
            cases, gates, self.root, self._models_of, catalog(self.config).cases,
            lambda ref: build_request(ref.suite, ref.case, ref.model, stream, hook=self._hook(ref.suite),
                                      overrides=self._overrides(ref.model), served=self.state.served_name(ref.model)),
            self.comparisons.reference_of)
        self._spool = ResultSpool(self.state.runtime_dir / "results.spool")
        for run in plan.runs:
            run.results = RunResults(self._spool)
        if self.xdist:
            from harness.prompts import forget_rendered

            # every request holds its prompt now; the items (a worker's, with their own cache) show a
            # failure's prompt from theirs. Without xdist the items are here and read this one.
            forget_rendered()
        for run in plan.runs:
            if (run.gates or run.reference_for) and not run.missing:
                self._conclude(run)
        selection = catalog(self.config).selection
        if selection.active:
            kept = catalog(self.config).sampled_suites()
            self._say(f"llm-harness: quick run ({selection.option}): "
                      + ", ".join(f"{name} {n['cases']} of {n['of']}" for name, n in sorted(kept.items())))
        if not plan.tasks:
            board.finish()
            return
        board.plan(t.nodeid for t in plan.tasks)
        board.put_many((t.nodeid, Reply(None, t.error, 0.0).to_dict()) for t in plan.tasks if t.request is None)
        sendable = [t for t in plan.tasks if t.request is not None]
        try:
            pending, answered = self._from_cache(sendable, board)  # the models' engines are made here (identity)
        except EngineStartError as exc:  # an engine that could not be made (a hook that raised) or gave no identity
            self._engine_failed(exc, board)
        left = Counter(t.model for t in pending)
        self._cached = {model: n - left[model] for model, n in Counter(t.model for t in sendable).items()
                        if n > left[model]}
        self.generation_stats = {"cases": len(plan.tasks), "cached": len(sendable) - len(pending),
                                 "gate_only_cases": len(plan.pulled)}
        if not pending and not answered:
            board.finish()
        else:
            self._send(pending, answered, board)
        self._git = GitProbe(self.root)
        if plan.pulled:
            # after _send's warm-up of the writers, and with what it runs imported here: a thread of a run imports
            # nothing while another one does (see harness.report.warm_writers)
            from harness import case_scoring, suite_metrics  # noqa: F401

            self._pulled = threading.Thread(target=self._score_pulled, name="llm-harness-gate-cases", daemon=True)
            self._pulled.start()

    def _overrides(self, model: str) -> dict[str, Any]:
        """Generation settings over every suite's: --llm-set, then the model's own (a variant's)."""
        return {**self.state.settings.generation_set, **self.state.spec(model).generation}

    def _judge_of(self, task: Task) -> tuple[Any, str] | None:
        """The judge spec and judge model of a task's suite, or None when no model grades it."""
        from harness.judging.models import judge_model

        spec = task.ref.suite.judge
        return (spec, judge_model(spec, self.state)) if spec is not None else None

    def _send(self, pending: list[Task], answered: list[tuple[Task, dict[str, Any]]], board: Board) -> None:
        from harness.generation import Generation, GenerationAborted
        from harness.report import warm_writers

        settings = self.state.settings
        models = list(dict.fromkeys(t.model for t in pending))
        judges = list(dict.fromkeys(found[1] for t in [*pending, *(t for t, _ in answered)]
                                    if (found := self._judge_of(t)) is not None))
        self._progress = self._monitor()
        try:
            wanted = list(dict.fromkeys([*models, *judges]))
            self._start_alongside(wanted)
            clients = {model: self._client(model) for model in wanted}
            judge_identities = {m: self.state.model_identity(m) for m in judges}
        except EngineStartError as exc:
            self._progress.stop()
            self._engine_failed(exc, board)
        except BaseException:  # Ctrl-C while an engine starts: the items never run, nor does _finish_generation
            self._progress.stop()
            raise
        judging = None
        if judges:
            from harness.judging.stage import JudgeStage

            judging = JudgeStage(self._judge_of, {m: clients[m] for m in judges}, judge_identities,
                                 self.state.response_cache(),
                                 lambda task: self.comparisons.reference_of(task.model, task.ref.suite))
        self._generation = Generation(pending, clients, settings.concurrency, board, self._to_cache,
                                      passes=settings.retry_passes, judging=judging, answered=answered,
                                      cached=self._cached)
        judged = f"; judged by {', '.join(judges)}" if judges else ""
        self._say(f"llm-harness: sending {len(pending)} requests to {', '.join(models) or 'no model (all cached)'}, "
                  f"at most {settings.concurrency} in flight{judged}")
        self._generation.start()
        self._progress.watch(self._generation)
        warm_writers()  # while the model answers, not after its last reply (in this thread: see its docstring)
        try:
            self._generation.wait_first()
        except GenerationAborted as exc:
            self._progress.stop()
            pytest.exit(f"llm-harness: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        except BaseException:
            self._generation.cancel()
            self._progress.stop()
            raise

    @staticmethod
    def _engine_failed(exc: Exception, board: Board) -> NoReturn:
        """No engine for a model: the items waiting on the board stop, and the run ends saying why."""
        board.finish(f"engine did not start: {exc}")
        pytest.exit(f"llm-harness: {exc}", returncode=pytest.ExitCode.INTERNAL_ERROR)

    def _finish_generation(self) -> None:
        """After the items: stop what is still being sent (-x, Ctrl-C), keep the run's figures."""
        generation = self._generation
        if generation is None:
            return
        if not generation.finished():
            generation.cancel()
        try:
            generation.join()
        finally:
            if self._progress is not None:
                self._progress.stop()
        self.generation_stats.update(generation.stats())
        self._generation = None

    def _from_cache(self, tasks: list[Task], board: Board) -> tuple[list[Task], list[tuple[Task, dict[str, Any]]]]:
        """Put cached replies on the board; return the tasks still to send, and the cached replies of
        judged cases (their judge is asked, or answers from the cache too, before they are posted)."""
        cache = self.state.response_cache()
        if cache is None:
            return tasks, []
        identities = {model: self.state.model_identity(model) for model in dict.fromkeys(t.model for t in tasks)}
        self._keys = {t.nodeid: (cache_key(identities[t.model], t.request), t.model) for t in tasks}
        hits = cache.get_many(key for key, _ in self._keys.values())
        cached = [(t, {**hits[self._keys[t.nodeid][0]], "cached": True}) for t in tasks
                  if self._keys[t.nodeid][0] in hits]
        board.put_many((t.nodeid, reply) for t, reply in cached if t.ref.suite.judge is None)
        if cached:
            self._say(f"llm-harness: {len(cached)} of {len(tasks)} replies from the cache ({cache.path})")
        pending = [t for t in tasks if self._keys[t.nodeid][0] not in hits]
        self._release(t.nodeid for t, _ in cached if t.ref.suite.judge is None)  # answered: never sent
        return pending, [(t, reply) for t, reply in cached if t.ref.suite.judge is not None]

    def _to_cache(self, replies: list[tuple[str, dict[str, Any]]]) -> None:
        """Successful replies go into the cache as they arrive: a killed run resumes. A judged reply is
        cached without its judge's replies, which the judge stage caches under their own keys.

        Then their requests are let go (see :meth:`_release`)."""
        cache = self.state.response_cache()
        if cache is not None:
            cache.put_many((*self._keys[nodeid], {k: v for k, v in reply.items() if k != "judge"})
                           for nodeid, reply in replies if not reply.get("cached"))
        self._release(nodeid for nodeid, _ in replies)

    def _release(self, nodeids: Iterable[str]) -> None:
        """Cases whose final reply is posted: their request and cache key are needed no more (a result
        takes the prompt the task keeps). ``--llm-audit`` re-sends requests after the run, so it keeps them."""
        if self.plan is None or self.audit_k:
            return
        by_id, keys = self.plan.by_id, self._keys
        for nodeid in nodeids:
            keys.pop(nodeid, None)
            task = by_id.get(nodeid)
            if task is not None:
                task.release()

    def _monitor(self) -> Monitor:
        """The run's live progress: the terminal (unless -qq or --llm-progress 0) and progress.log."""
        from harness.envelope import report_dir
        from harness.progress import LogSink, Monitor, TerminalSink, progress_interval

        interval = progress_interval(self.config, self.state.settings.progress_s)
        out, _ = report_dir(self.root, self.config.getoption("llm_report_dir"), self.config.getini("llm_reports"),
                            self.state.run_id)
        try:
            log: LogSink | None = LogSink(out / "progress.log")
        except OSError as exc:
            self._report_failures.append(f"progress.log not written: {exc}")
            log = None
        self._terminal = TerminalSink(self.config, patience_s=interval) if interval > 0 else None
        return Monitor(self._terminal, log, interval)

    def _start_alongside(self, models: list[str]) -> None:
        """The CPU servers of several models start side by side: the run waits for the slowest, not for the sum."""
        found = self.state.alongside(models)
        if not found:
            return
        started = time.monotonic()
        kinds = [self.state.engine_of(model).kind for model in found]
        what = ", ".join(f"{kind} for {model}" for kind, model in zip(kinds, found))
        note = " (a first run also converts the bundled model: 1-2 min)" if "bundled" in kinds else ""
        self._say(f"llm-harness: starting {what}, side by side{note}")
        if self._progress is not None:
            self._progress.phase(f"starting {what}")
        try:
            self.state.start_alongside(found)
        finally:
            if self._progress is not None:
                self._progress.phase_done()
        for model in found:
            self._say(f"llm-harness: {model} ready at {self.state.engine(model)['base_url']} "
                      f"in {time.monotonic() - started:.1f} s")

    def _client(self, model: str) -> Any:
        engine = self.state.engine_of(model)
        started = time.monotonic()
        loads = engine.loads and self.state.served_name(model) not in self.state.started_engines()
        if loads:
            note = " (a first run also converts the model: 1-2 min)" if engine.kind == "bundled" else ""
            self._say(f"llm-harness: starting {engine.kind} for {model}{note}")
            if self._progress is not None:
                from harness.engines.lease import engine_log_path

                self._progress.phase(f"starting {engine.kind} for {model}",
                                     engine_log_path(self.state.runtime_dir, model))
        try:
            client = self.state.client(model)
        finally:
            if loads and self._progress is not None:
                self._progress.phase_done()
        if loads:
            where = self.state.engine(model).get("base_url") or "in this process"
            self._say(f"llm-harness: {model} ready at {where} in {time.monotonic() - started:.1f} s")
        return client

    def _say(self, text: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and self.config.get_verbosity() >= -1:
            reporter.ensure_newline()
            reporter.write_line(text)

    # -- results and verdicts --------------------------------------------------------------------
    def _score_pulled(self) -> None:
        """Score the cases only gates need, as their replies arrive (generation posts them in order)."""
        from harness.case_scoring import score_reply

        assert self.plan is not None and self._board is not None
        for task in self.plan.pulled:
            ref = task.ref
            reply = self._board.wait(ref.nodeid) or Reply(None, "no reply: generation stopped first", 0.0).to_dict()
            self._add(score_reply(ref.suite, ref.case, ref.model, ref.nodeid, ref.dataset, reply, self._hook(ref.suite)))

    def _before_gate(self, nodeid: str) -> None:
        """A gate item about to run in this process (no xdist): cases of its suite whose items have not
        run yet (an item order changed by another plugin) are scored here, so the gate never waits on them."""
        from harness.case_scoring import score_reply

        if self.plan is None or self.xdist or nodeid not in self.plan.run_of:
            return
        run = self.plan.run_of[nodeid]
        pulled = {t.nodeid for t in self.plan.pulled}
        for missing in sorted(run.missing - pulled):
            ref = self.plan.by_id[missing].ref
            reply = self.state.planned_reply(missing)
            self._add(score_reply(ref.suite, ref.case, ref.model, ref.nodeid, ref.dataset, reply, self._hook(ref.suite)))

    def _lost(self, report: pytest.TestReport) -> CaseResult:
        crash = getattr(report.longrepr, "reprcrash", None)
        if crash is not None and crash.message:
            # what raised and where (a hook of the user's, a plugin): the exception's own words, as pytest's
            # short summary gives them, not the traceback's last line (a location without the message)
            reason = f"{crash.message} ({relpath(Path(crash.path), self.root)}:{crash.lineno})"
        else:
            lines = str(report.longrepr or "").strip().splitlines()
            reason = lines[-1] if lines else "no result"
        if report.when == "???":
            reason = f"worker crashed: {reason}"
        return self._error_result(report.nodeid, reason)

    def _error_result(self, nodeid: str, reason: str) -> CaseResult:
        assert self.plan is not None
        ref = self.plan.by_id[nodeid].ref
        return CaseResult(ref.suite.name, ref.case.id, ref.model, ref.nodeid, ref.dataset, ref.case.line, None,
                          ref.case.target, score=0.0, passed=False if ref.suite.pass_rule else None,
                          reason=reason, error=reason, metadata=ref.case.metadata, attack=ref.case.attack,
                          cluster=ref.case.cluster)

    def _add(self, result: CaseResult) -> None:
        assert self.plan is not None
        with self._lock:
            run = self.plan.run_of.get(result.nodeid)
            if run is None:
                self._stray.append(result)
                return
            if result.nodeid in run.results:
                return  # the first result of a case counts (an item scored early for its gate, then run)
            task = self.plan.by_id.get(result.nodeid)
            if result.prompt is None and task is not None:
                result.prompt = task.prompt
            run.results.add(result)
            if task is not None:
                task.prompt = None  # the result on disk has it now
            ready = self._settle(run, result.nodeid)
        if ready:
            self._conclude(run)

    def _skip(self, nodeid: str) -> None:
        """A case item skipped (a skip mark, pytest.skip in a hook): left out of its suite like a
        deselected case, so its gates are judged on the cases that ran."""
        assert self.plan is not None
        run = self.plan.run_of[nodeid]
        with self._lock:
            if nodeid in run.results or nodeid not in run.missing:
                return
            self.skipped.append(nodeid)
            ready = self._settle(run, nodeid)
        if ready:
            self._conclude(run)

    @staticmethod
    def _settle(run: SuiteRun, nodeid: str) -> bool:
        """A case of run is done (under the lock): whether its suite is now complete and this caller
        concludes it (marked pending, so no other thread does too)."""
        run.missing.discard(nodeid)
        if len(run.missing) * 4 < run.missing_size:
            # a set keeps its table at its largest size: a million planned ids would stay to the end
            run.missing = set(run.missing)
            run.missing_size = len(run.missing)
        elif run.missing_size < len(run.missing):
            run.missing_size = len(run.missing)
        ready = bool(run.gates or run.reference_for) and not run.missing and run.result is None
        if ready:
            run.result = _PENDING
        return ready

    def _conclude(self, run: SuiteRun, stopped: str | None = None) -> None:
        """Metrics of one suite on one model, its gates held to them, their verdicts posted.

        Comparison gates wait for the run they compare against (see :meth:`_compare`)."""
        from harness.suite_metrics import suite_result

        from harness.gates import is_comparison, parse_gate, unjudged_gate

        results = run.results.ordered()
        comparing = {expr for expr in run.gates.values() if is_comparison(parse_gate(expr).metric)}
        judged = set() if stopped else set(run.gates.values()) - comparing
        reason = f"{stopped}: judged {len(results)} of {run.total} cases" if stopped else None
        try:
            run.result = suite_result(run.suite, run.model, results, run.total, judged, self._hook(run.suite),
                                      **({"unjudged_reason": reason} if reason else {}))
        except Exception as exc:  # a hook or scorer bug fails the suite's gates with the reason; nothing waits forever
            failed = f"suite metrics raised {type(exc).__name__}: {exc}"
            gates = [unjudged_gate(parse_gate(expr), None, failed) for expr in run.suite.gates]
            for gate in gates:
                gate.status = "failed"
            run.result = SuiteResult(run.suite.name, run.model, run.suite.scorer, {}, gates, len(results), run.total,
                                     len(results) < run.total)
            comparing = set()
        sample = catalog(self.config).sample_note(run.suite)
        if sample:  # a quick run: every gate says it judged part of the suite
            for gate in run.result.gates:
                gate.reason = f"{gate.reason}; judged {sample}" if gate.reason else f"judged {sample}"
        if not self.comparisons.compared(run.model, run.suite) and self.comparisons.active_for(run.suite):
            # the reference model is what comparison gates compare against: they have no items on it
            run.result.gates = [g for g in run.result.gates if not is_comparison(g.metric)]
        if not stopped:
            self._audit(run)
        own = {nodeid: expr for nodeid, expr in run.gates.items() if expr not in comparing or stopped}
        self._post(run, own)
        if stopped:
            run.compared = True
        self._compare(run.suite)

    def _audit(self, run: SuiteRun) -> None:
        """--llm-audit K: re-send K cases of a concluded suite run with the cache off before its gates are
        posted; a gate whose outcome flips is failed as unstable (see harness/audit.py).

        Only runs with selected gates: the audit is about their verdicts, and a run without one is concluded
        at the session's end, after the engines have stopped."""
        from harness.audit import audit_run
        from harness.case_scoring import score_reply

        if not self.audit_k or not run.gates or self.plan is None or run.result is None or not run.result.metrics:
            return  # off, nothing to re-judge, or the suite's metrics raised (its gates failed already)
        plan, hook = self.plan, self._hook(run.suite)

        def request_of(nodeid: str) -> Any:
            task = plan.by_id.get(nodeid)
            return task.request if task is not None else None

        def score(original: CaseResult, reply: dict[str, Any]) -> CaseResult:
            task = plan.by_id[original.nodeid]
            if task.ref.suite.judge is not None and reply.get("error") is None:
                self._judge_again(task, reply)
            ref = task.ref
            return score_reply(ref.suite, ref.case, ref.model, ref.nodeid, ref.dataset, reply, hook)

        record, gates = audit_run(run.suite, run.model, run.results.ordered(), run.result.gates,
                                  self.audit_k, request_of, lambda: self._client(run.model),
                                  self.state.settings.concurrency, score, hook)
        run.result.gates = gates
        with self._lock:
            self.audits.append(record)

    def _judge_again(self, task: Task, payload: dict[str, Any]) -> None:
        """--llm-audit: a re-sent judged case's reply is judged as the run judged it (the response cache
        answers the judge for a reply that did not change). A pairwise case is judged against the
        reference's answer from the run."""
        from harness.engines.loop import run_sync
        from harness.judging.stage import JudgeStage

        assert self.plan is not None
        found = self._judge_of(task)
        if found is None:
            return
        spec, judge = found
        reference_of = lambda t: self.comparisons.reference_of(t.model, t.ref.suite)  # noqa: E731
        stage = JudgeStage(self._judge_of, {judge: self._client(judge)}, {judge: self.state.model_identity(judge)},
                           self.state.response_cache(), reference_of)
        reference = reference_of(task) if spec.pairwise else None
        if reference is not None:
            case = task.ref.case
            partner = next((t for t in self.plan.by_id.values() if t.model == reference and t.ref.suite is task.ref.suite
                            and t.ref.dataset == task.ref.dataset and t.ref.case.line == case.line
                            and t.ref.case.attack == case.attack), None)
            run = self.plan.run_of.get(partner.nodeid) if partner is not None else None
            answer = run.results.get(partner.nodeid) if run is not None and partner is not None else None
            if partner is not None and answer is not None:
                stage.arrived(partner, {"text": answer.output, "error": answer.error})
        stage.close()
        run_sync(stage.judge(task, payload))

    def _post(self, run: SuiteRun, gates: dict[str, str]) -> None:
        """Post the verdicts of some of a run's gates (node id -> expression) to the board."""
        assert self._board is not None and run.result is not None
        by_expr = {g.expr: g for g in run.result.gates}
        sample = catalog(self.config).sample_note(run.suite)  # a quick run: the gate judged part of the suite
        self._board.put_verdicts(
            (nodeid, {"gate": by_expr[expr].to_dict(), "cases": run.result.cases, "total_cases": run.total,
                      **({"sample": sample} if sample else {})})
            for nodeid, expr in gates.items())

    def _compare(self, suite: Suite, stopped: str | None = None) -> None:
        """Judge the comparison gates of every run of ``suite`` whose own result and whose reference's are in."""
        from harness.gates import is_comparison, parse_gate, unjudged_gate

        assert self.plan is not None
        runs = {run.model: run for run in self.plan.runs if run.suite is suite}
        for run in runs.values():
            comparing = {nodeid: expr for nodeid, expr in run.gates.items() if is_comparison(parse_gate(expr).metric)}
            if not comparing:
                continue
            reference = self.comparisons.reference_of(run.model, run.suite)
            other = runs.get(reference) if reference is not None else None
            with self._lock:
                concluded = _concluded(run)
                ready = other is None or (_concluded(other) and not other.missing)
                if run.compared or not concluded or not (ready or stopped):
                    continue
                run.compared = True
            assert run.result is not None
            gates = [parse_gate(expr) for expr in comparing.values()]
            if stopped and not ready:
                verdicts = [unjudged_gate(gate, None, f"{stopped}: the compared run is incomplete") for gate in gates]
            else:
                verdicts = self._judge_comparisons(run, other, gates)
            replaced = {v.expr: v for v in verdicts}
            run.result.gates = [replaced.get(g.expr, g) for g in run.result.gates]
            self._post(run, comparing)

    def _judge_comparisons(self, run: SuiteRun, other: SuiteRun | None, gates: list[Any]) -> list[Any]:
        assert run.result is not None
        suite_file = relpath(run.suite.path, self.root)
        if not self.comparisons.compared(run.model, run.suite):
            missing = None
            if run.suite.trained is not None:  # model: {train: ..., compare: false}, and no baseline
                missing = (f"{suite_file}: gate '{{expr}}' compares two arms, but this suite's model says "
                           f"compare: false (the trained model only): drop the gate, set compare: initial, or "
                           f"run against a saved run (--llm-baseline PATH)")
            return [self.comparisons.judge(gate, None, suite_file, missing and missing.format(expr=gate.expr))
                    for gate in gates]
        try:
            pair = self.comparisons.pair(run.suite, run.model, run.result.main_metric,
                                         run.results.ordered(),
                                         other.results.ordered() if other is not None else None)
        except Exception as exc:  # noqa: BLE001 - a comparison bug fails its gates with the reason, never hangs them
            return [self.comparisons.judge(gate, None, suite_file,
                                           f"comparison raised {type(exc).__name__}: {exc}") for gate in gates]
        return [self.comparisons.judge(gate, pair, suite_file) for gate in gates]

    def _abandon(self, why: str) -> None:
        """The run stops before some suites are complete: their gates skip, so no worker waits forever."""
        if self.plan is None:
            return
        self._stopped = self._stopped or why
        with self._lock:
            runs = [run for run in self.plan.runs if run.gates and run.result is None]
            for run in runs:
                run.result = _PENDING
        for run in runs:
            self._conclude(run, stopped=why)
        for suite in {id(run.suite): run.suite for run in self.plan.runs}.values():
            self._compare(suite, stopped=why)

    def _conclude_rest(self) -> None:
        """At the end: suites without selected gates (or stopped early) get their metrics too."""
        assert self.plan is not None
        if not self._stopped:
            # nothing stopped the run, so a case without a result is lost: an error its gates see
            self._reconcile()
        for run in self.plan.runs:
            if run.result is None and (run.results or run.gates):
                if run.gates and run.missing:
                    self._conclude(run, stopped=self._stopped or "the run ended before every case ran")
                else:
                    self._conclude(run)
        if self._stopped:
            # a stopped run's metrics cover the cases that ran; the rest are listed as not run
            self._reconcile()
        for suite in {id(run.suite): run.suite for run in self.plan.runs}.values():
            self._compare(suite, stopped=self._stopped or "the run ended before the compared run was complete")
        models = {name: index for index, name in enumerate(self.state.all_model_names)}
        concluded = [run.result for run in self.plan.runs if run.result is not None and run.result is not _PENDING]
        self.suite_results = sorted(concluded, key=lambda r: (r.name, models.get(r.model, 0)))
        self.comparison = self._comparison_block()

    def _comparison_block(self) -> dict[str, Any] | None:
        """Every suite on every compared model against its reference, for the reports (pairs the gates
        already made are reused)."""
        assert self.plan is not None
        runs = {(id(run.suite), run.model): run for run in self.plan.runs}
        for run in self.plan.runs:
            if not _concluded(run) or not run.results or not self.comparisons.compared(run.model, run.suite):
                continue
            reference = self.comparisons.reference_of(run.model, run.suite)
            other = runs.get((id(run.suite), reference)) if reference is not None else None
            if reference is not None and (other is None or not other.results):
                continue
            try:
                self.comparisons.pair(run.suite, run.model, run.result.main_metric,
                                      run.results.ordered(),
                                      other.results.ordered() if other is not None else None)
            except Exception as exc:  # noqa: BLE001 - the reports say so; the run's other figures still count
                self._report_failures.append(f"comparison of {run.suite.name} on {run.model} failed: "
                                             f"{type(exc).__name__}: {exc}")
        return self.comparisons.block()

    def _reconcile(self) -> None:
        """Planned cases against recorded results: a case with no result is recorded as an error
        saying why (never dropped), and listed for the terminal and report.json."""
        assert self.plan is not None
        why = self._stopped or "no result reached the controller"
        recorded = sum(len(run.results) for run in self.plan.runs)
        for run in self.plan.runs:
            with self._lock:
                missing = sorted(run.missing)
                run.missing.clear()
            for nodeid in missing:
                run.results.add(self._error_result(nodeid, f"not run: {why}"))
            self.unaccounted.extend(missing)
        self.reconciliation = {"planned": recorded + len(self.unaccounted), "recorded": recorded,
                               "not_run": len(self.unaccounted), "skipped": len(self.skipped), "stopped": self._stopped,
                               "not_run_ids": self.unaccounted[:100]}

    def results(self) -> Sequence[CaseResult]:
        """Every case result in report order (suite, data order, model), read from disk as it is read."""
        assert self.plan is not None and self._spool is not None
        models = {name: index for index, name in enumerate(self.state.all_model_names)}
        stray: dict[tuple[str, str], RunResults] = {}
        for result in self._stray:
            stray.setdefault((result.suite, result.model), RunResults(self._spool)).add(result)
        parts = [(run.suite.name, models.get(run.model, 0), run.results) for run in self.plan.runs]
        parts += [(suite, models.get(model, 0), results) for (suite, model), results in stray.items()]
        return merged(parts)

    def close(self) -> None:
        """The run is over: its results file goes, and the git processes of a run without reports."""
        if self._spool is not None:
            self._spool.close()
        if self._git is not None:
            self._git.close()

    def suites(self) -> list[Suite]:
        assert self.plan is not None
        return list({id(run.suite): run.suite for run in self.plan.runs if run.results}.values())


# a suite run being concluded by another thread
_PENDING: Any = SuiteResult("", "", "", {}, [], 0, 0, False)


def _share_ids(ids: list[str], by_id: dict[str, Task]) -> None:
    """xdist's scheduler keeps every worker's list of collected node ids to the end of the run: each one
    an own copy of every id. The case ids in it become the plan's (equal strings, in place, before the
    scheduler copies the list)."""
    if type(ids) is not list:
        return
    for index, nodeid in enumerate(ids):
        task = by_id.get(nodeid)
        if task is not None:
            ids[index] = task.ref.nodeid


def _concluded(run: SuiteRun) -> bool:
    return run.result is not None and run.result is not _PENDING


def comparisons_of(config: pytest.Config, models: list[str]) -> "Comparisons":
    """What this run compares, from ``--llm-reference`` and ``--llm-baseline`` (a bad baseline file or an
    unknown reference model is a usage error naming it)."""
    from harness.comparison.baseline import BaselineError, load_baseline
    from harness.comparison.runner import Comparisons, comparison_options

    reference, path = comparison_options(config)
    if reference is not None and reference not in models:
        raise pytest.UsageError(f"llm-harness: --llm-reference {reference!r} is not a model of this run "
                                f"({', '.join(models)})")
    if config.getoption("llm_baseline_save", None) and not config.getoption("llm_baseline_reason", None):
        raise pytest.UsageError("llm-harness: --llm-baseline-save needs --llm-baseline-reason \"why\": a baseline "
                                "is only ever replaced on purpose")
    baseline = None
    if path:
        try:
            baseline = load_baseline(config.rootpath / path, path)
        except BaselineError as exc:
            raise pytest.UsageError(f"llm-harness: {exc}") from exc
    return Comparisons(models, reference, baseline)
