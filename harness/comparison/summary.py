"""The comparison as the terminal shows it: per suite and pair, the main metric, every metric a
comparison gate names and p99 latency, with the warnings. report.md has every metric."""

from __future__ import annotations

from typing import Any

from harness.textsafe import visible

SHOWN_LATENCY = ("latency_p99_ms",)


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def comparison_lines(block: dict[str, Any]) -> list[str]:
    """Plain text lines (names and ids escaped) for pytest's terminal summary."""
    ref = block["reference"]
    head = (f"against baseline {visible(str(ref.get('path')))} ({visible(str(ref.get('reason') or ''))})"
            if ref["kind"] == "baseline" else f"against {visible(str(ref['name']))}")
    # suites with models of their own (model: {train: ...}) compare them with their own reference
    own = {suite: name for suite, name in (ref.get("suites") or {}).items() if name != ref.get("name")}
    if own:
        each = ", ".join(f"{visible(str(suite))} against {visible(str(name))}" for suite, name in own.items())
        head = f"{head}; {each}" if ref.get("name") is not None or ref["kind"] == "baseline" else each
    lines = [f"paired comparison {head}: {block['resamples']} bootstrap resamples, "
             f"{block['confidence']:.0%} intervals, Holm over {block['family']['size']} comparison(s)"]
    for pair in block["pairs"]:
        title = (f"{visible(pair['suite'])}: {visible(pair['candidate'])} vs {visible(pair['reference'])}, "
                 f"{pair['matched']} paired" + (f" in {pair['clusters']} clusters" if pair.get("clusters") else ""))
        lines.append("")
        lines.append(title)
        if pair.get("refused"):
            lines.append(f"  refused: {visible(pair['refused'])}")
            continue
        rows = [r for r in pair["rows"] if r.get("family") or r["metric"] in SHOWN_LATENCY]
        table = [("metric", visible(pair["reference"]), visible(pair["candidate"]), "delta [95% CI]", "p",
                  "p(Holm)", "rho", "+/-")]
        for r in rows:
            interval = f"{_num(r['delta'], 3)} [{_num(r['lower'], 3)}, {_num(r['upper'], 3)}]"
            moved = f"+{r['improved']}/-{r['regressed']}" if r.get("improved") is not None else ""
            table.append((visible(r["metric"]), _num(r["reference"]), _num(r["candidate"]), interval, _p(r["p"]),
                          _p(r.get("p_holm")), _num(r.get("rho"), 2), moved))
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines.extend("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)
        for r in rows:
            if r.get("mcnemar_p") is not None:
                lines.append(f"  {visible(r['metric'])}: McNemar exact p = {_p(r['mcnemar_p'])} on "
                             f"{r['discordant']} discordant pair(s)")
        lines.extend(f"  warning: {visible(w)}" for w in pair.get("warnings", []))
        lines.extend(f"  warning: {visible(r['metric'])}: {visible(r['warning'])}" for r in rows if r.get("warning"))
    return lines
