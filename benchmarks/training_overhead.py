"""What pytest adds around a training job: the bundled SFT job as gates under pytest vs the same run bare.

Prints the median wall time over --repeat runs of each (a fresh process every time, imports included):

    python benchmarks/training_overhead.py --repeat 3

- pytest training/: every bundled job and its gates, the whole folder as a user runs it (the goal:
  under 3 minutes on a 2-core machine);
- pytest: ``pytest training/sft_capitals -p no:cacheprovider -q`` (collection, the shared run, its gates);
- run_job: the same job through ``harness.training.runner.run_job`` in a plain ``python -c``;
- trl: with ``--plain-trl``, hand-written SFTTrainer code on the same tiny model, tokenizer and config,
  without the harness's label audit, checkpoint and checks.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB = "training/sft_capitals/job.yaml"

RUN_JOB = f"""
import tempfile
from pathlib import Path
from harness.training.job import load_job
from harness.training.runner import run_job
with tempfile.TemporaryDirectory() as folder:
    run = run_job(load_job({JOB!r}), Path(folder))
assert run.error is None, run.error
"""

PLAIN_TRL = f"""
import tempfile
import datasets, trl
from harness.training.job import load_job
from harness.training.runner import build_config, build_model, build_tokenizer, load_rows
job = load_job({JOB!r})
rows = load_rows(job)
tokenizer = build_tokenizer(job, rows)
with tempfile.TemporaryDirectory() as folder:
    trainer = trl.SFTTrainer(model=build_model(job, tokenizer), args=build_config(job, folder),
                             train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
"""


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:3])} ... failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plain-trl", action="store_true", help="also time hand-written SFTTrainer code")
    args = parser.parse_args()
    commands = {
        "pytest training/": [sys.executable, "-m", "pytest", "training/", "-p", "no:cacheprovider", "-q"],
        "pytest training/sft_capitals": [sys.executable, "-m", "pytest", "training/sft_capitals",
                                         "-p", "no:cacheprovider", "-q"],
        "python -c run_job(...)": [sys.executable, "-c", RUN_JOB],
    }
    if args.plain_trl:
        commands["python -c SFTTrainer(...).train()"] = [sys.executable, "-c", PLAIN_TRL]
    times: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(args.repeat):  # interleaved: a slow spell on a shared machine hits every variant
        for label, command in commands.items():
            times[label].append(timed(command))
    medians = {label: statistics.median(values) for label, values in times.items()}
    print(f"{JOB}, median of {args.repeat} runs, fresh process each")
    for label, values in times.items():
        print(f"{label:36} {medians[label]:7.2f} s   runs: {', '.join(f'{v:.2f}' for v in values)}")
    base = medians["python -c run_job(...)"]
    for label, median in medians.items():
        if label == "pytest training/":
            continue  # several jobs: no single bare run to compare with
        print(f"ratio {label:30} {median / base:6.2f} x run_job")


if __name__ == "__main__":
    main()
