"""``python -m harness.comparison report REFERENCE CANDIDATE [CANDIDATE ...] --out DIR``

One comparison report from runs saved as baselines (``--llm-baseline-save``), e.g. by the jobs of a
CI matrix over models: every suite of each candidate file against the same suite of the reference
file, with the statistics of an in-run comparison. Run it in the project's checkout: a suite's
scorer is read from its suite file (at the path the baseline recorded, which must still have the
configuration the baseline was saved with)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.comparison.baseline import Baseline, BaselineError, load_baseline, suite_fingerprint
from harness.comparison.compare import PairComparison, compare_suite, refused
from harness.comparison.runner import Comparisons
from harness.scoring.stats import RESAMPLES, SEED
from harness.suite import Suite, SuiteError, suites_in


def _suite(root: Path, entry: dict) -> Suite:
    path = (root / entry.get("path", "")).resolve()
    if not path.is_file():
        raise BaselineError(f"suite file {path} of suite {entry['suite']!r} not found under {root} (run in the "
                            f"project's checkout or pass --root)")
    for suite in suites_in(path.parent):
        if suite.path == path and suite.name == entry["suite"]:
            return suite
    raise BaselineError(f"{path} holds no suite named {entry['suite']!r}")


def _pair(root: Path, reference: Baseline, ref_entry: dict, candidate: Baseline, entry: dict,
          resamples: int, seed: int) -> PairComparison:
    ref_name, cand_name = ref_entry["model"], entry["model"]
    differs = [part for part in ref_entry["config"] if ref_entry["config"].get(part) != entry["config"].get(part)]
    if ref_entry["datasets"] != entry["datasets"]:
        differs.append("data files")
    if differs:
        return refused(entry["suite"], ref_name, cand_name,
                       f"{candidate.path} and {reference.path} ran suite {entry['suite']!r} with different "
                       f"{', '.join(differs)}")
    suite = _suite(root, entry)
    if suite_fingerprint(suite) != entry["config"]:
        return refused(entry["suite"], ref_name, cand_name,
                       f"{suite.path} has changed since the runs were saved; check out their commit")
    from harness.scoring.scorers import get_scorer

    main = get_scorer(suite.scorer, suite.scorer_options).main_metric
    pair = compare_suite(suite, reference.arm(ref_entry), candidate.arm(entry), main, resamples, seed)
    pair.reference, pair.candidate = ref_name, cand_name
    return pair


def report(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    try:
        reference = load_baseline(Path(args.reference))
        candidates = [load_baseline(Path(path)) for path in args.candidates]
    except BaselineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    comparisons = Comparisons([], resamples=args.resamples, seed=args.seed)
    for candidate in candidates:
        for entry in candidate.document["suites"]:
            ref_entries = [e for e in reference.document["suites"] if e["suite"] == entry["suite"]]
            if not ref_entries:
                print(f"warning: {reference.path} has no suite {entry['suite']!r}: not compared", file=sys.stderr)
                continue
            try:
                pair = _pair(root, reference, ref_entries[0], candidate, entry, args.resamples, args.seed)
            except (BaselineError, SuiteError) as exc:
                pair = refused(entry["suite"], ref_entries[0]["model"], entry["model"], str(exc))
            comparisons.add(pair)
    block = comparisons.block()
    if block is None:
        print("error: no suite is in both the reference and a candidate file", file=sys.stderr)
        return 2
    block["reference"] = {**reference.describe(), "name": reference.document["suites"][0]["model"]
                          if reference.document["suites"] else "reference"}
    out = Path(args.out)
    write_comparison(block, out)
    from harness.comparison.summary import comparison_lines

    print("\n".join(comparison_lines(block)))
    print(f"comparison report: {out}")
    return 0


def write_comparison(block: dict, out: Path) -> None:
    """comparison.json, and report.md / report.xlsx / comparison.png holding only the comparison."""
    from harness.report.files import private_dir, write_text
    from harness.report.forest import write_forest_png
    from harness.report.markdown import write_markdown
    from harness.report.xlsx import write_xlsx

    private_dir(out)
    write_text(out / "comparison.json", json.dumps(block, ensure_ascii=False, indent=1, default=str) + "\n")
    write_forest_png({"comparison": block}, out)
    write_markdown({"comparison": block}, out)
    # the workbook's run sheets stay empty: the comparison and disagreements sheets hold this report
    write_xlsx({"run": {}, "suites": [], "cases": [], "comparison": block}, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.comparison", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("report", help="compare saved runs (baseline files) in one report")
    make.add_argument("reference", help="the baseline file every other is compared against")
    make.add_argument("candidates", nargs="+", help="baseline files to compare against the reference")
    make.add_argument("--out", default="reports/comparison", help="folder for the report (default: %(default)s)")
    make.add_argument("--root", default=".", help="the project's checkout, where the suite files are")
    make.add_argument("--resamples", type=int, default=RESAMPLES)
    make.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
