"""Job files as pytest items: one gate item per gate of a ``job.yaml``, judged on the job's shared run.

``training/sft_capitals/job.yaml::gate[label_mask]`` passes or fails on the run's named check,
``...::gate[final_loss <= 3.0]`` on its metrics; both are marked ``llm_training`` and ``llm_gate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, NoReturn

import pytest

from harness.training.api import TrainJob, TrainRun
from harness.training.job import CHECKS, JobError, load_job


GPU_MARKER = "gpu"  # a job on a real model: skipped where torch sees no CUDA device


def _cuda() -> bool:
    import torch  # only for a job marked gpu: collection stays light otherwise

    return bool(torch.cuda.is_available())


class TrainGateFailed(Exception):
    """A training gate that did not hold (or whose run failed)."""


class TrainJobFile(pytest.File):
    """The gates of one job file."""

    def collect(self) -> Iterable[pytest.Item]:
        try:
            job = load_job(self.path)
        except JobError as exc:
            raise self.CollectError(str(exc)) from exc
        for marker in job.markers:
            self.config.addinivalue_line("markers", f"{marker}: declared by training job {job.name}")
        marks = [pytest.mark.llm_training, pytest.mark.llm_gate, *(getattr(pytest.mark, m) for m in job.markers)]
        if GPU_MARKER in job.markers and not _cuda():
            marks.append(pytest.mark.skip(reason=f"training job {job.name} is marked {GPU_MARKER}: no CUDA GPU here"))
        # the node id spelled out, as harness.collect does for eval gates: --lf then matches a bracketed name
        return [TrainGateItem.from_parent(self, name=f"gate[{gate}]", nodeid=f"{self.nodeid}::gate[{gate}]",
                                          job=job, gate=gate, marks=marks)
                for gate in job.gates]


class TrainGateItem(pytest.Item):
    """One gate of a job: a named check of its run, or a metric expression over the run's metrics."""

    def __init__(self, *, job: TrainJob, gate: str, marks: list[Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.gate = gate
        self.run: TrainRun | None = None  # the job's run, once runtest got it
        self.reason = ""  # why the gate held or failed, for the reports
        for mark in marks:
            self.add_marker(mark)

    def runtest(self) -> None:
        from harness.training.shared import shared_run

        run = self.run = shared_run(self.config, self.job)
        self.user_properties.extend([("job", self.job.name), ("run_dir", run.output_dir)])
        if run.error:
            self._fail(f"the run failed: {run.error}")
        if self.gate in CHECKS:
            self._check(run)
        else:
            self._metric(run)

    def _check(self, run: TrainRun) -> None:
        check = run.checks.get(self.gate)
        if check is None:
            self._fail(f"the run has no check {self.gate!r} (it has: {', '.join(sorted(run.checks)) or 'none'})")
        passed = check.get("passed") is True
        self.reason = str(check.get("reason", ""))
        self.user_properties.extend([("check", self.gate), ("passed", passed), ("reason", check.get("reason", ""))])
        self.user_properties.extend((key, check[key]) for key in ("value", "threshold") if key in check)
        if not passed:
            self._fail(str(check.get("reason") or "no reason given"))

    def _metric(self, run: TrainRun) -> None:
        from harness.gates import evaluate_gate, parse_gate

        gate = parse_gate(self.gate)
        value = run.metrics.get(gate.metric)
        self.user_properties.extend([("metric", gate.metric), ("value", value), ("threshold", gate.threshold),
                                     ("op", gate.op)])
        if gate.metric not in run.metrics:
            self._fail(f"unknown metric {gate.metric!r}; this run has: {', '.join(sorted(run.metrics)) or 'none'}")
        result = evaluate_gate(gate, run.metrics)
        self.reason = result.reason or f"{gate.metric} = {run.metrics.get(gate.metric)}"
        if result.status != "passed":
            self._fail(result.reason)

    def _fail(self, reason: str) -> NoReturn:
        self.reason = reason
        raise TrainGateFailed(f"training gate {self.gate} on job {self.job.name}: failed: {reason}")

    def training_summary(self, passed: bool) -> dict[str, Any] | None:
        """The run and this gate's outcome, as ``report.llm_training`` carries them to the controller."""
        if self.run is None:
            return None
        import json

        run = self.run
        summary = {"job": self.job.name, "trainer": run.trainer, "config": dict(self.job.config),
                   "output_dir": run.output_dir, "checks": run.checks, "metrics": run.metrics,
                   "versions": run.versions, "wall_s": run.wall_s, "error": run.error,
                   "log_history": run.log_history, "telemetry": run.telemetry,
                   "gate": {"expr": self.gate, "passed": passed, "reason": self.reason}}
        # JSON primitives only: the report crosses to the xdist controller through execnet, which refuses
        # library types (torch's TorchVersion, numpy scalars) that the process that trained still holds
        return json.loads(json.dumps(summary, default=str))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, TrainGateFailed):
            from harness.textsafe import visible

            # a run's error quotes trainer output: its escape sequences must not reach the terminal
            return visible(str(excinfo.value))
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.job.name}::{self.name}"
