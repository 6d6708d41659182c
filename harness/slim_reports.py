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
- the call report (and any report kept) shares its node id, path and repeated strings with the
  run's plan, and a passed or failed one drops its keyword names (only skipped reports' keywords
  are read at the end, to fold skip reasons, and those are kept).

Values never change, only which object holds them: every figure, summary line and report file
stays the same. Gate items and other tests' reports are left alone.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness.session import EvalSession

PLUGIN_NAME = "llm-harness-slim-reports"

# one empty mapping for every slimmed report: nothing reads a passed or failed report's keywords
_NO_KEYWORDS: dict[str, int] = {}
_SHARED_VALUES = ("worker_id", "testrun_uid", "$report_type")  # xdist's: the same few strings on every report


class SlimReports:
    def __init__(self, session: EvalSession) -> None:
        self.session = session
        self.config = session.config
        self.dropped = 0  # setup/teardown reports taken off the terminal reporter's list
        # --durations lists every kept report's duration, setup and teardown too: then they stay
        self.drop = getattr(self.config.option, "durations", None) is None

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        plan = self.session.plan
        if plan is None:
            return
        task = plan.by_id.get(report.nodeid)
        if task is None:
            return  # not a case item: a gate, another test
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
    if rebuilt.get("nodeid") == nodeid:  # a pytest that keeps the node id as text
        rebuilt["nodeid"] = nodeid
    if keywords and rebuilt.get("keywords"):
        rebuilt["keywords"] = _NO_KEYWORDS
    report.__dict__ = rebuilt
    _share_node_id(report, nodeid, name)


def _share_node_id(report: Any, nodeid: str, name: str) -> None:
    """pytest 9.2 keeps a parsed node id on each report (``_id``): its path interned, its text and
    its name (the case id, before any ``[model]``) the plan's (equal ones only)."""
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
