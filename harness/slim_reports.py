"""The case items' test reports, slimmed for the end of the run on the controller.

pytest's terminal reporter keeps every report it is given until the session ends: three per item
(setup, call, teardown), each with its own copies of the node id, the location and the item's
keyword names, and under xdist with the strings execnet made for every message. A million cases
made about six kilobytes a case of them, more than all the harness's own records.

After every other plugin has seen a case item's report (this hook is trylast: junitxml, the
``--lf`` cache, the terminal's own line and any user plugin read it whole), the report is slimmed:

- a passed setup or teardown report with nothing to show (no captured output, no longrepr, no
  user properties) is taken back off the terminal reporter's list of such reports
  (``stats[""]``), which nothing but ``-rP``/``-rA`` reads, for output a report without
  sections prints nothing for (with ``--durations``, which lists them, they stay);
- a passed call report with nothing to show is replaced on the terminal reporter's list by a
  :class:`CompactReport`: a slotted ``TestReport`` with the five values the end of the run reads
  (node id, location, outcome, phase, duration), about 100 bytes instead of 1.3 kilobytes;
- any other report kept shares its node id, path and repeated strings with the run's plan, and a
  failed one drops its keyword names (only skipped reports' keywords are read at the end, to fold
  skip reasons, and those are kept).

Values never change, only which object holds them: every figure, summary line and report file
stays the same. Gate items and other tests' reports are left alone.
"""

from __future__ import annotations

import inspect
import sys
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generator

import pytest

if TYPE_CHECKING:
    from harness.plan import CaseRef
    from harness.session import EvalSession

PLUGIN_NAME = "llm-harness-slim-reports"

# one empty mapping for every slimmed report: nothing reads a passed or failed report's keywords
_NO_KEYWORDS: dict[str, int] = {}
_SHARED_VALUES = ("worker_id", "testrun_uid", "$report_type")  # xdist's: the same few strings on every report


# pytest 9.2 keeps a report's node id parsed (``_id``, read through the ``nodeid`` property)
_ID_SLOT = "_id" if isinstance(inspect.getattr_static(pytest.TestReport, "nodeid", None), property) else "nodeid"


class CompactReport(pytest.TestReport):
    """A passed call report as the terminal reporter keeps it to the end of the run: what the summary
    line, ``-rA``, ``--durations`` and other plugins' terminal summaries read, and nothing else (no
    captured output, longrepr, user properties or keyword names: it is only made when they are empty).

    Its location is made again when it is read, from the plan's case (the file, the case's line, the
    suite and item name), when that gives the report's own; else the report's tuple is kept."""

    __slots__ = (_ID_SLOT, "outcome", "when", "duration", "_path", "_ref", "_location")
    longrepr = None
    sections: tuple[tuple[str, str], ...] = ()  # type: ignore[assignment]
    user_properties: tuple[tuple[str, object], ...] = ()  # type: ignore[assignment]
    keywords = MappingProxyType({})  # type: ignore[assignment]

    def __init__(self, report: pytest.TestReport, ref: CaseRef) -> None:  # noqa: D107 - no TestReport.__init__
        setattr(self, _ID_SLOT, report.__dict__[_ID_SLOT])
        self.outcome = report.outcome
        self.when = report.when
        self.duration = report.duration
        location = report.location
        self._path = location[0]
        self._ref = ref
        self._location = None
        if self.location != location:
            self._ref, self._location = None, location

    @property  # type: ignore[override]
    def location(self) -> tuple[str, int | None, str]:
        if self._ref is None:
            return self._location
        ref = self._ref
        return self._path, ref.case.line - 1, f"{ref.suite.name}::{ref.nodeid.rsplit('::', 1)[-1]}"


def compactable(report: pytest.TestReport) -> bool:
    """A passed call report with nothing to show but its outcome and duration."""
    return (report.when == "call" and report.passed and not report.sections and report.longrepr is None
            and not report.user_properties and not hasattr(report, "wasxfail") and _ID_SLOT in report.__dict__)


class SlimReports:
    def __init__(self, session: EvalSession) -> None:
        self.session = session
        self.config = session.config
        self.dropped = 0  # setup/teardown reports taken off the terminal reporter's list
        self.compacted = 0  # passed call reports replaced there by a CompactReport
        # --durations lists every kept report's duration, setup and teardown too: then they stay
        self.drop = getattr(self.config.option, "durations", None) is None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Generator[None, None, None]:
        plan = self.session.plan
        task = plan.by_id.get(report.nodeid) if plan is not None else None
        if task is not None:
            # before the terminal reporter keeps the node id (in its set of reported ids, for a run's
            # percentage): the plan's copy, not one more from the worker's message
            share_node_id(report, task.ref.nodeid, task.ref.case.id)
        yield
        if task is not None:
            self._slim(report, task)

    def _slim(self, report: pytest.TestReport, task: Any) -> None:
        """After every other implementation: the terminal reporter has appended the report to its list."""
        if (self.drop and report.when in ("setup", "teardown") and report.passed and not report.sections
                and report.longrepr is None and not report.user_properties):
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            kept = getattr(reporter, "stats", {}).get("") if reporter is not None else None
            # the terminal reporter (not trylast) has just appended it: take the last entry only
            if kept and kept[-1] is report:
                kept.pop()
                self.dropped += 1
                return
        slim(report, task.ref.nodeid, task.ref.case.id, keywords=report.outcome in ("passed", "failed"))
        if compactable(report):
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            kept = getattr(reporter, "stats", {}).get("passed") if reporter is not None else None
            if kept and kept[-1] is report:
                kept[-1] = CompactReport(report, task.ref)
                self.compacted += 1


def slim(report: pytest.TestReport, nodeid: str, name: str, keywords: bool) -> None:
    """Share a report's strings with ``nodeid`` and ``name`` (the plan's node id and case id) and
    interned copies; drop its keywords when ``keywords``. Every value stays equal."""
    state = report.__dict__
    # execnet makes new key strings for every message: a rebuilt dict shares pytest's
    rebuilt = {sys.intern(key) if type(key) is str else key: value for key, value in state.items()}
    for shared in _SHARED_VALUES:
        value = rebuilt.get(shared)
        if type(value) is str:
            rebuilt[shared] = sys.intern(value)
    location = rebuilt.get("location")
    if type(location) is tuple and len(location) == 3 and type(location[0]) is str:
        rebuilt["location"] = (sys.intern(location[0]), *location[1:])
    if keywords and rebuilt.get("keywords"):
        rebuilt["keywords"] = _NO_KEYWORDS
    report.__dict__ = rebuilt
    share_node_id(report, nodeid, name)


def share_node_id(report: Any, nodeid: str, name: str) -> None:
    """A report's node id becomes ``nodeid`` (the plan's equal copy). pytest 9.0 keeps it as text;
    9.2 keeps a parsed node id (``_id``): its path interned, its text and its name (the case id,
    before any ``[model]``) the plan's (equal ones only)."""
    state = report.__dict__
    if type(state.get("nodeid")) is str and state["nodeid"] is not nodeid and state["nodeid"] == nodeid:
        state["nodeid"] = nodeid
    parsed = getattr(report, "_id", None)
    if parsed is None or not hasattr(parsed, "path") or not hasattr(parsed, "_str_cache"):
        return
    try:
        if type(parsed.path) is str:
            object.__setattr__(parsed, "path", sys.intern(parsed.path))
        if parsed._str_cache == nodeid:
            object.__setattr__(parsed, "_str_cache", nodeid)
        names = getattr(parsed, "names", None)
        if type(names) is tuple and len(names) == 1 and names[0] == name and names[0] is not name:
            object.__setattr__(parsed, "names", (name,))
    except (AttributeError, TypeError):
        pass
