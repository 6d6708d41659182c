"""Harness throughput against a stub OpenAI-compatible server, next to a bare asyncio client.

Prints one row per configuration: wall time of a whole `pytest` run of an N-case suite
(interpreter start, collection, generation, scoring, reports) and of a bare script doing the
same requests (interpreter start included), at equal concurrency, and their ratio.

    python benchmarks/stub_throughput.py --cases 1000 --delay-ms 50 --concurrency 32 --workers 0 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.engines.managed import free_port, model_listed  # noqa: E402

BARE_AIOHTTP = """
import asyncio, json, sys, aiohttp
url, n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def main():
    sem = asyncio.Semaphore(conc)
    async with aiohttp.ClientSession() as s:
        async def one(i):
            async with sem:
                body = {"model": "stub", "messages": [{"role": "user", "content": f"q{i}\\nANSWER: a{i}"}]}
                async with s.post(url + "/chat/completions", json=body) as r:
                    return (await r.json())["choices"][0]["message"]["content"]
        out = await asyncio.gather(*(one(i) for i in range(n)))
    assert len(out) == n
asyncio.run(main())
"""

BARE_OPENAI = """
import asyncio, sys, openai
url, n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def main():
    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
    sem = asyncio.Semaphore(conc)
    async def one(i):
        async with sem:
            r = await client.chat.completions.create(model="stub", messages=[{"role": "user", "content": f"q{i}\\nANSWER: a{i}"}])
            return r.choices[0].message.content
    out = await asyncio.gather(*(one(i) for i in range(n)))
    assert len(out) == n
asyncio.run(main())
"""


def write_suite(root: Path, cases: int) -> Path:
    suite = root / "evals" / "bench"
    suite.mkdir(parents=True)
    (suite / "suite.yaml").write_text("name: bench\ndataset: cases.jsonl\napi: chat\nscorer: exact_match\n"
                                      "pass: record\ngates: ['accuracy >= 0.99']\n")
    with (suite / "cases.jsonl").open("w") as handle:
        for i in range(cases):
            handle.write(json.dumps({"id": f"c{i}", "input": f"q{i}\nANSWER: a{i}", "target": f"a{i}"}) + "\n")
    return root / "evals"


def timed(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", nargs="+", default=["0", "2"])
    args = parser.parse_args()

    port = free_port()
    stub = subprocess.Popen([sys.executable, "-m", "harness.testing.stub_server", "--port", str(port),
                             "--models", "stub", "--delay-ms", str(args.delay_ms)])
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while not model_listed(url, "stub"):
            time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            evals = write_suite(root, args.cases)
            rows = []
            for script, name in ((BARE_OPENAI, "bare openai.AsyncOpenAI"), (BARE_AIOHTTP, "bare aiohttp")):
                try:
                    wall = timed([sys.executable, "-c", script, url, str(args.cases), str(args.concurrency)], root)
                except SystemExit as exc:
                    print(f"# {name} skipped: {str(exc).splitlines()[0]}")
                    continue
                rows.append((name, wall))
            for workers in args.workers:
                wall = timed([sys.executable, "-m", "pytest", str(evals), "-q", "-p", "no:cacheprovider",
                              "-n", workers, "--llm-base-url", url, "--llm-model", "stub",
                              "--llm-concurrency", str(args.concurrency), "--llm-report-dir", str(root / "out")], root)
                rows.append((f"pytest-llm-harness -n {workers}", wall))
        base = rows[0][1]
        print(f"cases={args.cases} delay_ms={args.delay_ms:g} concurrency={args.concurrency}")
        print(f"{'run':32} {'wall s':>8} {'req/s':>8} {'rps vs first row':>17}")
        for name, wall in rows:
            print(f"{name:32} {wall:8.2f} {args.cases / wall:8.1f} {base / wall:17.2f}")
    finally:
        stub.terminate()
        stub.wait(10)


if __name__ == "__main__":
    main()
