"""pytest collectors and items: a suite's datasets give one item per case and model, its suite
file one item per gate and model.

No model calls happen here: case items read the replies generation produced; gate items read
the verdicts the run's controller judged over every case of their suite.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
from pathlib import Path
from typing import Any, Iterable

import pytest

from harness.results import CaseResult, GateResult
from harness.selection import Selection
from harness.scoring.scorers import get_scorer
from harness.suite import (Case, Suite, SuiteError, load_cases, suite_files_in, suite_for_dataset, suites_in,
                           under_suite)


def model_suffix(model: str, multi_model: bool) -> str:
    return f"[{model}]" if multi_model else ""


def case_item_name(case_id: str, model: str, multi_model: bool) -> str:
    return case_id + model_suffix(model, multi_model)


def gate_item_name(expr: str, model: str, multi_model: bool) -> str:
    return f"gate[{expr}]" + model_suffix(model, multi_model)


def cases_of(suite: Suite, dataset: Path) -> list[Case]:
    """A dataset's cases, then, for a robustness suite, their perturbed copies."""
    return _with_copies(suite, load_cases(suite, dataset))


def _with_copies(suite: Suite, cases: list[Case]) -> list[Case]:
    if suite.robustness is None:
        return cases
    from harness.robustness import perturbed_cases

    return cases + perturbed_cases(suite.robustness, cases)


def suite_cases(suite: Suite) -> list[tuple[Path, Case]]:
    return [(dataset, case) for dataset in suite.datasets for case in cases_of(suite, dataset)]


@functools.lru_cache(maxsize=1024)  # called per case with a handful of distinct datasets
def relpath(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


CATALOG_KEY = pytest.StashKey["Catalog"]()


class Catalog:
    """A suite's cases by dataset, read once per process: collection records what it read. With a
    quick run's selection (``--llm-limit``, ``--llm-sample``), only the cases it keeps."""

    def __init__(self, selection: Selection | None = None) -> None:
        self.selection = selection or Selection()
        self._cases: dict[tuple[int, Path], list[Case]] = {}
        self._kept: dict[int, tuple[set[Any], int]] = {}  # suite -> kept (dataset, line) keys, and of how many
        self._names: dict[int, str] = {}
        self._read: dict[tuple[int, Path], list[Case]] = {}  # a quick run's clean cases as read, before selection

    def record(self, suite: Suite, dataset: Path, cases: list[Case]) -> None:
        self._cases[(id(suite), dataset)] = cases

    def cases(self, suite: Suite, dataset: Path) -> list[Case]:
        key = (id(suite), dataset)
        if key not in self._cases:
            if not self.selection.active:
                self._cases[key] = cases_of(suite, dataset)
            else:
                kept, _ = self._selected(suite)
                clean = [case for case in self._read[key] if (dataset, case.line) in kept]
                self._cases[key] = _with_copies(suite, clean)
        return self._cases[key]

    def _selected(self, suite: Suite) -> tuple[set[Any], int]:
        if id(suite) not in self._kept:
            keys = []
            for dataset in suite.datasets:  # each file read once: the selection and the cases use the same read
                if (id(suite), dataset) not in self._read:
                    self._read[(id(suite), dataset)] = load_cases(suite, dataset)
                keys.extend((dataset, case.line) for case in self._read[(id(suite), dataset)])
            self._kept[id(suite)] = (self.selection.choose(keys, suite.name), len(keys))
            self._names[id(suite)] = suite.name
        return self._kept[id(suite)]

    def sample_note(self, suite: Suite) -> str | None:
        """What a gate of this suite says about a quick run's selection; None for a whole suite."""
        if not self.selection.active:
            return None
        kept, total = self._selected(suite)
        return self.selection.note(len(kept), total)

    def sampled_suites(self) -> dict[str, dict[str, int]]:
        """Suite name -> cases kept and of how many (report.json), for the suites this process read."""
        return {self._names[key]: {"cases": len(kept), "of": total} for key, (kept, total) in self._kept.items()}


def catalog(config: pytest.Config) -> Catalog:
    if CATALOG_KEY not in config.stash:
        config.stash[CATALOG_KEY] = Catalog(selection_of(config))
    return config.stash[CATALOG_KEY]


def selection_of(config: pytest.Config) -> Selection:
    """The quick run's selection from --llm-limit / --llm-sample / --llm-seed (a usage error if bad)."""
    from harness.selection import parse_selection

    def value(name: str) -> Any:
        cli = config.getoption(name, None)
        return cli if cli not in (None, "") else config.getini(name)

    try:
        return parse_selection(value("llm_limit"), value("llm_sample"), value("llm_seed"))
    except ValueError as exc:
        raise pytest.UsageError(f"llm-harness: {exc}") from exc


class CaseFailed(Exception):
    """A case that ran and did not pass its rule (or hit a model error)."""

    def __init__(self, result: CaseResult) -> None:
        super().__init__(result.reason or "failed")
        self.result = result


class GateFailed(Exception):
    """A gate whose metric missed its threshold."""


def is_suite_dataset(file_path: Path, top: Path | None = None) -> bool:
    """A JSONL file in a suite's folder or below it (whether a suite lists it, its collector finds out)."""
    return file_path.suffix == ".jsonl" and under_suite(file_path, top)


def collection_top(config: pytest.Config) -> Path:
    """The highest folder a dataset's suite file is looked for in: the rootdir, or the folder pytest
    was started in when that lies higher."""
    return Path(os.path.commonpath([config.rootpath, config.invocation_params.dir]))


def is_suite_file(file_path: Path) -> bool:
    return file_path in suite_files_in(file_path.parent)


def _check_scorer(suite: Suite) -> None:
    """A scorer that cannot be built fails its suite here: otherwise every case would be an error."""
    try:
        get_scorer(suite.scorer, suite.scorer_options)
    except (ValueError, TypeError) as exc:  # bad options, unknown names, imports not allowed
        raise SuiteError(suite.path, None, str(exc)) from exc
    except Exception as exc:  # a plug-in's own failure (a model that did not load), reported with its suite
        raise SuiteError(suite.path, None, f"scorer {suite.scorer!r} cannot be built: "
                                           f"{type(exc).__name__}: {exc}") from exc


def _check_judge(config: pytest.Config, suite: Suite) -> None:
    """A judged suite's judge model must be part of the run (harness.judging.models)."""
    if suite.judge is not None:
        from harness.judging.models import check_judge
        from harness.run import run_state

        check_judge(suite, run_state(config), suite_models(config, suite),
                    bool(config.getoption("llm_baseline", None)))


def _check_prompts(suite: Suite, cases: list[Case], keep: bool) -> None:
    """Render every case now: a template that cannot render one (an undefined variable, a type
    error, the sandbox refusing) is a collection error naming the suite, the line and the problem,
    not a case sent without a prompt. With ``keep``, the requests reuse what was rendered."""
    from harness.prompts import render, render_problem

    failed: list[tuple[Case, Exception]] = []
    for case in cases:
        try:
            render(suite, case, keep)
        except Exception as exc:  # noqa: BLE001 - any template failure is the suite's, reported below
            failed.append((case, exc))
    if failed:
        case, exc = failed[0]
        more = f" ({len(failed)} of {len(cases)} cases fail to render)" if len(failed) > 1 else ""
        raise SuiteError(case.dataset, case.line, f"suite {suite.path}: case {case.id!r}: "
                                                  f"{render_problem(exc)}{more}")


def suite_models(config: pytest.Config, suite: Suite) -> list[str]:
    """The models a suite runs on: its own (``model: {train: ...}``: ``<job>-initial`` and ``<job>``),
    registered with the process's run state, or else the run's models.

    Every process that handles a suite's items loads the suite (collection; the xdist controller in
    ``refs_from_ids``), so each derives the same models from the suite file: they need not travel to
    the workers. A name that is also a model of the run, or that another suite gives another job, is
    an error naming both."""
    from harness.models import trained_specs
    from harness.run import run_state

    state = run_state(config)
    if suite.trained is None:
        return state.model_names
    specs = trained_specs(suite.trained)
    for spec in specs:
        if spec.name in state.model_names:
            raise SuiteError(suite.path, suite.trained.line,
                             f"model {spec.name!r} (training job {suite.trained.job}, named by this suite's "
                             f"'model') is also a model of the run ({_run_models_source(config)}): rename one")
        known = state.suite_specs.get(spec.name)
        if known is not None and known != spec:
            raise SuiteError(suite.path, suite.trained.line,
                             f"model {spec.name!r} is training job {suite.trained.job} here, but another suite "
                             f"names a model {spec.name!r} from {known.model_path}: two jobs of one name cannot "
                             f"both be models of a run")
    for spec in specs:
        state.suite_specs.setdefault(spec.name, spec)
    return list(suite.trained.names)


def _run_models_source(config: pytest.Config) -> str:
    models_file = config.getoption("llm_models_file", None) or config.getini("llm_models_file")
    named = config.getoption("llm_model", None) or config.getini("llm_model")
    where = [f"--llm-models-file {models_file}" if models_file else "", "--llm-model" if named else ""]
    return " and ".join(w for w in where if w) or "the default model"


def suite_reference(config: pytest.Config, suite: Suite, models: list[str]) -> str | None:
    """The model a suite's comparison gates compare the others against (it gets no such gate items):
    a suite's own ``<job>-initial``, else the run's reference (None with a baseline or a single model)."""
    if suite.trained is not None:
        return suite.trained.initial if suite.trained.compare else None
    return _reference_model(config, models)


def _suite_marks(config: pytest.Config, suite: Suite) -> list[Any]:
    for marker in suite.markers:
        config.addinivalue_line("markers", f"{marker}: declared by suite {suite.name}")
    # decorators built once: a marker by name costs a registry lookup per item (100,000 cases)
    return [getattr(pytest.mark, marker) for marker in suite.markers]


class JsonlFile(pytest.File):
    """The cases of one dataset of a suite."""

    def collect(self) -> Iterable[pytest.Item]:
        try:
            suite = suite_for_dataset(self.path, collection_top(self.config))
            if suite is None:
                return []
            cases = catalog(self.config).cases(suite, self.path.resolve())  # read once, if its suite file read it first
            _check_scorer(suite)
            _check_judge(self.config, suite)
            # an xdist worker builds no requests: it checks without keeping 100,000 prompts
            _check_prompts(suite, cases, keep=not hasattr(self.config, "workerinput"))
        except SuiteError as exc:
            raise self.CollectError(str(exc)) from exc
        catalog(self.config).record(suite, self.path.resolve(), cases)
        try:
            models = suite_models(self.config, suite)
        except SuiteError as exc:
            raise self.CollectError(str(exc)) from exc
        marks = [pytest.mark.llm_eval, *_suite_marks(self.config, suite)]
        attacked = [*marks, pytest.mark.llm_robustness]
        multi = len(models) > 1
        return [CaseItem.from_parent(self, **_child(self, case_item_name(case.id, model, multi)), suite=suite,
                                     case=case, model=model, marks=attacked if case.attack else marks)
                for case in cases for model in models]


def _child(parent: pytest.Collector, name: str) -> dict[str, str]:
    """Name and node id of an item under ``parent``.

    The id is spelled out so that pytest parses it exactly as it parses ids read back from its cache:
    pytest 9.2 otherwise keeps a bracketed name (``gate[f1 >= 0.8]``) whole for a live item but splits
    it into name and params for a cached id, and ``--lf`` then never matches the item.
    """
    return {"name": name, "nodeid": f"{parent.nodeid}::{name}"}


class SuiteFile(pytest.File):
    """The gates of a suite file: one item per gate and model, judged over the suite's cases."""

    def collect(self) -> Iterable[pytest.Item]:
        from harness.gates import is_comparison, parse_gate
        from harness.robustness import is_robustness_metric

        try:
            suites = [s for s in suites_in(self.path.parent) if s.path == self.path.resolve()]
            models_of = {}
            for suite in suites:
                _check_scorer(suite)
                _check_judge(self.config, suite)
                _check_datasets(self.config, suite)
                models_of[id(suite)] = suite_models(self.config, suite)
        except SuiteError as exc:
            raise self.CollectError(str(exc)) from exc
        items = []
        for suite in suites:
            models = models_of[id(suite)]
            multi = len(models) > 1  # per suite: a suite of its own single model has no [model] suffix
            reference = suite_reference(self.config, suite, models)
            marks = [pytest.mark.llm_gate, *_suite_marks(self.config, suite)]
            for expr in suite.gates:
                gate = parse_gate(expr)
                # a gate on the perturbed copies is selected and deselected with them
                gate_marks = [*marks, pytest.mark.llm_robustness] if (
                    suite.robustness is not None and is_robustness_metric(gate.metric)) else marks
                # the reference model is what a comparison gate compares against, not a model it judges
                judged = [m for m in models if m != reference or not is_comparison(gate.metric)]
                items.extend(GateItem.from_parent(self, **_child(self, gate_item_name(gate.expr, model, multi)), suite=suite,
                                                  expr=gate.expr, model=model, marks=gate_marks)
                             for model in judged)
        return items


def _reference_model(config: pytest.Config, models: list[str]) -> str | None:
    """The model others are compared against in a run of several models without a baseline (None otherwise)."""
    from harness.comparison.runner import comparison_options, reference_model

    reference, baseline = comparison_options(config)
    return reference_model(models, reference, baseline is not None)


def _check_datasets(config: pytest.Config, suite: Suite) -> None:
    """Every dataset of the suite loads (read once: the catalog keeps its cases for its own collector),
    and lies where pytest collects: gates never judge data that failed to load or never became items."""
    patterns = config.getini("norecursedirs")
    for dataset in suite.datasets:
        for part in dataset.parent.relative_to(suite.path.parent).parts:
            pattern = next((p for p in patterns if fnmatch.fnmatch(part, p)), None)
            if pattern is not None:
                where = dataset.relative_to(suite.path.parent).as_posix()
                raise SuiteError(suite.path, None, f"dataset {where} lies in folder {part!r}, which pytest does "
                                 f"not collect (norecursedirs {pattern!r}): move it, or change norecursedirs")
        catalog(config).cases(suite, dataset)


class MisplacedFolder(pytest.Directory):
    """A folder named as a suite file is (a container's bind mount of a missing file makes one): a
    collection error, where its suite would otherwise vanish without a word."""

    def collect(self) -> Iterable[pytest.Item | pytest.Collector]:
        raise self.CollectError(f"{self.path}: a folder where a suite file should be: a suite file is a YAML file")


class CaseItem(pytest.Item):
    """One case on one model: reads its reply, extracts, scores, applies the pass rule."""

    def __init__(self, *, suite: Suite, case: Case, model: str, marks: list[Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.case = case
        self.model = model
        self.case_result: CaseResult | None = None
        for mark in marks if marks is not None else ["llm_eval", *suite.markers]:
            self.add_marker(mark)

    def runtest(self) -> None:
        from harness.case_scoring import score_reply
        from harness.run import run_state

        reply = run_state(self.config).planned_reply(self.nodeid)
        dataset = relpath(self.path, self.config.rootpath)
        result = score_reply(self.suite, self.case, self.model, self.nodeid, dataset, reply, self.ihook)
        self.case_result = result
        if result.passed is False:
            raise CaseFailed(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, CaseFailed):
            return format_case(excinfo.value.result, self._prompt())
        return super().repr_failure(excinfo, style)

    def _prompt(self) -> Any:
        """The prompt as sent; rendered again here only for a failing case (xdist workers do not keep it)."""
        from harness.prompts import build_request

        try:
            return build_request(self.suite, self.case, self.model, hook=self.ihook).prompt
        except Exception as exc:  # noqa: BLE001 - showing a failure must not fail
            return f"(prompt not rendered: {exc})"

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.case.line - 1, f"{self.suite.name}::{self.name}"


class GateItem(pytest.Item):
    """One gate of a suite on one model: passes or fails on the metric the run's controller judged."""

    def __init__(self, *, suite: Suite, expr: str, model: str, marks: list[Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.expr = expr
        self.model = model
        self.gate_result: GateResult | None = None
        for mark in marks:
            self.add_marker(mark)

    def runtest(self) -> None:
        from harness.run import run_state

        verdict = run_state(self.config).gate_verdict(self.nodeid)
        gate = GateResult.from_dict(verdict["gate"])
        self.gate_result = gate
        self.user_properties.extend([("metric", gate.metric), ("value", gate.value), ("threshold", gate.threshold),
                                     ("op", gate.op), ("cases", verdict["cases"]),
                                     ("total_cases", verdict["total_cases"])])
        if verdict.get("sample"):
            self.user_properties.append(("sample", verdict["sample"]))
        if gate.status == "skipped":
            pytest.skip(gate.reason)
        if gate.status == "failed":
            raise GateFailed(f"gate {gate.expr} on suite {self.suite.name} ({self.model}): failed: {gate.reason}; "
                             f"judged {verdict['cases']} of {verdict['total_cases']} cases")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, GateFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.suite.name}::{self.name}"


def _show(value: Any, limit: int = 2000) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=None)
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more chars]"


def format_case(result: CaseResult, prompt: Any) -> str:
    """Everything a reader needs to see why a case failed."""
    prompt = _messages(prompt)
    lines = [
        f"case {result.id} of suite {result.suite} on {result.model} ({result.dataset}:{result.line})",
        f"reason:    {result.reason}",
        f"score:     {result.score}",
        f"target:    {_show(result.target)}",
        f"extracted: {_show(result.extracted)}",
        f"output:    {_show(result.output)}",
        "prompt:",
        *("    " + line for line in _show(prompt, 4000).splitlines()),
    ]
    judge = result.judge or {}
    if judge:
        lines.append(f"judge:     {judge.get('model')}, verdict {_show(judge.get('verdict'))}"
                     + (f", human label {_show(result.human_label)}" if result.human_label is not None else ""))
        for number, raw in enumerate(judge.get("raw") or [], 1):
            lines.append(f"judge reply{f' {number}' if len(judge.get('raw') or []) > 1 else ''}:")
            lines.extend("    " + line for line in _show(raw, 2000).splitlines())
        if judge.get("prompt"):
            lines.append("judge prompt:")
            lines.extend("    " + line for line in _show(_messages(judge["prompt"]), 4000).splitlines())
    return "\n".join(lines)


def _messages(prompt: Any) -> Any:
    if isinstance(prompt, list) and prompt and all(isinstance(order, list) for order in prompt):
        # a pairwise judge: one prompt per order
        return "\n".join(f"--- order {number} ---\n{_messages(order)}" for number, order in enumerate(prompt, 1))
    if isinstance(prompt, list):
        return "\n".join(f"[{m.get('role')}] {m.get('content')}" for m in prompt if isinstance(m, dict))
    return prompt
