"""Engine kind ``trained``: which server serves a job's checkpoint (the CPU server, or vLLM on a GPU
machine), what the launch record says, and the options it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

import harness.training.shared as shared
from harness.engines.registry import EngineContext
from harness.models import ModelSpec
from harness.run import Settings
from harness.training import engine as trained_engine
from harness.training.api import TrainRun
from harness.training.engine import TrainedEngine

JOB = Path(__file__).resolve().parents[1] / "training" / "sft_capitals" / "job.yaml"


def launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **options: str) -> tuple[list[str], dict]:
    run = TrainRun(job="sft_capitals", trainer="sft", output_dir=str(tmp_path / "run"))
    monkeypatch.setattr(shared, "run_in", lambda root, job: run)  # the job's run, without training
    spec = ModelSpec("sft_capitals", engine="trained", model_path=str(JOB), options=dict(options))
    assert TrainedEngine.check(spec) is None
    ctx = EngineContext(tmp_path, 1, True, Settings())
    argv, _env, record = TrainedEngine(spec).launch(8123, ctx)
    return argv, record


def test_the_cpu_server_serves_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv, record = launch(tmp_path, monkeypatch, server="cpu", checkpoint="initial")
    assert argv[1:3] == ["-m", "harness.engines.cpu_server"]
    assert argv[argv.index("--model") + 1] == str(tmp_path / "run" / "initial")
    assert (record["server"], record["checkpoint"]) == ("cpu", "initial")


def test_vllm_serves_the_checkpoint_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv, record = launch(tmp_path, monkeypatch, server="vllm")
    assert argv[:3] == ["vllm", "serve", str(tmp_path / "run")]
    assert argv[argv.index("--served-model-name") + 1] == "sft_capitals" and "127.0.0.1" in argv
    assert record["server"] == "vllm"


def test_auto_picks_the_cpu_server_without_vllm_or_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert trained_engine.resolve_server("auto") == "cpu"
    assert trained_engine.resolve_server("vllm") == "vllm"


def test_unknown_server_or_option_is_refused() -> None:
    bad = ModelSpec("m", engine="trained", model_path=str(JOB), options={"server": "tgi"})
    assert "options.server must be one of auto, cpu, vllm" in (TrainedEngine.check(bad) or "")
    bad = ModelSpec("m", engine="trained", model_path=str(JOB), options={"port": 1})
    assert "unknown trained option 'port' (options: checkpoint, server)" in (TrainedEngine.check(bad) or "")
