"""Tests of harness.engines.vllm_offline with a fake ``vllm.LLM``, plus one real-model test on a GPU."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.engines.client import Request
from harness.engines.gpus import GPUSelectionError, pick_gpus
from harness.engines.managed import EngineStartError
from harness.engines.vllm_offline import VLLMOffline, prefix_order, restore, sampling_kwargs

GREEDY = {"max_tokens": 16, "temperature": 0.0, "top_p": None, "stop": None, "seed": None}
HOT = {"max_tokens": 16, "temperature": 0.8, "top_p": 0.95, "stop": None, "seed": 7}


def _output(text: str, finish: str = "stop") -> SimpleNamespace:
    """Shaped like vllm.RequestOutput as far as the engine reads it."""
    return SimpleNamespace(outputs=[SimpleNamespace(text=text, token_ids=list(range(len(text.split()))),
                                                    finish_reason=finish)])


class FakeLLM:
    """Records each call; answers "echo <prompt>" (or an empty text for the prompt "silent")."""

    def __init__(self, fail_when: dict[str, Any] | None = None) -> None:
        self.calls: list[tuple[str, list[Any], Any]] = []
        self.fail_when = fail_when

    def _answer(self, method: str, prompts: list[Any], params: Any, use_tqdm: bool) -> list[SimpleNamespace]:
        assert use_tqdm is False
        self.calls.append((method, list(prompts), params))
        if self.fail_when is not None and params == self.fail_when:
            raise RuntimeError("CUDA out of memory")
        texts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
        return [_output("" if t == "silent" else f"echo {t}") for t in texts]

    def generate(self, prompts: Sequence[str], sampling_params: Any, use_tqdm: bool = True) -> list[Any]:
        return self._answer("generate", list(prompts), sampling_params, use_tqdm)

    def chat(self, messages: Sequence[Any], sampling_params: Any, use_tqdm: bool = True) -> list[Any]:
        return self._answer("chat", list(messages), sampling_params, use_tqdm)


class FakeEngine(VLLMOffline):
    """VLLMOffline with the fake LLM injected and SamplingParams replaced by its kwargs."""

    def __init__(self, llm: FakeLLM | None = None, **options: Any) -> None:
        super().__init__("/models/tiny", "tiny", options)
        self.fake = llm or FakeLLM()
        self.loads = 0

    def _load(self) -> Any:
        self.loads += 1
        return self.fake

    def _sampling_params(self, kwargs: dict[str, Any]) -> Any:
        return kwargs


def completion(prompt: str, params: dict[str, Any] = GREEDY, **extra: Any) -> Request:
    return Request("completion", "tiny", prompt, dict(params), extra)


def chat(text: str, system: str = "Be brief.", params: dict[str, Any] = GREEDY) -> Request:
    return Request("chat", "tiny", [{"role": "system", "content": system}, {"role": "user", "content": text}],
                   dict(params))


# --- pure helpers -----------------------------------------------------------------------------------------


def test_sampling_kwargs_drops_none_and_sets_n() -> None:
    params = {"max_tokens": 8, "temperature": 0.0, "top_p": None, "top_k": 20, "min_p": 0.05,
              "stop": ["\n"], "seed": None}
    assert sampling_kwargs(params) == {"max_tokens": 8, "temperature": 0.0, "top_k": 20, "min_p": 0.05,
                                       "stop": ["\n"], "n": 1}
    assert sampling_kwargs({}, n=4) == {"n": 4}


def test_sampling_kwargs_unknown_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown sampling parameter\(s\) 'best_of', 'logprobs'; valid: max_tokens"):
        sampling_kwargs({"logprobs": 2, "best_of": 3, "max_tokens": 1})


def test_prefix_order_groups_shared_prefixes_stably() -> None:
    prompts = ["Q: b", "SYS A\nx", "Q: a", "SYS A\nw", "Q: b"]
    order = prefix_order(prompts)
    assert [prompts[i] for i in order] == ["Q: a", "Q: b", "Q: b", "SYS A\nw", "SYS A\nx"]
    assert order[1:3] == [0, 4]  # equal prompts keep their input order


@given(st.lists(st.text(max_size=12), max_size=30))
def test_restore_undoes_prefix_order(prompts: list[str]) -> None:
    order = prefix_order(prompts)
    assert sorted(order) == list(range(len(prompts)))
    assert restore(order, [prompts[i] for i in order]) == prompts


def test_restore_length_mismatch() -> None:
    with pytest.raises(ValueError, match="1 outputs for 2 inputs"):
        restore([1, 0], ["x"])


# --- batching ---------------------------------------------------------------------------------------------


def test_one_generate_call_per_params_group_sorted_then_restored() -> None:
    engine = FakeEngine()
    requests = [completion("zeta"), completion("hot b", HOT), completion("alpha"), completion("hot a", HOT),
                completion("mid")]
    replies = engine.generate(requests)

    assert [r.text for r in replies] == ["echo zeta", "echo hot b", "echo alpha", "echo hot a", "echo mid"]
    assert [(method, prompts) for method, prompts, _ in engine.fake.calls] == [
        ("generate", ["alpha", "mid", "zeta"]), ("generate", ["hot a", "hot b"])]
    assert engine.fake.calls[0][2] == {"max_tokens": 16, "temperature": 0.0, "n": 1}
    assert engine.fake.calls[1][2] == {"max_tokens": 16, "temperature": 0.8, "top_p": 0.95, "seed": 7, "n": 1}
    first = replies[0]
    assert (first.error, first.output_tokens, first.finish_reason, first.status) == (None, 2, "stop", 200)
    assert first.latency_ms >= 0
    assert replies[0].latency_ms == replies[2].latency_ms  # the batch's wall time, shared by its requests
    assert engine.loads == 1


def test_equal_params_group_even_when_written_differently() -> None:
    engine = FakeEngine()
    engine.generate([completion("a", {"temperature": 0.0, "max_tokens": 4, "seed": None}),
                     completion("b", {"max_tokens": 4, "temperature": 0.0})])
    assert len(engine.fake.calls) == 1


def test_chat_goes_through_llm_chat_sorted_by_messages() -> None:
    engine = FakeEngine()
    requests = [chat("two", system="B"), completion("plain"), chat("one", system="A"), chat("three", system="B")]
    replies = engine.generate(requests)

    assert [r.text for r in replies] == ["echo two", "echo plain", "echo one", "echo three"]
    calls = {method: prompts for method, prompts, _ in engine.fake.calls}
    assert len(engine.fake.calls) == 2
    assert calls["generate"] == ["plain"]
    assert [conversation[-1]["content"] for conversation in calls["chat"]] == ["one", "three", "two"]
    assert calls["chat"][0] == requests[2].prompt


def test_failing_group_becomes_error_replies_others_survive() -> None:
    engine = FakeEngine(FakeLLM(fail_when=sampling_kwargs(HOT)))
    replies = engine.generate([completion("x", HOT), completion("y"), completion("z", HOT)])

    assert [r.text for r in replies] == [None, "echo y", None]
    assert replies[0].error == replies[2].error == "vllm error: RuntimeError: CUDA out of memory"
    assert replies[1].error is None


def test_empty_text_is_an_error_reply() -> None:
    reply = FakeEngine().generate([completion("silent")])[0]
    assert (reply.text, reply.error, reply.status) == ("", "empty reply", 200)


def test_bad_params_fail_only_their_request() -> None:
    engine = FakeEngine()
    replies = engine.generate([completion("ok"), completion("bad", {"max_tokens": 4, "logit_bias": {}})])
    assert replies[0].text == "echo ok"
    assert replies[1].text is None and "unknown sampling parameter(s) 'logit_bias'" in (replies[1].error or "")
    assert len(engine.fake.calls) == 1


def test_extra_body_sampling_keys_apply_others_are_refused() -> None:
    engine = FakeEngine()
    replies = engine.generate([completion("k", {"max_tokens": 4, "top_p": None}, top_k=5, top_p=0.5),
                               completion("g", guided_json={"type": "object"})])
    assert engine.fake.calls[0][2] == {"max_tokens": 4, "top_k": 5, "top_p": 0.5, "n": 1}
    assert replies[0].text == "echo k"
    assert "extra_body key(s) 'guided_json' not supported" in (replies[1].error or "")


def test_unknown_api_fails_its_group() -> None:
    reply = FakeEngine().generate([Request("responses", "tiny", "x", dict(GREEDY))])[0]
    assert reply.error == "vllm error: ValueError: unknown api 'responses'"


def test_malformed_output_is_an_error_reply() -> None:
    class Hollow(FakeLLM):
        def generate(self, prompts: Sequence[str], sampling_params: Any, use_tqdm: bool = True) -> list[Any]:
            return [SimpleNamespace(outputs=[]) for _ in prompts]

    reply = FakeEngine(Hollow()).generate([completion("x")])[0]
    assert reply.text is None and (reply.error or "").startswith("vllm error: malformed output")


def test_wrong_output_count_fails_the_group() -> None:
    class Short(FakeLLM):
        def generate(self, prompts: Sequence[str], sampling_params: Any, use_tqdm: bool = True) -> list[Any]:
            return [_output("only one")]

    replies = FakeEngine(Short()).generate([completion("a"), completion("b")])
    assert [r.error for r in replies] == ["vllm error: ValueError: 1 outputs for 2 inputs"] * 2


# --- loading ----------------------------------------------------------------------------------------------


def test_no_requests_loads_nothing() -> None:
    engine = FakeEngine()
    assert engine.generate([]) == []
    assert engine.loads == 0


def test_load_failure_raises_engine_start_error_once() -> None:
    class Broken(FakeEngine):
        def _load(self) -> Any:
            self.loads += 1
            raise RuntimeError("no CUDA")

    engine = Broken()
    with pytest.raises(EngineStartError, match="vllm-offline could not load '/models/tiny': RuntimeError: no CUDA"):
        engine.generate([completion("a"), completion("b", HOT)])
    assert engine.loads == 1


def test_unknown_option() -> None:
    with pytest.raises(ValueError, match=r"unknown vllm-offline option\(s\) 'enforce_eager'; valid: "):
        VLLMOffline("/m", "m", {"enforce_eager": True})


def test_real_load_pins_gpus_then_builds_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real _load and _sampling_params against a stand-in `vllm` module: no GPU needed."""
    built: list[dict[str, Any]] = []

    class StandInLLM(FakeLLM):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__()
            built.append({**kwargs, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")})

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=StandInLLM, SamplingParams=lambda **kw: kw))
    monkeypatch.setitem(sys.modules, "pynvml", None)  # requested GPUs must not need NVML
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # so the test's change is undone afterwards
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    options = {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.5, "max_model_len": 1024, "dtype": None,
               "seed": 3}
    engine = VLLMOffline("/models/tiny", "tiny", options, gpus=[5, 2])
    assert engine.launch_record() == {"kind": "vllm-offline", "model_path": "/models/tiny", "served_name": "tiny",
                                      "options": {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.5,
                                                  "max_model_len": 1024, "seed": 3}, "gpus": [5, 2]}

    reply = engine.generate([completion("hi")])[0]
    assert reply.text == "echo hi"
    assert built == [{"model": "/models/tiny", "tensor_parallel_size": 2, "gpu_memory_utilization": 0.5,
                      "max_model_len": 1024, "seed": 3, "CUDA_VISIBLE_DEVICES": "5,2"}]
    assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert json.loads(json.dumps(engine.launch_record()))["gpus"] == [5, 2]


# --- the real thing ---------------------------------------------------------------------------------------


def _tiny_model() -> str:
    """A local path or Hugging Face id for a small model vLLM can load; skips when none is at hand."""
    model = os.environ.get("HARNESS_VLLM_TEST_MODEL", "facebook/opt-125m")
    if os.path.isdir(model):
        return model
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model)
    except Exception as exc:  # noqa: BLE001 - no cache and no network: nothing to test against
        pytest.skip(f"model {model!r} not available ({type(exc).__name__}); set HARNESS_VLLM_TEST_MODEL")


def test_real_vllm_on_gpu() -> None:
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    try:
        gpus = pick_gpus(1)
    except GPUSelectionError:  # vllm vendors its own NVML binding; the standalone pynvml may be absent
        gpus = [0]
    engine = VLLMOffline(_tiny_model(), "tiny", {"gpu_memory_utilization": 0.3, "max_model_len": 512, "seed": 0},
                         gpus)
    prompts = ["The capital of France is", "One, two, three,", "The capital of Italy is"]
    replies = engine.generate([completion(p, {"max_tokens": 8, "temperature": 0.0}) for p in prompts])
    assert all(r.error is None and r.text and r.output_tokens for r in replies), replies
    assert all(r.finish_reason in ("stop", "length") for r in replies)
    # greedy: the same prompt alone gives the same text, so the batch's replies are in request order
    alone = engine.generate([completion(prompts[1], {"max_tokens": 8, "temperature": 0.0})])[0]
    assert alone.text == replies[1].text
    assert engine.launch_record()["gpus"]
