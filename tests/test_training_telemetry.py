"""Gate kind 8: throughput and memory per optimizer step (harness.training.telemetry), recorded by a real
tiny SFT run, gateable as job metrics, and drawn and tabled in the reports."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import harness.training.collect  # imported before pytester snapshots sys.modules
import harness.training.job
import harness.training.shared
from harness.report.markdown import render_markdown
from harness.report.training_plots import (
    add_training_gate,
    step_table,
    throughput_pngs,
    write_training_pngs,
)
from harness.training.api import TrainRun
from harness.training.telemetry import FIELDS, SUMMARY, step_telemetry, summary
from tests.conftest import run_inline

ROOT = Path(__file__).resolve().parents[1]
HISTORY = [{"loss": 2.9, "grad_norm": 1.5, "learning_rate": 5e-3, "step": 1},
           {"loss": 2.7, "grad_norm": 1.1, "learning_rate": 2.5e-3, "step": 2},
           {"train_runtime": 1.2, "train_loss": 2.8, "step": 2}]


def row(step: int, step_s: float, samples: float, tokens: float | None, rss: float, **more: Any) -> dict[str, Any]:
    return {"step": step, "elapsed_s": step * step_s, "step_s": step_s, "samples_per_s": samples, "tokens_per_s": tokens,
            "rss_mb": rss, "peak_rss_mb": rss + 1, "cuda_max_allocated_mb": None, "gpu_used_mb": None, **more}


TELEMETRY = [row(1, 0.5, 8.0, 100.0, 500.0), row(2, 0.25, 16.0, 200.0, 510.0)]


# -- the module ---------------------------------------------------------------


def test_importing_the_module_imports_neither_torch_nor_transformers_nor_pynvml():
    code = ("import sys, harness.training.telemetry, harness.report.training_plots; "
            "print(sorted(m for m in ('torch', 'transformers', 'pynvml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_summary_leaves_the_first_step_out_of_means_from_three_steps_and_takes_peaks_over_all():
    steps = [row(1, 2.0, 2.0, 10.0, 700.0, cuda_max_allocated_mb=64.0),  # warm-up: slow, and the memory peak
             row(2, 0.5, 8.0, 100.0, 500.0, cuda_max_allocated_mb=32.0, gpu_used_mb=900.0),
             row(3, 0.25, 16.0, None, 510.0)]
    figures = summary(steps)
    assert set(figures) == set(SUMMARY)
    assert figures["samples_per_s_mean"] == 12.0 and figures["tokens_per_s_mean"] == 100.0  # None skipped
    assert figures["step_s_p50"] == 0.375
    assert (figures["peak_rss_mb"], figures["cuda_peak_mb"], figures["gpu_peak_mb"]) == (701.0, 64.0, 900.0)
    # two steps: both count, none is warm-up
    assert summary(steps[:2])["samples_per_s_mean"] == 5.0
    assert summary([]) == dict.fromkeys(SUMMARY)


def test_the_callback_times_each_step_and_gives_no_tokens_when_the_trainer_does_not_count_them(monkeypatch):
    pytest.importorskip("transformers")
    from transformers import TrainerCallback

    from harness.training import telemetry

    clock = iter([100.0, 100.5, 101.5])
    monkeypatch.setattr(telemetry.time, "perf_counter", lambda: next(clock))
    callback = step_telemetry()
    assert isinstance(callback, TrainerCallback)
    args = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=2, world_size=1,
                           include_num_input_tokens_seen="no")
    state = SimpleNamespace(global_step=0, num_input_tokens_seen=0)
    callback.on_train_begin(args, state, None)
    for step in (1, 2):
        state.global_step = step
        callback.on_step_end(args, state, None)
    assert [(r["step"], r["elapsed_s"], r["step_s"], r["samples_per_s"]) for r in callback.steps] == [
        (1, 0.5, 0.5, 16.0), (2, 1.5, 1.0, 8.0)]  # 4 x 2 samples per optimizer step
    assert all(r["tokens_per_s"] is None for r in callback.steps)
    assert all(r["rss_mb"] > 0 and r["peak_rss_mb"] >= r["rss_mb"] for r in callback.steps)


# -- a real run ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> TrainRun:
    pytest.importorskip("trl")
    from harness.training.runner import run_job
    from tests.test_training_runner import make_job, sft_records

    folder = tmp_path_factory.mktemp("telemetry")
    return run_job(make_job(folder, "sft", sft_records(), config={"max_steps": 6}), folder / "out")


def test_a_real_sft_run_records_one_telemetry_row_per_optimizer_step(sft_run: TrainRun):
    assert sft_run.error is None
    steps = sft_run.telemetry
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6] and all(set(r) == set(FIELDS) for r in steps)
    assert all(r["samples_per_s"] > 0 and r["tokens_per_s"] > 0 and r["rss_mb"] > 0 for r in steps)
    for r in steps:  # batch 4, no accumulation, one process
        assert r["samples_per_s"] == pytest.approx(4 / r["step_s"], rel=1e-4)
    assert [r["elapsed_s"] for r in steps] == sorted(r["elapsed_s"] for r in steps)
    # tokens/s x step time adds up to the trainer's own count of non-padding input tokens
    seen = [e["num_input_tokens_seen"] for e in sft_run.log_history if "num_input_tokens_seen" in e][-1]
    assert sum(r["tokens_per_s"] * r["step_s"] for r in steps) == pytest.approx(seen, rel=1e-3)
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        assert all(r["cuda_max_allocated_mb"] is None and r["gpu_used_mb"] is None for r in steps)
    else:  # trained on the GPU: torch's figure always, NVML's with nvidia-ml-py installed
        assert all(r["cuda_max_allocated_mb"] > 0 for r in steps) and sft_run.metrics["cuda_peak_mb"] > 0
        if importlib.util.find_spec("pynvml") is not None:
            assert all(r["gpu_used_mb"] > 0 for r in steps) and sft_run.metrics["gpu_peak_mb"] > 0


def test_a_real_run_has_the_gateable_figures_in_its_metrics_and_run_json(sft_run: TrainRun):
    metrics = sft_run.metrics
    assert metrics["samples_per_s_mean"] == pytest.approx(statistics.fmean(r["samples_per_s"] for r in sft_run.telemetry[1:]),
                                                          abs=1e-3)
    assert metrics["tokens_per_s_mean"] > 0 and metrics["step_s_p50"] > 0
    assert metrics["peak_rss_mb"] == pytest.approx(max(r["peak_rss_mb"] for r in sft_run.telemetry), abs=0.1)
    assert metrics["peak_rss_mb"] > 10
    saved = TrainRun.from_dict(json.loads((Path(sft_run.output_dir) / "run.json").read_text()))
    assert saved.telemetry == sft_run.telemetry and saved.metrics["samples_per_s_mean"] == metrics["samples_per_s_mean"]


JOB_LINES = [
    "name: tiny_speed",
    "trainer: sft",
    "model: {tiny: {layers: 1, hidden: 32}}",
    "tokenizer: {train: {vocab_size: 300}}",
    "chat_template: chatml",
    "dataset: data.jsonl",
    "config: {max_steps: 3, per_device_train_batch_size: 2}",
    "gates:",
    "  - peak_rss_mb <= 1",
    "  - samples_per_s_mean >= 0.001",
]
ROWS = [{"prompt": f"Capital of {c}?", "completion": a} for c, a in [("France", "Paris"), ("Peru", "Lima"),
                                                                      ("Japan", "Tokyo"), ("Chile", "Santiago")]]


def test_a_job_gated_on_memory_fails_naming_the_figure_and_its_reports_carry_the_telemetry(pytester, monkeypatch):
    pytest.importorskip("trl")
    monkeypatch.delenv(harness.training.shared.RUNNER_ENV, raising=False)  # the real runner
    folder = pytester.path / "training" / "tiny_speed"
    folder.mkdir(parents=True)
    (folder / "job.yaml").write_text("\n".join(JOB_LINES) + "\n", encoding="utf-8")
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")

    result = run_inline(pytester, "training", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*training gate peak_rss_mb <= 1 on job tiny_speed: failed: peak_rss_mb = *, needs <= 1*"])

    out = pytester.path / "out"
    [entry] = json.loads((out / "report.json").read_text(encoding="utf-8"))["training"]
    assert {g["expr"]: g["status"] for g in entry["gates"]} == {"peak_rss_mb <= 1": "failed",
                                                               "samples_per_s_mean >= 0.001": "passed"}
    assert [r["step"] for r in entry["telemetry"]] == [1, 2, 3]
    assert all(set(r) == set(FIELDS) and r["samples_per_s"] > 0 for r in entry["telemetry"])
    assert entry["metrics"]["samples_per_s_mean"] > 0.001 and entry["metrics"]["peak_rss_mb"] > 1

    assert (out / "training_tiny_speed_throughput.png").read_bytes().startswith(b"\x89PNG")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "![throughput and memory of tiny_speed](training_tiny_speed_throughput.png)" in md[md.index("## Training"):]
    from openpyxl import load_workbook

    rows = [[c.value for c in r] for r in load_workbook(out / "report.xlsx")["training_tiny_speed"].iter_rows()]
    assert rows[0][:4] == ["step", "loss", "grad_norm", "learning_rate"] and rows[0][4:] == list(FIELDS[1:])
    assert [r[0] for r in rows[1:]] == [1, 2, 3] and all(r[rows[0].index("samples_per_s")] > 0 for r in rows[1:])


# -- the reports, without training ----------------------------------------------


def entry(job: str, log_history: list[dict[str, Any]], telemetry: list[dict[str, Any]]) -> dict[str, Any]:
    entries: dict[str, dict[str, Any]] = {}
    add_training_gate(entries, {"job": job, "trainer": "sft", "log_history": log_history, "telemetry": telemetry,
                                "gate": {"expr": "steps >= 1", "passed": True, "reason": ""}})
    return entries[job]


def test_the_throughput_png_is_drawn_only_for_a_job_with_telemetry(tmp_path: Path):
    pytest.importorskip("matplotlib")
    report = {"training": [entry("with", HISTORY, TELEMETRY), entry("without", HISTORY, [])]}
    written = write_training_pngs(report, tmp_path)
    assert sorted(p.name for p in written) == ["training_with.png", "training_with_throughput.png", "training_without.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
    assert (tmp_path / "training_with_throughput.png").read_bytes().startswith(b"\x89PNG")
    md = render_markdown(report, plots={p.name for p in written})
    assert md.count("](training_with_throughput.png)") == 1 and "_throughput.png" not in md[md.index("### without"):]
    # a PNG not drawn (matplotlib missing, a writer failed) is not linked
    assert "_throughput.png" not in render_markdown(report, plots={"training_with.png"})


def test_png_names_stay_unique_when_a_job_is_named_like_another_jobs_throughput_plot(tmp_path: Path):
    pytest.importorskip("matplotlib")
    report = {"training": [entry("a", HISTORY, TELEMETRY), entry("a_throughput", HISTORY, TELEMETRY),
                           entry("only telemetry", [], TELEMETRY)]}
    names = [p.name for p in write_training_pngs(report, tmp_path)]
    assert len(names) == len({n.lower() for n in names}) == 5
    assert names[:2] == ["training_a.png", "training_a_throughput.png"]  # the curves keep their names
    assert [name for _, name in throughput_pngs(report)] == ["training_a_throughput-2.png",
                                                             "training_a_throughput_throughput.png",
                                                             "training_only_telemetry_throughput.png"]


def test_the_training_sheet_table_joins_telemetry_by_step_and_keeps_unlogged_steps():
    telemetry = [*TELEMETRY, row(3, 0.2, 20.0, 250.0, 520.0)]  # step 3: measured, not logged
    columns, rows = step_table(entry("j", HISTORY, telemetry))
    assert columns == ["step", "loss", "grad_norm", "learning_rate", *FIELDS[1:]]
    assert [r[:2] for r in rows] == [[1, 2.9], [2, 2.7], [3, None]]
    assert [r[columns.index("samples_per_s")] for r in rows] == [8.0, 16.0, 20.0]
    assert step_table(entry("j", HISTORY, [])) == (["step", "loss", "grad_norm", "learning_rate"],
                                                   [[1, 2.9, 1.5, 5e-3], [2, 2.7, 1.1, 2.5e-3]])
