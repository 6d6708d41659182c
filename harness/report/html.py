"""report.html: the run in one self-contained page for people to look at.

One file, nothing fetched: the CSS and the script are inline, the PNGs the other writers drew
(confusion heatmaps, comparison.png, training plots) are embedded as base64 data URIs, the latency
histogram is an SVG drawn here. The page holds the run's metadata, the summary (suite x model),
every gate, the comparison, judge and training sections when the run has them, and a case browser
filtered by suite, model, status and text, its filters kept in the URL's hash
(``report.html#status=failed&suite=capitals&model=m&q=paris``) so a view can be shared.

Model output and dataset text are untrusted. The page is rendered by jinja2 with autoescape; the
cases travel as JSON in a ``<script type="application/json">`` island with ``<``, ``>``, ``&``,
U+2028 and U+2029 written as ``\\u`` escapes (nothing in it can end the script element), and the
browser script builds the rows with ``createElement``/``textContent`` only, never ``innerHTML``.
Control, bidi and surrogate characters are shown as printable escapes (:func:`harness.textsafe.visible`).

At most ``MAX_CASES`` cases are embedded (failed and errored ones first, then passed ones in run
order; each text clipped to ``MAX_TEXT_CHARS``): the page says how many it shows; details/ has all.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import math
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.report.files import write_text
from harness.report.forest import FILENAME as FOREST_PNG
from harness.report.forest import forest_rows
from harness.report.heatmap import confusion_pngs
from harness.report.formatting import as_text as _as_text
from harness.report.formatting import interval as _interval
from harness.report.formatting import is_bad
from harness.report.formatting import ms as _ms
from harness.report.formatting import num as _num
from harness.report.formatting import num4 as _num4
from harness.report.formatting import p_value as _p
from harness.report.formatting import pct as _pct
from harness.report.formatting import prompt_text as _prompt_text
from harness.report.formatting import signed as _signed
from harness.report.training_plots import throughput_pngs, training_pngs
from harness.textsafe import visible

FILENAME = "report.html"
MAX_CASES = 5000  # embedded in the page; details/ holds them all
MAX_TEXT_CHARS = 8000  # per text of a case (prompt, output, ...), the rest said to be in details/
MAX_IMAGE_BYTES = 8_000_000  # a PNG larger than this is named, not embedded
HIST_BINS = 24
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_STATUSES = ("passed", "failed", "error")


def write_html(report: dict[str, Any], out_dir: Path, max_cases: int = MAX_CASES) -> Path:
    """Render the envelope as one self-contained HTML page (embedding the PNGs already in out_dir); return its path."""
    out_dir = Path(out_dir)
    return write_text(out_dir / FILENAME, render_html(report, out_dir, max_cases=max_cases))


def render_html(report: dict[str, Any], out_dir: Path | None = None, max_cases: int = MAX_CASES) -> str:
    """The page as a string; ``out_dir``: where to read the PNGs to embed (none when None)."""
    from markupsafe import Markup

    # read one at a time, never all held as dicts (the envelope builds each row when it is read)
    cases: Sequence[dict[str, Any]] = report.get("cases") or []
    statuses = [case_status(c) if isinstance(c, dict) else None for c in cases]
    shown = select_cases(cases, max_cases, statuses)
    only_comparison = set(report) == {"comparison"}
    context = {
        "title": "LLM comparison report" if only_comparison else f"LLM eval report — run {_v(_run(report).get('id'))}",
        "meta": _meta(report),
        "verdict": _verdict(report),
        "summary": _summary(report.get("suites") or []),
        "gates": _gates(report.get("suites") or []),
        "comparison": _comparison(report, out_dir),
        "judges": _judges(report.get("suites") or []),
        "training": _training(report, out_dir),
        "confusion": _confusion(report, out_dir),
        "histogram": Markup(latency_svg(cases)),
        "cases_json": Markup(json_island([_case_row(c) for c in shown])),
        "shown": len(shown),
        "total": sum(status is not None for status in statuses),
        "counts": {s: statuses.count(s) for s in _STATUSES},
    }
    return page_template().render(**context)


@functools.lru_cache(maxsize=1)
def page_template() -> Any:
    """The page's template, compiled once per process (autoescaped: every value is text unless marked)."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["v"] = _v
    return env.from_string(TEMPLATE)


# -- cases ------------------------------------------------------------------


def case_status(case: dict[str, Any]) -> str:
    """passed, failed (judged a failure, or a record-only score below 1) or error (no reply)."""
    if case.get("error") is not None:
        return "error"
    return "failed" if is_bad(case) else "passed"


def select_cases(cases: Sequence[dict[str, Any]], limit: int,
                 statuses: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
    """At most limit cases: every failed and errored one first, then passed ones, each in run order;
    the chosen ones are returned in run order. ``statuses``: each case's :func:`case_status` (None:
    not a case dict, left out), when the caller has them."""
    if statuses is None:
        statuses = [case_status(c) if isinstance(c, dict) else None for c in cases]
    bad = [i for i, s in enumerate(statuses) if s is not None and s != "passed"]
    good = [i for i, s in enumerate(statuses) if s == "passed"]
    return [cases[i] for i in sorted((bad + good)[:max(limit, 0)])]


def json_island(value: Any) -> str:
    """JSON that can sit inside a <script> element: nothing in it can close the element or open a comment."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str, allow_nan=False)
    for char, escape in _JSON_ESCAPES.items():
        text = text.replace(char, escape)
    return text


def _case_row(case: dict[str, Any]) -> dict[str, Any]:
    score = case.get("score")
    latency = case.get("latency_ms")
    output = _as_text(case.get("output"))
    if not output and case.get("tool_calls"):
        output = "tool calls: " + _as_text(case.get("tool_calls"))
    return {
        "suite": _v(case.get("suite")), "model": _v(case.get("model")), "id": _v(case.get("id")),
        "status": case_status(case),
        "prompt": _clip(_prompt_text(case.get("prompt")), tail=True),
        "output": _clip(output),
        "extracted": _clip(_as_text(case.get("extracted"))),
        "target": _clip(_as_text(case.get("target"))),
        "score": score if _finite(score) else None,
        "reason": _clip(_as_text(case.get("reason"))),
        "error": _clip(_as_text(case.get("error"))),
        "latency_ms": round(latency, 1) if _finite(latency) else None,
        "tokens": case.get("output_tokens") if _finite(case.get("output_tokens")) else None,
        "cached": bool(case.get("cached")),
        "where": _v(case.get("dataset")) + (f":{case['line']}" if case.get("line") is not None else "")
        if case.get("dataset") else "",
    }  # fmt: skip


def _clip(text: str, tail: bool = False) -> str:
    """Printable text of at most about MAX_TEXT_CHARS; a prompt keeps its end (where cases differ)."""
    text = visible(text)
    if len(text) <= MAX_TEXT_CHARS:
        return text
    cut = len(text) - MAX_TEXT_CHARS
    note = f" …[{cut:,} characters cut here; the whole text is in details/]… "
    if tail:
        return text[: MAX_TEXT_CHARS // 4] + note + text[-(MAX_TEXT_CHARS - MAX_TEXT_CHARS // 4):]
    return text[:MAX_TEXT_CHARS] + note


# -- latency histogram --------------------------------------------------------


def latency_svg(cases: Sequence[dict[str, Any]], bins: int = HIST_BINS) -> str:
    """Inline SVG: one histogram of the cases' latencies per model, on a shared axis; "" with none."""
    by_model: dict[str, list[float]] = {}
    cached: dict[str, int] = {}
    for c in cases:
        if not isinstance(c, dict):
            continue
        latency = c.get("latency_ms")
        if c.get("error") is None and _finite(latency) and latency >= 0:
            model = str(c.get("model"))
            by_model.setdefault(model, []).append(float(latency))
            cached[model] = cached.get(model, 0) + bool(c.get("cached"))
    if not by_model:
        return ""
    top = max(max(v) for v in by_model.values())
    width = _nice(top / bins) if top > 0 else 1.0
    n_bins = max(1, min(bins * 2, math.ceil(top / width + 1e-9) or 1))
    if width * n_bins <= top:
        n_bins += 1
    w, h, left, right, top_pad, bottom = 720, 150, 48, 12, 26, 34
    plot_w, plot_h = w - left - right, h - top_pad - bottom
    parts = []
    for model, values in by_model.items():
        counts = [0] * n_bins
        for value in values:
            counts[min(int(value // width), n_bins - 1)] += 1
        peak = max(counts)
        bar_w = plot_w / n_bins
        svg = [f'<svg class="hist" role="img" viewBox="0 0 {w} {h}" width="{w}" height="{h}">',
               f"<title>{_x(f'latency of {model}')}</title>"]
        title = f"{model}: {len(values)} cases"
        if cached[model]:
            title += f" ({cached[model]} replayed from the response cache: latency as first measured)"
        svg.append(f'<text x="{left}" y="16" class="ht">{_x(visible(title, keep_newlines=False))}</text>')
        for i, count in enumerate(counts):
            if not count:
                continue
            bh = plot_h * count / peak
            x, y = left + i * bar_w, top_pad + plot_h - bh
            label = f"{_fmt_ms(i * width)}–{_fmt_ms((i + 1) * width)} ms: {count}"
            svg.append(f'<rect x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" height="{bh:.1f}">'
                       f"<title>{_x(label)}</title></rect>")
        base = top_pad + plot_h
        svg.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" class="ax"/>')
        svg.append(f'<text x="{left - 6}" y="{top_pad + 8}" class="tk" text-anchor="end">{peak}</text>')
        svg.append(f'<text x="{left - 6}" y="{base}" class="tk" text-anchor="end">0</text>')
        step = max(1, math.ceil(n_bins / 6))
        for i in range(0, n_bins + 1, step):
            x = left + i * bar_w
            svg.append(f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" class="ax"/>'
                       f'<text x="{x:.1f}" y="{base + 16}" class="tk" text-anchor="middle">{_fmt_ms(i * width)}</text>')
        svg.append(f'<text x="{left + plot_w}" y="{h - 4}" class="tk" text-anchor="end">latency, ms</text></svg>')
        parts.append("".join(svg))
    return "\n".join(parts)


def _nice(raw: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at least raw."""
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def _fmt_ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == 0 else f"{value:g}"


def _x(text: str) -> str:
    return html.escape(text, quote=True)


# -- sections -------------------------------------------------------------------


def _run(report: dict[str, Any]) -> dict[str, Any]:
    run = report.get("run")
    return run if isinstance(run, dict) else {}


def _meta(report: dict[str, Any]) -> dict[str, Any]:
    run = _run(report)
    models = []
    for m in run.get("models") or []:
        if not isinstance(m, dict):
            continue
        engine = m.get("engine") if isinstance(m.get("engine"), dict) else {}
        where = engine.get("base_url")
        models.append({"name": m.get("name"), "engine": engine.get("kind") or "none started in this run",
                       "where": where or "",
                       "source": m.get("source") or "—", "variant_of": m.get("variant_of") or "",
                       "generation": _as_text(m.get("generation")) if m.get("generation") else ""})
    args = run.get("pytest_args")
    commit = run.get("git_commit")
    facts = [
        ("Run", run.get("id")),
        ("Started", run.get("started_at")),
        ("Finished", run.get("finished_at")),
        ("Duration", None if run.get("duration_s") is None else f"{_num(run.get('duration_s'))} s"),
        ("Harness", run.get("harness_version")),
        ("Git commit", None if not commit else str(commit) + (" (dirty working tree)" if run.get("git_dirty") else "")),
        ("Command", "pytest " + shlex.join(str(a) for a in args) if isinstance(args, list) else None),
        ("xdist workers", run.get("xdist_workers")),
        ("Python", run.get("python")),
        ("Platform", run.get("platform")),
    ]
    generation = run.get("generation") if isinstance(run.get("generation"), dict) else {}
    packages = run.get("packages") if isinstance(run.get("packages"), dict) else {}
    # one line under the title: when, what ran, on which models and engines
    headline = [(f"started {run['started_at']}" if run.get("started_at") else None, False),
                (f"harness {run['harness_version']}" if run.get("harness_version") else None, False),
                (", ".join(f"{m['name']} ({m['engine']})" for m in models) if models else None, False),
                (dict(facts).get("Command"), True)]
    return {
        "headline": [(_v(text), code) for text, code in headline if text],
        "facts": [(k, _v(v)) for k, v in facts if v is not None and v != ""],
        "models": models,
        "generation": [(k, _as_text(v)) for k, v in generation.items()],
        "packages": [(k, "not installed" if v is None else v) for k, v in packages.items()],
    }


def _verdict(report: dict[str, Any]) -> dict[str, Any]:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    groups = [*(report.get("suites") or []), *(report.get("training") or [])]
    for group in groups:
        for gate in (group.get("gates") if isinstance(group, dict) else None) or []:
            counts[str(gate.get("status"))] = counts.get(str(gate.get("status")), 0) + 1
    return counts


def _summary(suites: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for s in suites:
        metrics = s.get("metrics") or {}
        main = s.get("main_metric")
        gates = s.get("gates") or []
        statuses = [g.get("status") for g in gates]
        cases = f"{_num(s.get('cases'))}/{_num(s.get('total_cases'))}" + (" (subset)" if s.get("subset") else "")
        p99 = metrics.get("latency_p99_ms")
        rows.append({
            "suite": s.get("name"), "model": s.get("model"), "cases": cases,
            "main": f"{main} = {_num(metrics.get(main))}{_interval(metrics, main)}" if main else "—",
            "error_rate": _pct(metrics.get("error_rate")),
            "p99": "—" if p99 is None else _ms(p99),
            "passed": statuses.count("passed"), "failed": statuses.count("failed"),
            "skipped": statuses.count("skipped"), "total": len(gates),
        })  # fmt: skip
    return rows


def _gates(suites: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"suite": s.get("name"), "model": s.get("model"), "expr": g.get("expr"), "value": _num(g.get("value")),
         "threshold": _num(g.get("threshold")), "status": str(g.get("status")), "reason": g.get("reason") or ""}
        for s in suites for g in s.get("gates") or [] if isinstance(g, dict)
    ]  # fmt: skip


def _comparison(report: dict[str, Any], out_dir: Path | None) -> dict[str, Any] | None:
    comparison = report.get("comparison")
    if not isinstance(comparison, dict):
        return None
    ref = comparison.get("reference") or {}
    if ref.get("kind") == "baseline":
        reference = f"baseline {ref.get('path')} (model {ref.get('name')}"
        reference += f", created {ref['created']}" if ref.get("created") else ""
        reference += f", git commit {ref['git_commit']}" if ref.get("git_commit") else ""
        reference += ")" + (f"; reason: {ref['reason']}" if ref.get("reason") else "")
    else:
        reference = f"model {ref.get('name')}"
    family = comparison.get("family") or {}
    confidence = comparison.get("confidence")
    level = f"{confidence * 100:g}%" if _finite(confidence) else _num(confidence)
    about = (f"{_num4(comparison.get('resamples'))} paired bootstrap resamples · {level} intervals · "
             f"{family.get('method')} adjustment over {_num(family.get('size'))} p-values · seed {_num(comparison.get('seed'))}")
    image = None
    if out_dir is not None and forest_rows(report)[0]:
        image = _image(out_dir / FOREST_PNG)
    pairs = []
    for pair in comparison.get("pairs") or []:
        if not isinstance(pair, dict):
            continue
        rows = sorted((r for r in pair.get("rows") or [] if isinstance(r, dict)),
                      key=lambda r: (r.get("kind") != "quality", not r.get("main")))
        warnings = [str(w) for w in pair.get("warnings") or []]
        warnings += [f"{r.get('metric')}: {r['warning']}" for r in rows if r.get("warning")]
        lists = [(title, len(pair.get(key) or []), ", ".join(str(i) for i in (pair.get(key) or [])[:20]))
                 for key, title in (("only_reference", "only in the reference"), ("only_candidate", "only in the candidate"),
                                    ("duplicates", "duplicate ids"), ("changed_input", "input changed"))
                 if pair.get(key)]
        pairs.append({
            "suite": pair.get("suite"), "reference": pair.get("reference"), "candidate": pair.get("candidate"),
            "matched": _num(pair.get("matched")), "clusters": pair.get("clusters"), "refused": pair.get("refused"),
            "rows": [_comparison_row(r) for r in rows], "warnings": warnings, "lists": lists,
            "disagreements": len(pair.get("disagreements") or []),
        })  # fmt: skip
    return {"reference": reference, "about": about, "image": image, "pairs": pairs}


def _comparison_row(row: dict[str, Any]) -> dict[str, Any]:
    latency = row.get("kind") == "latency"
    value = _ms if latency else _num4
    delta = _signed(row.get("delta"), latency) + (" ms" if latency and _finite(row.get("delta")) else "")
    if row.get("lower") is not None and row.get("upper") is not None:
        fmt = (lambda v: f"{v:,.1f}" if _finite(v) else _num(v)) if latency else _num4
        delta += f" [{fmt(row.get('lower'))}, {fmt(row.get('upper'))}]"
    p = _p(row.get("p")) + (f" ({_p(row.get('p_holm'))})" if row.get("p_holm") is not None else "")
    lower, upper = row.get("lower"), row.get("upper")
    # the interval excludes 0: marked, not coloured (whether higher is better depends on the metric)
    direction = "sig" if _finite(lower) and _finite(upper) and not lower <= 0 <= upper else ""
    counts = "—" if row.get("improved") is None and row.get("regressed") is None \
        else f"{_num(row.get('improved'))} / {_num(row.get('regressed'))}"
    rho = row.get("rho")
    return {"metric": row.get("metric"), "main": bool(row.get("main")), "reference": value(row.get("reference")),
            "candidate": value(row.get("candidate")), "delta": delta, "p": p,
            "rho": f"{rho:.2f}" if _finite(rho) else _num(rho), "counts": counts, "direction": direction}


def _judges(suites: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for s in suites:
        table = (s.get("tables") or {}).get("judge")
        if not isinstance(table, dict):
            continue
        metrics = s.get("metrics") or {}
        facts = [("Judge", table.get("model")), ("Rubric", table.get("rubric")),
                 ("Cases judged", _num(metrics.get("judge_cases"))),
                 ("Verdict errors", f"{_num(metrics.get('judge_error_rate'))}{_interval(metrics, 'judge_error_rate')}")]
        position = table.get("position")
        if isinstance(position, dict):
            facts.append(("Position-swap consistency", f"{_num(position.get('consistent'))} of {_num(position.get('n'))}"))
        found = table.get("agreement")
        if isinstance(found, dict):
            weights = f" ({found['weights']} weights)" if found.get("weights") else ""
            facts.append(("Agreement with human labels",
                          f"{_num(found.get('n'))} cases: accuracy {_num(found.get('accuracy'))}"
                          f"{_interval(found, 'accuracy')}, Cohen's kappa{weights} {_num(found.get('kappa'))}"
                          f"{_interval(found, 'kappa')}; {_num(found.get('missing'))} without a verdict, "
                          f"{_num(found.get('unlabelled'))} without a label on the scale"))
            if found.get("note"):
                facts.append(("Note", found["note"]))
        own = table.get("self_agreement")
        if isinstance(own, dict):
            facts.append(("Self-agreement", f"{_num(own.get('mean_agreement'))} of sample pairs agree over "
                          f"{_num(own.get('samples'))} samples, Fleiss' kappa {_num(own.get('fleiss_kappa'))} "
                          f"({_num(own.get('n'))} cases)"))
        out.append({"suite": s.get("name"), "model": s.get("model"), "warning": table.get("self_grading"),
                    "facts": [(k, _v(v)) for k, v in facts]})
    return out


def _training(report: dict[str, Any], out_dir: Path | None) -> list[dict[str, Any]]:
    images: dict[int, list[dict[str, str]]] = {}
    for entry, name in [*training_pngs(report), *throughput_pngs(report)]:
        if out_dir is not None and (image := _image(out_dir / name)):
            images.setdefault(id(entry), []).append(image)
    out = []
    for entry in report.get("training") or []:
        if not isinstance(entry, dict):
            continue
        versions = entry.get("versions") if isinstance(entry.get("versions"), dict) else {}
        metrics = entry.get("metrics") if isinstance(entry.get("metrics"), dict) else {}
        out.append({
            "job": entry.get("job"), "trainer": entry.get("trainer"), "error": entry.get("error"),
            "about": ", ".join(f"{k} {v}" for k, v in versions.items())
                     + (f" · wall {_num(entry.get('wall_s'))} s" if entry.get("wall_s") is not None else ""),
            "gates": [{"expr": g.get("expr"), "status": str(g.get("status")), "reason": g.get("reason") or ""}
                      for g in entry.get("gates") or [] if isinstance(g, dict)],
            "metrics": [(k, _num(v)) for k, v in metrics.items()],
            "images": images.get(id(entry), []),
        })  # fmt: skip
    return out


def _confusion(report: dict[str, Any], out_dir: Path | None) -> list[dict[str, Any]]:
    out = []
    for suite, name in confusion_pngs(report):
        image = _image(out_dir / name) if out_dir is not None else None
        if image:
            out.append({"title": f"{suite.get('name')} · {suite.get('model')}", **image})
    return out


def _image(path: Path) -> dict[str, str] | None:
    """A PNG as a data URI, or None when missing (not drawn: matplotlib missing) or too large."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) > MAX_IMAGE_BYTES:
        return None
    return {"name": path.name, "src": "data:image/png;base64," + base64.b64encode(data).decode("ascii")}


# -- helpers ----------------------------------------------------------------------


def _v(value: Any) -> str:
    """Any value as printable text on the page ("—" for None)."""
    return "—" if value is None else visible(value if isinstance(value, str) else _as_text(value))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="referrer" content="no-referrer">
<title>{{ title }}</title>
<style>
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg2: #f6f8fa; --ok: #1a7f37; --okbg: #dafbe1;
  --bad: #cf222e; --badbg: #ffebe9; --err: #9a6700; --errbg: #fff8c5; --skip: #59636e; --skipbg: #eaeef2; --acc: #0969da; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: #fff;
  margin: 0 auto; padding: 16px 24px 48px; max-width: 1400px; }
h1 { font-size: 22px; margin: 4px 0 8px; } h2 { font-size: 18px; margin: 28px 0 8px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); } h3 { font-size: 15px; margin: 18px 0 6px; }
nav a { margin-right: 12px; color: var(--acc); text-decoration: none; } nav { margin: 6px 0 4px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--bg2); font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
pre { white-space: pre-wrap; word-break: break-word; background: var(--bg2); border: 1px solid var(--line);
  border-radius: 6px; padding: 6px 8px; margin: 2px 0 8px; max-height: 360px; overflow: auto; }
.badge { display: inline-block; border-radius: 10px; padding: 0 8px; font-size: 12px; font-weight: 600; white-space: nowrap; }
.passed { color: var(--ok); background: var(--okbg); } .failed { color: var(--bad); background: var(--badbg); }
.error { color: var(--err); background: var(--errbg); } .skipped { color: var(--skip); background: var(--skipbg); }
td.sig { font-weight: 700; }
.verdict { font-size: 15px; padding: 8px 12px; border-radius: 6px; margin: 8px 0; }
tr.failrow td:first-child { border-left: 4px solid var(--bad); } tr.okrow td:first-child { border-left: 4px solid var(--ok); }
.muted { color: var(--muted); } .warn { color: var(--err); }
.grid { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure { margin: 4px 0; } figure img { max-width: min(100%, 860px); border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 12px; }
svg.hist { display: block; max-width: 100%; height: auto; margin: 4px 0 8px; font-size: 11px; }
svg.hist rect { fill: #54aeff; } svg.hist rect:hover { fill: var(--acc); } svg.hist .ax { stroke: #8c959f; }
svg.hist .tk { fill: var(--muted); } svg.hist .ht { fill: var(--fg); font-weight: 600; font-size: 12px; }
#filters { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin: 8px 0; padding: 8px;
  background: var(--bg2); border: 1px solid var(--line); border-radius: 6px; }
#filters select, #filters input { font: inherit; padding: 3px 6px; border: 1px solid var(--line); border-radius: 4px; }
#filters input { min-width: 260px; }
#cases { width: 100%; } #cases tbody tr.case { cursor: pointer; } #cases tbody tr.case:hover { background: var(--bg2); }
#cases td.snip { max-width: 520px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
#cases tr.detail > td { background: #fbfcfd; }
.kv { display: grid; grid-template-columns: 110px 1fr; gap: 2px 10px; } .kv > b { padding-top: 4px; }
.chips { display: flex; flex-wrap: wrap; gap: 6px 16px; } .chips span { white-space: nowrap; }
button { font: inherit; padding: 3px 10px; border: 1px solid var(--line); border-radius: 4px; background: #fff; cursor: pointer; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
{% if meta.headline %}<p class="muted" id="headline">{% for h, code in meta.headline %}{% if code %}<code>{{ h }}</code>{% else %}{{ h }}{% endif %}{% if not loop.last %} · {% endif %}{% endfor %}</p>{% endif %}
<nav><a href="#summary-h">Summary</a><a href="#gates-h">Gates</a>{% if comparison %}<a href="#comparison-h">Comparison</a>{% endif %}{% if judges %}<a href="#judges-h">Judges</a>{% endif %}{% if training %}<a href="#training-h">Training</a>{% endif %}<a href="#plots-h">Plots</a><a href="#cases-h">Cases</a><a href="#run-h">Run</a></nav>
<div class="verdict {{ 'failed' if verdict.failed else 'passed' }}" id="verdict">Gates {{ 'FAILED' if verdict.failed else 'PASSED' }}: {{ verdict.passed }} passed, {{ verdict.failed }} failed, {{ verdict.skipped }} skipped
{% if meta.facts %} · {% for k, v in meta.facts if k in ('Started', 'Duration') %}{{ k | lower }} {{ v }}{% if not loop.last %} · {% endif %}{% endfor %}{% endif %}
 · cases: {{ counts.passed }} passed, {{ counts.failed }} failed, {{ counts.error }} errors</div>

<h2 id="summary-h">Summary</h2>
{% if summary %}
<table id="summary">
<thead><tr><th>Suite</th><th>Model</th><th>Cases</th><th>Main metric [interval]</th><th>Error rate</th><th>p99 latency</th><th>Gates</th></tr></thead>
<tbody>
{% for r in summary %}
<tr class="{{ 'failrow' if r.failed else 'okrow' }}"><td>{{ r.suite | v }}</td><td>{{ r.model | v }}</td><td class="num">{{ r.cases }}</td><td class="mono">{{ r.main | v }}</td><td class="num">{{ r.error_rate }}</td><td class="num">{{ r.p99 }}</td>
<td>{% if r.total %}<span class="badge passed">{{ r.passed }} passed</span>{% if r.failed %} <span class="badge failed">{{ r.failed }} failed</span>{% endif %}{% if r.skipped %} <span class="badge skipped">{{ r.skipped }} skipped</span>{% endif %}{% else %}<span class="muted">none</span>{% endif %}</td></tr>
{% endfor %}
</tbody></table>
{% else %}<p class="muted">No suites in this report.</p>{% endif %}

<h2 id="gates-h">Gates</h2>
{% if gates %}
<table id="gates">
<thead><tr><th>Suite</th><th>Model</th><th>Gate</th><th>Value</th><th>Threshold</th><th>Outcome</th><th>Reason</th></tr></thead>
<tbody>
{% for g in gates %}
<tr class="{{ 'failrow' if g.status == 'failed' else 'okrow' if g.status == 'passed' else '' }}"><td>{{ g.suite | v }}</td><td>{{ g.model | v }}</td><td><code>{{ g.expr | v }}</code></td><td class="num">{{ g.value }}</td><td class="num">{{ g.threshold }}</td><td><span class="badge {{ g.status }}">{{ g.status }}</span></td><td>{{ g.reason | v }}</td></tr>
{% endfor %}
</tbody></table>
{% else %}<p class="muted">No gates configured.</p>{% endif %}

{% if comparison %}
<h2 id="comparison-h">Comparison</h2>
<p>Reference: {{ comparison.reference | v }} · {{ comparison.about | v }}</p>
{% if comparison.image %}<figure><img alt="forest plot of the quality deltas and their intervals" src="{{ comparison.image.src }}"><figcaption>{{ comparison.image.name }}</figcaption></figure>{% endif %}
{% for pair in comparison.pairs %}
<h3>{{ pair.suite | v }}: {{ pair.candidate | v }} vs {{ pair.reference | v }}</h3>
<p>{{ pair.matched }} paired cases{% if pair.clusters is not none %} in {{ pair.clusters | v }} clusters{% endif %}.{% if pair.disagreements %} Cases scored differently: {{ pair.disagreements }} (listed in report.json and report.xlsx).{% endif %}</p>
{% if pair.refused %}<p class="failed badge">Comparison refused: {{ pair.refused | v }}</p>{% endif %}
{% if pair.rows %}
<table class="comparison"><thead><tr><th>Metric</th><th>{{ pair.reference | v }} (reference)</th><th>{{ pair.candidate | v }} (candidate)</th><th>Δ [low, high]</th><th>p (Holm)</th><th>ρ</th><th>improved / regressed</th></tr></thead><tbody>
{% for r in pair.rows %}<tr><td>{% if r.main %}<b>{{ r.metric | v }}</b> (main){% else %}{{ r.metric | v }}{% endif %}</td><td class="num">{{ r.reference }}</td><td class="num">{{ r.candidate }}</td><td class="num {{ r.direction }}">{{ r.delta }}</td><td class="num">{{ r.p }}</td><td class="num">{{ r.rho }}</td><td class="num">{{ r.counts }}</td></tr>
{% endfor %}</tbody></table>
{% endif %}
{% if pair.warnings %}<ul class="warn">{% for w in pair.warnings %}<li>⚠ {{ w | v }}</li>{% endfor %}</ul>{% endif %}
{% for title, n, ids in pair.lists %}<p class="muted">{{ title | capitalize }} ({{ n }}): {{ ids | v }}{% if n > 20 %} …{% endif %}</p>{% endfor %}
{% endfor %}
{% if not comparison.pairs %}<p class="muted">No pairs compared.</p>{% endif %}
{% endif %}

{% if judges %}
<h2 id="judges-h">Judges</h2>
{% for j in judges %}
<h3>{{ j.suite | v }} ({{ j.model | v }})</h3>
{% if j.warning %}<p class="warn">⚠ {{ j.warning | v }}</p>{% endif %}
<table><tbody>{% for k, v in j.facts %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</tbody></table>
{% endfor %}
{% endif %}

{% if training %}
<h2 id="training-h">Training</h2>
{% for t in training %}
<h3>{{ t.job | v }} ({{ t.trainer | v }})</h3>
{% if t.about %}<p class="muted">{{ t.about | v }}</p>{% endif %}
{% if t.error %}<p class="failed badge">Run failed: {{ t.error | v }}</p>{% endif %}
{% if t.gates %}<table><thead><tr><th>Gate</th><th>Outcome</th><th>Reason</th></tr></thead><tbody>
{% for g in t.gates %}<tr class="{{ 'failrow' if g.status == 'failed' else 'okrow' if g.status == 'passed' else '' }}"><td><code>{{ g.expr | v }}</code></td><td><span class="badge {{ g.status }}">{{ g.status }}</span></td><td>{{ g.reason | v }}</td></tr>{% endfor %}
</tbody></table>{% endif %}
{% if t.metrics %}<table><thead><tr><th>Metric</th><th>Value</th></tr></thead><tbody>{% for k, v in t.metrics %}<tr><td>{{ k | v }}</td><td class="num">{{ v }}</td></tr>{% endfor %}</tbody></table>{% endif %}
<div class="grid">{% for img in t.images %}<figure><img alt="{{ img.name }}" src="{{ img.src }}"><figcaption>{{ img.name }}</figcaption></figure>{% endfor %}</div>
{% endfor %}
{% endif %}

<h2 id="plots-h">Plots</h2>
<h3>Latency per case</h3>
{% if histogram %}{{ histogram }}{% else %}<p class="muted">No case has a measured latency.</p>{% endif %}
{% if confusion %}
<h3>Confusion matrices</h3>
<div class="grid">{% for img in confusion %}<figure><img alt="confusion matrix heatmap: {{ img.title | v }}" src="{{ img.src }}" width="420"><figcaption>{{ img.title | v }}</figcaption></figure>{% endfor %}</div>
{% endif %}

<h2 id="cases-h">Cases</h2>
<p id="case-count">Showing {{ shown }} of {{ total }} cases{% if shown < total %} (the failed and errored first; all in details/){% else %} (all in details/){% endif %}. <span id="match-count"></span></p>
<div id="filters">
<label>Suite <select id="f-suite"><option value="">all</option></select></label>
<label>Model <select id="f-model"><option value="">all</option></select></label>
<label>Status <select id="f-status"><option value="">all</option><option value="passed">passed</option><option value="failed">failed</option><option value="error">error</option></select></label>
<label>Search <input id="f-q" type="search" placeholder="id, prompt, output, target, reason…"></label>
<button id="f-clear" type="button">Clear</button>
</div>
<table id="cases">
<thead><tr><th>Status</th><th>Suite</th><th>Model</th><th>Id</th><th>Score</th><th>Latency</th><th>Output</th></tr></thead>
<tbody id="case-rows"></tbody>
</table>
<p><button id="more" type="button" hidden>Show more</button></p>
<noscript><p>The case browser needs JavaScript; every case is in details/ and report.json.</p></noscript>

<h2 id="run-h">Run</h2>
<table id="run-meta"><tbody>{% for k, v in meta.facts %}<tr><th>{{ k }}</th><td class="mono">{{ v }}</td></tr>{% endfor %}</tbody></table>
{% if meta.models %}
<h3>Models</h3>
<table id="models"><thead><tr><th>Model</th><th>Engine</th><th>Served at</th><th>Source</th><th>Own generation settings</th></tr></thead><tbody>
{% for m in meta.models %}<tr><td>{{ m.name | v }}</td><td>{{ m.engine | v }}{% if m.variant_of %} (variant of {{ m.variant_of | v }}){% endif %}</td><td class="mono">{{ m.where | v }}</td><td class="mono">{{ m.source | v }}</td><td class="mono">{{ m.generation | v }}</td></tr>{% endfor %}
</tbody></table>
{% endif %}
{% if meta.generation %}<h3>Generation</h3><p class="chips">{% for k, v in meta.generation %}<span><b>{{ k | v }}</b> <code>{{ v | v }}</code></span>{% endfor %}</p>{% endif %}
{% if meta.packages %}<h3>Packages</h3><p class="chips" id="packages">{% for k, v in meta.packages %}<span><b>{{ k | v }}</b> <code>{{ v | v }}</code></span>{% endfor %}</p>{% endif %}

<script type="application/json" id="case-data">{{ cases_json }}</script>
<script>
"use strict";
(function () {
  var CASES = JSON.parse(document.getElementById("case-data").textContent);
  var PAGE = 200;
  var FIELDS = ["id", "prompt", "output", "extracted", "target", "reason", "error", "where"];
  var els = { suite: document.getElementById("f-suite"), model: document.getElementById("f-model"),
              status: document.getElementById("f-status"), q: document.getElementById("f-q") };
  var body = document.getElementById("case-rows"), more = document.getElementById("more");
  var matchCount = document.getElementById("match-count");
  var limit = PAGE, matched = [];

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    if (cls) { node.className = cls; }
    return node;
  }
  function uniq(key) {
    var seen = new Set(), out = [];
    CASES.forEach(function (c) { if (!seen.has(c[key])) { seen.add(c[key]); out.push(c[key]); } });
    return out;
  }
  function fill(select, values) {
    values.forEach(function (v) { var o = el("option", v); o.value = v; select.appendChild(o); });
  }
  function haystack(c) {
    if (c._h === undefined) { c._h = FIELDS.map(function (f) { return c[f] || ""; }).join("\n").toLowerCase(); }
    return c._h;
  }
  function state() {
    return { suite: els.suite.value, model: els.model.value, status: els.status.value, q: els.q.value };
  }
  function readHash() {
    // a plain anchor (#cases-h, the page's own links) is no filter: leave the filters as they are
    if (location.hash.length > 1 && location.hash.indexOf("=") < 0) { return false; }
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    ["suite", "model", "status"].forEach(function (k) {
      var v = params.get(k) || "";
      if (v && !Array.prototype.some.call(els[k].options, function (o) { return o.value === v; })) {
        var o = el("option", v); o.value = v; els[k].appendChild(o);  // a value not in this run: matches nothing
      }
      els[k].value = v;
    });
    els.q.value = params.get("q") || "";
    return true;
  }
  function writeHash() {
    var s = state(), params = new URLSearchParams();
    Object.keys(s).forEach(function (k) { if (s[k]) { params.set(k, s[k]); } });
    var hash = params.toString();
    var url = location.href.split("#")[0] + (hash ? "#" + hash : "");
    try { history.replaceState(null, "", url); } catch (e) { location.hash = hash; }
  }
  function detail(c) {
    var tr = el("tr", null, "detail"), td = el("td"), kv = el("div", null, "kv");
    td.colSpan = 7;
    [["Prompt", c.prompt], ["Output", c.output], ["Extracted", c.extracted], ["Target", c.target],
     ["Score", c.score === null ? "—" : c.score], ["Reason", c.reason], ["Error", c.error],
     ["Latency", c.latency_ms === null ? "—" : c.latency_ms + " ms" + (c.cached ? " (from the response cache)" : "")],
     ["Tokens", c.tokens === null ? "—" : c.tokens], ["Source", c.where]].forEach(function (pair) {
      if (pair[1] === "" && (pair[0] === "Reason" || pair[0] === "Error" || pair[0] === "Source")) { return; }
      kv.appendChild(el("b", pair[0]));
      kv.appendChild(el("pre", pair[1] === "" ? "(empty)" : pair[1]));
    });
    td.appendChild(kv); tr.appendChild(td);
    return tr;
  }
  function row(c) {
    var tr = el("tr", null, "case " + (c.status === "passed" ? "okrow" : "failrow"));
    tr.setAttribute("data-status", c.status);
    var badge = el("td"); badge.appendChild(el("span", c.status, "badge " + c.status)); tr.appendChild(badge);
    tr.appendChild(el("td", c.suite)); tr.appendChild(el("td", c.model)); tr.appendChild(el("td", c.id, "mono"));
    tr.appendChild(el("td", c.score === null ? "—" : c.score, "num"));
    tr.appendChild(el("td", c.latency_ms === null ? "—" : c.latency_ms + " ms", "num"));
    var out = c.error ? c.error : c.output;
    tr.appendChild(el("td", out.length > 200 ? out.slice(0, 200) + "…" : out, "snip mono"));
    tr.addEventListener("click", function () {
      var next = tr.nextSibling;
      if (next && next.className === "detail") { body.removeChild(next); } else { body.insertBefore(detail(c), next); }
    });
    return tr;
  }
  function render() {
    var s = state(), q = s.q.trim().toLowerCase();
    matched = CASES.filter(function (c) {
      return (!s.suite || c.suite === s.suite) && (!s.model || c.model === s.model) &&
        (!s.status || c.status === s.status) && (!q || haystack(c).indexOf(q) >= 0);
    });
    while (body.firstChild) { body.removeChild(body.firstChild); }
    matched.slice(0, limit).forEach(function (c) { body.appendChild(row(c)); });
    matchCount.textContent = matched.length + " match the filters" +
      (matched.length > limit ? ", the first " + limit + " listed." : ".");
    more.hidden = matched.length <= limit;
  }
  function changed() { limit = PAGE; writeHash(); render(); }
  fill(els.suite, uniq("suite")); fill(els.model, uniq("model"));
  readHash();
  render();
  ["suite", "model", "status"].forEach(function (k) { els[k].addEventListener("change", changed); });
  els.q.addEventListener("input", changed);
  document.getElementById("f-clear").addEventListener("click", function () {
    els.suite.value = els.model.value = els.status.value = els.q.value = ""; changed();
  });
  more.addEventListener("click", function () { limit += PAGE; render(); });
  window.addEventListener("hashchange", function () { if (readHash()) { limit = PAGE; render(); } });
}());
</script>
</body>
</html>
"""
