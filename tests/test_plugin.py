"""Plugin behaviour end to end: pytest runs in this process (with -n 2 its workers are real processes)
on the scripted engine, or, where HTTP matters (keys, concurrency, waiting for a server), against a
real stub server process."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import answer_cases, load_report, run_inline, scripted_models, stub_reset, stub_stats, write_suite

CASES = answer_cases([("c1", "Paris", "Paris"), ("c2", "Rome", "Rome"), ("c3", "Oslo", "Bern")])


@pytest.fixture(params=["0", "2"], ids=["n0", "n2"])
def workers(request: pytest.FixtureRequest) -> str:
    return request.param


def run(pytester: pytest.Pytester, url: str, *args: str, workers: str = "0", model: str = "stub",
        http: bool = False) -> pytest.RunResult:
    # each test gets its own response cache, so runs of one test never see another's replies
    if not http:
        return run_inline(pytester, "-n", workers, *args)
    return pytester.runpytest_inprocess(
        "-n", workers, "--llm-base-url", url, "--llm-model", model, "--llm-report-dir", "out",
        "--llm-cache-path", "cache.sqlite", *args,
    )


def test_cases_are_items_and_a_wrong_answer_fails_with_details(pytester, stub_url, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=["accuracy >= 0.5"])
    result = run(pytester, stub_url, "evals", "-rA", workers=workers)
    result.assert_outcomes(passed=3, failed=1)  # 2 cases + 1 gate pass, 1 case fails
    assert result.ret == 1
    out = result.stdout.str()
    assert "evals/geo/cases.jsonl::c3" in out
    for shown in ("reason:    'Oslo' != 'Bern'", "target:    Bern", "extracted: Oslo", "ANSWER: Oslo"):
        assert shown in out
    assert "gate[accuracy >= 0.5]" in out


def test_record_only_gates_judge_and_exit_code(pytester, stub_url, workers):
    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record", "gates": ["accuracy >= 0.6"]})
    passing = run(pytester, stub_url, "evals", workers=workers)
    passing.assert_outcomes(passed=4)
    assert passing.ret == 0
    suite = load_report(pytester)["suites"][0]
    assert suite["metrics"]["accuracy"] == pytest.approx(2 / 3)
    assert suite["gates"][0] == {"expr": "accuracy >= 0.6", "metric": "accuracy", "op": ">=", "threshold": 0.6,
                                 "value": pytest.approx(2 / 3), "status": "passed", "passed": True,
                                 "reason": "accuracy = 0.6667 >= 0.6"}

    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record", "gates": ["accuracy >= 0.9"]})
    failing = run(pytester, stub_url, "evals", "--junitxml", "junit.xml", workers=workers)
    failing.assert_outcomes(passed=3, failed=1)
    assert failing.ret == 1
    failing.stdout.fnmatch_lines(["*FAILED evals/geo/suite.yaml::gate[[]accuracy >= 0.9[]]*"])
    cases = ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")
    gate = [c for c in cases if "gate[accuracy >= 0.9]" in c.get("name", "")]
    assert len(gate) == 1
    failure = gate[0].find("failure")
    assert failure is not None and "accuracy = 0.6667, needs >= 0.9" in failure.get("message", "")


def test_a_subset_of_cases_without_gates_runs_and_reports_them_not_judged(pytester, stub_url, workers):
    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record", "gates": ["accuracy >= 0.9"]})
    result = run(pytester, stub_url, "evals", "-k", "c1 or c2", workers=workers)
    result.assert_outcomes(passed=2)  # the gate item does not match -k: deselected, not judged on a subset
    assert result.ret == 0
    suite = load_report(pytester)["suites"][0]
    assert suite["subset"] is True and suite["cases"] == 2 and suite["total_cases"] == 3
    assert suite["gates"][0]["status"] == "skipped" and "not selected" in suite["gates"][0]["reason"]


def test_last_failed_reruns_only_failed_cases(pytester, stub_url):
    write_suite(pytester.path / "evals", "geo", CASES)
    assert run(pytester, stub_url, "evals").ret == 1
    rerun = run(pytester, stub_url, "evals", "--lf")
    rerun.assert_outcomes(failed=1)
    assert "c3" in rerun.stdout.str()


def test_model_errors_are_recorded_not_fatal(pytester, stub_url, workers):
    cases = answer_cases([("ok", "a", "a")]) + [
        {"id": "boom", "input": "FAIL:400", "target": "a"},
        {"id": "empty", "input": "EMPTY", "target": "a"},
    ]
    write_suite(pytester.path / "evals", "err", cases, **{"pass": "record", "gates": ["error_rate == 0"]})
    result = run(pytester, stub_url, "evals", workers=workers)
    result.assert_outcomes(passed=3, failed=1)  # the gate fails, the run completes
    report = load_report(pytester)
    by_id = {c["id"]: c for c in report["cases"]}
    assert by_id["boom"]["error"].startswith("HTTP 400")
    assert by_id["empty"]["error"] == "empty reply"
    assert by_id["ok"]["error"] is None and by_id["ok"]["score"] == 1.0
    assert report["suites"][0]["metrics"]["error_rate"] == pytest.approx(2 / 3)


def test_garbage_output_scores_zero_with_reason(pytester, stub_url):
    cases = answer_cases([("j1", '{"a": 1}', {"a": 1}), ("j2", "not json at all", {"a": 1})])
    write_suite(pytester.path / "evals", "js", cases, extract=["json"],
                scorer={"name": "json_valid", "required_keys": ["a"]}, **{"pass": "record"})
    assert run(pytester, stub_url, "evals").ret == 0
    report = load_report(pytester)
    by_id = {c["id"]: c for c in report["cases"]}
    assert by_id["j2"]["score"] == 0.0 and "no balanced JSON object" in by_id["j2"]["reason"]
    assert report["suites"][0]["metrics"]["json_ok"] == 0.5


BAD_INPUTS = {
    "malformed-line": ('{"id": "a", "input": "x", "target": "y"}\n{"id": "b", "input": \n', {},
                       "cases.jsonl:2: malformed JSON"),
    "duplicate-id": ('{"id": "a", "input": "x", "target": "y"}\n{"id": "a", "input": "x", "target": "y"}\n', {},
                     "cases.jsonl:2: duplicate id 'a' (first on line 1)"),
    "missing-id": ('{"input": "x", "target": "y"}\n', {}, "cases.jsonl:1: missing id field 'id'"),
    "unknown-scorer": ('{"id": "a", "input": "x", "target": "y"}\n', {"scorer": "no_such_scorer"},
                       "unknown scorer 'no_such_scorer'"),
    "bad-gate": ('{"id": "a", "input": "x", "target": "y"}\n', {"gates": ["f1 >>= 2"]}, "suite.yaml:"),
}


def write_bad_suite(root: Path, name: str, jsonl: str, suite: dict[str, Any]) -> Path:
    folder = write_suite(root, name, [], **suite)
    (folder / "cases.jsonl").write_text(jsonl)
    return folder


@pytest.mark.parametrize(("jsonl", "suite", "expected"), list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_is_a_collection_error_naming_file_and_line(pytester, stub_url, jsonl, suite, expected):
    write_bad_suite(pytester.path / "evals", "bad", jsonl, suite)
    result = run(pytester, stub_url, "evals")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert expected in result.stdout.str()
    if suite.get("gates"):
        assert "bad gate 'f1 >>= 2'" in result.stdout.str()


def test_bad_inputs_under_xdist_are_each_a_collection_error_naming_file_and_line(pytester, stub_url):
    # every bad input above in one run: xdist reports collection errors as failures
    for name, (jsonl, suite, _) in BAD_INPUTS.items():
        write_bad_suite(pytester.path / "evals", name, jsonl, suite)
    result = run(pytester, stub_url, "evals", workers="2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    text = result.stdout.str()
    for name, (_, _, expected) in BAD_INPUTS.items():
        # the file's own folder named: each message is the one its suite caused
        named = f"{name}/{expected}" if expected.startswith(("cases.jsonl", "suite.yaml")) else expected
        assert named in text, name
    assert "bad gate 'f1 >>= 2'" in text


def test_unreadable_suite_yaml_names_the_line(pytester, stub_url):
    folder = write_suite(pytester.path / "evals", "bad", CASES)
    (folder / "suite.yaml").write_text("name: bad\ndataset: cases.jsonl\nscorer: [unclosed\n")
    result = run(pytester, stub_url, "evals")
    assert result.ret == 2
    result.stdout.fnmatch_lines(["*suite.yaml:*invalid YAML*"])


def test_reports_are_written(pytester, stub_url, workers):
    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record", "gates": ["accuracy >= 0.5"]})
    assert run(pytester, stub_url, "evals", workers=workers).ret == 0
    out = pytester.path / "out"
    report = load_report(pytester)
    assert report["schema"] == "pytest-llm-harness/report" and report["version"] == 1
    run_meta = report["run"]
    assert run_meta["models"][0]["name"] == "stub"
    assert run_meta["datasets"][0]["rows"] == 3 and len(run_meta["datasets"][0]["md5"]) == 32
    assert run_meta["suites_config"][0]["scorer"]["name"] == "exact_match"
    assert run_meta["xdist_workers"] == int(workers)
    case = next(c for c in report["cases"] if c["id"] == "c3")
    for key in ("suite", "id", "model", "prompt", "output", "extracted", "target", "score", "passed", "error",
                "latency_ms", "output_tokens"):
        assert key in case
    assert case["output"] == "Oslo" and case["score"] == 0.0 and case["output_tokens"] == 1
    details = [json.loads(line) for line in (out / "details" / "geo.jsonl").read_text().splitlines()]
    assert [d["id"] for d in details] == ["c1", "c2", "c3"]
    assert list(details[0])[:10] == ["id", "model", "prompt", "output", "output_len", "ground_truth", "score",
                                     "extracted_output", "latency_ms", "error"]
    markdown = (out / "report.md").read_text()
    assert "accuracy >= 0.5" in markdown and "c3" in markdown
    import openpyxl

    sheets = openpyxl.load_workbook(out / "report.xlsx").sheetnames
    assert {"summary", "gates", "geo", "bad_cases"} <= set(sheets)


def test_default_report_dir_and_latest(pytester, stub_url):
    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record"})
    scripted_models(pytester)
    result = pytester.runpytest_inprocess("--llm-models-file", "models.yaml", "evals", "--llm-cache", "off")
    assert result.ret == 0
    latest = pytester.path / "reports" / "latest"
    assert latest.is_symlink()
    assert (latest / "report.json").is_file()
    assert latest.resolve().name == json.loads((latest / "report.json").read_text())["run"]["id"]


def test_several_models_parametrize_cases_and_suites(pytester, stub_url, workers):
    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record", "gates": ["accuracy >= 0.5"]})
    result = run_inline(pytester, "-n", workers, "--llm-cache", "off", "evals", "-v", models="models2.yaml")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["*PASSED*", "*cases.jsonl::c1[[]stub-b[]]*"], consecutive=False)
    result.stdout.fnmatch_lines(["*gate[[]accuracy >= 0.5[]][[]stub[]]*"])
    report = load_report(pytester)
    assert sorted((s["name"], s["model"]) for s in report["suites"]) == [("geo", "stub"), ("geo", "stub-b")]


def test_custom_scorer_from_conftest(pytester, stub_url, workers):
    write_suite(pytester.path / "evals", "geo", CASES, scorer="first_letter", **{"pass": "score >= 1"})
    (pytester.path / "evals" / "conftest.py").write_text(
        "import harness\n\n"
        "@harness.scorer('first_letter')\n"
        "def first_letter(prediction, target, case):\n"
        "    return prediction[:1] == target[:1]\n")
    result = run(pytester, stub_url, "evals", workers=workers)
    result.assert_outcomes(passed=2, failed=1)
    assert load_report(pytester)["suites"][0]["metrics"]["first_letter"] == pytest.approx(2 / 3)


def test_llm_client_fixture_sync_and_async(pytester, stub_url, workers):
    pytester.makepyfile(test_hand="""
        import pytest

        def test_sync(llm_client, llm_model):
            assert llm_model == "stub"
            assert llm_client.chat("ANSWER: hello") == "hello"
            assert llm_client.complete("ANSWER: done") == "done"

        async def test_async(llm_client):
            assert await llm_client.achat([{"role": "user", "content": "ANSWER: hi"}]) == "hi"

        def test_error(llm_client):
            from harness import LLMError
            with pytest.raises(LLMError, match="HTTP 404"):
                llm_client.chat("FAIL:404")
    """)
    result = run(pytester, stub_url, "-p", "asyncio", "--asyncio-mode=auto", workers=workers)
    result.assert_outcomes(passed=3)


def test_api_key_comes_from_env_and_stays_out_of_reports(pytester, stub_url, monkeypatch):
    import hashlib

    secret = "sk-test-" + "7" * 24
    monkeypatch.setenv("LLM_TEST_KEY", secret)
    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record"})
    assert run(pytester, stub_url, "evals", "--llm-api-key-env", "LLM_TEST_KEY", http=True).ret == 0
    assert hashlib.sha256(f"Bearer {secret}".encode()).hexdigest() in stub_stats(stub_url)["auth_sha256"]
    for path in (pytester.path / "out").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_concurrency_bound_holds_under_xdist(pytester, stub_url):
    cases = [{"id": f"s{i}", "input": f"SLEEP:40 ANSWER: x{i}", "target": f"x{i}"} for i in range(40)]
    write_suite(pytester.path / "evals", "slow", cases, **{"pass": "record"})
    stub_reset(stub_url)  # the maximum in flight of this run alone: earlier tests of this worker used the stub
    assert run(pytester, stub_url, "evals", "--llm-concurrency", "4", workers="2", http=True).ret == 0
    stats = stub_stats(stub_url)
    assert stats["requests"] == 40  # one request per case, none sent twice
    assert 2 <= stats["max_in_flight"] <= 4


def test_help_does_not_import_heavy_modules(pytester):
    result = pytester.runpython_c(
        "import sys, pytest\n"
        "pytest.main(['--help'])\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'openpyxl', 'aiohttp') if m in sys.modules))")
    result.stdout.fnmatch_lines(["*--llm-model*", "HEAVY []"])


def test_a_run_of_hand_written_tests_alone_imports_no_heavy_module(pytester):
    # the plugin is loaded in every pytest run of an environment that has it installed
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = pytester.runpython_c(
        "import sys, pytest\n"
        "assert pytest.main(['-q', '-p', 'no:cacheprovider', 'test_plain.py']) == 0\n"
        "print('LOADED', 'harness.session' in sys.modules)\n"
        "print('HEAVY', sorted(m for m in ('numpy', 'torch', 'transformers', 'openpyxl', 'aiohttp', 'jinja2', "
        "'matplotlib') if m in sys.modules))")
    result.stdout.fnmatch_lines(["*1 passed*", "LOADED True", "HEAVY []"])  # the run's session ended, cheaply


def test_existing_records_run_through_a_field_mapping(pytester, stub_url):
    # the seeds' records: a history list, the current query and a label, under Chinese keys
    records = [
        {"url": "u1", "历史对话": ["用户: 你好", "客服: 您好"], "当前query": "ANSWER: 退款", "label": "退款"},
        {"url": "u2", "历史对话": ["用户: 在吗"], "当前query": "ANSWER: 投诉", "label": "咨询"},
    ]
    write_suite(pytester.path / "evals", "seed", records,
                fields={"id": "@line", "input": "当前query", "target": "label"},
                prompt={"system": "You are a helpful assistant.",
                        "template": "{{ record['历史对话'] | join('\\n') }}\n当前: {{ input }}"},
                **{"pass": "record", "gates": ["accuracy >= 0.5"]})
    result = run(pytester, stub_url, "evals", "-v")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*cases.jsonl::1 PASSED*", "*cases.jsonl::2 PASSED*"])
    cases = load_report(pytester)["cases"]
    assert cases[0]["prompt"] == [{"role": "system", "content": "You are a helpful assistant."},
                                  {"role": "user", "content": "用户: 你好\n客服: 您好\n当前: ANSWER: 退款"}]
    assert [(c["target"], c["score"]) for c in cases] == [("退款", 1.0), ("咨询", 0.0)]


def test_suite_markers_are_registered_and_select(pytester, stub_url):
    write_suite(pytester.path / "evals", "geo", CASES, markers=["smoke"], **{"pass": "record"})
    write_suite(pytester.path / "evals", "other", CASES, **{"pass": "record"})
    result = run(pytester, stub_url, "evals", "-m", "smoke and llm_eval", "--strict-markers",
                 "-W", "error::pytest.PytestUnknownMarkWarning")
    result.assert_outcomes(passed=3)
    assert "evals/other" not in result.stdout.str()


def test_rejected_api_key_stops_the_run_with_one_message(pytester, monkeypatch):
    import subprocess
    import sys
    import time

    from harness.engines.managed import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "harness.testing.stub_server", "--port", str(port),
                               "--models", "stub", "--api-key", "right-key"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                stub_stats(url)
                break
            except OSError:
                time.sleep(0.1)
        monkeypatch.setenv("LLM_TEST_KEY", "wrong-key")
        cases = answer_cases([(f"k{i}", "a", "a") for i in range(50)])
        write_suite(pytester.path / "evals", "geo", cases, **{"pass": "record"})
        result = run(pytester, url, "evals", "--llm-api-key-env", "LLM_TEST_KEY", "--llm-concurrency", "4", http=True)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        out = result.stdout.str() + result.stderr.str()
        assert out.count("refused the request (HTTP 401: invalid api key)") == 1
        assert "check the API key variable" in out
        assert stub_stats(url)["requests"] <= 4 * 3  # the first in-flight requests and their retries, not 50
        monkeypatch.setenv("LLM_TEST_KEY", "right-key")
        assert run(pytester, url, "evals", "--llm-api-key-env", "LLM_TEST_KEY", http=True).ret == 0
    finally:
        server.terminate()
        server.wait(10)


def test_a_crashing_scorer_makes_its_case_an_error_with_the_reason(pytester, stub_url):
    write_suite(pytester.path / "evals", "geo", CASES, scorer="fragile", **{"pass": "score >= 1"})
    (pytester.path / "evals" / "conftest.py").write_text(
        "import harness\n\n"
        "@harness.scorer('fragile')\n"
        "def fragile(prediction, target, case):\n"
        "    if prediction == 'Oslo':\n"
        "        raise KeyError('no rule for Oslo')\n"
        "    return prediction == target\n")
    result = run(pytester, stub_url, "evals")
    result.assert_outcomes(passed=2, failed=1)
    case = next(c for c in load_report(pytester)["cases"] if c["id"] == "c3")
    assert case["score"] == 0.0 and case["reason"] == "scorer raised KeyError: 'no rule for Oslo'"
    assert case["error"] == case["reason"]  # not judged: counted in error_rate, not as a wrong answer


def test_waits_for_a_remote_server_to_list_the_model(pytester):
    import subprocess
    import sys
    import threading

    from harness.engines.managed import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record"})
    late: list[subprocess.Popen[bytes]] = []

    def start_late() -> None:  # the server comes up while the run is already waiting
        late.append(subprocess.Popen([sys.executable, "-m", "harness.testing.stub_server", "--port", str(port),
                                      "--models", "stub"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    timer = threading.Timer(1.0, start_late)  # the in-process run is waiting well before then
    timer.start()
    try:
        result = run(pytester, url, "evals", "--llm-wait-ready", "60", "--llm-wait-interval", "0.2", http=True)
        result.assert_outcomes(passed=3)
        metrics = load_report(pytester)["suites"][0]["metrics"]
        assert metrics["error_rate"] == 0 and metrics["accuracy"] == pytest.approx(2 / 3)
    finally:
        timer.join()
        for proc in late:
            proc.terminate()
            proc.wait(10)
    gone = run(pytester, f"http://127.0.0.1:{free_port()}/v1", "evals", "--llm-wait-ready", "1",
               "--llm-wait-interval", "0.2", "--llm-cache", "off", http=True)
    assert gone.ret == pytest.ExitCode.INTERNAL_ERROR
    assert "not ready after 1 s" in gone.stdout.str() + gone.stderr.str()


def test_a_report_folder_that_is_a_file_is_a_usage_error_before_the_run(pytester):
    write_suite(pytester.path / "evals", "geo", answer_cases([("c1", "Paris", "Paris")]))
    (pytester.path / "out").write_text("not a folder")
    result = run_inline(pytester, "evals")  # --llm-report-dir out
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*llm-harness: --llm-report-dir out: *out is a file, not a folder"])
    assert "passed" not in result.stdout.str()  # nothing ran


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_report_folder_that_cannot_be_made_at_the_end_costs_the_run_only_its_reports(pytester, workers):
    write_suite(pytester.path / "evals", "geo", answer_cases([("c1", "Paris", "Paris"), ("c2", "Rome", "Rome")]),
                gates=["accuracy == 1"])
    pytester.makeconftest("""
        def pytest_collection_finish(session):  # a file appears where the reports go, after the run began
            (session.config.rootpath / "out").write_text("in the way")
    """)
    result = run_inline(pytester, "evals", "-n", workers)
    result.assert_outcomes(passed=3)
    assert result.ret == 0  # the tests and gates decide, as when one format cannot be written
    result.stdout.fnmatch_lines(["*llm-harness summary*", "*geo*1/1 passed*",
                                 "llm-harness: no report written: *out: NotADirectoryError*"])
