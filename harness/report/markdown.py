"""report.md: a human summary of one run, readable in a PR comment or CI log."""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path, PurePath
from typing import Any, Iterable

from harness.report.files import write_text
from harness.report.forest import FILENAME as FOREST_PNG
from harness.report.forest import forest_rows
from harness.report.heatmap import confusion_pngs
from harness.report.training_plots import throughput_pngs, training_pngs
from harness.textsafe import visible
from harness.report.formatting import as_text as _as_text
from harness.report.formatting import finite as _finite
from harness.report.formatting import interval as _interval
from harness.report.formatting import is_bad
from harness.report.formatting import ms as _ms
from harness.report.formatting import ms1 as _ms1
from harness.report.formatting import num as _num
from harness.report.formatting import num4 as _num4
from harness.report.formatting import p_value as _p
from harness.report.formatting import pct as _pct
from harness.report.formatting import prompt_text as _prompt_text
from harness.report.formatting import signed as _signed

FILENAME = "report.md"
WORST_CASES = 10
SNIPPET = 160
MICRO, MACRO = "micro avg", "macro avg"
_STATS = ("precision", "recall", "f1")
MAX_IDS = 20  # per list of unmatched, duplicate or changed ids; the rest are counted


def write_markdown(report: dict[str, Any], out_dir: Path) -> Path:
    """Render the envelope as Markdown and write it; return the path."""
    # link the forest plot only if write_reports drew it (matplotlib may be missing)
    forest = (Path(out_dir) / FOREST_PNG).is_file() and bool(forest_rows(report)[0])
    plots = {name for _, name in [*training_pngs(report), *throughput_pngs(report)] if (Path(out_dir) / name).is_file()}
    # the harness's own Markdown has no control characters: every one left came from a model or a dataset
    return write_text(Path(out_dir) / FILENAME, visible(render_markdown(report, forest=forest, plots=plots)))


def render_markdown(report: dict[str, Any], forest: bool = False, plots: set[str] | None = None) -> str:
    """The whole report as one Markdown string; ``forest``: link comparison.png; ``plots``: the
    training PNGs drawn (linked).

    An envelope that is only a comparison (``python -m harness.comparison report``) gets only that section."""
    if set(report) == {"comparison"}:
        return "# LLM comparison report\n\n" + _comparison(report, forest)
    run = report.get("run") or {}
    suites: list[dict[str, Any]] = report.get("suites") or []
    cases: list[dict[str, Any]] = report.get("cases") or []
    parts = [
        f"# LLM eval report — run {_text(run.get('id'))}\n",
        # training gates count in the verdict as eval gates do
        _overview(run, [*suites, *({"gates": t.get("gates")} for t in report.get("training") or [])]),
        _summary(suites),
        _comparison(report, forest),
        _gates(suites),
        _determinism_audit(report),
        _confusion(report),
        _judges(suites),
        _tool_calls(suites),
        _worst(suites, cases),
        _training(report, plots or set()),
        _repro(run),
    ]
    return "\n".join(p for p in parts if p)


# -- sections ---------------------------------------------------------------


def _overview(run: dict[str, Any], suites: list[dict[str, Any]]) -> str:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for suite in suites:
        for gate in suite.get("gates") or []:
            status = gate.get("status")
            counts[status] = counts.get(status, 0) + 1
    verdict = "FAILED" if counts["failed"] else "PASSED"
    return (
        f"**Gates {verdict}**: {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['skipped']} skipped · started {_text(run.get('started_at'))} · "
        f"duration {_num(run.get('duration_s'))} s\n"
    )


def _summary(suites: list[dict[str, Any]]) -> str:
    rows = []
    for s in suites:
        metrics = s.get("metrics") or {}
        cases = f"{_num(s.get('cases'))}/{_num(s.get('total_cases'))}"
        if s.get("subset"):
            cases += " (subset)"
        main = s.get("main_metric")
        gates = s.get("gates") or []
        passed = sum(1 for g in gates if g.get("status") == "passed")
        skipped = sum(1 for g in gates if g.get("status") == "skipped")
        gate_cell = f"{passed}/{len(gates)}" + (f" ({skipped} skipped)" if skipped else "")
        p99 = metrics.get("latency_p99_ms")
        rows.append(
            [
                s.get("name"),
                s.get("model"),
                cases,
                f"{main}={_num(metrics.get(main))}{_interval(metrics, main)}" if main else "—",
                _pct(metrics.get("error_rate")),
                "—" if p99 is None else f"{_num(p99)} ms",
                gate_cell,
            ]
        )
    headers = ["Suite", "Model", "Cases", "Main metric", "Error rate", "p99 latency", "Gates"]
    return "## Summary\n\n" + _table(headers, rows)


def _comparison(report: dict[str, Any], forest: bool) -> str:
    comparison = report.get("comparison")
    if not isinstance(comparison, dict):
        return ""
    parts = ["## Comparison\n", _comparison_header(comparison)]
    if forest:
        drawn, total = forest_rows(report)
        note = f" (first {len(drawn)} of {total} rows)" if total > len(drawn) else ""
        parts.append(f"![forest plot of the quality deltas and their intervals{note}]({FOREST_PNG})\n")
    parts += [_pair(pair) for pair in comparison.get("pairs") or [] if isinstance(pair, dict)]
    if not comparison.get("pairs"):
        parts.append("_No pairs compared._\n")
    return "\n".join(parts)


def _comparison_header(comparison: dict[str, Any]) -> str:
    ref = comparison.get("reference") or {}
    if ref.get("kind") == "baseline":
        details = [f"model {_md(ref.get('name'))}"]
        if ref.get("created"):
            details.append(f"created {_md(ref['created'])}")
        if ref.get("git_commit"):
            details.append(f"git commit {_code(_md(ref['git_commit'], html=False))}")
        line = f"Reference: baseline {_code(_md(ref.get('path'), html=False))} ({', '.join(details)})"
        if ref.get("reason"):
            line += f"; reason: {_md(ref['reason'])}"
    else:
        line = f"Reference: model **{_md(ref.get('name'))}**"
    # suites with models of their own (model: {train: ...}) compare them with their own reference
    own = ref.get("suites") if isinstance(ref.get("suites"), dict) else {}
    if own := {suite: name for suite, name in own.items() if name != ref.get("name")}:
        each = ", ".join(f"{_md(suite)}: **{_md(name)}**" for suite, name in own.items())
        line = f"{line} ({each})" if ref.get("name") is not None or ref.get("kind") == "baseline" else \
            f"Reference: per suite ({each})"
    family = comparison.get("family") or {}
    confidence = comparison.get("confidence")
    level = f"{confidence * 100:g}%" if _finite(confidence) else _num(confidence)
    return (f"{line} · {_num4(comparison.get('resamples'))} paired bootstrap resamples · {level} intervals · "
            f"{_md(family.get('method'))} adjustment over {_num(family.get('size'))} p-values · "
            f"seed {_num(comparison.get('seed'))}\n")


def _pair(pair: dict[str, Any]) -> str:
    ref, cand = _md(pair.get("reference")), _md(pair.get("candidate"))
    out = [f"### {_md(pair.get('suite'))}: {cand} vs {ref}\n"]
    # a model against its own baseline: both columns would carry the same name
    ref_col, cand_col = (f"{ref} (reference)", f"{cand} (candidate)") if ref == cand else (ref, cand)
    matched = f"{_num(pair.get('matched'))} paired cases"
    if pair.get("clusters") is not None:
        matched += f" in {_num(pair.get('clusters'))} clusters"
    out.append(matched + ".\n")
    if pair.get("refused"):
        out.append(f"**Comparison refused**: {_md(pair['refused'])}\n")
    rows = sorted((r for r in pair.get("rows") or [] if isinstance(r, dict)),
                  key=lambda r: (r.get("kind") != "quality", not r.get("main")))
    if rows:
        headers = ["metric", _cell(ref_col), _cell(cand_col), "Δ [low, high]", "p (Holm)", "ρ",
                   "improved / regressed"]
        out.append(_table(headers, [_comparison_row(r) for r in rows]))
    if notes := [line for r in rows for line in _row_notes(r)]:
        out.append("\n".join(notes) + "\n")
    warnings = [str(w) for w in pair.get("warnings") or []]
    warnings += [f"{r.get('metric')}: {r['warning']}" for r in rows if r.get("warning")]
    if warnings:
        out.append("Warnings:\n\n" + "\n".join(f"- ⚠ {_md(w)}" for w in warnings) + "\n")
    for key, title in (("only_reference", f"Only in reference {ref}"), ("only_candidate", f"Only in candidate {cand}"),
                       ("duplicates", "Duplicate ids"), ("changed_input", "Input changed")):
        if ids := pair.get(key) or []:
            out.append(f"{title} ({len(ids)}): {_id_list(ids)}\n")
    if n := len(pair.get("disagreements") or []):
        out.append(f"Cases scored differently: {n}, listed in report.json and report.xlsx (disagreements).\n")
    return "\n".join(out)


def _comparison_row(row: dict[str, Any]) -> list[str]:
    latency = row.get("kind") == "latency"
    value = _ms if latency else _num4
    bound = _ms1 if latency else _num4
    name = _md(row.get("metric"))
    delta = _signed(row.get("delta"), latency) + (" ms" if latency and _finite(row.get("delta")) else "")
    if row.get("lower") is not None and row.get("upper") is not None:
        delta += f" [{bound(row.get('lower'))}, {bound(row.get('upper'))}]"
    p = _p(row.get("p"))
    if row.get("p_holm") is not None:
        p += f" ({_p(row.get('p_holm'))})"
    counts = "—" if row.get("improved") is None and row.get("regressed") is None \
        else f"{_num(row.get('improved'))} / {_num(row.get('regressed'))}"
    rho = row.get("rho")
    return [f"**{name}** (main)" if row.get("main") else name, value(row.get("reference")),
            value(row.get("candidate")), delta, p, _num(rho) if not _finite(rho) else f"{rho:.2f}", counts]


def _row_notes(row: dict[str, Any]) -> list[str]:
    notes = []
    if row.get("mcnemar_p") is not None:
        notes.append(f"McNemar p {_p(row['mcnemar_p'])}, {_num(row.get('discordant'))} discordant")
    if row.get("mde") is not None:
        mde = _ms(row["mde"]) if row.get("kind") == "latency" else _num4(row["mde"])
        notes.append(f"smallest detectable difference {mde}")
    return [f"- {_md(row.get('metric'))}: {'; '.join(notes)}"] if notes else []


def _id_list(ids: list[Any]) -> str:
    shown = ", ".join(_code(_md(i, html=False)) for i in ids[:MAX_IDS])
    return shown + (f" and {len(ids) - MAX_IDS} more" if len(ids) > MAX_IDS else "")


def _md(value: Any, html: bool = True) -> str:
    """Untrusted text on one line: controls escaped, newlines as \\n, no tags, no math (GitHub's $...$).
    ``html=False`` for text going into a code span, where entities would show literally."""
    text = visible("—" if value is None else str(value), keep_newlines=False)
    return text if not html else _no_html(text).replace("$", "\\$")


def _confusion(report: dict[str, Any]) -> str:
    parts = []
    # the heatmap next to each matrix: the file write_reports draws under the same name
    for s, png in confusion_pngs(report):
        table = s["tables"]["confusion"]
        labels = [str(label) for label in table["labels"]]
        rows = [[f"**{label}**", *(str(v) for v in row)] for label, row in zip(labels, table["matrix"])]
        title = f"{_text(s.get('name'))} ({_text(s.get('model'))})"
        parts.append(f"### {title}\n\n" + _table(["target \\ predicted", *labels], rows)
                     + f"\n![confusion matrix heatmap: {_alt(title)}]({png})\n")
    return "## Confusion matrices\n\n" + "\n".join(parts) if parts else ""


def _judges(suites: list[dict[str, Any]]) -> str:
    """Judge-graded suites: the judge, its agreement with people and with itself, and self-grading."""
    parts = []
    for s in suites:
        table = (s.get("tables") or {}).get("judge")
        if not isinstance(table, dict):
            continue
        metrics = s.get("metrics") or {}
        lines = [f"### {_md(s.get('name'))} ({_md(s.get('model'))})\n",
                 f"Judge {_code(_md(table.get('model'), html=False))}, rubric {_code(_md(table.get('rubric'), html=False))}, "
                 f"{_num(metrics.get('judge_cases'))} cases judged, verdict errors "
                 f"{_num(metrics.get('judge_error_rate'))}{_interval(metrics, 'judge_error_rate')}.\n"]
        if table.get("self_grading"):
            lines.append(f"> ⚠️ {_md(table['self_grading'])}\n")
        if table.get("scale") == ["A", "B", "tie"] and not metrics.get("judge_cases"):
            lines[1] = (f"Judge {_code(_md(table.get('model'), html=False))}, pairwise: this model is the reference, "
                        f"the other models' answers are judged against its answers.\n")
        position = table.get("position")
        if isinstance(position, dict):
            lines.append(f"Position-swap consistency: {_num(position.get('consistent'))} of {_num(position.get('n'))} "
                         f"cases got the same verdict with the answers shown in both orders (the others count as "
                         f"ties).\n")
        found = table.get("agreement")
        if isinstance(found, dict):
            weights = f" ({found['weights']} weights)" if found.get("weights") else ""
            lines.append(
                f"Agreement with human labels on {_num(found.get('n'))} cases: accuracy "
                f"{_num(found.get('accuracy'))}{_interval(found, 'accuracy')}, Cohen's kappa{weights} "
                f"{_num(found.get('kappa'))}{_interval(found, 'kappa')} (95% bootstrap intervals); "
                f"{_num(found.get('missing'))} without a verdict, {_num(found.get('unlabelled'))} without a "
                f"label on the scale.\n")
            if found.get("note"):
                lines.append(f"Note: {_md(found['note'])}\n")
            confusion = found.get("confusion") or {}
            labels = [_md(label) for label in confusion.get("labels") or []]
            if labels:
                rows = [[f"**{label}**", *(str(v) for v in row)] for label, row in zip(labels, confusion["matrix"])]
                lines.append(_table(["human \\ judge", *labels], rows))
        own = table.get("self_agreement")
        if isinstance(own, dict):
            lines.append(f"Self-agreement over {_num(own.get('samples'))} samples per case: "
                         f"{_num(own.get('mean_agreement'))} of sample pairs agree, Fleiss' kappa "
                         f"{_num(own.get('fleiss_kappa'))} ({_num(own.get('n'))} cases).\n")
        parts.append("\n".join(lines))
    return "## Judges\n\n" + "\n".join(parts) if parts else ""


def _tool_calls(suites: list[dict[str, Any]]) -> str:
    parts = []
    for s in suites:
        tables = s.get("tables") or {}
        if "tool_metrics" not in tables:
            continue
        rows = [
            [_code(name) if name not in (MICRO, MACRO) else f"**{name}**",
             *(_num(row.get(k)) for k in (*_STATS, "support"))]
            for name, row in tool_table_rows(tables["tool_metrics"])
        ]
        parts.append(f"### {_text(s.get('name'))} ({_text(s.get('model'))})\n\n"
                     + _table(["Tool", "P", "R", "F1", "Support"], rows))
    return "## Tool calls\n\n" + "\n".join(parts) if parts else ""


def _determinism_audit(report: dict[str, Any]) -> str:
    """--llm-audit: per suite and model, what changed when cases were re-sent with the cache off."""
    audit = report.get("audit")
    entries = [e for e in audit if isinstance(e, dict)] if isinstance(audit, list) else []
    if not entries:
        return ""
    rows, notes = [], []
    for e in entries:
        unstable = ", ".join(f"{_code(_md(g.get('expr'), html=False))} ({_num(g.get('run_value'))} → "
                             f"{_num(g.get('audit_value'))})" for g in e.get("unstable_gates") or [])
        rows.append([_md(e.get("suite")), _md(e.get("model")), _num(e.get("cases")), _num(e.get("replies_changed")),
                     _num(e.get("scores_changed")), f"❌ {unstable}" if unstable else "—"])
        title = f"{_md(e.get('suite'))} ({_md(e.get('model'))})"
        if e.get("error"):
            notes.append(f"- {title}: {_md(e['error'])}")
        if ids := e.get("changed_ids") or []:
            notes.append(f"- {title}, changed ({_num(e.get('changed_cases', len(ids)))}): {_id_list(ids)}")
        if ids := e.get("error_ids") or []:
            notes.append(f"- {title}, re-send failed, left out ({_num(e.get('errors'))}): {_id_list(ids)}")
    head = ("## Determinism audit\n\nCases of each suite re-sent with the response cache off and scored again; "
            "a gate whose outcome flips is failed as unstable.\n")
    table = _table(["Suite", "Model", "Re-sent", "Replies changed", "Scores changed", "Unstable gates"], rows)
    return "\n".join([head, table, *(["\n".join(notes) + "\n"] if notes else [])])


def _training(report: dict[str, Any], plots: set[str]) -> str:
    """Per training job: versions, its gates, its key metrics, the curves' PNG and the throughput PNG."""
    pngs = {id(entry): name for entry, name in training_pngs(report) if name in plots}
    throughput = {id(entry): name for entry, name in throughput_pngs(report) if name in plots}
    parts = []
    for entry in report.get("training") or []:
        versions = entry.get("versions") or {}
        lines = [f"### {_md(entry.get('job'))} ({_md(entry.get('trainer'))})\n"]
        if versions:
            lines.append("Versions: " + ", ".join(f"{_md(k)} {_code(_md(v, html=False))}" for k, v in versions.items())
                         + f" · wall {_num(entry.get('wall_s'))} s\n")
        if entry.get("error"):
            lines.append(f"**Run failed**: {_md(entry['error'])}\n")
        gates = [[_code(_md(g.get("expr"), html=False)), _status(g.get("status")), _md(g.get("reason"))]
                 for g in entry.get("gates") or []]
        lines.append(_table(["gate", "outcome", "reason"], gates))
        metrics = entry.get("metrics") or {}
        if metrics:
            lines.append(_table(["metric", "value"], [[_md(k), _num(v)] for k, v in metrics.items()]))
        if id(entry) in pngs:
            lines.append(f"![training curves of {_alt(_md(entry.get('job')))}]({pngs[id(entry)]})\n")
        if id(entry) in throughput:
            lines.append(f"![throughput and memory of {_alt(_md(entry.get('job')))}]({throughput[id(entry)]})\n")
        parts.append("\n".join(lines))
    return "## Training\n\n" + "\n".join(parts) if parts else ""


def _gates(suites: list[dict[str, Any]]) -> str:
    rows = [
        [
            s.get("name"),
            s.get("model"),
            _code(str(g.get("expr", ""))),
            _num(g.get("value")),
            _num(g.get("threshold")),
            _status(g.get("status")),
            g.get("reason") or "",
        ]
        for s in suites
        for g in s.get("gates") or []
    ]
    if not rows:
        return "## Gates\n\n_No gates configured._\n"
    headers = ["Suite", "Model", "Gate", "Value", "Threshold", "Status", "Reason"]
    return "## Gates\n\n" + _table(headers, rows)


def _worst(suites: list[dict[str, Any]], cases: Iterable[dict[str, Any]]) -> str:
    # one pass over the cases, keeping counts and only the worst few of each suite and model: a large
    # run's cases are read one at a time (harness.envelope.CaseRows), never all held
    groups: dict[tuple[str, str], list[int]] = {}  # -> [cases, failing]
    worst: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def order(c: dict[str, Any]) -> tuple[bool, Any]:
        return c.get("error") is None, _score_key(c.get("score"))  # errors first, then the lowest scores

    for s in suites:
        groups.setdefault((str(s.get("name")), str(s.get("model"))), [0, 0])
    for c in cases:
        key = (str(c.get("suite")), str(c.get("model")))
        counts = groups.setdefault(key, [0, 0])
        counts[0] += 1
        if is_bad(c):
            counts[1] += 1
            kept = worst.setdefault(key, [])
            kept.append(c)
            if len(kept) >= 4 * WORST_CASES:
                kept.sort(key=order)  # stable: equal cases stay in data order
                del kept[WORST_CASES:]

    out = ["## Worst cases\n"]
    headers = ["ID", "Prompt (tail)", "Output", "Extracted", "Target", "Score", "Reason / error"]
    for (suite, model), (total, failing) in groups.items():
        out.append(f"### {_text(suite)} · {_text(model)}\n")
        if not failing:
            out.append(f"_No failing cases among {total}._\n")
            continue
        shown = sorted(worst[(suite, model)], key=order)[:WORST_CASES]
        out.append(f"{len(shown)} of {failing} failing (of {total} cases):\n")
        rows = [
            [
                _code(str(c.get("id"))),
                _tail(_prompt_text(c.get("prompt")), SNIPPET),
                _head(_as_text(c.get("output")), SNIPPET),
                _head(_as_text(c.get("extracted")), SNIPPET),
                _head(_as_text(c.get("target")), SNIPPET),
                _num(c.get("score")),
                _head(_as_text(c.get("error") or c.get("reason")), SNIPPET),
            ]
            for c in shown
        ]
        out.append(_table(headers, rows))
    return "\n".join(out)


def _repro(run: dict[str, Any]) -> str:
    commit = _code(str(run.get("git_commit"))) if run.get("git_commit") else "—"
    if run.get("git_dirty"):
        commit += " (dirty working tree)"
    args = run.get("pytest_args") or []
    lines = [
        "## Reproducibility\n",
        f"- Harness version: {_code(str(run.get('harness_version')))}",
        f"- Git commit: {commit}",
        f"- Python: {_text(run.get('python'))}",
        f"- Platform: {_text(run.get('platform'))}",
        f"- pytest args: {_code(shlex.join(str(a) for a in args)) if args else '—'}",
        f"- xdist workers: {_num(run.get('xdist_workers'))}",
        f"- Started / finished: {_text(run.get('started_at'))} / {_text(run.get('finished_at'))}",
        "",
        *_packages(run),
        "### Models\n",
    ]
    for m in run.get("models") or []:
        engine = m.get("engine") or {}
        argv = (engine.get("launch") or {}).get("argv") or []
        lines += [
            f"- **{_text(m.get('name'))}**",
            f"  - source: {_code(str(m.get('source')))}",
            f"  - weights sha256: {_code(str(m.get('weights_sha256')))}",
            f"  - engine: {_code(str(engine.get('kind')))}"
            + (f" at {_code(str(engine['base_url']))}" if engine.get("base_url") else ""),
            f"  - launch argv: {_code(shlex.join(str(a) for a in argv)) if argv else '—'}",
        ]
    generation = run.get("generation") or {}
    lines += ["", "### Generation\n"]
    lines += [f"- {_text(k)}: {_code(_as_text(v))}" for k, v in generation.items()] or ["—"]

    lines += ["", "### Datasets\n"]
    rows = [
        [d.get("suite"), _code(str(d.get("path"))), _code(str(d.get("md5"))), _num(d.get("rows"))]
        for d in run.get("datasets") or []
    ]
    lines.append(_table(["Suite", "Path", "MD5", "Rows"], rows) if rows else "—\n")

    lines += ["### Suite configs\n"]
    for cfg in run.get("suites_config") or []:
        prompt = cfg.get("prompt") or {}
        scorer = cfg.get("scorer") or {}
        lines += [
            f"#### {_text(cfg.get('name'))}\n",
            f"- api: {_code(str(cfg.get('api')))}, "
            f"chat template: {_code(str(cfg.get('chat_template')))}",
            f"- scorer: {_code(str(scorer.get('name')))} "
            f"options {_code(_as_text(scorer.get('options') or {}))}",
            f"- generation: {_code(_as_text(cfg.get('generation') or {}))}",
            f"- pass: {_code(str(cfg.get('pass')))}",
            f"- gates: {', '.join(_code(str(g)) for g in cfg.get('gates') or []) or '—'}",
            "",
        ]
        if prompt.get("system"):
            lines += ["System prompt:\n", _fence(str(prompt["system"]))]
        lines += ["Prompt template:\n", _fence(str(prompt.get("template") or ""))]
    return "\n".join(lines)


def _packages(run: dict[str, Any]) -> list[str]:
    """The versions of the packages that matter (``run.packages``) and a link to the freeze file of all."""
    packages = run.get("packages")
    freeze = run.get("packages_freeze")
    if not isinstance(packages, dict) and not freeze:
        return []
    lines = ["### Packages\n"]
    if isinstance(packages, dict) and packages:
        rows = [[_md(name), "not installed" if version is None else _code(_md(version, html=False))]
                for name, version in packages.items()]
        lines.append(_table(["Package", "Version"], rows))
    if isinstance(freeze, str) and (name := PurePath(freeze).name):
        # the file write_freeze wrote beside report.md
        target = name.replace(" ", "%20").replace("(", "%28").replace(")", "%29")
        lines.append(f"Every installed distribution (`pip freeze`): [{_md(name)}]({target})\n")
    return lines


# -- helpers ----------------------------------------------------------------


def tool_table_rows(table: Any) -> list[tuple[str, dict[str, Any]]]:
    """(name, row) per tool or parameter of a tool-call table, then its micro and macro rows.

    table is ``{name: {precision, recall, f1, support, predicted, hits}}`` (the scorer's
    ``tool_metrics``/``param_metrics``), or that under ``per_tool``/``per_param`` next to its
    own ``micro`` and ``macro``. Averages as the metrics define them: micro from the pooled
    counts, macro the plain mean over the rows, 0 with no rows.
    """
    if not isinstance(table, dict):
        return []
    nested = next((table[k] for k in ("per_tool", "per_param") if isinstance(table.get(k), dict)), None)
    rows: dict[str, Any] = nested if nested is not None else table
    items = [(str(name), row) for name, row in rows.items() if isinstance(row, dict)]
    micro = table.get("micro") if nested is not None else None
    macro = table.get("macro") if nested is not None else None
    return [*items, (MICRO, micro or _micro(items)), (MACRO, macro or _macro(items))]


def _micro(items: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    support, predicted, hits = (sum(int(row.get(k) or 0) for _, row in items) for k in ("support", "predicted", "hits"))
    precision = hits / predicted if predicted else 0.0
    recall = hits / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": support, "predicted": predicted,
            "hits": hits}


def _macro(items: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    n = len(items)
    return {k: math.fsum(float(row.get(k) or 0.0) for _, row in items) / n if n else 0.0 for k in _STATS}


def _alt(text: str) -> str:
    # brackets would end the image's alt text early
    return text.replace("[", "(").replace("]", ")")


def _score_key(score: Any) -> float:
    # a missing score sorts as the worst possible one
    return float(score) if isinstance(score, (int, float)) and not math.isnan(score) else -math.inf


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\r\n", "⏎").replace("\n", "⏎").replace("\r", "⏎")
    # a pipe inside a cell, even in a code span, would end the cell in GFM
    return text.replace("|", "\\|")


def _head(text: str, limit: int) -> str:
    return _no_html(text if len(text) <= limit else text[: limit - 1] + "…")


def _tail(text: str, limit: int) -> str:
    # the end of a prompt is what differs between cases; the head is the shared template
    return _no_html(text if len(text) <= limit else "…" + text[-(limit - 1) :])


def _no_html(text: str) -> str:
    # renderers swallow tag-like text such as "<|im_end|>", which is often the very bug
    return text.replace("<", "&lt;")


def _status(status: Any) -> str:
    return {"passed": "✅ passed", "failed": "❌ failed", "skipped": "⏭ skipped"}.get(
        str(status), str(status)
    )


def _text(value: Any) -> str:
    return "—" if value is None else str(value)


def _code(text: str) -> str:
    """An inline code span that survives backticks inside the text."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text.rstrip(chr(10))}\n{fence}\n"
