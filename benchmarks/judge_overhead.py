"""Judge overhead: N judged cases (N model + N judge requests) against 2N plain cases, same concurrency.

The goal (issue 13): against the stub server at 50 ms, 1,000 cases with a judge take at most 1.2x
the time of 2,000 plain requests at the same concurrency, because the judge phase overlaps
generation. One stub server (``--models stub,judge``) serves both the model under test and the
judge (declared ``role: judge`` in a models file); each case's input ends with its own
``ANSWER: a<i>`` line and the rubric ends with ``ANSWER: VERDICT: 1``, so the stub answers the
case with its target and the judge with a valid verdict.

For each concurrency, the two commands run --repeat times, interleaved (the order flips every
repetition, so a slow spell hits both), each one a whole ``pytest`` run::

    (a) pytest <judged suite> -p no:cacheprovider -q --llm-cache off --llm-concurrency C ...
    (b) pytest <plain suite>  -p no:cacheprovider -q --llm-cache off --llm-concurrency C ...

and the script prints, as medians of the repetitions, three times and their ratios (a)/(b):

- pytest wall: the whole command (interpreter start, collection, requests, scoring, reports);
- gen wall_s: report.json ``run.generation.wall_s``, the harness's own request phase (first
  request sent to the last *model* reply: in (a) it stops before the last judge reply);
- span: first case's ``sent_at`` (report.json) to the stub's ``last_reply_at`` (/stats), the
  request phase with the last judge reply included.

For each judged run it also prints how many judge replies arrived before the last model reply
(a case's ``done_at`` plus its judge's ``latency_ms``): how much the judge phase overlapped
generation rather than followed it.

Every run is checked, and the script stops with the reason if a check fails: the stub got 2N
requests and never more than C in flight; (a) reports N model requests and N judge requests,
no errors and nothing cached, and every case has score 1, verdict 1 from the judge model and no
error; (b) reports 2N requests and every case scores 1 with no error.

The pytest runs load only this plugin (PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 with -p harness.plugin),
as benchmarks/stub_throughput.py does: other installed plugins cost the same in both commands.

    python benchmarks/judge_overhead.py           # 1000 judged vs 2000 plain, C=16 and 64, 5 reps: about 2.5 min
    python benchmarks/judge_overhead.py --concurrency 16 --repeat 3 --check   # exit 1 if a ratio misses 1.2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.engines.managed import free_port, model_listed  # noqa: E402

MODEL, JUDGE = "stub", "judge"
RUBRIC = "Grade this answer: {{ output }}\nANSWER: VERDICT: 1"  # the stub answers the last ANSWER: line


class CheckFailed(SystemExit):
    pass


def fail(label: str, message: str, output: str = "") -> None:
    raise CheckFailed(f"CHECK FAILED [{label}]: {message}" + (f"\n--- pytest output (tail) ---\n{output[-3000:]}"
                                                              if output else ""))


def write_suite(folder: Path, name: str, cases: int, scorer: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "suite.yaml").write_text(f"name: {name}\ndataset: cases.jsonl\napi: chat\nscorer: {scorer}\n",
                                       encoding="utf-8")
    with (folder / "cases.jsonl").open("w", encoding="utf-8") as handle:
        for i in range(cases):
            handle.write(json.dumps({"id": f"c{i}", "input": f"q{i}\nANSWER: a{i}", "target": f"a{i}"}) + "\n")
    return folder


def judge_scorer() -> str:
    return "{" + f"name: judge, model: {JUDGE}, rubric: {json.dumps(RUBRIC)}, scale: [0, 1]" + "}"


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return env


def stub_call(url: str, path: str, method: str = "GET") -> dict[str, Any]:
    request = urllib.request.Request(url.removesuffix("/v1") + path, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Run:
    wall: float  # the whole pytest command
    cpu: float  # its CPU seconds (user + system)
    gen_wall: float  # report.json run.generation.wall_s
    span: float  # first case sent -> the stub's last reply
    generation: dict[str, Any]
    max_in_flight: int
    overlap: int | None  # judged runs: judge replies that arrived before the last model reply


def pytest_argv(suite: Path, concurrency: int, models_file: Path, report: Path) -> list[str]:
    return [sys.executable, "-m", "pytest", str(suite), "-p", "no:cacheprovider", "-p", "harness.plugin", "-q",
            "--llm-cache", "off", "--llm-concurrency", str(concurrency), "--llm-models-file", str(models_file),
            "--llm-report-dir", str(report)]


def run_once(label: str, suite: Path, judged: bool, cases: int, concurrency: int, url: str, models_file: Path,
             report: Path) -> Run:
    shutil.rmtree(report, ignore_errors=True)
    stub_call(url, "/stats/reset", "POST")
    argv = pytest_argv(suite, concurrency, models_file, report)
    cpu_before = children_cpu()
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=suite.parent, capture_output=True, text=True, env=environment(), check=False)
    wall = time.perf_counter() - started
    cpu = children_cpu() - cpu_before
    output = done.stdout + done.stderr
    if done.returncode != 0:
        fail(label, f"pytest exited {done.returncode}", output)
    stats = stub_call(url, "/stats")
    try:
        data = json.loads((report / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(label, f"no readable report.json in {report}: {exc}", output)
    generation = data["run"]["generation"]
    verify(label, judged, cases, concurrency, stats, generation, data["cases"], output)
    first_sent = min(case["sent_at"] for case in data["cases"])
    overlap = None
    if judged:  # a judge request leaves when its case's reply arrives; its latency runs from then
        last_model = max(case["done_at"] for case in data["cases"])
        overlap = sum(case["done_at"] + case["judge"]["latency_ms"] / 1000 <= last_model for case in data["cases"])
    return Run(wall, cpu, float(generation["wall_s"]), stats["last_reply_at"] - first_sent, generation,
               stats["max_in_flight"], overlap)


def verify(label: str, judged: bool, cases: int, concurrency: int, stats: dict[str, Any],
           generation: dict[str, Any], results: list[dict[str, Any]], output: str) -> None:
    def expect(what: str, got: Any, want: Any) -> None:
        if got != want:
            fail(label, f"{what}: {got!r}, expected {want!r}", output)

    model_requests = cases if judged else 2 * cases
    expect("stub /stats requests", stats["requests"], 2 * cases)
    if stats["max_in_flight"] > concurrency:
        fail(label, f"the stub saw {stats['max_in_flight']} requests in flight, over --llm-concurrency {concurrency}")
    expect("run.generation.requests", generation.get("requests"), model_requests)
    expect("run.generation.answered", generation.get("answered"), model_requests)
    expect("run.generation.errors", generation.get("errors"), 0)
    expect("run.generation.cached", generation.get("cached"), 0)
    expect("run.generation.resent", generation.get("resent"), 0)
    judge = generation.get("judge")
    if judged:
        if not isinstance(judge, dict):
            fail(label, f"run.generation.judge missing: {generation!r}")
        for key, want in (("cases", cases), ("requests", cases), ("errors", 0), ("cached", 0)):
            expect(f"run.generation.judge.{key}", judge.get(key), want)
    elif judge is not None:
        fail(label, f"a plain run reports judge requests: {judge!r}")
    expect("cases in report.json", len(results), model_requests)
    bad = []
    for case in results:
        verdict = case.get("judge") or {}
        if (case.get("error") is not None or case.get("score") != 1.0 or case.get("output") != case.get("target")
                or (judged and (verdict.get("model") != JUDGE or verdict.get("verdict") != 1.0
                                or verdict.get("error") is not None))
                or (not judged and case.get("judge") is not None)):
            bad.append(case)
    if bad:
        fail(label, f"{len(bad)} of {len(results)} cases not scored 1 without error; first: "
                    f"{json.dumps(bad[0], default=str)[:1500]}", output)


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench(root: Path, url: str, models_file: Path, cases: int, concurrency: int, repeat: int,
          goal: float) -> list[tuple[str, float]]:
    judged = write_suite(root / f"judged_c{concurrency}", "judged", cases, judge_scorer())
    plain = write_suite(root / f"plain_c{concurrency}", "plain", 2 * cases, "exact_match")
    arms = {"a": (f"(a) {cases} judged", judged, True), "b": (f"(b) {2 * cases} plain", plain, False)}
    runs: dict[str, list[Run]] = {"a": [], "b": []}
    print(f"\nconcurrency {concurrency}: {cases} judged cases ({2 * cases} requests) vs {2 * cases} plain cases",
          flush=True)
    for rep in range(repeat):
        for arm in ("ab" if rep % 2 == 0 else "ba"):  # the order flips every repetition
            label, suite, is_judged = arms[arm]
            run = run_once(f"{label}, C={concurrency}, rep {rep + 1}", suite, is_judged, cases, concurrency, url,
                           models_file, root / "report")
            runs[arm].append(run)
            print(f"  rep {rep + 1} {label:18} pytest wall {run.wall:6.2f} s  CPU {run.cpu:6.2f} s  "
                  f"gen wall_s {run.gen_wall:6.2f}  span {run.span:6.2f} s  max in flight {run.max_in_flight}"
                  + (f"  judge replies before the last model reply {run.overlap}/{cases}" if is_judged else ""),
                  flush=True)

    print(f"\n  concurrency {concurrency}, median of {repeat}:")
    print(f"  {'run':20} {'pytest wall s':>13} {'CPU s':>7} {'gen wall_s':>10} {'span s':>7} {'req/s':>7}  "
          "harness generation figures (last run)")
    for arm in "ab":
        label, _, is_judged = arms[arm]
        rs = runs[arm]
        gen = rs[-1].generation
        figures = f"requests {gen['requests']}, wall_s {gen['wall_s']}, requests_per_s {gen['requests_per_s']}"
        if is_judged:
            j = gen["judge"]
            figures += (f"; judge: cases {j['cases']}, requests {j['requests']}, errors {j['errors']}, "
                        f"cached {j['cached']}, p50 {j['latency_p50_ms']:.1f} ms, p90 {j['latency_p90_ms']:.1f} ms")
        print(f"  {label:20} {median([r.wall for r in rs]):13.2f} {median([r.cpu for r in rs]):7.2f} "
              f"{median([r.gen_wall for r in rs]):10.2f} {median([r.span for r in rs]):7.2f} "
              f"{2 * cases / median([r.span for r in rs]):7.1f}  {figures}")
    ratios = []
    for name, key in (("pytest wall", "wall"), ("gen wall_s", "gen_wall"), ("span", "span")):
        a = median([getattr(r, key) for r in runs["a"]])
        b = median([getattr(r, key) for r in runs["b"]])
        per_rep = ", ".join(f"{getattr(x, key) / getattr(y, key):.3f}" for x, y in zip(runs["a"], runs["b"]))
        ratio = a / b
        ratios.append((f"C={concurrency} {name}", ratio))
        print(f"  ratio (a)/(b) {name:12} {ratio:.3f}  ({'meets' if ratio <= goal else 'MISSES'} the "
              f"{goal:g}x goal; per repetition: {per_rep})")
    sys.stdout.flush()
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000, help="judged cases; the plain suite has twice as many")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command; the median is kept")
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--goal", type=float, default=1.2, help="the ratio (a)/(b) to stay under")
    parser.add_argument("--check", action="store_true", help="exit 1 if a ratio misses the goal")
    args = parser.parse_args()

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        log = (root / "stub.log").open("w")
        stub = subprocess.Popen([sys.executable, "-m", "harness.testing.stub_server", "--port", str(port),
                                 "--models", f"{MODEL},{JUDGE}", "--delay-ms", str(args.delay_ms)],
                                stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/v1"
        models_file = root / "models.yaml"
        models_file.write_text(f'- {{name: {MODEL}, base_url: "{url}"}}\n'
                               f'- {{name: {JUDGE}, base_url: "{url}", role: judge}}\n', encoding="utf-8")
        try:
            deadline = time.monotonic() + 30
            while not model_listed(url, JUDGE):
                if stub.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the stub server did not start:\n{(root / 'stub.log').read_text()[-2000:]}")
                time.sleep(0.1)
            print(f"settings: stub --delay-ms {args.delay_ms:g} on 127.0.0.1:{port}; {args.cases} judged cases vs "
                  f"{2 * args.cases} plain (exact_match); concurrency {' '.join(map(str, args.concurrency))}; "
                  f"{args.repeat} repetitions, order alternating; --llm-cache off; "
                  f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}")
            started = time.perf_counter()
            ratios = [r for c in args.concurrency
                      for r in bench(root, url, models_file, args.cases, c, args.repeat, args.goal)]
        finally:
            stub.terminate()
            stub.wait(10)
            log.close()
    print(f"\nall runs checked: stub requests, judge requests, scores and errors as expected "
          f"({time.perf_counter() - started:.0f} s in all)")
    missed = [name for name, ratio in ratios if ratio > args.goal]
    verdict = "met by every ratio" if not missed else f"MISSED by {', '.join(missed)}"
    print(f"goal (a)/(b) <= {args.goal:g}: {verdict}")
    if args.check and missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
