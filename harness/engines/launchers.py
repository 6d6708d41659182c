"""Command lines for the OpenAI-compatible servers the harness starts itself on 127.0.0.1.

Only argv and environment are built here; starting, waiting and stopping live in
:mod:`harness.engines.managed`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ENGINES = ("vllm", "sglang", "llama-cpp")
OPTION_KEYS = ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "dtype", "n_gpu_layers",
               "executable")
# options an engine has no equivalent flag for; passing one is a config mistake, not something to drop
_UNSUPPORTED = {
    "vllm": {"n_gpu_layers"},
    "sglang": {"n_gpu_layers"},
    "llama-cpp": {"tensor_parallel_size", "gpu_memory_utilization", "dtype"},
}
# option -> flag, in the order flags are appended
_FLAGS = {
    "vllm": {"tensor_parallel_size": "--tensor-parallel-size", "gpu_memory_utilization": "--gpu-memory-utilization",
             "max_model_len": "--max-model-len", "dtype": "--dtype"},
    "sglang": {"tensor_parallel_size": "--tp-size", "gpu_memory_utilization": "--mem-fraction-static",
               "max_model_len": "--context-length", "dtype": "--dtype"},
    "llama-cpp": {"max_model_len": "-c", "n_gpu_layers": "--n-gpu-layers"},
}


@dataclass(frozen=True)
class Launch:
    """A server command line and the extra environment variables it needs."""

    argv: list[str]
    env: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"argv": list(self.argv), "env": dict(self.env)}


def launch_for(engine: str, model_path: str, served_name: str, port: int, options: dict[str, Any],
               extra_args: Sequence[str] = (), gpus: Sequence[int] | None = None) -> Launch:
    """The command that serves ``model_path`` as ``served_name`` on 127.0.0.1:``port``.

    ``options`` (tensor_parallel_size, gpu_memory_utilization, max_model_len, dtype, n_gpu_layers,
    executable) become engine flags; ``extra_args`` are appended verbatim; ``gpus`` pins the devices.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    given = _check_options(engine, options)
    exe = given.pop("executable", None)
    address = ["--host", "127.0.0.1", "--port", str(port)]
    if engine == "vllm":
        argv = [exe or "vllm", "serve", model_path, "--served-model-name", served_name, *address]
    elif engine == "sglang":
        program = [exe] if exe else [sys.executable, "-m", "sglang.launch_server"]
        argv = [*program, "--model-path", model_path, "--served-model-name", served_name, *address]
    else:
        argv = [exe or "llama-server", "-m", model_path, "--alias", served_name, *address]
    for key, flag in _FLAGS[engine].items():
        if key in given:
            argv += [flag, str(given[key])]
    argv += [str(arg) for arg in extra_args]
    tp = given.get("tensor_parallel_size")
    if gpus is not None and tp is not None and len(gpus) < tp:
        raise ValueError(f"tensor_parallel_size {tp} needs {tp} GPUs, got {list(gpus)}")
    return Launch(argv, gpu_env(gpus))


def gpu_env(gpus: Sequence[int] | None) -> dict[str, str]:
    """Environment that pins a process to ``gpus`` (NVML indices); empty when None."""
    if gpus is None:
        return {}
    # NVML numbers devices by PCI bus; CUDA's default order (fastest first) can differ
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(str(int(g)) for g in gpus)}


def _check_options(engine: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options that are set (None means unset), validated for ``engine``."""
    given = {k: v for k, v in options.items() if v is not None}
    for key in given:
        if key not in OPTION_KEYS:
            raise ValueError(f"unknown {engine} option {key!r}; valid: {', '.join(_valid(engine))}")
        if key in _UNSUPPORTED[engine]:
            raise ValueError(f"{engine} does not take {key}; valid: {', '.join(_valid(engine))}")
    for key in ("tensor_parallel_size", "max_model_len"):
        if key in given and not (_is_int(given[key]) and given[key] >= 1):
            raise ValueError(f"{key} must be a positive integer, got {given[key]!r}")
    if "n_gpu_layers" in given and not (_is_int(given["n_gpu_layers"]) and given["n_gpu_layers"] >= 0):
        raise ValueError(f"n_gpu_layers must be a non-negative integer, got {given['n_gpu_layers']!r}")
    util = given.get("gpu_memory_utilization")
    if util is not None and not (isinstance(util, int | float) and not isinstance(util, bool) and 0 < util <= 1):
        raise ValueError(f"gpu_memory_utilization must be a number in (0, 1], got {util!r}")
    for key in ("dtype", "executable"):
        if key in given and not (isinstance(given[key], str) and given[key]):
            raise ValueError(f"{key} must be a non-empty string, got {given[key]!r}")
    return given


def _valid(engine: str) -> list[str]:
    return [k for k in OPTION_KEYS if k not in _UNSUPPORTED[engine]]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
