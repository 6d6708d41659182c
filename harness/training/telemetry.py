"""Throughput and memory per optimizer step (gate kind 8): a ``TrainerCallback`` that records one row
per step, and :func:`summary`, the gateable figures the runner merges into ``TrainRun.metrics``.

Cheap to import: transformers, torch and pynvml (package ``nvidia-ml-py``) are imported when a
callback is built or a step is measured, never here. A figure a machine cannot give (no CUDA, no
pynvml, no ``/proc``) is None, never an error.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from typing import Any

MB = 1024 * 1024
FIELDS = ("step", "elapsed_s", "step_s", "samples_per_s", "tokens_per_s", "rss_mb", "peak_rss_mb",
          "cuda_max_allocated_mb", "gpu_used_mb")
SUMMARY = ("samples_per_s_mean", "tokens_per_s_mean", "peak_rss_mb", "cuda_peak_mb", "gpu_peak_mb", "step_s_p50")


class StepTelemetry:
    """The recording half of the callback (no transformers import): ``steps`` holds one dict per
    optimizer step, with the keys of :data:`FIELDS`. Build the callback with :func:`step_telemetry`."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self._start: float | None = None
        self._last: float | None = None
        self._tokens: int | None = None
        self._nvml: Any = None  # the pynvml device handle; False once known to be unavailable

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = self._last = time.perf_counter()
        self._tokens = _tokens_seen(args, state)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        if self._start is None or self._last is None:  # a step without on_train_begin: time from here
            self._start = self._last = now
        step_s = now - self._last
        samples = (int(getattr(args, "per_device_train_batch_size", 1) or 1)
                   * int(getattr(args, "gradient_accumulation_steps", 1) or 1)
                   * int(getattr(args, "world_size", 1) or 1))
        tokens = _tokens_seen(args, state)
        tokens_per_s = None
        if tokens is not None and self._tokens is not None and step_s > 0:
            tokens_per_s = (tokens - self._tokens) / step_s
        self._last, self._tokens = now, tokens
        rss, peak = rss_mb(), peak_rss_mb()
        if rss is not None and peak is not None:
            peak = max(peak, rss)  # the kernel's high-water mark may lag the current RSS by a few pages
        self.steps.append({
            "step": int(state.global_step),
            "elapsed_s": round(now - self._start, 6),
            "step_s": round(step_s, 6),
            "samples_per_s": samples / step_s if step_s > 0 else None,
            "tokens_per_s": tokens_per_s,
            "rss_mb": rss,
            "peak_rss_mb": peak,
            "cuda_max_allocated_mb": cuda_max_allocated_mb(),
            "gpu_used_mb": self._gpu_used_mb(),
        })  # fmt: skip

    def _gpu_used_mb(self) -> float | None:
        """Memory in use on this process's GPU as NVML reports it (every process on the device)."""
        if self._nvml is None:
            handle = _nvml_handle()
            self._nvml = False if handle is None else handle
        if self._nvml is False:
            return None
        try:
            import pynvml

            return float(pynvml.nvmlDeviceGetMemoryInfo(self._nvml).used) / MB
        except Exception:  # noqa: BLE001 - a figure we cannot read is None, never a failed run
            return None


def step_telemetry() -> Any:
    """A new ``transformers.TrainerCallback`` recording :data:`FIELDS` at each ``on_step_end`` into ``.steps``."""
    return _callback_class()()


def summary(steps: list[dict[str, Any]]) -> dict[str, float | None]:
    """The gateable figures of a run's telemetry (None where no step measured it).

    ``samples_per_s_mean``, ``tokens_per_s_mean`` and ``step_s_p50`` (median step time) leave out the
    first step as warm-up (model and optimizer set-up, first kernels) when there are at least 3 steps;
    ``peak_rss_mb`` (process peak RSS), ``cuda_peak_mb`` (torch's max allocated) and ``gpu_peak_mb``
    (NVML's device memory in use) are maxima over every step."""
    steady = steps[1:] if len(steps) >= 3 else steps

    def values(rows: list[dict[str, Any]], key: str) -> list[float]:
        return [float(r[key]) for r in rows if _number(r.get(key))]

    def mean(key: str) -> float | None:
        found = values(steady, key)
        return round(statistics.fmean(found), 3) if found else None

    def peak(*keys: str) -> float | None:
        found = [v for key in keys for v in values(steps, key)]
        return round(max(found), 1) if found else None

    p50 = values(steady, "step_s")
    return {
        "samples_per_s_mean": mean("samples_per_s"),
        "tokens_per_s_mean": mean("tokens_per_s"),
        "peak_rss_mb": peak("peak_rss_mb", "rss_mb"),
        "cuda_peak_mb": peak("cuda_max_allocated_mb"),
        "gpu_peak_mb": peak("gpu_used_mb"),
        "step_s_p50": round(statistics.median(p50), 6) if p50 else None,
    }


def rss_mb() -> float | None:
    """This process's resident memory now, from ``/proc/self/statm`` (None where there is no /proc)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / MB
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024


def cuda_max_allocated_mb() -> float | None:
    """torch's peak CUDA memory allocated by this process; None without an initialised CUDA."""
    torch = sys.modules.get("torch")  # a process that never imported torch has no CUDA memory of its own
    try:
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return None
        return torch.cuda.max_memory_allocated() / MB
    except Exception:  # noqa: BLE001
        return None


def _callback_class() -> type:
    cached = getattr(_callback_class, "cls", None)
    if cached is None:
        from transformers import TrainerCallback

        cached = type("StepTelemetryCallback", (StepTelemetry, TrainerCallback), {"__module__": __name__})
        _callback_class.cls = cached  # type: ignore[attr-defined]
    return cached


def _tokens_seen(args: Any, state: Any) -> int | None:
    """The trainer's input token count, or None when it does not count (include_num_input_tokens_seen off)."""
    if getattr(args, "include_num_input_tokens_seen", "no") in ("no", False, None):
        return None
    seen = getattr(state, "num_input_tokens_seen", None)
    return int(seen) if _number(seen) else None


def _nvml_handle() -> Any:
    """The NVML handle of the GPU torch uses (by UUID, else by index); None without pynvml, a GPU, or
    a GPU torch can use."""
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() < 1:
            return None
        torch = sys.modules.get("torch")
        index = 0
        if torch is not None:
            if not torch.cuda.is_available():  # NVML sees GPUs this process does not use (CUDA_VISIBLE_DEVICES="")
                return None
            index = torch.cuda.current_device()
            uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
            if uuid is not None:
                with contextlib.suppress(Exception):  # else by index (right unless devices are remapped)
                    return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
            if index < len(visible) and visible[index].strip().isdigit():
                index = int(visible[index])
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # noqa: BLE001 - no pynvml, no driver, no GPU: the figure is None
        return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
