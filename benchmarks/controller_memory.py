"""Memory of a large run: peak RSS of the pytest controller and of each xdist worker.

Runs an N-case suite against a 0 ms stub (concurrency 256, ``-n 2`` by default) for each N
given, samples the resident set of the controller and its worker processes every 100 ms from
/proc, and prints the peaks, the growth per case between the smallest and each larger N
(what one more case costs), each run's throughput (cases per second of the whole run) against the
smallest run's, and how many distinct cases report.json holds.

    python benchmarks/controller_memory.py --cases 10000 100000
    python benchmarks/controller_memory.py --cases 100000 1000000   # issue 15's goal: < 2 GB, >= 0.8x
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stub_throughput import environment, pytest_argv, write_suite  # noqa: E402

from harness.engines.managed import free_port, model_listed  # noqa: E402

PAGE_KB = 4


def rss_kb(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def peaks(proc: subprocess.Popen[bytes]) -> tuple[int, dict[int, int]]:
    """Peak RSS (KB) of the process and of each child, sampled until it exits."""
    controller, workers = 0, {}
    while proc.poll() is None:
        controller = max(controller, rss_kb(proc.pid))
        for child in children(proc.pid):
            workers[child] = max(workers.get(child, 0), rss_kb(child))
        time.sleep(0.1)
    return controller, workers


def count_cases(report: Path) -> int:
    """The distinct case ids in report.json, read a line at a time (it writes one line per case):
    a million cases parsed at once would cost this script gigabytes."""
    seen: set[tuple[str, str]] = set()
    inside = False
    with report.open(encoding="utf-8") as handle:
        for line in handle:
            if line.startswith('  "cases": ['):
                inside = not line.rstrip().endswith("[]")
            elif inside and line.startswith("  ]"):
                inside = False
            elif inside:
                case = json.loads(line.strip().rstrip(","))
                seen.add((case["suite"], case["id"]))
    return len(seen)


def run(url: str, cases: int, workers: str, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        evals = write_suite(root, cases)
        argv = pytest_argv(evals, url, concurrency, workers, root)
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=root, env=environment(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        stderr: list[bytes] = []
        reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read() if proc.stderr else b""))
        reader.start()
        controller, worker_peaks = peaks(proc)
        reader.join()
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"pytest failed ({proc.returncode}): {b''.join(stderr).decode()[-2000:]}")
        recorded = count_cases(root / "report" / "report.json")
    return {"cases": cases, "wall_s": wall, "controller_mb": controller / 1024,
            "worker_mb": max(worker_peaks.values(), default=0) / 1024, "recorded": recorded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--workers", default="2")
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()

    port = free_port()
    stub = subprocess.Popen([sys.executable, "-m", "harness.testing.stub_server", "--port", str(port),
                             "--models", "stub", "--delay-ms", "0"], env=environment())
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while not model_listed(url, "stub"):
            time.sleep(0.1)
        rows = [run(url, n, args.workers, args.concurrency) for n in sorted(args.cases)]
    finally:
        stub.terminate()
        stub.wait(10)
    base = rows[0]
    print(f"-n {args.workers}, concurrency {args.concurrency}, 0 ms stub")
    print(f"{'cases':>9} {'wall s':>8} {'cases/s':>8} {'vs ' + format(base['cases'], ','):>10} {'controller MB':>14} "
          f"{'worker MB':>10} {'KB/case ctrl':>13} {'KB/case worker':>15} {'in report':>10}")
    for row in rows:
        extra = row["cases"] - base["cases"]
        per_ctrl = (row["controller_mb"] - base["controller_mb"]) * 1024 / extra if extra else float("nan")
        per_worker = (row["worker_mb"] - base["worker_mb"]) * 1024 / extra if extra else float("nan")
        rate = row["cases"] / row["wall_s"]  # the whole run's throughput: start-up, collection and reports included
        print(f"{row['cases']:>9} {row['wall_s']:>8.1f} {rate:>8.0f} {rate / (base['cases'] / base['wall_s']):>10.2f} "
              f"{row['controller_mb']:>14.1f} {row['worker_mb']:>10.1f} {per_ctrl:>13.2f} {per_worker:>15.2f} "
              f"{row['recorded']:>10}")
    last = rows[-1]
    if len(rows) > 1 and last["cases"] < 1_000_000:
        # not measured: the largest run's peak plus the per-case growth for the cases it lacks
        extra = last["cases"] - base["cases"]
        per_ctrl_mb = (last["controller_mb"] - base["controller_mb"]) / extra
        per_worker_mb = (last["worker_mb"] - base["worker_mb"]) / extra
        more = 1_000_000 - last["cases"]
        print(f"extrapolated (not measured) to 1,000,000 cases: controller {last['controller_mb'] + per_ctrl_mb * more:,.0f} MB,"
              f" worker {last['worker_mb'] + per_worker_mb * more:,.0f} MB peak RSS")


if __name__ == "__main__":
    main()
