"""Engine kind ``cpu``: a Hugging Face model folder of your own served on the CPU by
``harness.engines.cpu_server``, the bundled model's server (no GPU, no vLLM)::

    - {name: my-small-model, engine: cpu, model_path: checkpoints/my-small-model}

The folder is what ``transformers`` loads (``config.json``, the weights, the tokenizer); its
chat template is the tokenizer's. The sha256 of the folder's files keys the response cache, so
new weights or a new chat template in the same folder are never answered from the old replies.
"""

from __future__ import annotations

import hashlib
import sys
from functools import cached_property
from pathlib import Path
from typing import Any

from harness.engines.lease import ManagedServer
from harness.engines.registry import EngineContext
from harness.models import ModelSpec

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def cpu_server_argv(model: str, served_name: str, port: int, ctx: EngineContext,
                    batch_wait_ms: int) -> list[str]:
    """The command line of ``harness.engines.cpu_server`` serving ``model`` (a folder, or ``bundled``)."""
    return [sys.executable, "-m", "harness.engines.cpu_server", "--model", model, "--served-model-name", served_name,
            "--host", "127.0.0.1", "--port", str(port), "--max-batch", str(ctx.settings.max_batch),
            "--batch-wait-ms", str(batch_wait_ms), "--parent-pid", str(ctx.owner_pid)]


def file_digests(folder: Path) -> dict[str, str]:
    """The sha256 of each file of the folder (weights, config, tokenizer, chat template), by name."""
    digests = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        with open(path, "rb") as handle:
            digests[path.name] = hashlib.file_digest(handle, "sha256").hexdigest()
    return digests


def combined_sha256(digests: dict[str, str]) -> str:
    """One sha256 for several files' digests (names included)."""
    return hashlib.sha256("".join(f"{name}\0{digest}\0" for name, digest in sorted(digests.items()))
                          .encode("utf-8", "surrogatepass")).hexdigest()


class CPUEngine(ManagedServer):
    kind = "cpu"

    def alongside(self) -> bool:
        return True  # a CPU server: it may start while another does

    @classmethod
    def check(cls, spec: ModelSpec) -> str | None:
        if spec.options:
            return f"unknown cpu option {sorted(spec.options)[0]!r} (engine cpu takes none)"
        if not spec.model_path:
            return "engine cpu needs model_path: a Hugging Face model folder (config.json, weights, tokenizer)"
        if not (Path(spec.model_path) / "config.json").is_file():
            return f"engine cpu: {spec.model_path} is not a Hugging Face model folder (no config.json)"
        return super().check(spec)

    @property
    def folder(self) -> Path:
        return Path(str(self.spec.model_path)).resolve()

    def launch(self, port: int, ctx: EngineContext) -> tuple[list[str], dict[str, str], dict[str, Any]]:
        argv = cpu_server_argv(str(self.folder), self.spec.name, port, ctx, batch_wait_ms=20)
        return argv, {}, {"argv": argv, "max_batch": ctx.settings.max_batch}

    @cached_property
    def _digests(self) -> dict[str, str]:
        # read once per run (a process's engine object lives as long as its run): the folder as the run found it
        return file_digests(self.folder)

    def identity(self) -> dict[str, Any]:
        return {"name": self.spec.name, "engine": self.kind, "files_sha256": combined_sha256(self._digests)}

    def metadata(self, record: dict[str, Any] | None) -> dict[str, Any]:
        return {"source": str(self.folder), "weights_sha256": combined_sha256(
            {name: digest for name, digest in self._digests.items() if name.endswith(WEIGHT_SUFFIXES)})}
