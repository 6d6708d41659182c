"""The bundled CPU model: a harness run of `evals/` next to a bare client sending the same requests.

Starts one bundled server (`harness.engines.cpu_server`) and, against it, runs a bare aiohttp
script that sends exactly the requests the suites in `evals/` produce (same bodies, same
concurrency), then `pytest evals/` pointed at the same server. Prints requests/s and output
tokens/s (from the server's `usage`) of both: over the whole command (interpreter start,
collection, scoring and reports included for the harness) and, for the harness, over its
generation window as report.json records it.

    python benchmarks/bundled_throughput.py --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.engines.bundled import BUNDLED_MODEL_NAME  # noqa: E402
from harness.engines.managed import free_port, stop_pid, wait_ready  # noqa: E402


def suite_requests(evals: Path) -> list[tuple[str, dict]]:
    from harness.collect import cases_of
    from harness.prompts import build_request
    from harness.suite import load_suite, suite_files_in

    requests = []
    for suite_file in sorted(evals.rglob("*.yaml")):
        if suite_file not in suite_files_in(suite_file.parent):
            continue
        suite = load_suite(suite_file)
        for dataset in suite.datasets:
            for case in cases_of(suite, dataset):  # robustness copies included, as pytest sends them
                request = build_request(suite, case, BUNDLED_MODEL_NAME)
                requests.append(("/chat/completions" if request.api == "chat" else "/completions", request.body()))
    return requests


async def bare(url: str, requests: list[tuple[str, dict]], concurrency: int) -> tuple[float, int]:
    import aiohttp

    semaphore = asyncio.Semaphore(concurrency)
    tokens = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def one(path: str, body: dict) -> None:
            nonlocal tokens
            async with semaphore, session.post(url + path, json=body) as response:
                payload = await response.json()
                tokens += payload["usage"]["completion_tokens"]

        started = time.perf_counter()
        await asyncio.gather(*(one(path, body) for path, body in requests))
        return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=16)
    args = parser.parse_args()

    requests = suite_requests(ROOT / "evals")
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    log = Path(tempfile.mkdtemp()) / "engine.log"
    with log.open("wb") as handle:
        server = subprocess.Popen([sys.executable, "-m", "harness.engines.cpu_server", "--model", "bundled",
                                   "--served-model-name", BUNDLED_MODEL_NAME, "--port", str(port),
                                   "--max-batch", str(args.max_batch), "--batch-wait-ms", "50"],
                                  stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(url, BUNDLED_MODEL_NAME, 900, server, log)
        bare_wall, bare_tokens = asyncio.run(bare(url, requests, args.concurrency))
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "evals"), "-q", "-p", "no:cacheprovider",
                                   "--llm-base-url", url, "--llm-model", BUNDLED_MODEL_NAME, "--llm-cache", "off",
                                   "--llm-concurrency", str(args.concurrency), "--llm-report-dir", tmp],
                                  cwd=ROOT, capture_output=True, text=True)
            harness_wall = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"pytest failed ({done.returncode}):\n{done.stdout[-3000:]}")
            generation = json.loads((Path(tmp) / "report.json").read_text())["run"]["generation"]
            if generation["requests"] != len(requests):
                raise SystemExit(f"unequal work: pytest sent {generation['requests']} requests, bare {len(requests)}")
    finally:
        stop_pid(server.pid)
    n = len(requests)
    print(f"bundled {BUNDLED_MODEL_NAME}: {n} requests, concurrency {args.concurrency}, max batch {args.max_batch}")
    print(f"{'run':40} {'wall s':>8} {'req/s':>8} {'out tok/s':>10}")
    print(f"{'bare aiohttp (requests only)':40} {bare_wall:8.2f} {n / bare_wall:8.2f} {bare_tokens / bare_wall:10.1f}")
    print(f"{'pytest evals/ (whole command)':40} {harness_wall:8.2f} {n / harness_wall:8.2f} "
          f"{generation['output_tokens'] / harness_wall:10.1f}")
    print(f"{'pytest evals/ (generation window)':40} {generation['wall_s']:8.2f} {generation['requests_per_s']:8.2f} "
          f"{generation['output_tokens_per_s']:10.1f}")
    print(f"harness/bare requests/s: whole command {bare_wall / harness_wall:.2f}, "
          f"generation window {generation['requests_per_s'] / (n / bare_wall):.2f}")


if __name__ == "__main__":
    main()
