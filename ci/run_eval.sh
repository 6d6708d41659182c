#!/usr/bin/env bash
# The one entry point every job template runs (Azure ML, Slurm/DGX, Volcano Engine, Bailian; CI too):
# runs the eval suites, writes the reports and a JUnit file, collects the seed-004 indicator files
# and exits with pytest's exit code, so a failed gate fails the job.
#
#   bash ci/run_eval.sh [pytest options ...]
#   bash ci/run_eval.sh --llm-base-url http://10.0.0.5:8000/v1 --llm-model qwen-7b
#   bash ci/run_eval.sh --llm-models-file models.yaml -m "not llm_robustness"
#
# It runs from the repository root (the folder above ci/), so relative paths in the options and
# the variables below are relative to that root.
#
# Environment (all optional):
#   LLM_REPORT_DIR     report folder (default reports/eval); do not pass --llm-report-dir yourself
#   LLM_INDICATOR_DIR  where the indicator JSON files are collected (default $LLM_REPORT_DIR/indicators)
#   LLM_JUNIT          the JUnit XML file (default $LLM_REPORT_DIR/junit.xml)
#   LLM_EVALS          what pytest collects (default evals/)
#   LLM_INSTALL        when the harness is not installed yet: auto (default) installs it from this
#                      checkout with the bundled CPU model and the toxicity classifier; remote installs
#                      it without the CPU model (torch), for runs against a server; no never installs.
#
# Exit code: pytest's (0 all gates held, 1 a case or gate failed, 2-4 usage/internal errors), and 5
# with a message when nothing was collected: an eval job that ran nothing must not pass.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

report_dir="${LLM_REPORT_DIR:-reports/eval}"
indicator_dir="${LLM_INDICATOR_DIR:-$report_dir/indicators}"
junit="${LLM_JUNIT:-$report_dir/junit.xml}"
evals="${LLM_EVALS:-evals/}"

# Install nothing that is already there: a prepared image or venv is used as it is.
install="${LLM_INSTALL:-auto}"
case "$install" in
  auto | remote)
    if ! python3 -c 'import importlib.metadata as m; m.version("pytest-llm-harness")' 2>/dev/null; then
      echo "run_eval.sh: installing pytest-llm-harness from $(pwd) (LLM_INSTALL=$install)" >&2
      if [[ "$install" == remote ]]; then
        python3 -m pip install ".[toxicity]"
      else
        python3 -m pip install ".[cpu,toxicity]"
      fi
    fi
    ;;
  no) ;;
  *)
    echo "run_eval.sh: LLM_INSTALL must be auto, remote or no, not '$install'" >&2
    exit 2
    ;;
esac

mkdir -p "$report_dir" "$(dirname "$junit")"
status=0
python3 -m pytest "$evals" --llm-report-dir "$report_dir" --junitxml="$junit" "$@" || status=$?

if [[ $status -eq 5 ]]; then
  echo "run_eval.sh: error: pytest collected no eval items from '$evals' (exit 5)." >&2
  echo "run_eval.sh: an eval job that ran nothing must not pass: check LLM_EVALS, the suite files and -k/-m." >&2
  exit 5
fi

# The seed-004 indicator files: at the top of the report folder when the run has one model (or one
# suite with that figure), and per model and suite under indicators/<model>/<suite>/ always.
mkdir -p "$indicator_dir"
copied=0
for name in accuracy_f1 toxicity robustness_adv latency_p99 throughput_rps; do
  if [[ -f "$report_dir/$name.json" ]]; then
    cp "$report_dir/$name.json" "$indicator_dir/"
    copied=$((copied + 1))
  fi
done
if [[ -d "$report_dir/indicators" ]] \
  && [[ "$(cd "$report_dir/indicators" && pwd -P)" != "$(cd "$indicator_dir" && pwd -P)" ]]; then
  cp -R "$report_dir/indicators/." "$indicator_dir/"
fi

echo "run_eval.sh: pytest exit $status; reports in $report_dir; $copied top-level indicator file(s) in $indicator_dir" >&2
exit "$status"
