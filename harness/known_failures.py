"""The known-failures ledger (``--llm-known-failures PATH``, ini ``llm_known_failures``).

A YAML list of entries, or a CSV file with a header row of the same keys::

    - {suite: capitals, id: japan, reason: "tokenizer splits Tokyo"}
    - {suite: capitals, id: peru, reason: "answers Cusco", model: gemma-3-270m}   # one model only

Each listed case item gets ``pytest.mark.xfail(strict=True)``: while it fails it is XFAIL, and the
day it passes it is an XPASS(strict) failure that says to remove the entry, so the ledger cannot
rot. The case still counts in its suite's metrics and gates exactly as before (an xfailed report
carries the case's result like any other).

What goes wrong is never silent:

- a malformed ledger (missing file, bad YAML or CSV, not a list, a missing or unknown key, a
  repeated entry) is a usage error naming the file and the entry (exit 4), raised on the xdist
  controller too, before any worker starts;
- an entry that matches no collected case (a suite or an id that is not there) or names a
  record-only suite (``pass: record``: its cases never fail) is a warning listing the entries:
  a warning, not an error, because a run narrowed by path collects only part of the suites.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, Iterable

import pytest
import yaml

PLUGIN_NAME = "llm-known-failures"
KEYS = ("suite", "id", "reason", "model")
REQUIRED = ("suite", "id", "reason")


class KnownFailuresWarning(pytest.PytestWarning):
    """Ledger entries that matched no case of this run."""


@dataclass(frozen=True)
class Entry:
    suite: str
    id: str
    reason: str
    model: str | None  # None: every model
    where: str  # "entry 3 (line 7)", for messages

    @property
    def name(self) -> str:
        return f"{self.suite}/{self.id}" + (f" [{self.model}]" if self.model else "")


@dataclass(frozen=True)
class Ledger:
    path: Path
    shown: str  # the path as messages show it (relative to the rootdir)
    entries: tuple[Entry, ...]
    _index: dict[tuple[str, str], list[Entry]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[tuple[str, str], list[Entry]] = {}
        for entry in self.entries:
            index.setdefault((entry.suite, entry.id), []).append(entry)
        object.__setattr__(self, "_index", index)  # looked up once per case item: 100,000 of them

    def entry_for(self, suite: str, case_id: str, model: str) -> Entry | None:
        listed = self._index.get((suite, case_id), [])
        return next((entry for entry in listed if entry.model in (None, model)), None)


def _problem(shown: str, where: str, text: str) -> pytest.UsageError:
    return pytest.UsageError(f"llm-harness: known-failures ledger {shown}, {where}: {text}")


def load_ledger(path: Path, shown: str) -> Ledger:
    """Read and check a ledger; pytest.UsageError names the file and the entry at fault."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise pytest.UsageError(f"llm-harness: known-failures ledger {shown}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise pytest.UsageError(f"llm-harness: known-failures ledger {shown}: cannot read it: {exc}") from None
    raw = _csv_rows(text, shown) if path.suffix.lower() == ".csv" else _yaml_rows(text, shown)
    entries: list[Entry] = []
    for row, where in raw:
        entry = _entry(row, where, shown)
        for other in entries:
            # the same case twice (or once for every model and once for one): which reason would hold?
            if (other.suite, other.id) == (entry.suite, entry.id) and (
                    other.model == entry.model or None in (other.model, entry.model)):
                raise _problem(shown, where, f"{entry.name} is already listed by {other.where}")
        entries.append(entry)
    return Ledger(path, shown, tuple(entries))


def _yaml_rows(text: str, shown: str) -> list[tuple[Any, str]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise pytest.UsageError(f"llm-harness: known-failures ledger {shown}: not valid YAML: {exc}") from None
    if data is None:
        return []  # an empty ledger: nothing known to fail
    if not isinstance(data, list):
        raise pytest.UsageError(f"llm-harness: known-failures ledger {shown}: must be a list of entries "
                                f"{{suite, id, reason, model?}}, not a {type(data).__name__}")
    lines = [item.start_mark.line + 1 for item in node.value] if isinstance(node, yaml.SequenceNode) else []
    return [(row, f"entry {n} (line {lines[n - 1]})" if n <= len(lines) else f"entry {n}")
            for n, row in enumerate(data, 1)]


def _csv_rows(text: str, shown: str) -> list[tuple[Any, str]]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = reader.fieldnames or []
        rows = list(reader)
    except csv.Error as exc:
        raise pytest.UsageError(f"llm-harness: known-failures ledger {shown}: not valid CSV: {exc}") from None
    if not header:
        return []
    unknown = [key for key in header if key not in KEYS]
    if unknown:
        raise _problem(shown, "header (line 1)", f"unknown column {unknown[0]!r}; columns are {', '.join(KEYS)}")
    out: list[tuple[Any, str]] = []
    for n, row in enumerate(rows, 1):
        where = f"entry {n} (row {n + 1})"
        if None in row:
            raise _problem(shown, where, "more fields than the header has")
        # an empty CSV cell is an absent value
        out.append(({k: v for k, v in row.items() if v not in (None, "")}, where))
    return out


def _entry(row: Any, where: str, shown: str) -> Entry:
    if not isinstance(row, dict):
        raise _problem(shown, where, f"must be a mapping with keys suite, id, reason (model optional), "
                                     f"not {row!r}")
    unknown = [key for key in row if key not in KEYS]
    if unknown:
        raise _problem(shown, where, f"unknown key {unknown[0]!r}; keys are {', '.join(KEYS)}")
    missing = [key for key in REQUIRED if row.get(key) in (None, "")]
    if missing:
        raise _problem(shown, where, f"missing {', '.join(repr(k) for k in missing)} (every entry needs "
                                     f"suite, id and reason)")
    for key in KEYS:
        value = row.get(key)
        # a YAML id may read as a number (`id: 12`): case ids are strings
        if value is not None and (isinstance(value, (bool, dict, list)) or key != "id" and not isinstance(value, str)):
            raise _problem(shown, where, f"{key} must be a string, not {value!r}")
    model = row.get("model")
    return Entry(str(row["suite"]), str(row["id"]), str(row["reason"]), None if model in (None, "") else str(model),
                 where)


def ledger_path(config: pytest.Config) -> str | None:
    value = config.getoption("llm_known_failures", None) or config.getini("llm_known_failures")
    return str(value) if value else None


def install(config: pytest.Config) -> None:
    """Load the ledger named by the option or ini (a usage error if it is malformed) and register
    the plugin that applies it. Every process (xdist controller and workers) runs this."""
    value = ledger_path(config)
    if not value or config.pluginmanager.has_plugin(PLUGIN_NAME):
        return
    path = Path(value).expanduser()
    path = path if path.is_absolute() else config.rootpath / path
    try:
        shown = path.relative_to(config.rootpath).as_posix()
    except ValueError:
        shown = str(path)
    config.pluginmanager.register(KnownFailures(load_ledger(path, shown)), PLUGIN_NAME)


class KnownFailures:
    """Marks ledger cases xfail(strict), reports unmatched entries, words the XPASS failure."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.marked: dict[str, Entry] = {}  # node id -> its entry

    @pytest.hookimpl(tryfirst=True)  # before -k/-m deselect: a deselected case is still a collected one
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        from harness.collect import CaseItem

        cases = [item for item in items if isinstance(item, CaseItem)]
        suites = {item.suite.name: item.suite for item in cases}
        ids = {(item.suite.name, item.case.id) for item in cases}
        for item in cases:
            entry = self.applicable(item.suite, item.case.id, item.model)
            if entry is not None:
                self.marked[item.nodeid] = entry
                item.add_marker(pytest.mark.xfail(strict=True, reason=f"known failure ({self.ledger.shown}, "
                                                                      f"{entry.where}): {entry.reason}"))
        problems = list(self.unmatched(suites, ids))
        workerinput = getattr(config, "workerinput", None)
        # every xdist worker collects the same items: one of them speaks for all
        if problems and (workerinput is None or workerinput.get("workerid") in (None, "gw0")):
            import warnings

            # located at the ledger, where the fix goes, not at this line
            warnings.warn_explicit(KnownFailuresWarning(
                f"known-failures ledger {self.ledger.shown}: {len(problems)} entr{'y' if len(problems) == 1 else 'ies'} "
                f"matched no case of this run: " + "; ".join(problems)), None, str(self.ledger.path), 1)

    def applicable(self, suite: Any, case_id: str, model: str) -> Entry | None:
        if suite.pass_rule is None:
            return None  # record-only: its cases never fail, a strict xfail would always XPASS
        return self.ledger.entry_for(suite.name, case_id, model)

    def unmatched(self, suites: dict[str, Any], ids: set[tuple[str, str]]) -> Iterable[str]:
        for entry in self.ledger.entries:
            if entry.suite not in suites:
                yield f"{entry.name} ({entry.where}): no suite {entry.suite!r} was collected"
            elif (entry.suite, entry.id) not in ids:
                yield f"{entry.name} ({entry.where}): suite {entry.suite!r} has no case {entry.id!r}"
            elif suites[entry.suite].pass_rule is None:
                yield (f"{entry.name} ({entry.where}): suite {entry.suite!r} only records (pass: record), "
                       f"its cases never fail")

    @pytest.hookimpl(wrapper=True, tryfirst=True)  # outside pytest's xfail handling: it sees the final outcome
    def pytest_runtest_makereport(self, item: pytest.Item,
                                  call: pytest.CallInfo[None]) -> Generator[None, Any, pytest.TestReport]:
        report = yield
        entry = self.marked.get(item.nodeid)
        if entry is not None and report.failed and str(report.longrepr).startswith("[XPASS(strict)]"):
            report.longrepr = (f"[XPASS(strict)] {entry.name} passes now: it is fixed, remove it from the "
                               f"known-failures ledger {self.ledger.shown} ({entry.where}: {entry.reason})")
        return report

    def pytest_llm_case_result(self, result: Any, suite: Any, case: Any) -> None:
        entry = self.applicable(suite, case.id, result.model)
        if entry is not None:
            # report.json's case row says why the case is expected to fail (a new dict: the case's own is shared)
            result.metadata = {**result.metadata, "known_failure": entry.reason}
