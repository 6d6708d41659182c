"""One run per job per pytest run, shared by every gate item and ``llm_train`` call in every process.

A job's run lives in ``<run folder>/training/<job name>-<fingerprint>/``: the run folder is the
harness's runtime folder (the same for the controller and every xdist worker of one pytest run, new
in the next, removed at its end), the fingerprint that of the job file and its data. Engines that
serve a trained checkpoint (``engine: trained``) find the run there too. Whichever process needs the run
first takes an exclusive lock there, trains, writes ``run.json`` and lets go; the others wait on the
lock and then read ``run.json``. A failed run is shared the same way: its error fails every gate
once, not one retry per worker. A process that dies mid-run releases the lock unfinished, and the
next waiter trains.

Test seam: ``$LLM_HARNESS_TRAIN_RUNNER`` (``package.module:function`` or ``/path/to/file.py:function``)
names the function that runs a job, looked up at each run, in every process (xdist workers inherit
the environment); by default :func:`harness.training.runner.run_job`.
"""

from __future__ import annotations

import fcntl
import importlib
import importlib.util
import json
import os
import traceback
from pathlib import Path
from typing import Any, Callable

import pytest

from harness.training.api import TrainJob, TrainRun

RUNNER_ENV = "LLM_HARNESS_TRAIN_RUNNER"
DEFAULT_RUNNER = "harness.training.runner:run_job"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"
RUNS_KEY = pytest.StashKey[dict[Path, TrainRun]]()  # by job file: the fingerprint is read once
JOBS_KEY = pytest.StashKey[dict[Path, TrainJob]]()

Runner = Callable[[TrainJob, Path], TrainRun]


def training_root(runtime_dir: Path) -> Path:
    """A pytest run's training folder, from its runtime folder (the same path in every process of the run)."""
    return Path(runtime_dir) / "training"


def run_in(root: Path, job: TrainJob) -> TrainRun:
    """The job's run under a run's training folder: trained here if no process has, else the one that did."""
    return _run_once(job, root / f"{job.name}-{job.fingerprint()}")


def shared_run(config: pytest.Config, job: TrainJob) -> TrainRun:
    """The job's run in this pytest run (memoized in this process)."""
    from harness.run import run_state

    runs = config.stash.setdefault(RUNS_KEY, {})
    if job.path not in runs:
        runs[job.path] = run_in(training_root(run_state(config).runtime_dir), job)
    return runs[job.path]


def _run_once(job: TrainJob, folder: Path) -> TrainRun:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        try:
            done = _read_run(folder)
            if done is not None:
                return done
            run = _train(job, folder)
            _write_run(folder, run)
            return run
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_run(folder: Path) -> TrainRun | None:
    """A finished run's record; None when there is none, or only a torn one (its writer died)."""
    try:
        return TrainRun.from_dict(json.loads((folder / RUN_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _write_run(folder: Path, run: TrainRun) -> None:
    # written whole, then renamed: a reader never sees half a record
    temporary = folder / f".{RUN_FILE}.{os.getpid()}"
    temporary.write_text(json.dumps(run.to_dict(), ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    temporary.replace(folder / RUN_FILE)


def _train(job: TrainJob, folder: Path) -> TrainRun:
    """The runner's result; a runner that cannot be loaded or that raises gives a failed run, shared as any."""
    try:
        runner = load_runner()
        run = runner(job, folder)
        if not isinstance(run, TrainRun):
            raise TypeError(f"the runner returned {type(run).__name__}, not a TrainRun")
        return run
    except Exception as exc:  # noqa: BLE001 - every gate of the job reports it; the run goes on
        detail = "".join(traceback.format_exception_only(exc)).strip()
        return TrainRun(job=job.name, trainer=job.trainer, output_dir=str(folder), error=f"runner crashed: {detail}")


def load_runner() -> Runner:
    """The function that runs a job: ``$LLM_HARNESS_TRAIN_RUNNER`` (a test seam) or the engine."""
    spec = os.environ.get(RUNNER_ENV) or DEFAULT_RUNNER
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ValueError(f"${RUNNER_ENV}={spec!r}: expected 'package.module:function' or '/path/file.py:function'")
    if where.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location(f"_llm_train_runner_{abs(hash(where))}", where)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"${RUNNER_ENV}: cannot load {where}")
        module: Any = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def job_at(config: pytest.Config, path: Path | str) -> TrainJob:
    """A job file (relative to the rootdir), loaded once per process."""
    from harness.training.job import load_job

    jobs = config.stash.setdefault(JOBS_KEY, {})
    resolved = (config.rootpath / path).resolve()
    if resolved not in jobs:
        jobs[resolved] = load_job(resolved)
    return jobs[resolved]


def train(config: pytest.Config, path: Path | str) -> TrainRun:
    """``llm_train(path)``: the job's shared run, as its gate items see it."""
    return shared_run(config, job_at(config, path))
