"""The server process: load the model on a thread, listen, stop on SIGTERM/SIGINT or when the parent dies."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from aiohttp import web

from harness.engines.cpu_server.server import ModelServer
from harness.engines.managed import pid_alive

log = logging.getLogger("harness.cpu_server")




def load_model(model: str) -> tuple[Any, Any]:
    """Load model + tokenizer from an HF dir, or the bundled model."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if model == "bundled":
        from harness.engines.bundled import prepare_hf_dir

        path = prepare_hf_dir()
    else:
        path = Path(model)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    start = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    lm.eval()
    log.info("model %s loaded in %.1fs (torch threads=%d)", path, time.monotonic() - start, torch.get_num_threads())
    return lm, tokenizer


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if not pid_alive(pid):
            log.warning("parent process %d is gone, exiting", pid)
            stop.set()
            return
        await asyncio.sleep(1.0)


async def serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT or the parent dies; returns the exit code."""
    served_name = args.served_model_name or ("gemma-3-270m" if args.model == "bundled" else Path(args.model).name)
    server = ModelServer(served_name, args.max_model_len, args.max_batch, args.batch_wait_ms)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    background: list[asyncio.Task[None]] = []  # strong refs keep tasks alive
    if args.parent_pid:
        background.append(asyncio.create_task(_watch_parent(args.parent_pid, stop)))

    runner = web.AppRunner(server.build_app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port).start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        await runner.cleanup()
        return 1
    log.info("listening on http://%s:%d, loading model %s", args.host, args.port, args.model)

    # A plain daemon thread rather than an executor: if we are told to stop
    # mid-load (conversion can take minutes) we must not wait for it.
    loaded: asyncio.Future[Any] = loop.create_future()

    def settle(outcome: Any, failed: bool) -> None:
        if loaded.done():
            return
        if failed:
            loaded.set_exception(outcome)
        else:
            loaded.set_result(outcome)

    def load() -> None:
        outcome: Any
        try:
            outcome, failed = load_model(args.model), False
        except BaseException as exc:  # noqa: BLE001 - reported via the future
            outcome, failed = exc, True
        try:
            loop.call_soon_threadsafe(settle, outcome, failed)
        except RuntimeError:  # loop closed: we were stopped mid-load
            pass

    threading.Thread(target=load, name="model-load", daemon=True).start()
    stop_task: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    await asyncio.wait([loaded, stop_task], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if loaded.done() and not stop.is_set():
        try:
            model, tokenizer = loaded.result()
        except Exception:
            log.exception("failed to load model %s", args.model)
            code = 1
        else:
            server.attach(model, tokenizer)
            log.info("ready on http://%s:%d (model %s)", args.host, args.port, served_name)
            await stop_task
    if server.engine is not None:
        server.engine.stop()
    log.info("shutting down")
    try:
        await asyncio.wait_for(runner.cleanup(), timeout=3)
    except Exception:  # includes TimeoutError; we are exiting anyway
        pass
    return code


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness.engines.cpu_server", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled", help="'bundled' or a Hugging Face model directory")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process dies")
    p.add_argument("--max-model-len", type=int, default=2048)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s cpu_server: %(message)s")
    code = asyncio.run(serve(args))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the generation or load thread may be deep in
    # torch, and waiting for it would make SIGTERM slow.
    os._exit(code)


if __name__ == "__main__":
    main()
