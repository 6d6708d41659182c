"""GPU choice for engines the harness starts: the ones asked for, else those with the most free memory."""

from __future__ import annotations

import os
from collections.abc import Sequence


class GPUSelectionError(RuntimeError):
    """No GPUs could be chosen automatically (no NVML, too few devices)."""


def pick_gpus(count: int, requested: Sequence[int] | None = None) -> list[int]:
    """``count`` GPU indices (NVML / PCI bus order): ``requested`` as given, else the freest devices.

    Auto-selection stays within an integer ``CUDA_VISIBLE_DEVICES`` already set for this process,
    so a scheduler's allocation is respected.
    """
    if count < 1:
        raise ValueError(f"GPU count must be at least 1, got {count}")
    if requested is not None:
        chosen = [int(g) for g in requested]
        if len(chosen) < count:
            raise ValueError(f"{count} GPUs needed, only {len(chosen)} given: {chosen}")
        if len(set(chosen)) != len(chosen) or min(chosen) < 0:
            raise ValueError(f"GPU indices must be distinct and non-negative, got {chosen}")
        return chosen
    free = free_memory()
    candidates = _visible(len(free))
    if len(candidates) < count:
        raise GPUSelectionError(f"{count} GPUs needed, {len(candidates)} visible ({candidates}); "
                                f"pass --llm-gpus to choose them")
    ranked = rank_by_free_memory([free[i] for i in candidates], count)
    return [candidates[i] for i in ranked]


def rank_by_free_memory(free_bytes: Sequence[int], count: int) -> list[int]:
    """Indices of the ``count`` entries with the most free memory; ties go to the lower index."""
    if not 0 <= count <= len(free_bytes):
        raise ValueError(f"cannot pick {count} of {len(free_bytes)} GPUs")
    return sorted(range(len(free_bytes)), key=lambda i: (-free_bytes[i], i))[:count]


def free_memory() -> list[int]:
    """Free bytes per GPU, by NVML index; GPUSelectionError when NVML is unavailable."""
    hint = "no NVIDIA GPU/NVML found; pass --llm-gpus to choose GPUs explicitly"
    try:
        import pynvml
    except ImportError as exc:
        raise GPUSelectionError(f"{hint} (pynvml is not installed: pip install nvidia-ml-py)") from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise GPUSelectionError(f"{hint} (NVML: {exc})") from exc
    try:
        return [int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).free)
                for i in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError as exc:
        raise GPUSelectionError(f"{hint} (NVML: {exc})") from exc
    finally:
        pynvml.nvmlShutdown()


def _visible(total: int) -> list[int]:
    """Device indices this process may use: all, or an integer CUDA_VISIBLE_DEVICES list."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return list(range(total))
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        # UUIDs or MIG names: NVML indices cannot be matched to them here
        raise GPUSelectionError(f"CUDA_VISIBLE_DEVICES={value!r} is not a list of indices; "
                                f"pass --llm-gpus to choose GPUs explicitly")
    return [int(p) for p in parts if int(p) < total]
