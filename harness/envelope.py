"""The versioned report envelope (what report.json holds), built from a finished run.

Every report format derives from the envelope, so secrets are masked here once: credentials
and secret query values in URLs (the command line, engine records, messages) and the models'
API keys."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, overload

from harness.metadata import dataset_metadata, environment, git_state, model_metadata, model_secrets
from harness.packages import FREEZE_FILENAME
from harness.redact import redact_data, redact_text
from harness.results import REPORT_SCHEMA, SCHEMA_VERSION, CaseResult, SuiteResult
from harness.run import RunState
from harness.suite import Suite


@dataclass(frozen=True)
class RunRecord:
    """What a finished run hands the report writers: plain data, no pytest objects."""

    state: RunState
    started_at: datetime
    root: Path
    suites: list[Suite]
    results: list[CaseResult]
    suite_results: list[SuiteResult]
    generation: dict[str, Any]
    reconciliation: dict[str, Any] | None = None  # planned cases against recorded results
    git: tuple[str | None, bool | None] | None = None  # (commit, dirty) when read already (None: read it here)


def build_envelope(record: RunRecord, args: list[str], workers: int,
                   managed_engines: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of a finished run; ``managed_engines`` are the records of the engines it started."""
    state = record.state
    finished = datetime.now(timezone.utc)
    commit, dirty = record.git if record.git is not None else git_state(record.root)
    suites = record.suites
    # the judges that graded cases are models of the run too (their records, weights, launch lines)
    judges, used_models, sent = set(), set(), set()
    for r in record.results:  # one pass: a large run's results are read from disk
        used_models.add(r.model)
        if not r.cached:
            sent.add(r.model)
        if r.judge and r.judge.get("model"):
            judges.add(r.judge["model"])
    used_models |= judges
    sent |= judges
    engines = state.started_engines()
    kinds = {spec.name: _kind_of(state, spec.name) for spec in state.all_models if spec.name in used_models}
    for spec in state.all_models:  # a remote server answered from the cache alone still gets its record
        served = state.served_name(spec.name)
        kind = kinds.get(spec.name)
        if spec.name in used_models - sent and served not in engines and not isinstance(kind, Exception) \
                and not kind.loads:
            try:
                engines[served] = state.engine(spec.name)
            except Exception:  # noqa: BLE001 - a server gone by now costs the report its record, not the report
                pass
    engines.update({engine["model"]: engine for engine in managed_engines})
    run: dict[str, Any] = {
        "id": state.run_id,
        "started_at": record.started_at.isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
        "duration_s": round((finished - record.started_at).total_seconds(), 3),
        **environment(),
        # every installed distribution, name==version, in a side file of the report folder
        "packages_freeze": FREEZE_FILENAME,
        "git_commit": commit,
        "git_dirty": dirty,
        "rootdir": str(record.root),
        "pytest_args": args,
        "xdist_workers": workers,
        "models": [{**_model_entry(spec, kinds[spec.name], engines.get(state.served_name(spec.name))),
                    **({"role": spec.role} if spec.role != "test" else {}),
                    **({"variant_of": spec.variant_of} if spec.variant_of else {}),
                    **({"generation": dict(spec.generation)} if spec.generation else {})}
                   for spec in state.all_models if spec.name in used_models],
        "generation": {"concurrency": state.settings.concurrency, "timeout_s": state.settings.timeout_s,
                       "retries": state.settings.retries, "deadline_s": state.settings.deadline_s,
                       "retry_passes": state.settings.retry_passes, "stream": state.settings.stream,
                       **({"set": dict(state.settings.generation_set)} if state.settings.generation_set else {}),
                       **record.generation},
        "datasets": dataset_metadata(suites, record.root),
        "suites_config": [s.config_dict() for s in suites],
        "reconciliation": record.reconciliation or {},
    }
    secrets = [secret for spec in state.all_models for secret in model_secrets(spec)]
    return {
        "schema": REPORT_SCHEMA,
        "version": SCHEMA_VERSION,
        "run": redact_data(run, secrets),
        "suites": redact_data([s.to_dict() for s in record.suite_results], secrets),
        "cases": CaseRows(record.results, secrets),
    }


def _kind_of(state: RunState, model: str) -> Any:
    """A model's engine kind, or the exception that kept it from being made (a pytest_llm_make_engine hook that
    raised: the run ended saying so, and its report still names the model)."""
    try:
        return state.engine_of(model)
    except Exception as exc:  # noqa: BLE001
        return exc


def _model_entry(spec: Any, kind: Any, engine: dict[str, Any] | None) -> dict[str, Any]:
    """A model's entry in report.json; what kept its engine from being made, or from saying where its weights
    came from (a third-party kind's ``metadata``), stands in the entry instead of costing the run its report."""
    if not isinstance(kind, Exception):
        try:
            return model_metadata(spec, kind, engine)
        except Exception as exc:  # noqa: BLE001
            from harness.hookspec import raised

            kind = RuntimeError(f"engine {kind.kind} gave no metadata: {raised(exc, Path.cwd())}")
    return {"name": spec.name, "source": None, "weights_sha256": None, "engine": None, "engine_error": str(kind)}


# Up to this many cases, each case's dict is built once and kept while the reports are written (about
# 1 KB a case), and every read is a shallow copy of it: the writers read the cases about twenty times in
# all, and decoding a result from disk and making its dict is most of that. Above it, as in a million-case
# run, each read builds the dict anew, so that they never all stand in memory.
KEPT_ROWS = 20_000


class CaseRows(Sequence[dict[str, Any]]):
    """report.json's ``cases``: one dict per case result, built (and redacted) when it is read.

    A million cases never stand in memory as dicts at once: each report writer reads them one at a
    time (a dict of 31 keys is about a kilobyte, more than the slotted result it is made from); a run
    of up to KEPT_ROWS cases keeps them once built. A dict read twice is two equal dicts; a change to
    one (to its keys: the values are shared when kept) is not kept. ``list(rows)`` makes them stay."""

    __slots__ = ("_results", "_secrets", "_kept")

    def __init__(self, results: Sequence[CaseResult], secrets: list[str]) -> None:
        self._results = results
        self._secrets = secrets
        self._kept: list[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self._results)

    def _built(self) -> list[dict[str, Any]] | None:
        """Every case's dict, built once, in a run of up to KEPT_ROWS cases; else None."""
        if self._kept is None and len(self._results) <= KEPT_ROWS:
            self._kept = [_redact_case(r.to_dict(), self._secrets) for r in self._results]
        return self._kept

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if (kept := self._built()) is not None:
            return [dict(case) for case in kept[index]] if isinstance(index, slice) else dict(kept[index])
        if isinstance(index, slice):
            return [_redact_case(r.to_dict(), self._secrets) for r in self._results[index]]
        return _redact_case(self._results[index].to_dict(), self._secrets)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if (kept := self._built()) is not None:
            for case in kept:
                yield dict(case)
            return
        secrets = self._secrets
        for result in self._results:
            yield _redact_case(result.to_dict(), secrets)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CaseRows):
            return self._results is other._results and self._secrets == other._secrets
        return isinstance(other, list) and len(other) == len(self) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CaseRows({len(self)} cases)"


def _redact_case(case: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    """A case's messages may quote a URL (a connection error); its prompt and output are the data's own."""
    for key in ("error", "reason"):
        if case.get(key):
            case[key] = redact_text(case[key], secrets)
    return case


def report_dir(root: Path, option: str | None, ini: str, run_id: str) -> tuple[Path, bool]:
    """Where this run writes: `--llm-report-dir` as given, else `<ini dir>/<run id>` (then `latest` too)."""
    if option:
        path = Path(option)
        return (path if path.is_absolute() else root / path), False
    base = Path(ini or "reports")
    base = base if base.is_absolute() else root / base
    return base / run_id, True


def point_latest(run_dir: Path) -> None:
    """`reports/latest` -> the newest run, replaced atomically."""
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest-{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(run_dir.name, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        # no symlinks on this filesystem: a copy still lets users open reports/latest
        shutil.rmtree(link, ignore_errors=True)
        shutil.copytree(run_dir, link)
