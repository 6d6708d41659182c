"""Fuzzing the JSONL reader: whatever a dataset holds, load_cases returns its cases or raises the
harness's SuiteError naming the file and a line that exists; nothing else escapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.suite import Case, Suite, SuiteError, load_cases, load_suite

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# any text, lone surrogates often: json.dumps writes them as the \udXXX escapes a file may hold
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
TEXT = st.text(alphabet=st.characters(exclude_categories=()) | SURROGATES, max_size=12)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=10)
CASE = st.fixed_dictionaries(
    {"id": st.one_of(st.text(max_size=4), st.integers(0, 20), st.booleans(), st.none(), TEXT),
     "input": st.one_of(TEXT, st.just([{"role": "user", "content": "hi"}]), JSON),
     "target": JSON},
    optional={"metadata": JSON})


def _dumps(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


LINE = st.one_of(
    st.builds(_dumps, CASE, st.booleans()),  # mostly valid cases
    st.builds(_dumps, JSON, st.booleans()),  # JSON that is not a case, or not an object
    st.text(max_size=30),  # not JSON at all
    st.sampled_from(["", "   ", "\t"]),  # blank
)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Suite:
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "suite.yaml").write_text("name: fuzz\ndataset: cases.jsonl\n", encoding="utf-8")
    (folder / "cases.jsonl").write_text('{"id": 1, "input": "q", "target": "a"}\n', encoding="utf-8")
    return load_suite(folder / "suite.yaml")


def _read(suite: Suite, data: bytes) -> list[Case] | SuiteError:
    dataset = suite.datasets[0]
    dataset.write_bytes(data)
    try:
        return load_cases(suite, dataset)
    except SuiteError as exc:  # anything else fails the test
        return exc


def _assert_names_a_line(error: SuiteError, dataset: Path, data: bytes) -> None:
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    assert error.path == str(dataset)
    if error.line is None:  # only a file without cases has no line to name
        assert "no cases" in error.message
        assert not data.strip(b" \t\r\n\xef\xbb\xbf")
    else:
        assert 1 <= error.line <= lines
        assert str(error).startswith(f"{dataset}:{error.line}: ")
    assert error.message


def _assert_cases_match_lines(cases: list[Case], data: bytes) -> None:
    raw = data.split(b"\n")
    assert len({case.id for case in cases}) == len(cases)
    assert len(cases) == sum(1 for line in raw if line.decode("utf-8").lstrip("\ufeff").strip(" \t\r"))
    for case in cases:
        line = raw[case.line - 1].decode("utf-8").lstrip("\ufeff")
        assert json.dumps(case.record) == json.dumps(json.loads(line))


@FUZZ
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_are_cases_or_a_suite_error(suite: Suite, data: bytes) -> None:
    result = _read(suite, data)
    if isinstance(result, SuiteError):
        _assert_names_a_line(result, suite.datasets[0], data)
    else:
        _assert_cases_match_lines(result, data)


@FUZZ
@given(lines=st.lists(LINE, max_size=8), newline=st.sampled_from(["\n", "\r\n"]), bom=st.booleans(),
       last_newline=st.booleans())
def test_arbitrary_json_lines_are_cases_or_a_suite_error(suite: Suite, lines: list[str], newline: str, bom: bool,
                                                         last_newline: bool) -> None:
    text = ("\ufeff" if bom else "") + newline.join(lines) + (newline if last_newline else "")
    # a line written with ensure_ascii=False keeps a lone surrogate raw: its bytes are no UTF-8 (CESU-8)
    data = text.encode("utf-8", "surrogatepass")
    result = _read(suite, data)
    if isinstance(result, SuiteError):
        _assert_names_a_line(result, suite.datasets[0], data)
    else:
        _assert_cases_match_lines(result, data)


@FUZZ
@given(cases=st.lists(st.fixed_dictionaries({"input": TEXT, "target": JSON}), min_size=1, max_size=6),
       newline=st.sampled_from(["\n", "\r\n"]), bom=st.booleans())
def test_valid_cases_all_load_in_order(suite: Suite, cases: list[dict[str, Any]], newline: str, bom: bool) -> None:
    """Cases that are valid load every one, lone surrogate escapes in their input included."""
    numbered = [{"id": f"case-{i}", **case} for i, case in enumerate(cases)]
    text = ("\ufeff" if bom else "") + newline.join(json.dumps(c) for c in numbered) + newline
    result = _read(suite, text.encode("utf-8"))
    assert not isinstance(result, SuiteError), result
    # json.loads joins an escaped surrogate pair into one character, as JSON means it
    expected = [(c["id"], json.loads(json.dumps(c["input"])), i + 1) for i, c in enumerate(numbered)]
    assert [(c.id, c.input, c.line) for c in result] == expected
