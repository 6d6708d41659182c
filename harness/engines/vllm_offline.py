"""In-process vLLM (``vllm.LLM``): whole batches in one engine call instead of one HTTP request per case.

GPU only; vllm is imported on first use, so importing this module is cheap.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any, TypeVar, cast

from harness.engines.client import Reply, Request
from harness.engines.gpus import pick_gpus
from harness.engines.launchers import gpu_env
from harness.engines.managed import EngineStartError
from harness.engines.registry import Engine, EngineContext

T = TypeVar("T")

SAMPLING_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "seed")
OPTION_KEYS = ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "dtype", "seed")


def sampling_kwargs(params: dict[str, Any], n: int = 1) -> dict[str, Any]:
    """Harness request params as ``vllm.SamplingParams`` keyword arguments; None means unset."""
    unknown = sorted(set(params) - set(SAMPLING_KEYS))
    if unknown:
        raise ValueError(f"unknown sampling parameter(s) {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(SAMPLING_KEYS)}")
    return {**{k: v for k, v in params.items() if v is not None}, "n": n}


def prefix_order(prompts: Sequence[str]) -> list[int]:
    """Indices ordering ``prompts`` by text, so shared prefixes sit together for vLLM's prefix cache."""
    return sorted(range(len(prompts)), key=lambda i: prompts[i])  # sorted() is stable: ties keep input order


def restore(order: list[int], outputs: list[T]) -> list[T]:
    """Undo :func:`prefix_order`: ``outputs[k]`` belongs to input ``order[k]``."""
    if len(order) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs for {len(order)} inputs")
    restored: list[Any] = [None] * len(order)
    for position, index in enumerate(order):
        restored[index] = outputs[position]
    return restored


class VLLMOffline:
    """One model loaded in this process with ``vllm.LLM``; :meth:`generate` answers harness requests."""

    kind = "vllm-offline"

    def __init__(self, model_path: str, served_name: str, options: dict[str, Any],
                 gpus: Sequence[int] | None = None) -> None:
        given = {k: v for k, v in options.items() if v is not None}
        unknown = sorted(set(given) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"unknown vllm-offline option(s) {', '.join(map(repr, unknown))}; "
                             f"valid: {', '.join(OPTION_KEYS)}")
        self.model_path = model_path
        self.served_name = served_name
        self.options = given
        self.gpus = list(gpus) if gpus is not None else None
        self._llm: Any = None

    @property
    def llm(self) -> Any:
        """The engine, loaded on first use."""
        return self.load()

    def load(self) -> Any:
        """Load the model now if it is not loaded; EngineStartError when it cannot be."""
        if self._llm is None:
            try:
                self._llm = self._load()
            except EngineStartError:
                raise
            except Exception as exc:  # vllm raises many types; all mean "not loaded"
                raise EngineStartError(f"vllm-offline could not load {self.model_path!r}: "
                                       f"{type(exc).__name__}: {exc}") from exc
        return self._llm

    def _load(self) -> Any:
        """Pin the GPUs, then build the engine; tests replace this with a fake."""
        self.gpus = pick_gpus(int(self.options.get("tensor_parallel_size", 1)), self.gpus)
        # must be set before vllm/torch initialise CUDA in this process
        os.environ.update(gpu_env(self.gpus))
        from vllm import LLM

        return LLM(model=self.model_path, tensor_parallel_size=self.options.get("tensor_parallel_size", 1),
                   **{k: v for k, v in self.options.items() if k != "tensor_parallel_size"})

    def launch_record(self) -> dict[str, Any]:
        """What is (or will be) loaded, for the run's metadata."""
        return {"kind": self.kind, "model_path": self.model_path, "served_name": self.served_name,
                "options": dict(self.options), "gpus": self.gpus}

    def generate(self, requests: Sequence[Request]) -> list[Reply]:
        """Replies in request order: one engine call per (api, sampling params) group.

        A failing group's requests get error replies; only a failure to load the model raises
        (EngineStartError), since no request could be answered then."""
        if requests:
            self.load()  # once up front, rather than failing every group in turn
        replies: list[Reply | None] = [None] * len(requests)
        groups: dict[tuple[str, str], list[int]] = {}
        sampling: dict[tuple[str, str], dict[str, Any]] = {}
        for index, request in enumerate(requests):
            try:
                kwargs = _request_sampling(request)
            except ValueError as exc:
                replies[index] = Reply(None, f"vllm error: {exc}", 0.0)
                continue
            key = (request.api, json.dumps(kwargs, sort_keys=True, default=str))
            groups.setdefault(key, []).append(index)
            sampling[key] = kwargs
        for key, indices in groups.items():
            group_replies = self._run_group(key[0], [requests[i] for i in indices], sampling[key])
            for index, reply in zip(indices, group_replies, strict=True):
                replies[index] = reply
        return cast("list[Reply]", replies)  # every slot is filled: _run_group answers each request

    def _sampling_params(self, kwargs: dict[str, Any]) -> Any:
        """``vllm.SamplingParams(**kwargs)``; tests replace this to run without vllm."""
        from vllm import SamplingParams

        return SamplingParams(**kwargs)

    def _run_group(self, api: str, requests: list[Request], kwargs: dict[str, Any]) -> list[Reply]:
        started = time.perf_counter()
        try:
            if api not in ("chat", "completion"):
                raise ValueError(f"unknown api {api!r}")
            llm = self.llm
            params = self._sampling_params(kwargs)
            if api == "chat":
                keys = [json.dumps(r.prompt, ensure_ascii=False) for r in requests]
                order = prefix_order(keys)
                outputs = llm.chat([requests[i].prompt for i in order], params, use_tqdm=False)
            else:
                order = prefix_order([str(r.prompt) for r in requests])
                outputs = llm.generate([str(requests[i].prompt) for i in order], params, use_tqdm=False)
            outputs = restore(order, list(outputs))
        except Exception as exc:  # noqa: BLE001 - one bad group must not lose the others' replies
            latency = (time.perf_counter() - started) * 1000
            return [Reply(None, f"vllm error: {type(exc).__name__}: {exc}", latency) for _ in requests]
        latency = (time.perf_counter() - started) * 1000
        return [_reply(output, latency) for output in outputs]


def _request_sampling(request: Request) -> dict[str, Any]:
    """Sampling kwargs of one request; extra_body may carry sampling keys (top_k, min_p) as on the server."""
    extra = dict(request.extra_body)
    unsupported = sorted(set(extra) - set(SAMPLING_KEYS))
    if unsupported:
        raise ValueError(f"extra_body key(s) {', '.join(map(repr, unsupported))} not supported in-process; "
                         f"valid: {', '.join(SAMPLING_KEYS)}")
    # as in Request.body(): a param left unset (None) does not override extra_body
    return sampling_kwargs({**extra, **{k: v for k, v in request.params.items() if v is not None}})


def _reply(output: Any, latency_ms: float) -> Reply:
    try:
        completion = output.outputs[0]
        text = completion.text
    except (AttributeError, IndexError, TypeError) as exc:
        return Reply(None, f"vllm error: malformed output: {type(exc).__name__}: {exc}", latency_ms)
    return Reply(text, None if text else "empty reply", latency_ms, len(completion.token_ids),
                 completion.finish_reason, status=200)


class VLLMOfflineEngine(Engine):
    """Engine kind ``vllm-offline``: :class:`VLLMOffline` loaded into the controller; generation hands
    it all of a model's prompts at once."""

    kind = "vllm-offline"
    in_process = True
    loads = True

    @classmethod
    def check(cls, spec: Any) -> str | None:
        if spec.base_urls:
            return "base_url is for engine openai; engine vllm-offline is loaded by the harness"
        return None if spec.model_path else "engine vllm-offline needs a model_path"

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self._engine: VLLMOffline | None = None

    def start(self, ctx: EngineContext) -> dict[str, Any]:
        spec = self.spec
        assert spec.model_path is not None
        self._engine = VLLMOffline(spec.model_path, spec.name, dict(spec.options), spec.gpus)
        self._engine.load()
        return {"model": spec.name, "kind": self.kind, "base_url": None, "base_urls": [],
                "launch": self._engine.launch_record()}

    def client(self, record: dict[str, Any], ctx: EngineContext) -> Any:
        from harness.engines.in_process import InProcessClient

        assert self._engine is not None, "start() loads the engine first"
        return InProcessClient(self._engine, f"in-process:{self.kind}")
