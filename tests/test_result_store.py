"""Case results on disk (harness.result_store): what goes in comes out, in report order, and the
suite metrics read from the file equal those read from objects."""

from __future__ import annotations

import random
from pathlib import Path

import numpy
import pytest
from hypothesis import given, settings, strategies as st

from harness.result_store import ResultRows, ResultSpool, RunResults, merged, take
from harness.results import CaseResult
from harness.suite import Suite
from harness.suite_metrics import suite_result


def result(i: int, *, suite: str = "s", model: str = "m", dataset: str = "d.jsonl", line: int | None = None,
           attack: str | None = None, **fields: object) -> CaseResult:
    line = i + 1 if line is None else line
    return CaseResult(suite, f"c{i}", model, f"{dataset}::c{i}{'-' + attack if attack else ''}[{model}]", dataset,
                      line, [{"role": "user", "content": f"q{i}"}], f"a{i}", attack=attack, **fields)  # type: ignore[arg-type]


@pytest.fixture
def spool(tmp_path: Path):
    spool = ResultSpool(tmp_path / "results.spool")
    yield spool
    spool.close()


def test_a_result_reads_back_equal_and_fresh(spool: ResultSpool) -> None:
    original = result(1, output="a1", score=1.0, passed=True, latency_ms=12.5, tool_calls=[{"name": "f"}],
                      metadata={"k": [1, 2]}, data={"predicted": "x"}, judge={"model": "j", "replies": ["ok"]})
    at = spool.append(original)
    first, second = spool.read(at), spool.read(at)
    assert first == original and second == original
    first.data["predicted"] = "changed"
    assert spool.read(at).data == {"predicted": "x"}  # a read is a copy: changing it changes nothing


def test_values_that_are_not_json_primitives_survive(spool: ResultSpool) -> None:
    # a custom scorer in this process may keep any object (a set, a tuple of objects) in extracted
    original = result(2, extracted={"b", "a"}, data={"path": Path("x/y")})
    assert spool.read(spool.append(original)) == original


def test_a_value_that_cannot_be_pickled_is_kept_as_its_repr(spool: ResultSpool) -> None:
    import threading

    lock = threading.Lock()
    back = spool.read(spool.append(result(3, extracted=lock, output="kept")))
    assert back.extracted == repr(lock) and back.output == "kept"


def test_the_first_result_of_a_case_counts(spool: ResultSpool) -> None:
    run = RunResults(spool)
    assert run.add(result(1, output="first"))
    assert not run.add(result(1, output="second"))
    assert len(run) == 1 and result(1).nodeid in run
    assert run.get(result(1).nodeid).output == "first"  # type: ignore[union-attr]
    assert run.get("nothing") is None


def test_results_come_back_in_data_order_whatever_order_they_arrived_in(spool: ResultSpool) -> None:
    cases = [result(i, dataset=d, line=line, attack=attack) for i, (d, line, attack) in enumerate(
        [("b.jsonl", 1, None), ("a.jsonl", 2, None), ("a.jsonl", 1, "typo"), ("a.jsonl", 1, None)])]
    run = RunResults(spool)
    for case in cases:
        run.add(case)
    ordered = run.ordered()
    assert isinstance(ordered, ResultRows)
    assert [(r.dataset, r.line, r.attack) for r in ordered] == [
        ("a.jsonl", 1, None), ("a.jsonl", 1, "typo"), ("a.jsonl", 2, None), ("b.jsonl", 1, None)]
    assert [r.id for r in ordered[1:3]] == ["c2", "c1"] and ordered[-1].id == "c0"


keys = st.tuples(st.sampled_from(["s1", "s2"]), st.sampled_from(["m1", "m2", "m3"]),
                 st.sampled_from(["a.jsonl", "b/c.jsonl", "b.jsonl"]), st.integers(1, 30),
                 st.sampled_from([None, "typo", "case"]))


@settings(max_examples=40, deadline=None)
@given(st.lists(keys, unique=True, max_size=40), st.randoms(use_true_random=False))
def test_merged_order_is_the_report_order(tmp_path_factory: pytest.TempPathFactory, chosen: list, rnd: random.Random) -> None:
    """Suite name, dataset, line, perturbation, then the run's model order: as the reports always sorted."""
    rank = {"m2": 0, "m3": 1, "m1": 2}
    results = [result(i, suite=s, model=m, dataset=d, line=line, attack=a) for i, (s, m, d, line, a) in enumerate(chosen)]
    rnd.shuffle(results)
    spool = ResultSpool(tmp_path_factory.mktemp("spool") / "r.spool")
    try:
        runs: dict[tuple[str, str], RunResults] = {}
        for r in results:
            runs.setdefault((r.suite, r.model), RunResults(spool)).add(r)
        parts = [(suite, rank[model], run) for (suite, model), run in runs.items()]
        expected = sorted(results, key=lambda r: (r.suite, r.dataset, r.line, r.attack or "", rank[r.model]))
        assert list(merged(parts)) == expected
        # without a spool (a plan made outside a run) the same order, from objects
        memory: dict[tuple[str, str], RunResults] = {}
        for r in results:
            memory.setdefault((r.suite, r.model), RunResults()).add(r)
        assert list(merged([(s, rank[m], run) for (s, m), run in memory.items()])) == expected
    finally:
        spool.close()


def test_rows_filter_and_slice_on_disk(spool: ResultSpool) -> None:
    run = RunResults(spool)
    for i in range(10):
        run.add(result(i, attack="typo" if i % 3 == 0 else None))
    rows = run.ordered()
    clean = take(rows, [r.attack is None for r in rows])
    assert isinstance(clean, ResultRows) and [r.id for r in clean] == [f"c{i}" for i in range(10) if i % 3]
    assert [r.id for r in rows.take([i < 2 for i in range(10)])] == ["c0", "c1"]  # type: ignore[attr-defined]
    assert len(rows[2:5]) == 3 and rows[2:5][0].id == "c2"


def test_suite_metrics_from_disk_equal_those_from_objects(spool: ResultSpool, tmp_path: Path) -> None:
    """Every metric, interval, gate and table of a suite (robustness copies, errors, cache hits, two
    datasets) is the same whether its results are objects or rows read from the spool."""
    from harness.suite import load_suite

    folder = tmp_path / "evals" / "qa"
    folder.mkdir(parents=True)
    (folder / "suite.yaml").write_text(
        "name: qa\ndatasets: [a.jsonl, b.jsonl]\nscorer: exact_match\npass: record\n"
        "gates: ['accuracy >= 0.5', 'latency_p99_ms <= 50', 'error_rate <= 0.2']\n"
        "robustness: {attacks: [typos]}\n")
    for name in ("a.jsonl", "b.jsonl"):
        (folder / name).write_text('{"id": "x", "input": "q", "target": "a"}\n')
    suite: Suite = load_suite(folder / "suite.yaml")
    rnd = random.Random(7)
    objects = []
    for i in range(60):
        error = "boom" if i % 11 == 0 else None
        objects.append(result(i, suite="qa", dataset="a.jsonl" if i < 35 else "b.jsonl",
                              attack="typos" if i % 4 == 0 else None, score=None if error else float(i % 2),
                              passed=None if error else bool(i % 2), error=error, cached=i % 7 == 0,
                              latency_ms=rnd.uniform(1, 80), sent_at=1000.0 + i, done_at=1000.5 + i,
                              output_tokens=i % 5 or None, truncated=i % 9 == 0, output="a" if i % 2 else "b"))
    run = RunResults(spool)
    for r in objects:
        run.add(r)
    rows = run.ordered()
    assert isinstance(rows, ResultRows)
    from_disk = suite_result(suite, "m", rows, 60)
    from_objects = suite_result(suite, "m", list(rows), 60)
    assert from_disk.to_dict() == from_objects.to_dict()
    # against figures worked out here from the objects, as the metrics were before they read columns
    clean = [r for r in objects if r.attack is None]
    timed = sorted(r.latency_ms for r in objects if r.error is None and not r.cached)
    metrics = from_disk.metrics
    assert metrics["cases"] == len(clean) == 45
    # a robustness suite's errors and latency count every request, perturbed copies too
    assert metrics["errors"] == sum(r.error is not None for r in objects) == 6
    assert metrics["accuracy"] == pytest.approx(sum(r.score or 0.0 for r in clean) / len(clean))
    assert metrics["latency_p50_ms"] == pytest.approx(float(numpy.percentile(timed, 50)))
    rows_by_dataset = {row["dataset"]: row["cases"] for row in from_disk.tables["by_dataset"]}
    assert rows_by_dataset == {"a.jsonl": sum(r.dataset == "a.jsonl" for r in clean),
                               "b.jsonl": sum(r.dataset == "b.jsonl" for r in clean)}


def test_the_file_goes_when_the_spool_closes(tmp_path: Path) -> None:
    spool = ResultSpool(tmp_path / "r.spool")
    spool.append(result(1))
    spool.close()
    assert not (tmp_path / "r.spool").exists()


def test_reading_in_order_while_results_arrive(spool: ResultSpool) -> None:
    """A suite run is read in order (a stopped run's gates) on one thread while results still arrive
    on another: every read is a consistent snapshot, and no append fails."""
    import threading

    run = RunResults(spool)
    errors: list[BaseException] = []

    def arrive() -> None:
        try:
            for i in range(3000):
                run.add(result(i, dataset=f"d{i % 3}.jsonl"))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    writer = threading.Thread(target=arrive)
    writer.start()
    sizes = []
    while writer.is_alive():
        rows = run.ordered()
        sizes.append(len(rows))
        if len(rows):
            assert rows[0].dataset == "d0.jsonl"
    writer.join()
    assert not errors
    assert len(run.ordered()) == 3000 and sizes == sorted(sizes)
