"""Unit tests of harness.engines.launchers (server command lines) and harness.engines.gpus (GPU choice)."""

from __future__ import annotations

import json
import sys

import pytest

from harness.engines.gpus import GPUSelectionError, pick_gpus, rank_by_free_memory
from harness.engines.launchers import ENGINES, Launch, launch_for

ADDRESS = ["--host", "127.0.0.1", "--port", "8123"]


def test_vllm_minimal() -> None:
    launch = launch_for("vllm", "/models/qwen", "qwen", 8123, {})
    assert launch == Launch(["vllm", "serve", "/models/qwen", "--served-model-name", "qwen", *ADDRESS], {})


def test_vllm_all_options_then_extra_args() -> None:
    options = {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.85, "max_model_len": 4096,
               "dtype": "bfloat16", "executable": "/opt/venv/bin/vllm"}
    launch = launch_for("vllm", "/m", "m", 8123, options, ["--enforce-eager"], gpus=[3, 1])
    assert launch.argv == ["/opt/venv/bin/vllm", "serve", "/m", "--served-model-name", "m", *ADDRESS,
                           "--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.85",
                           "--max-model-len", "4096", "--dtype", "bfloat16", "--enforce-eager"]
    assert launch.env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "3,1"}


def test_sglang_minimal_uses_this_python() -> None:
    launch = launch_for("sglang", "/m", "m", 8123, {})
    assert launch.argv == [sys.executable, "-m", "sglang.launch_server", "--model-path", "/m",
                           "--served-model-name", "m", *ADDRESS]
    assert launch.env == {}


def test_sglang_all_options() -> None:
    options = {"tensor_parallel_size": 4, "gpu_memory_utilization": 0.7, "max_model_len": 8192, "dtype": "half"}
    launch = launch_for("sglang", "/m", "m", 8123, options, ("--trust-remote-code",), gpus=[0, 1, 2, 3])
    assert launch.argv == [sys.executable, "-m", "sglang.launch_server", "--model-path", "/m",
                           "--served-model-name", "m", *ADDRESS, "--tp-size", "4", "--mem-fraction-static", "0.7",
                           "--context-length", "8192", "--dtype", "half", "--trust-remote-code"]
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"


def test_sglang_executable_replaces_module_invocation() -> None:
    launch = launch_for("sglang", "/m", "m", 8123, {"executable": "/opt/sglang/bin/python"})
    assert launch.argv == ["/opt/sglang/bin/python", "--model-path", "/m", "--served-model-name", "m", *ADDRESS]


def test_llama_cpp_mapping() -> None:
    assert launch_for("llama-cpp", "/m.gguf", "g", 8123, {}).argv == [
        "llama-server", "-m", "/m.gguf", "--alias", "g", *ADDRESS]
    launch = launch_for("llama-cpp", "/m.gguf", "g", 8123,
                        {"max_model_len": 2048, "n_gpu_layers": 99, "executable": "/bin/llama-server"},
                        ["--parallel", "4"], gpus=[2])
    assert launch.argv == ["/bin/llama-server", "-m", "/m.gguf", "--alias", "g", *ADDRESS,
                           "-c", "2048", "--n-gpu-layers", "99", "--parallel", "4"]
    assert launch.env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "2"}


def test_none_options_are_unset() -> None:
    launch = launch_for("vllm", "/m", "m", 8123, {"max_model_len": None, "dtype": None, "executable": None})
    assert launch.argv == ["vllm", "serve", "/m", "--served-model-name", "m", *ADDRESS]


def test_empty_gpu_list_hides_all_devices() -> None:
    assert launch_for("vllm", "/m", "m", 8123, {}, gpus=[]).env["CUDA_VISIBLE_DEVICES"] == ""


def test_unknown_engine_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown engine 'tgi'; valid: vllm, sglang, llama-cpp"):
        launch_for("tgi", "/m", "m", 8123, {})
    assert ENGINES == ("vllm", "sglang", "llama-cpp")


def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown vllm option 'tp'; valid: tensor_parallel_size, "
                                         r"gpu_memory_utilization, max_model_len, dtype, executable"):
        launch_for("vllm", "/m", "m", 8123, {"tp": 2})


@pytest.mark.parametrize("key, value", [("tensor_parallel_size", 2), ("gpu_memory_utilization", 0.5),
                                        ("dtype", "half")])
def test_llama_cpp_rejects_gpu_server_options(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"llama-cpp does not take {key}; valid: max_model_len, n_gpu_layers"):
        launch_for("llama-cpp", "/m.gguf", "g", 8123, {key: value})


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_n_gpu_layers_is_llama_cpp_only(engine: str) -> None:
    with pytest.raises(ValueError, match=f"{engine} does not take n_gpu_layers"):
        launch_for(engine, "/m", "m", 8123, {"n_gpu_layers": 10})


@pytest.mark.parametrize("options, message", [
    ({"tensor_parallel_size": 0}, "tensor_parallel_size must be a positive integer"),
    ({"tensor_parallel_size": "2"}, "tensor_parallel_size must be a positive integer"),
    ({"max_model_len": True}, "max_model_len must be a positive integer"),
    ({"gpu_memory_utilization": 1.5}, r"gpu_memory_utilization must be a number in \(0, 1\]"),
    ({"gpu_memory_utilization": 0}, r"gpu_memory_utilization must be a number in \(0, 1\]"),
    ({"dtype": ""}, "dtype must be a non-empty string"),
])
def test_bad_option_values(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        launch_for("vllm", "/m", "m", 8123, options)


def test_too_few_gpus_for_tensor_parallel() -> None:
    with pytest.raises(ValueError, match=r"tensor_parallel_size 2 needs 2 GPUs, got \[0\]"):
        launch_for("vllm", "/m", "m", 8123, {"tensor_parallel_size": 2}, gpus=[0])


def test_to_dict_is_json_serialisable_and_a_copy() -> None:
    launch = launch_for("sglang", "/m", "m", 8123, {"tensor_parallel_size": 2}, ["--x", "1"], gpus=(0, 1))
    data = launch.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["argv"][-2:] == ["--x", "1"]
    data["argv"].append("mutated")
    assert launch.argv[-1] == "1"


# --- GPU choice -----------------------------------------------------------------------------------------


def test_rank_by_free_memory_most_free_first_ties_by_index() -> None:
    assert rank_by_free_memory([10, 30, 20, 30], 1) == [1]
    assert rank_by_free_memory([10, 30, 20, 30], 2) == [1, 3]
    assert rank_by_free_memory([10, 30, 20, 30], 4) == [1, 3, 2, 0]
    assert rank_by_free_memory([5, 5, 5], 2) == [0, 1]
    assert rank_by_free_memory([], 0) == []


def test_rank_by_free_memory_too_many() -> None:
    with pytest.raises(ValueError, match="cannot pick 3 of 2 GPUs"):
        rank_by_free_memory([1, 2], 3)


def test_requested_gpus_are_returned_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert pick_gpus(2, [3, 1]) == [3, 1]
    assert pick_gpus(1, (0, 2)) == [0, 2]


@pytest.mark.parametrize("requested, message", [([0], "2 GPUs needed, only 1 given"),
                                                ([1, 1], "distinct and non-negative"),
                                                ([0, -1], "distinct and non-negative")])
def test_requested_gpus_validated(requested: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pick_gpus(2, requested)


def test_missing_pynvml_asks_for_llm_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(GPUSelectionError, match="no NVIDIA GPU/NVML found; pass --llm-gpus"):
        pick_gpus(1)


class _FakeNVML:
    """Just the pynvml calls pick_gpus makes."""

    class NVMLError(Exception):
        pass

    def __init__(self, free: list[int], fail_init: bool = False) -> None:
        self.free = free
        self.fail_init = fail_init
        self.shut_down = False

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.free)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> object:
        return type("Memory", (), {"free": self.free[handle]})()


def test_nvml_init_failure_asks_for_llm_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNVML([], fail_init=True))
    with pytest.raises(GPUSelectionError, match=r"no NVIDIA GPU/NVML found; pass --llm-gpus.*Driver Not Loaded"):
        pick_gpus(1)


def test_pick_gpus_by_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = _FakeNVML([10, 40, 40, 20])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert pick_gpus(2) == [1, 2]
    assert nvml.shut_down
    with pytest.raises(GPUSelectionError, match="5 GPUs needed, 4 visible"):
        pick_gpus(5)


def test_pick_gpus_stays_within_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNVML([10, 40, 40, 20]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,3")
    assert pick_gpus(1) == [3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234abcd")
    with pytest.raises(GPUSelectionError, match="not a list of indices; pass --llm-gpus"):
        pick_gpus(1)
