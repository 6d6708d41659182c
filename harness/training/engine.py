"""Engine kind ``trained``: the checkpoint of a training job of this run, served by
``harness.engines.cpu_server`` on a CPU, or by ``vllm serve`` where torch sees a CUDA device and vLLM
is installed (``options.server``: auto | cpu | vllm; train, then evaluate, in one pytest run).

A models-file entry names the job file; ``options.checkpoint: initial`` serves the model as it was
before training, so a suite can compare the two with paired statistics::

    - {name: capitals-sft, engine: trained, model_path: training/sft_capitals/job.yaml}
    - {name: capitals-base, engine: trained, model_path: training/sft_capitals/job.yaml,
       options: {checkpoint: initial}}

An eval suite can name the job itself (``model: {train: training/sft_capitals}``): the harness then makes
these two models for that suite alone, ``<job>-initial`` and ``<job>`` (harness.models.trained_specs).

The job runs once per pytest run, shared with its gate items and ``llm_train`` (whichever needs it
first trains it); a job whose run failed is an engine that did not start, with the run's error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.engines.cpu_engine import cpu_server_argv
from harness.engines.lease import ManagedServer
from harness.engines.managed import EngineStartError
from harness.engines.registry import EngineContext
from harness.models import ModelSpec

CHECKPOINTS = ("trained", "initial")
SERVERS = ("auto", "cpu", "vllm")  # auto: vLLM where torch sees a CUDA device and vllm is installed, else the CPU server


def resolve_server(choice: str) -> str:
    """The server that will serve a checkpoint: ``cpu`` or ``vllm``."""
    if choice != "auto":
        return choice
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "cpu"
    import torch

    return "vllm" if torch.cuda.is_available() else "cpu"


class TrainedEngine(ManagedServer):
    kind = "trained"
    record_kind = "trained"  # the server (cpu or vllm) is in the launch record

    @classmethod
    def check(cls, spec: ModelSpec) -> str | None:
        from harness.training.job import JOB_FILE_NAMES

        if not spec.model_path or Path(spec.model_path).name not in JOB_FILE_NAMES:
            return "engine trained needs model_path: the job file (training/<job>/job.yaml)"
        unknown = sorted(set(spec.options) - {"checkpoint", "server"})
        if unknown:
            return f"unknown trained option {unknown[0]!r} (options: checkpoint, server)"
        if spec.options.get("checkpoint", "trained") not in CHECKPOINTS:
            return f"options.checkpoint must be one of {', '.join(CHECKPOINTS)}"
        if spec.options.get("server", "auto") not in SERVERS:
            return f"options.server must be one of {', '.join(SERVERS)}"
        return super().check(spec)

    def alongside(self) -> bool:
        return resolve_server(str(self.spec.options.get("server", "auto"))) == "cpu"

    @property
    def checkpoint(self) -> str:
        return str(self.spec.options.get("checkpoint", "trained"))

    def _job(self) -> Any:
        from harness.training.job import JobError, load_job

        try:
            return load_job(Path(str(self.spec.model_path)).resolve())
        except JobError as exc:
            raise EngineStartError(f"model {self.spec.name}: {exc}") from exc

    def launch(self, port: int, ctx: EngineContext) -> tuple[list[str], dict[str, str], dict[str, Any]]:
        from harness.training.runner import INITIAL
        from harness.training.shared import run_in, training_root

        job = self._job()
        run = run_in(training_root(ctx.runtime_dir), job)
        if run.error:
            raise EngineStartError(f"model {self.spec.name}: training job {job.name} failed: {run.error}")
        folder = Path(run.output_dir) / (INITIAL if self.checkpoint == "initial" else "")
        server = resolve_server(str(self.spec.options.get("server", "auto")))
        record = {"job": str(job.path), "checkpoint": self.checkpoint, "server": server}
        if server == "vllm":
            from harness.engines.launchers import launch_for

            launch = launch_for("vllm", str(folder), self.spec.name, port, {}, self.spec.args, self.spec.gpus)
            return launch.argv, launch.env, {**launch.to_dict(), **record}
        argv = cpu_server_argv(str(folder), self.spec.name, port, ctx, batch_wait_ms=20)
        return argv, {}, {"argv": argv, **record}

    def identity(self) -> dict[str, Any]:
        # a seeded job on the same job file and data gives the same weights: its fingerprint keys the cache
        job = self._job()
        return {"name": self.spec.name, "engine": self.kind, "job": job.fingerprint(), "checkpoint": self.checkpoint}

    def metadata(self, record: dict[str, Any] | None) -> dict[str, Any]:
        return {"source": f"training job {self.spec.model_path} ({self.checkpoint})", "weights_sha256": None}
