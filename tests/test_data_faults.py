"""Faults in data and files (issue 10): each ends in a message naming the file (and line), the right
exit code, and no case lost or run twice. Whole runs are in-process on the scripted engine."""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cache import CacheError, ResponseCache
from harness.suite import SuiteError, load_cases, load_suite
from tests.conftest import answer_cases, load_report, run_inline, write_suite

CASES = answer_cases([("c1", "Paris", "Paris"), ("c2", "Rome", "Rome"), ("c3", "Oslo", "Bern")])
RECORD = {"pass": "record", "gates": ["accuracy >= 0"]}


def _jsonl(cases: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in cases)


def _suite_yaml(folder: Path, dataset: Any, **extra: Any) -> None:
    spec = {"name": folder.name, "dataset": dataset, "api": "chat", "scorer": "exact_match", **RECORD, **extra}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")


def _output(result: pytest.RunResult) -> str:
    return result.stdout.str() + "\n" + result.stderr.str()


def _ran_once(report: dict[str, Any], ids: list[str]) -> None:
    """Every planned case is in report.json exactly once, and nothing else is."""
    assert Counter(c["id"] for c in report["cases"]) == Counter(ids)


# -- 1. the bytes of a JSONL file ----------------------------------------------------------------------


def test_non_utf8_bytes_are_an_error_naming_file_line_and_byte_offset(pytester: pytest.Pytester) -> None:
    folder = write_suite(pytester.path / "evals", "enc", CASES, **RECORD)
    first = (json.dumps(CASES[0]) + "\n").encode()
    (folder / "cases.jsonl").write_bytes(first + b'{"id": "c2", "input": "caf\xe9", "target": "x"}\n')
    result = run_inline(pytester, "evals")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error: nothing runs
    offset = len(first) + len(b'{"id": "c2", "input": "caf')
    assert f"cases.jsonl:2: not UTF-8: byte 0xe9 at byte offset {offset} of the file" in _output(result)
    assert "UnicodeDecodeError" not in _output(result) and "Traceback" not in _output(result)
    assert not (pytester.path / "out" / "report.json").exists()


def test_a_utf16_file_is_named_as_such(pytester: pytest.Pytester) -> None:
    folder = write_suite(pytester.path / "evals", "enc", CASES, **RECORD)
    (folder / "cases.jsonl").write_bytes(_jsonl(CASES).encode("utf-16"))
    result = run_inline(pytester, "evals")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "cases.jsonl:1: not UTF-8: byte 0xff at byte offset 0" in _output(result)
    assert "the file is UTF-16" in _output(result)


@pytest.mark.parametrize(("line", "message"), [
    ("this is not json", "cases.jsonl:2: malformed JSON: Expecting value (column 1)"),
    ('["c2", "Rome"]', "cases.jsonl:2: each line must be a JSON object, not an array"),
    ('"c2"', "cases.jsonl:2: each line must be a JSON object, not a string"),
    ("1" * 5000, "cases.jsonl:2: malformed JSON: Exceeds the limit"),  # not a JSONDecodeError in Python
    ("[" * 100_000 + "]" * 100_000, "cases.jsonl:2: malformed JSON: arrays or objects nested too deeply"),
], ids=["not-json", "array", "string", "huge-integer", "deep-nesting"])
def test_a_line_that_is_not_a_json_object_names_its_line(pytester: pytest.Pytester, line: str, message: str) -> None:
    folder = write_suite(pytester.path / "evals", "bad", CASES, **RECORD)
    (folder / "cases.jsonl").write_text(_jsonl(CASES[:1]) + line + "\n" + _jsonl(CASES[1:]), encoding="utf-8")
    result = run_inline(pytester, "evals")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert message in _output(result)
    assert "Traceback" not in _output(result)


def test_bom_crlf_and_blank_lines_are_accepted(pytester: pytest.Pytester) -> None:
    folder = write_suite(pytester.path / "evals", "geo", CASES, **RECORD)
    lines = [json.dumps(c) for c in CASES]
    data = "\ufeff" + lines[0] + "\r\n\r\n   \r\n" + lines[1] + "\r\n\n" + lines[2]  # no newline at the end
    (folder / "cases.jsonl").write_bytes(data.encode("utf-8"))
    result = run_inline(pytester, "evals")
    assert result.ret == 0, _output(result)
    report = load_report(pytester)
    _ran_once(report, ["c1", "c2", "c3"])
    # line numbers count every line, blank ones too: they point at the line in an editor
    assert {c["id"]: c["line"] for c in report["cases"]} == {"c1": 1, "c2": 4, "c3": 6}
    assert report["suites"][0]["metrics"]["accuracy"] == pytest.approx(2 / 3)  # the BOM is not part of c1


def test_a_lone_surrogate_in_an_input_runs_and_reports(pytester: pytest.Pytester) -> None:
    folder = write_suite(pytester.path / "evals", "sur", CASES, **RECORD)
    # the escape is valid JSON, but the string it makes is no valid Unicode text
    lone = '{"id": "s1", "input": "ANSWER: Paris \\ud83d", "target": "Paris \\ud83d"}\n'
    (folder / "cases.jsonl").write_text(_jsonl(CASES) + lone, encoding="utf-8")
    first = run_inline(pytester, "evals")
    assert first.ret == 0, _output(first)
    _ran_once(load_report(pytester), ["c1", "c2", "c3", "s1"])
    # the response cache keys it like any text: the second run answers everything from the cache
    second = run_inline(pytester, "evals")
    assert second.ret == 0, _output(second)
    report = load_report(pytester)
    _ran_once(report, ["c1", "c2", "c3", "s1"])
    assert all(c["cached"] for c in report["cases"])


def test_a_lone_surrogate_in_an_id_is_an_error(pytester: pytest.Pytester) -> None:
    folder = write_suite(pytester.path / "evals", "sur", CASES, **RECORD)
    (folder / "cases.jsonl").write_text(_jsonl(CASES) + '{"id": "x\\udc00", "input": "q", "target": "a"}\n',
                                        encoding="utf-8")
    result = run_inline(pytester, "evals")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "cases.jsonl:4: id 'x\\udc00' holds a lone UTF-16 surrogate" in _output(result)


# -- 2. folders where files should be -------------------------------------------------------------------


@pytest.mark.parametrize("beside", [True, False], ids=["data-beside", "folder-alone"])
def test_a_folder_named_suite_yaml_is_an_error(pytester: pytest.Pytester, beside: bool) -> None:
    folder = pytester.path / "evals" / "geo"
    (folder / "suite.yaml").mkdir(parents=True)  # what a bind mount of a missing file leaves
    if beside:
        (folder / "cases.jsonl").write_text(_jsonl(CASES), encoding="utf-8")
    write_suite(pytester.path / "evals", "other", CASES, **RECORD)  # a healthy suite must not hide it
    result = run_inline(pytester, "evals")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert f"{folder / 'suite.yaml'}: a folder where a suite file should be" in _output(result)


def test_a_dataset_that_is_a_folder_is_an_error(pytester: pytest.Pytester) -> None:
    folder = pytester.path / "evals" / "geo"
    _suite_yaml(folder, "cases.jsonl")
    (folder / "cases.jsonl").mkdir()
    result = run_inline(pytester, "evals")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "suite.yaml:2: dataset 'cases.jsonl' is a directory, not a JSONL file" in _output(result)


# -- 3. where the data lies -----------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["0", "2"], ids=["n0", "n2"])
def test_a_dataset_in_a_subfolder_is_collected(pytester: pytest.Pytester, workers: str) -> None:
    folder = pytester.path / "evals" / "geo"
    _suite_yaml(folder, "data/set/cases.jsonl")
    (folder / "data" / "set").mkdir(parents=True)
    (folder / "data" / "set" / "cases.jsonl").write_text(_jsonl(CASES), encoding="utf-8")
    result = run_inline(pytester, "evals", "-n", workers, "-v")
    assert result.ret == 0, _output(result)
    assert "evals/geo/data/set/cases.jsonl::c1" in result.stdout.str()  # the item under its own file
    report = load_report(pytester)
    _ran_once(report, ["c1", "c2", "c3"])
    assert report["suites"][0]["gates"][0]["status"] == "passed"
    assert [p.name for p in (pytester.path / "out" / "details").iterdir()] == ["geo.jsonl"]  # one source file


def test_the_subfolder_alone_collects_its_cases(pytester: pytest.Pytester) -> None:
    folder = pytester.path / "evals" / "geo"
    _suite_yaml(folder, "data/cases.jsonl")
    (folder / "data").mkdir()
    (folder / "data" / "cases.jsonl").write_text(_jsonl(CASES), encoding="utf-8")
    result = run_inline(pytester, "evals/geo/data")
    assert result.ret == 0, _output(result)
    result.assert_outcomes(passed=3)


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_a_dataset_outside_the_suite_folder_is_an_error(pytester: pytest.Pytester, where: str) -> None:
    (pytester.path / "evals" / "shared.jsonl").parent.mkdir(parents=True)
    (pytester.path / "evals" / "shared.jsonl").write_text(_jsonl(CASES), encoding="utf-8")
    entry = "../shared.jsonl" if where == "parent" else str(pytester.path / "evals" / "shared.jsonl")
    _suite_yaml(pytester.path / "evals" / "geo", entry)
    result = run_inline(pytester, "evals")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert f"suite.yaml:2: dataset {entry!r} lies outside the suite folder" in _output(result)


@pytest.mark.parametrize("content", ["", "\n  \r\n\n"], ids=["empty", "blank-lines"])
def test_an_empty_dataset_is_an_error(pytester: pytest.Pytester, content: str) -> None:
    folder = write_suite(pytester.path / "evals", "geo", CASES, **RECORD)
    (folder / "cases.jsonl").write_text(content, encoding="utf-8")
    result = run_inline(pytester, "evals")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert f"{(folder / 'cases.jsonl').resolve()}: no cases" in _output(result)


def test_a_bad_dataset_fails_the_suite_file_too(pytester: pytest.Pytester) -> None:
    """Selecting the suite file alone (its gates) reads its data: an error there, not an INTERNALERROR."""
    folder = write_suite(pytester.path / "evals", "geo", CASES, **RECORD)
    (folder / "cases.jsonl").write_text(_jsonl(CASES) + "{oops\n", encoding="utf-8")
    result = run_inline(pytester, "evals/geo/suite.yaml")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "cases.jsonl:4: malformed JSON" in _output(result)
    assert "INTERNALERROR" not in _output(result)


def test_a_dataset_where_pytest_does_not_look_is_an_error(pytester: pytest.Pytester) -> None:
    folder = pytester.path / "evals" / "geo"
    _suite_yaml(folder, "build/cases.jsonl")
    (folder / "build").mkdir(parents=True)
    (folder / "build" / "cases.jsonl").write_text(_jsonl(CASES), encoding="utf-8")
    result = run_inline(pytester, "evals")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "lies in folder 'build', which pytest does not collect (norecursedirs 'build')" in _output(result)


# -- 4. several source files ----------------------------------------------------------------------------

PARTS = {  # file -> cases; answers right: a 2/2, b 1/2, c 0/1
    "b.jsonl": answer_cases([("b1", "x", "x"), ("b2", "x", "y")]),
    "a.jsonl": answer_cases([("a1", "x", "x"), ("a2", "x", "x")]),
    "c.jsonl": answer_cases([("c1", "x", "y")]),
}


def _parts(folder: Path, parts: dict[str, list[dict[str, Any]]] = PARTS) -> None:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for name, cases in parts.items():
        (folder / "data" / name).write_text(_jsonl(cases), encoding="utf-8")


@pytest.mark.parametrize("workers", ["0", "2"], ids=["n0", "n2"])
def test_a_dataset_glob_collects_each_file_sorted(pytester: pytest.Pytester, workers: str) -> None:
    folder = pytester.path / "evals" / "geo"
    _suite_yaml(folder, "data/*.jsonl")
    _parts(folder)
    (folder / "data" / "notes.txt").write_text("not data", encoding="utf-8")
    result = run_inline(pytester, "evals", "-n", workers)
    assert result.ret == 0, _output(result)
    result.assert_outcomes(passed=6)  # 5 cases and the gate
    report = load_report(pytester)
    _ran_once(report, ["a1", "a2", "b1", "b2", "c1"])
    assert [d["path"].rsplit("/", 1)[1] for d in report["run"]["datasets"]] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    rows = report["suites"][0]["tables"]["by_dataset"]
    assert [(r["dataset"], r["cases"], r["metric"], r["value"]) for r in rows] == [
        ("evals/geo/data/a.jsonl", 2, "accuracy", 1.0), ("evals/geo/data/b.jsonl", 2, "accuracy", 0.5),
        ("evals/geo/data/c.jsonl", 1, "accuracy", 0.0)]
    assert all(r["lower"] <= r["value"] <= r["upper"] for r in rows)
    details = pytester.path / "out" / "details"
    by_file = {p.name: [json.loads(line)["id"] for line in p.read_text().splitlines()] for p in details.iterdir()}
    assert by_file == {"geo__a.jsonl": ["a1", "a2"], "geo__b.jsonl": ["b1", "b2"], "geo__c.jsonl": ["c1"]}


def test_a_list_with_a_glob_names_each_file_once(pytester: pytest.Pytester) -> None:
    folder = pytester.path / "evals" / "geo"
    _suite_yaml(folder, ["data/c.jsonl", "data/*.jsonl"])
    _parts(folder)
    suite = load_suite(folder / "suite.yaml")
    assert [d.name for d in suite.datasets] == ["c.jsonl", "a.jsonl", "b.jsonl"]
    result = run_inline(pytester, "evals")
    assert result.ret == 0, _output(result)
    _ran_once(load_report(pytester), ["a1", "a2", "b1", "b2", "c1"])


def test_same_named_files_in_two_folders_get_two_details_files(pytester: pytest.Pytester) -> None:
    folder = pytester.path / "evals" / "geo"
    _suite_yaml(folder, "*/cases.jsonl")
    for part, cases in (("x", CASES[:2]), ("y", CASES[2:])):
        (folder / part).mkdir(parents=True)
        (folder / part / "cases.jsonl").write_text(_jsonl(cases), encoding="utf-8")
    assert run_inline(pytester, "evals").ret == 0
    details = pytester.path / "out" / "details"
    assert sorted(p.name for p in details.iterdir()) == ["geo__x_cases.jsonl", "geo__y_cases.jsonl"]


def test_a_glob_that_matches_nothing_is_an_error(pytester: pytest.Pytester) -> None:
    folder = pytester.path / "evals" / "geo"
    _suite_yaml(folder, "data/*.jsonl")
    (folder / "data").mkdir()
    result = run_inline(pytester, "evals")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "suite.yaml:2: dataset glob 'data/*.jsonl' matches no file" in _output(result)


def test_a_file_added_to_a_glob_is_collected_in_the_next_run(pytester: pytest.Pytester) -> None:
    """Suites are cached per process: a glob's new match must not go unseen (pytester runs in-process)."""
    folder = pytester.path / "evals" / "geo"
    _suite_yaml(folder, "data/*.jsonl")
    _parts(folder, {"a.jsonl": PARTS["a.jsonl"]})
    assert run_inline(pytester, "evals").ret == 0
    _parts(folder, {"b.jsonl": PARTS["b.jsonl"]})
    assert run_inline(pytester, "evals").ret == 0
    _ran_once(load_report(pytester), ["a1", "a2", "b1", "b2"])


# -- 5. the response cache ------------------------------------------------------------------------------


def test_a_corrupt_cache_is_moved_aside_and_the_run_goes_on(pytester: pytest.Pytester) -> None:
    write_suite(pytester.path / "evals", "geo", CASES, **RECORD)
    garbage = os.urandom(4096)
    (pytester.path / "cache.sqlite").write_bytes(garbage)
    (pytester.path / "cache.sqlite-wal").write_bytes(b"stale log")
    result = run_inline(pytester, "evals")
    assert result.ret == 0, _output(result)
    result.assert_outcomes(passed=4)
    # said once (other warnings, such as pytest's on already-imported plugins, depend on the environment)
    assert _output(result).count("the response cache cache.sqlite is corrupt (file is not a database): moved to "
                                 "cache.sqlite.corrupt-") == 1
    [moved] = pytester.path.glob("cache.sqlite.corrupt-*[0-9]")
    assert moved.read_bytes() == garbage  # kept for whoever wants to look at it
    assert Path(f"{moved}-wal").read_bytes() == b"stale log"  # its log went with it
    _ran_once(load_report(pytester), ["c1", "c2", "c3"])
    again = run_inline(pytester, "evals")  # the fresh cache holds this run's replies
    again.assert_outcomes(passed=4)
    assert all(c["cached"] for c in load_report(pytester)["cases"])


def test_a_folder_at_the_cache_path_is_a_usage_error(pytester: pytest.Pytester) -> None:
    write_suite(pytester.path / "evals", "geo", CASES, **RECORD)
    (pytester.path / "cache.sqlite").mkdir()
    result = run_inline(pytester, "evals")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "the response cache path cache.sqlite is a folder" in _output(result)
    assert "INTERNALERROR" not in _output(result)
    assert list((pytester.path / "cache.sqlite").iterdir()) == []  # left as it was


def test_the_cache_is_private(pytester: pytest.Pytester) -> None:
    write_suite(pytester.path / "evals", "geo", CASES, **RECORD)
    old = os.umask(0o022)  # the usual umask, which would make both world-readable
    try:
        assert run_inline(pytester, "evals", "--llm-cache-path", "private/nested/cache.sqlite").ret == 0
    finally:
        os.umask(old)
    for folder in ("private", "private/nested"):
        assert stat.S_IMODE((pytester.path / folder).stat().st_mode) == 0o700, folder
    assert stat.S_IMODE((pytester.path / "private/nested/cache.sqlite").stat().st_mode) == 0o600


def test_cache_side_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        cache = ResponseCache(tmp_path / "c" / "cache.sqlite", "read-write")
        cache.put_many([("k", "m", {"text": "hi", "error": None})])
        sides = [p for p in (tmp_path / "c").iterdir() if p.name != "cache.sqlite"]
        assert {p.name for p in sides} >= {"cache.sqlite-wal", "cache.sqlite-shm"}  # open: WAL and its index
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in sides)
        cache.close()
    finally:
        os.umask(old)


def test_corruption_found_during_the_run_moves_the_cache_aside(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    cache = ResponseCache(path, "read-write")
    cache.put_many([(f"k{i}", "m", {"text": "x" * 2000, "error": None}) for i in range(50)])
    cache.close()
    # a valid header and schema, garbage in the table's pages: found only when they are read
    with path.open("r+b") as handle:
        handle.seek(4096 * 2)
        handle.write(os.urandom(4096 * 4))
    warned: list[str] = []
    cache = ResponseCache(path, "read-write", warn=warned.append)
    assert cache.get_many([f"k{i}" for i in range(50)]) == {}  # a fresh cache holds nothing
    assert len(warned) == 1 and "is corrupt (" in warned[0]
    assert len(cache.moved_to) == 1 and cache.moved_to[0].exists()
    cache.put_many([("k", "m", {"text": "hi", "error": None})])
    assert cache.get_many(["k"]) == {"k": {"text": "hi", "error": None}}
    cache.close()


def test_a_cache_path_under_a_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheError, match="cannot create the response cache"):
        ResponseCache(tmp_path / "file" / "cache.sqlite", "read-write")
    assert issubclass(CacheError, pytest.UsageError)  # pytest ends such a run with exit code 4


# -- the reader itself ----------------------------------------------------------------------------------


def test_errors_carry_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    _suite_yaml(folder, "cases.jsonl")
    head = b'{"id": 1, "input": "q", "target": "a"}\n\n'
    (folder / "cases.jsonl").write_bytes(head + b"\x80\n")
    suite = load_suite(folder / "suite.yaml")
    with pytest.raises(SuiteError) as info:
        load_cases(suite, suite.datasets[0])
    assert (info.value.path, info.value.line) == (str(suite.datasets[0]), 3)
    assert f"byte 0x80 at byte offset {len(head)} of the file (byte 1 of the line)" in info.value.message
