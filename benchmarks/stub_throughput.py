"""Harness throughput against a stub OpenAI-compatible server, next to a bare asyncio client.

For each (cases, concurrency) pair, prints the wall time of a whole `pytest` run of an
N-case suite (interpreter start, collection, generation, scoring, reports) with `-n 0` and
`-n 2`, and of a bare script sending the same requests (interpreter start included) with
`openai.AsyncOpenAI` and with aiohttp, at equal concurrency; the ratio is requests/s against
the bare openai client. It also prints the maximum in flight the stub saw (must not exceed the
concurrency under -n 2), the median time pytest measured per case item (setup + call +
teardown, which includes waiting for the item's reply), and the time to collect a large suite.
With --repeat N each command runs N times, interleaved, and the median wall time is kept.
The last rows run pytest alone on as many empty items (no plugin, no request; items of the kind the
harness's are, from a File collector): their CPU-s/1k is what pytest's own per-item protocol costs,
a floor under the harness's figure. Below the table: each goal of issue 9 with its figure and
whether it is met; the CPU figure is split into pytest's own cost, bare aiohttp's and the
harness's own (what is left).

The pytest runs load only this plugin and xdist (PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 with -p):
a user's plugins (hypothesis, asyncio, ...) cost what they cost with or without this one.
Bytecode writing is left on for every command, as it is by default in Python.

    python benchmarks/stub_throughput.py --cases 1000 10000 --concurrency 32 256 --delay-ms 50
    python benchmarks/stub_throughput.py --cases 1000 --concurrency 32 --delay-ms 0 --collect 100000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.engines.managed import free_port, model_listed  # noqa: E402

BARE_AIOHTTP = """
import asyncio, json, sys, aiohttp
url, n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def main():
    sem = asyncio.Semaphore(conc)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def one(i):
            async with sem:
                body = {"model": "stub", "messages": [{"role": "user", "content": f"q{i}\\nANSWER: a{i}"}],
                        "max_tokens": 256, "temperature": 0.0}
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
            r = await client.chat.completions.create(
                model="stub", messages=[{"role": "user", "content": f"q{i}\\nANSWER: a{i}"}],
                max_tokens=256, temperature=0.0)
            return r.choices[0].message.content
    out = await asyncio.gather(*(one(i) for i in range(n)))
    assert len(out) == n
asyncio.run(main())
"""


FLOOR = "bare pytest, empty items"
# pytest alone's items: of the kind the harness's case items are (an Item from a File collector, no fixtures),
# which cost pytest about a quarter less per item than a parametrized test function's
EMPTY_ITEMS = '''
import pytest


class Empty(pytest.Item):
    def runtest(self):
        pass

    def reportinfo(self):
        return self.path, 0, self.name


class Items(pytest.File):
    def collect(self):
        for i in range(int(self.path.read_text())):
            yield Empty.from_parent(self, name=f"c{i}")


def pytest_collect_file(file_path, parent):
    if file_path.name == "items.count":
        return Items.from_parent(parent, path=file_path)
'''


def write_suite(root: Path, cases: int) -> Path:
    suite = root / "evals" / "bench"
    suite.mkdir(parents=True, exist_ok=True)
    (suite / "suite.yaml").write_text("name: bench\ndataset: cases.jsonl\napi: chat\nscorer: exact_match\n"
                                      "pass: record\ngates: ['accuracy >= 0.99']\n")
    with (suite / "cases.jsonl").open("w") as handle:
        for i in range(cases):
            handle.write(json.dumps({"id": f"c{i}", "input": f"q{i}\nANSWER: a{i}", "target": f"a{i}"}) + "\n")
    return root / "evals"


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
    return {**env, **extra}


class Timing:
    """Wall and CPU seconds of one command, and the epoch time it exited."""

    def __init__(self, wall: float, cpu: float, ended_at: float) -> None:
        self.wall, self.cpu, self.ended_at = wall, cpu, ended_at


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], cwd: Path, **env: str) -> Timing:
    cpu_before = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=environment(**env))
    elapsed = time.perf_counter() - started
    ended_at = time.time()
    if done.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return Timing(elapsed, _children_cpu() - cpu_before, ended_at)


def stub_call(url: str, path: str, method: str = "GET") -> dict:
    request = urllib.request.Request(url.removesuffix("/v1") + path, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def item_median_ms(path: Path) -> float:
    return statistics.median(json.loads(path.read_text())) * 1000


def pytest_argv(evals: Path, url: str, concurrency: int, workers: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "pytest", str(evals), "-q", "-p", "no:cacheprovider", "-p", "harness.plugin",
            "-p", "xdist.plugin", "-p", "item_times", "-n", workers, "--llm-base-url", url, "--llm-model", "stub",
            "--llm-concurrency", str(concurrency), "--llm-cache", "off", "--llm-report-dir", str(out / "report")]


def commands_for(root: Path, url: str, cases: int, concurrency: int, workers: list[str]) -> list[tuple[str, list[str]]]:
    evals = write_suite(root, cases)
    commands: list[tuple[str, list[str]]] = [
        (name, [sys.executable, "-c", script, url, str(cases), str(concurrency)])
        for script, name in ((BARE_OPENAI, "bare openai.AsyncOpenAI"), (BARE_AIOHTTP, "bare aiohttp"))]
    commands += [(f"pytest-llm-harness -n {n}", pytest_argv(evals, url, concurrency, n, root)) for n in workers]
    # pytest alone on as many empty items: the CPU its own per-item protocol costs, with no plugin and no request
    floor = root / "pytest_floor"
    floor.mkdir(exist_ok=True)
    (floor / "conftest.py").write_text(EMPTY_ITEMS)
    (floor / "items.count").write_text(str(cases))
    commands += [(f"{FLOOR} -n {n}", [sys.executable, "-m", "pytest", str(floor), "-q", "-p", "no:cacheprovider",
                                      "-p", "xdist.plugin", "-n", n]) for n in workers]
    return commands


def bench(url: str, cases: int, concurrency: int, workers: list[str], repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as tmp_one:
        root = Path(tmp)
        commands = commands_for(root, url, cases, concurrency, workers)
        # the same commands on one case: what start-up costs, to subtract from the CPU figure
        startup = dict(commands_for(Path(tmp_one), url, 1, concurrency, workers))
        runs: dict[str, list[Timing]] = {name: [] for name, _ in commands}
        startup_cpu: dict[str, list[float]] = {name: [] for name, _ in commands}
        after_last: dict[str, list[float]] = {name: [] for name, _ in commands}
        notes: dict[str, str] = {name: "" for name, _ in commands}
        for _ in range(repeat):
            for name, argv in commands:
                startup_cpu[name].append(timed(startup[name], Path(tmp_one)).cpu)
                stub_call(url, "/stats/reset", "POST")
                timing = timed(argv, root, LLM_BENCH_ITEM_TIMES=str(root / "items.json"))
                runs[name].append(timing)
                stats = stub_call(url, "/stats")
                after_last[name].append(timing.ended_at - stats["last_reply_at"] if stats["requests"] else math.nan)
                if name.startswith(FLOOR):
                    notes[name] = "no request: pytest's own per-item cost, the floor of the rows above"
                elif name.startswith("pytest"):
                    notes[name] = (f"max in flight {stats['max_in_flight']} (limit {concurrency}); "
                                   f"item median {item_median_ms(root / 'items.json'):.2f} ms")
    base = statistics.median(t.wall for t in runs[commands[0][0]])
    print(f"\ncases={cases} concurrency={concurrency} (median of {repeat})")
    print(f"{'run':28} {'wall s':>8} {'req/s':>8} {'vs openai':>10} {'after last s':>13} {'CPU-s/1k':>9}  notes")
    rows: dict[str, Row] = {}
    for name, _ in commands:
        wall = statistics.median(t.wall for t in runs[name])
        extra_cpu = statistics.median(t.cpu for t in runs[name]) - statistics.median(startup_cpu[name])
        rows[name] = row = Row(wall, statistics.median(after_last[name]), extra_cpu / max(cases - 1, 1) * 1000)
        print(f"{name:28} {wall:8.2f} {cases / wall:8.1f} {base / wall:10.2f} "
              f"{row.after_last:13.2f} {row.cpu_per_1k:9.2f}  {notes[name]}")
    print_goals(rows, cases, workers)
    sys.stdout.flush()


class Row(NamedTuple):
    wall: float
    after_last: float
    cpu_per_1k: float


# the goals of issue 9, with each run's figure: the wall time's at 1,000 cases (50 ms a reply, 32 in flight);
# after the last reply: 0.3 s at 1,000 cases, 2 s at 10,000; CPU per request: at any size
WALL_GOAL_CASES = 1000
AFTER_LAST_GOAL_S = {1000: 0.3, 10000: 2.0}


def print_goals(rows: dict[str, Row], cases: int, workers: list[str]) -> None:
    """Each goal, the figure it is judged on and whether it is met. The CPU figure is split into pytest's own
    per-item cost (empty items), bare aiohttp's per request and what is left: the harness's own."""
    sdk, aiohttp = rows["bare openai.AsyncOpenAI"], rows["bare aiohttp"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print("goals:")
    for n in workers:
        run = rows[f"pytest-llm-harness -n {n}"]
        if cases == WALL_GOAL_CASES:
            print(f"  -n {n}: wall <= 1.0x bare SDK: {run.wall / sdk.wall:.2f}x {verdict(run.wall <= sdk.wall)}")
        if cases == WALL_GOAL_CASES and n == "0":
            ratio = run.wall / aiohttp.wall
            print(f"  -n {n}: wall <= 1.3x bare aiohttp: {ratio:.2f}x {verdict(ratio <= 1.3)}")
        if (limit := AFTER_LAST_GOAL_S.get(cases)) is not None:
            print(f"  -n {n}: after the last reply <= {limit:g} s: {run.after_last:.2f} s "
                  f"{verdict(run.after_last <= limit)}")
        floor = rows[f"{FLOOR} -n {n}"].cpu_per_1k
        own = run.cpu_per_1k - floor - aiohttp.cpu_per_1k
        print(f"  -n {n}: <= 1.0 CPU-s per 1,000 requests: {run.cpu_per_1k:.2f} {verdict(run.cpu_per_1k <= 1.0)} "
              f"(pytest alone {floor:.2f} + bare aiohttp {aiohttp.cpu_per_1k:.2f} + the harness's own {own:.2f})")


def collect(cases: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        evals = write_suite(root, cases)
        wall = timed([sys.executable, "-m", "pytest", str(evals), "--collect-only", "-q", "-p", "no:cacheprovider",
                      "-p", "harness.plugin", "--llm-base-url", "http://127.0.0.1:9/v1", "--llm-model", "stub"], root).wall
    print(f"\ncollect-only of a {cases}-case suite: {wall:.2f} s wall (interpreter start included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[1000])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32])
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--workers", nargs="+", default=["0", "2"])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each command; the median is kept")
    parser.add_argument("--collect", type=int, default=0, help="also time collecting a suite of this many cases")
    args = parser.parse_args()

    port = free_port()
    stub = subprocess.Popen([sys.executable, "-m", "harness.testing.stub_server", "--port", str(port),
                             "--models", "stub", "--delay-ms", str(args.delay_ms)], env=environment())
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while not model_listed(url, "stub"):
            time.sleep(0.1)
        print(f"stub delay {args.delay_ms:g} ms; {os.cpu_count()} CPUs")
        for cases in args.cases:
            for concurrency in args.concurrency:
                bench(url, cases, concurrency, args.workers, args.repeat)
        if args.collect:
            collect(args.collect)
    finally:
        stub.terminate()
        stub.wait(10)


if __name__ == "__main__":
    main()
