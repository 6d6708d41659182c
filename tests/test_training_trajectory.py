"""Gate ``trajectory`` (harness.training.trajectory): per-step loss and grad_norm against a committed
reference; a spike or a small systematic drift fails naming the step, a missing reference says how to
write one, and a written reference holds for a rerun of the same tiny job (CPU, same seed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.training.trajectory import REFERENCE, check, compare, steps_of


def history(losses: list[float], norms: list[float] | None = None) -> list[dict[str, Any]]:
    norms = norms or [1.0 + i / 10 for i in range(len(losses))]
    steps = [{"step": i, "loss": loss, "grad_norm": norm, "learning_rate": 1e-3}
             for i, (loss, norm) in enumerate(zip(losses, norms), 1)]
    return [*steps, {"step": len(losses), "train_loss": sum(losses) / len(losses)}]  # the closing summary


LOSSES = [6.0 - 0.3 * i for i in range(10)]
REF = {"steps": steps_of(history(LOSSES)), "tolerance": {"max_abs": 0.05, "mean_residual": 0.01}}


def test_a_run_within_tolerance_passes() -> None:
    jitter = [loss + (0.004 if i % 2 else -0.004) for i, loss in enumerate(LOSSES)]
    result = compare(history(jitter), REF)
    assert result["passed"], result
    assert result["steps"] == 10 and result["loss"]["max_abs"] == pytest.approx(0.004)


def test_one_spike_fails_naming_its_step() -> None:
    spiked = list(LOSSES)
    spiked[6] += 0.2
    result = compare(history(spiked), REF)
    assert not result["passed"]
    assert result["loss"]["worst_step"] == 7 and "loss at step 7" in result["reason"]
    assert "max_abs 0.05" in result["reason"]


def test_a_small_constant_drift_fails_the_mean_residual_check() -> None:
    # +0.03 at every step: within max_abs everywhere, a systematic shift all the same
    result = compare(history([loss + 0.03 for loss in LOSSES]), REF)
    assert not result["passed"]
    assert "max_abs" not in result["reason"].split("drifts")[0]  # no spike reported
    assert "loss drifts: mean residual +0.03" in result["reason"]
    assert result["loss"]["mean_residual"] == pytest.approx(0.03)


def test_grad_norm_is_compared_too_and_steps_must_match() -> None:
    norms = [1.0 + i / 10 for i in range(10)]
    norms[2] = 9.0
    assert "grad_norm at step 3" in compare(history(LOSSES, norms), REF)["reason"]
    shorter = compare(history(LOSSES[:8]), REF)
    assert not shorter["passed"] and "missing [9, 10]" in shorter["reason"]


def test_missing_reference_fails_saying_how_to_write_one(tmp_path: Path) -> None:
    job_file = tmp_path / "job.yaml"
    result = check(history(LOSSES), job_file)
    assert not result["passed"]
    assert f"python -m harness.training.trajectory write {job_file} --reason" in result["reason"]
    assert not compare(history(LOSSES), None)["passed"]


def test_trajectory_is_opt_in_not_a_default_gate() -> None:
    from harness.training.job import CHECKS, default_gates

    assert "trajectory" in CHECKS and "trajectory" not in default_gates("sft")


def test_write_refuses_a_dirty_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.training.trajectory import writer

    monkeypatch.setattr(writer, "dirty_files", lambda folder: [" M harness/x.py"])
    monkeypatch.setattr(writer, "_git", lambda folder, *args: "abc\n")
    with pytest.raises(SystemExit, match="(?s)refusing to write a reference from a dirty tree.*harness/x.py.*--allow-dirty"):
        writer.write(tmp_path / "job.yaml", "because")
    assert not (tmp_path / REFERENCE).exists()


def test_write_then_rerun_matches_the_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("trl")
    from dataclasses import replace

    from harness.training.runner import run_job
    from harness.training.trajectory import writer
    from tests.test_training_runner import make_job, sft_records

    job = replace(make_job(tmp_path / "job", "sft", sft_records()), gates=("trajectory",))
    # write() loads the job file; this job is built in memory
    monkeypatch.setattr("harness.training.job.load_job", lambda path: job)
    path = writer.write(job.path, "test reference", allow_dirty=True)
    assert path == job.path.parent / REFERENCE
    written = json.loads(path.read_text())
    assert len(written["steps"]) == 10 and written["reason"] == "test reference" and written["versions"]["trl"]

    rerun = run_job(job, tmp_path / "rerun")
    assert rerun.error is None and rerun.checks["trajectory"]["passed"], rerun.checks["trajectory"]
    # CPU, same seed, same process: bit-identical, not merely within tolerance
    assert steps_of(rerun.log_history) == written["steps"]
    assert rerun.checks["trajectory"]["loss"]["max_abs"] == 0.0

