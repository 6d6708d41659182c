"""The hooks users implement to extend a run: ``pytest_llm_*`` functions in a ``conftest.py`` or a plugin.

Added to pytest by ``pytest_addhooks`` (as pytest-xdist adds its own). The xdist controller
loads the ``conftest.py`` files of every folder its workers collect, so a hook (or a scorer)
defined in a nested ``conftest.py`` takes effect with and without ``-n``. Where a hook runs:

- ``pytest_llm_build_request``: on the controller, once per case, before the cache lookup;
- ``pytest_llm_case_result``: in the process that scored the case (an xdist worker, or the
  controller for cases a selected gate needed that were not selected themselves);
- ``pytest_llm_suite_metrics``, ``pytest_llm_make_engine``, ``pytest_llm_write_report``: on
  the controller (``pytest_llm_make_engine`` in any process that starts or reaches an engine).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pytest

if TYPE_CHECKING:
    from harness.engines.client import Request
    from harness.engines.registry import Engine
    from harness.models import ModelSpec
    from harness.results import CaseResult
    from harness.suite import Case, Suite

hookspec = pytest.hookspec


@hookspec(firstresult=True)
def pytest_llm_build_request(suite: Suite, case: Case, model: str, request: Request) -> Request | None:
    """Rewrite the request of one case before it is looked up in the cache and sent.

    Return a new :class:`harness.Request` (``dataclasses.replace(request, ...)``) or None to keep
    it. The first implementation that returns a request wins. The cache key is taken from the
    request this hook returns, so a rewrite never reuses replies to the old one."""


@hookspec
def pytest_llm_case_result(result: CaseResult, suite: Suite, case: Case) -> None:
    """Inspect or change a case's result after scoring, before its pass rule is applied.

    Change ``result.score``, ``result.reason``, ``result.data`` or ``result.metadata`` in place;
    the pass rule (``pass:`` in the suite file) then judges the score you leave."""


@hookspec
def pytest_llm_suite_metrics(suite: Suite, model: str, results: Sequence[CaseResult],
                             metrics: dict[str, float | None]) -> None:
    """Add or change suite metrics (in ``metrics``, in place) before the suite's gates are judged.

    ``results`` are every case result of the suite on ``model`` in data order: a read-only sequence
    that a run reads from disk as you iterate it (each read is a fresh object; changing one changes
    nothing). A metric you add here can be gated on like any other (``gates: [my_metric >= 0.9]``)."""


@hookspec(firstresult=True)
def pytest_llm_make_engine(spec: ModelSpec) -> Engine | None:
    """Return the engine that serves ``spec`` (an object with the :class:`harness.Engine`
    interface), or None to leave it to the next implementation and then to the registry.

    The registry holds the built-in kinds and those installed packages declare in the
    ``pytest_llm_harness.engines`` entry-point group."""


@hookspec
def pytest_llm_write_report(record: dict[str, Any], out_dir: Path) -> list[Path] | None:
    """Write an extra report of a finished run into ``out_dir``; return the paths written.

    ``record`` is the report envelope (what report.json holds): ``run``, ``suites``, ``cases``.
    ``cases`` is a sequence (``len``, indexing, iteration) whose dicts are built as they are read, so a
    million cases never stand in memory at once: read them in one pass, or ``list()`` them to keep."""


def raised(exc: BaseException, root: Path | None = None) -> str:
    """A hook's exception as the run reports it: ``OSError: disk full (conftest.py:19)``, its type, its words and
    the line that raised it (relative to ``root`` where below it)."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        path = Path(frames[-1].filename)
        shown = path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root) else str(path)
        where = f" ({shown}:{frames[-1].lineno})"
    return f"{type(exc).__name__}: {exc}{where}"
