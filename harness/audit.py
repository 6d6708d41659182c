"""Determinism audit (``--llm-audit K``): is a gate verdict reproducible?

After a suite run's metrics and gate verdicts are computed, K of its cases are sent again with
the response cache off (neither read nor written), scored the same way and compared with the
run's own results. Every gate of the suite (comparison gates aside) is judged again on the metrics
recomputed with the audited results in place of the originals; a gate whose outcome flips is
*unstable* and fails, whichever way it flipped: a verdict that changes on re-sending cannot gate a
merge, and one that failed in the run stays failed.

- Which cases: the K clean cases answered without error with the smallest sha256 of their case
  id (then node id): the same on every worker count and every model, whatever order results came in.
- The audit judges replies, not speed: an audited case keeps the run's timing fields (latency,
  send times, cached flag), so timing metrics are the run's, and the audit's requests stay out of
  the run's throughput and latency figures.
- A re-send that fails (timeout, HTTP error) says nothing about determinism: that case keeps its
  run result and is listed under ``error_ids``. If the audit cannot run at all (the engine does not
  start), the verdicts stand and the record says why (``error``).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import pytest

from harness.engines.client import Reply, Request
from harness.engines.loop import run_sync
from harness.gates import evaluate_gate, is_comparison, parse_gate
from harness.results import CaseResult, GateResult
from harness.suite import Suite

MAX_IDS = 20
SHOWN_IDS = 5  # in the terminal; report.json keeps MAX_IDS
# the run's own: the audit re-judges what the model said, not how fast it said it
TIMING_FIELDS = ("latency_ms", "ttft_ms", "tpot_ms", "sent_at", "done_at", "cached", "attempts")
UNSTABLE = "unstable"


@dataclass
class AuditRecord:
    """One suite on one model, audited (a list of these is report.json's ``audit`` block)."""

    suite: str
    model: str
    cases: int  # cases re-sent and compared (failed re-sends not counted)
    replies_changed: int = 0
    scores_changed: int = 0
    changed_cases: int = 0  # reply or score changed
    changed_ids: list[str] = field(default_factory=list)  # those cases' ids, first MAX_IDS
    unstable_gates: list[dict[str, Any]] = field(default_factory=list)
    errors: int = 0  # re-sends that failed: left out of the comparison
    error_ids: list[str] = field(default_factory=list)
    error: str | None = None  # why the audit could not run at all

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def audit_size(config: pytest.Config) -> int:
    """K from ``--llm-audit`` / ini ``llm_audit`` (0: off); anything else than a whole number >= 0
    is a usage error."""
    raw = config.getoption("llm_audit", None)
    raw = raw if raw not in (None, "") else config.getini("llm_audit")
    try:
        k = int(str(raw or 0).strip())
    except ValueError:
        k = -1
    if k < 0:
        raise pytest.UsageError(f"llm-harness: --llm-audit takes a whole number of cases >= 0 (0: off), "
                                f"not {raw!r}")
    return k


def _id_hash(case_id: str) -> str:
    return hashlib.sha256(case_id.encode("utf-8")).hexdigest()


def select(results: Iterable[CaseResult], k: int, sendable: Callable[[str], bool]) -> list[CaseResult]:
    """The K clean cases answered without error with the smallest sha256(case id) (all if fewer), in
    the order given (the run's data order, so ids are listed as the reports list cases)."""
    candidates = [r for r in results if r.attack is None and r.error is None and sendable(r.nodeid)]
    chosen = {id(r) for r in sorted(candidates, key=lambda r: (_id_hash(r.id), r.nodeid))[:k]}
    return [r for r in candidates if id(r) in chosen]


def resend(client: Any, requests: Sequence[Request], concurrency: int) -> list[Reply]:
    """Send requests through the run's client, synchronously, at most ``concurrency`` in flight.

    A client that raises gives that request an error reply. Not from inside an event loop: the
    requests run on the process's request loop while this thread waits."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_sync(_send_all(client, list(requests), concurrency))
    raise RuntimeError("the audit sends synchronously and cannot run inside an event loop")


async def _send_all(client: Any, requests: list[Request], concurrency: int) -> list[Reply]:
    if hasattr(client, "send_many"):  # an in-process engine takes a model's requests in one call
        try:
            return list(await client.send_many(requests))
        except Exception as exc:  # noqa: BLE001 - the audit's failure, reported, never the run's
            return [Reply(None, f"engine error: {type(exc).__name__}: {exc}", 0.0) for _ in requests]
    slots = asyncio.Semaphore(max(1, concurrency))

    async def one(request: Request) -> Reply:
        async with slots:
            try:
                return await client.send(request)
            except Exception as exc:  # noqa: BLE001
                return Reply(None, f"client error: {type(exc).__name__}: {exc}", 0.0)

    return list(await asyncio.gather(*(one(r) for r in requests)))


def _with_run_timing(audited: CaseResult, original: CaseResult) -> CaseResult:
    for name in TIMING_FIELDS:
        setattr(audited, name, getattr(original, name))
    return audited


def _reply_of(result: CaseResult) -> tuple[Any, Any]:
    return result.output, result.tool_calls


def compare(original: Sequence[CaseResult], audited: Sequence[CaseResult]) -> tuple[int, int, list[str]]:
    """Replies changed, scores changed, and the ids of the cases where either did (in run order)."""
    replies = scores = 0
    changed = []
    for before, after in zip(original, audited):
        reply = _reply_of(before) != _reply_of(after)
        score = before.score != after.score
        replies += reply
        scores += score
        if reply or score:
            changed.append(before.id)
    return replies, scores, changed


def rejudge(suite: Suite, model: str, results: Sequence[CaseResult], audited: dict[str, CaseResult],
            gates: Sequence[GateResult], hook: Any) -> list[tuple[GateResult, GateResult]]:
    """(run verdict, audit verdict) of every gate judged in the run whose outcome flips when the audited
    results replace the run's. Comparison gates and gates the run did not judge are left out."""
    from harness.suite_metrics import suite_metrics

    judged = [g for g in gates if g.status in ("passed", "failed") and not is_comparison(g.metric)]
    if not judged:
        return []
    mixed = [audited.get(r.nodeid, r) for r in results]
    _, metrics = suite_metrics(suite, mixed)
    if hook is not None:
        from harness.suite_metrics import plain_metrics

        hook.pytest_llm_suite_metrics(suite=suite, model=model, results=list(mixed), metrics=metrics)
        plain_metrics(metrics)
    flips = []
    for gate in judged:
        again = evaluate_gate(parse_gate(gate.expr), metrics)
        if again.status != gate.status:
            flips.append((gate, again))
    return flips


def _value(value: float | None) -> str:
    return "no value" if value is None else f"{value:.4g}"


def unstable_gate(gate: GateResult, again: GateResult, cases: int, replies_changed: int) -> GateResult:
    """The run's verdict turned into a failure that says the gate flipped on re-sending."""
    reason = (f"{UNSTABLE}: {gate.metric} = {_value(gate.value)} in the run, {_value(again.value)} when {cases} "
              f"cases were re-sent with the cache off ({replies_changed} replies changed); a gate that flips on "
              f"re-sending cannot gate a merge")
    return GateResult(gate.expr, gate.metric, gate.op, gate.threshold, gate.value, "failed", reason)


def audit_run(suite: Suite, model: str, results: Sequence[CaseResult], gates: list[GateResult], k: int,
              request_of: Callable[[str], Request | None], client_of: Callable[[], Any], concurrency: int,
              score: Callable[[CaseResult, dict[str, Any]], CaseResult],
              hook: Any) -> tuple[AuditRecord, list[GateResult]]:
    """Audit one concluded suite run: its record, and its gates with the unstable ones failed.

    ``results``: the run's results in data order; ``request_of``: a case's planned request (None if it
    has none); ``client_of``: the model's client (started on first use); ``score``: a case's reply scored
    as the run scores it (the original result and the reply's dict)."""
    chosen = select(results, k, lambda nodeid: request_of(nodeid) is not None)
    record = AuditRecord(suite.name, model, 0)
    if not chosen:
        return record, gates
    try:
        requests = [request_of(r.nodeid) for r in chosen]
        replies = resend(client_of(), requests, concurrency)  # type: ignore[arg-type]
        paired = [(r, _with_run_timing(score(r, reply.to_dict()), r)) for r, reply in zip(chosen, replies)]
        failed = [before for before, after in paired if after.error is not None]
        compared = [(before, after) for before, after in paired if after.error is None]
        record.cases, record.errors = len(compared), len(failed)
        record.error_ids = [r.id for r in failed][:MAX_IDS]
        record.replies_changed, record.scores_changed, changed = compare(
            [b for b, _ in compared], [a for _, a in compared])
        record.changed_cases, record.changed_ids = len(changed), changed[:MAX_IDS]
        flips = rejudge(suite, model, results, {a.nodeid: a for _, a in compared}, gates, hook)
    except Exception as exc:  # noqa: BLE001 - an audit that cannot run leaves the verdicts as judged, and says so
        record.error = f"audit not done: {type(exc).__name__}: {exc}"
        return record, gates
    replaced = {}
    for gate, again in flips:
        record.unstable_gates.append({"expr": gate.expr, "run_value": gate.value, "audit_value": again.value,
                                      "run_status": gate.status, "audit_status": again.status})
        replaced[gate.expr] = unstable_gate(gate, again, record.cases, record.replies_changed)
    return record, [replaced.get(g.expr, g) for g in gates]


def audit_block(records: Iterable[AuditRecord], models: Sequence[str]) -> list[dict[str, Any]]:
    """report.json's ``audit``: one entry per audited suite and model, by suite then model order."""
    order = {name: index for index, name in enumerate(models)}
    return [r.to_dict() for r in sorted(records, key=lambda r: (r.suite, order.get(r.model, len(order)), r.model))]


def audit_lines(block: Sequence[dict[str, Any]]) -> list[str]:
    """The terminal's lines: one per audited suite with a change, an unstable gate or a failure, else
    one line saying nothing changed. Names and ids escaped."""
    from harness.textsafe import visible

    lines = []
    for entry in block:
        name = f"{visible(str(entry['suite']))} [{visible(str(entry['model']))}]"
        if entry.get("error"):
            lines.append(f"{name}: {visible(str(entry['error']))}")
            continue
        if not (entry["replies_changed"] or entry["scores_changed"] or entry["unstable_gates"] or entry["errors"]):
            continue
        line = (f"{name}: {entry['replies_changed']} of {entry['cases']} replies changed, "
                f"{entry['scores_changed']} scores changed")
        if ids := entry["changed_ids"][:SHOWN_IDS]:
            more = " ..." if entry["changed_cases"] > len(ids) else ""
            line += f" ({', '.join(visible(str(i)) for i in ids)}{more})"
        if entry["errors"]:
            line += f"; {entry['errors']} re-sends failed"
        for gate in entry["unstable_gates"]:
            line += (f"; UNSTABLE gate {visible(str(gate['expr']))}: {_value(gate['run_value'])} in the run, "
                     f"{_value(gate['audit_value'])} re-sent")
        lines.append(line)
    if not lines:
        cases = sum(entry["cases"] for entry in block)
        lines.append(f"{cases} case(s) of {len(block)} suite run(s) re-sent with the cache off: no reply or score "
                     f"changed")
    return lines
