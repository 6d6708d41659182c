"""User hooks (pytest_llm_*) and engines added from outside harness/: inline pytester runs on the
in-process scripted engine, with -n 2 where a hook must also work under xdist."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.conftest import answer_cases, load_report, run_inline, write_suite

CASES = answer_cases([("c1", "Paris", "Paris"), ("c2", "Rome", "Rome"), ("c3", "Oslo", "Bern")])


@pytest.fixture(params=["0", "2"], ids=["n0", "n2"])
def workers(request: pytest.FixtureRequest) -> str:
    return request.param


def test_build_request_hook_rewrites_what_is_sent_and_cached(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=["accuracy == 1"])
    pytester.makeconftest("""
        import dataclasses

        def pytest_llm_build_request(suite, case, model, request):
            if case.id == "c3":  # correct the answer the model will give
                return dataclasses.replace(request, prompt=[{"role": "user", "content": "ANSWER: Bern"}])
    """)
    result = run_inline(pytester, "evals", "-n", workers)
    result.assert_outcomes(passed=4)
    by_id = {c["id"]: c for c in load_report(pytester)["cases"]}
    assert by_id["c3"]["prompt"] == [{"role": "user", "content": "ANSWER: Bern"}] and by_id["c3"]["output"] == "Bern"
    # the cache key follows the rewritten request: without the hook, c3 is asked (and answered) again
    (pytester.path / "conftest.py").unlink()
    again = run_inline(pytester, "evals", "-n", workers)
    again.assert_outcomes(passed=2, failed=2)
    cases = load_report(pytester)["cases"]
    assert [c["cached"] for c in cases] == [True, True, False]


def test_a_build_request_hook_that_raises_is_its_cases_error(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record"})
    pytester.makeconftest("""
        def pytest_llm_build_request(suite, case, model, request):
            if case.id == "c2":
                raise ValueError("no template for " + case.id)
    """)
    run_inline(pytester, "evals", "-n", workers).assert_outcomes(passed=3)  # record-only: the cases pass
    by_id = {c["id"]: c for c in load_report(pytester)["cases"]}
    assert by_id["c2"]["error"] == "request not built: ValueError: no template for c2"
    assert by_id["c1"]["output"] == "Paris" and by_id["c3"]["output"] == "Oslo"


def test_case_result_hook_changes_a_score_before_the_pass_rule(pytester, workers):
    write_suite(pytester.path / "evals" / "sub", "geo", CASES, gates=["accuracy == 1"])
    (pytester.path / "evals" / "sub" / "conftest.py").write_text(textwrap.dedent("""
        def pytest_llm_case_result(result, suite, case):
            result.metadata = {**result.metadata, "seen_by_hook": True}
            if case.id == "c3":
                result.score, result.reason = 1.0, "accepted by a reviewer"
    """))
    result = run_inline(pytester, "evals", "-n", workers)
    result.assert_outcomes(passed=4)
    cases = load_report(pytester)["cases"]
    assert all(c["metadata"]["seen_by_hook"] for c in cases)
    assert cases[2]["passed"] is True and cases[2]["reason"] == "accepted by a reviewer"


def test_a_hook_that_raises_fails_its_case_with_the_exception_in_the_report(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=["error_rate == 0"])
    pytester.makeconftest("""
        def pytest_llm_case_result(result, suite, case):
            if case.id == "c2":
                raise RuntimeError("no reviewer for " + case.id)
    """)
    result = run_inline(pytester, "evals", "-n", workers)
    result.assert_outcomes(passed=1, failed=3)  # c2 (the hook), c3 (a wrong answer), the gate
    result.stdout.fnmatch_lines(["*raise RuntimeError*", "*FAILED evals/geo/cases.jsonl::c2 - RuntimeError: no reviewer*"])
    by_id = {c["id"]: c for c in load_report(pytester)["cases"]}
    assert sorted(by_id) == ["c1", "c2", "c3"]  # no case lost
    # the exception's own words and where it was raised, not only the traceback's last line
    assert by_id["c2"]["error"] == "RuntimeError: no reviewer for c2 (conftest.py:3)"
    assert by_id["c1"]["error"] is None and by_id["c3"]["error"] is None


def test_a_score_a_hook_sets_is_a_number_or_the_cases_error(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=["score >= 0.5", "error_rate <= 0.5"],
                **{"pass": "record"})
    pytester.makeconftest("""
        import numpy

        def pytest_llm_case_result(result, suite, case):
            if case.id == "c2":
                result.score = "high"
            if case.id == "c3":
                result.score = numpy.float32(0.5)  # a number of numpy's: kept, as a float
    """)
    result = run_inline(pytester, "evals", "-n", workers)
    result.assert_outcomes(passed=5)
    by_id = {c["id"]: c for c in load_report(pytester)["cases"]}
    assert by_id["c2"]["error"] == "pytest_llm_case_result set score to 'high' (str): a score is a number"
    assert by_id["c2"]["score"] == 0.0 and by_id["c3"]["score"] == 0.5 and by_id["c3"]["error"] is None
    metrics = load_report(pytester)["suites"][0]["metrics"]
    assert metrics["score"] == pytest.approx(0.5) and metrics["error_rate"] == pytest.approx(1 / 3)


def test_a_metric_a_hook_sets_that_is_no_number_fails_its_gate_saying_so(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=["label >= 1", "count >= 3", "accuracy >= 0.5"],
                **{"pass": "record"})
    pytester.makeconftest("""
        import numpy

        def pytest_llm_suite_metrics(suite, model, results, metrics):
            metrics["label"] = "good"
            metrics["count"] = numpy.int64(len(results))  # numpy's integers are numbers
    """)
    result = run_inline(pytester, "evals", "-n", workers)
    result.assert_outcomes(passed=5, failed=1)
    gates = {g["expr"]: g for g in load_report(pytester)["suites"][0]["gates"]}
    assert gates["label >= 1"]["status"] == "failed"
    assert gates["label >= 1"]["reason"] == "label is 'good' (str), not a number"
    assert gates["count >= 3"]["status"] == "passed" and gates["accuracy >= 0.5"]["status"] == "passed"


def test_numpy_values_from_a_scorer_or_a_hook_reach_the_report_as_numbers_with_and_without_xdist(pytester):
    write_suite(pytester.path / "evals", "geo", CASES, scorer="np_exact", gates=["accuracy >= 0.5"],
                **{"pass": "record"})
    pytester.makeconftest("""
        import numpy
        import harness

        @harness.scorer("np_exact", main_metric="accuracy")
        def np_exact(prediction, target, case):
            hit = numpy.bool_(prediction == target)
            return harness.Score(numpy.float32(hit), None, {"hit": hit, "lengths": numpy.array([len(prediction)])})

        def pytest_llm_case_result(result, suite, case):
            result.metadata = {**result.metadata, "weight": numpy.float64(0.5), "rank": numpy.int64(2),
                               "path": harness.Case}  # an object: shown as its text
    """)
    reports = []
    for workers in ("0", "2"):  # under xdist a numpy value used to stop the workers: execnet cannot send it
        run_inline(pytester, "evals", "-n", workers).assert_outcomes(passed=4)
        report = load_report(pytester)
        reports.append(([{k: c[k] for k in ("id", "score", "data", "metadata")} for c in report["cases"]],
                        report["suites"][0]["metrics"]["accuracy"]))
    assert reports[0] == reports[1]
    cases, accuracy = reports[0]
    assert cases[0]["data"] == {"hit": True, "lengths": [5]} and cases[2]["data"]["hit"] is False
    assert cases[0]["metadata"] == {"weight": 0.5, "rank": 2, "path": "<class 'harness.suite.Case'>"}
    assert [c["score"] for c in cases] == [1.0, 1.0, 0.0] and accuracy == pytest.approx(2 / 3)


def test_suite_metrics_hook_adds_a_metric_a_gate_judges(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=["long_answers <= 0", "long_answers >= 1"],
                **{"pass": "record"})
    pytester.makeconftest("""
        def pytest_llm_suite_metrics(suite, model, results, metrics):
            metrics["long_answers"] = float(sum(len(r.output or "") > 4 for r in results))
    """)
    result = run_inline(pytester, "evals", "-n", workers)
    result.assert_outcomes(passed=4, failed=1)
    suite = load_report(pytester)["suites"][0]
    assert suite["metrics"]["long_answers"] == 1.0  # "Paris" is the one answer longer than 4 characters
    assert [g["status"] for g in suite["gates"]] == ["failed", "passed"]


def test_write_report_hook_gets_the_record_and_the_folder(pytester):
    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record"})
    pytester.makeconftest("""
        import json

        def pytest_llm_write_report(record, out_dir):
            path = out_dir / "ids.json"
            path.write_text(json.dumps([c["id"] for c in record["cases"]]))
            return [path]
    """)
    run_inline(pytester, "evals").assert_outcomes(passed=3)
    assert json.loads((pytester.path / "out" / "ids.json").read_text()) == ["c1", "c2", "c3"]


def test_a_write_report_hook_that_raises_costs_the_run_neither_its_summary_nor_its_reports(pytester):
    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record"})
    pytester.makeconftest("""
        def pytest_llm_write_report(record, out_dir):
            raise OSError("disk full")
    """)
    result = run_inline(pytester, "evals")
    result.assert_outcomes(passed=3)
    assert result.ret == 0  # as when a built-in format cannot be written: the tests and gates decide
    result.stdout.fnmatch_lines(["*llm-harness summary*", "reports: *out",
                                 "llm-harness: pytest_llm_write_report raised OSError: disk full (conftest.py:2)"])
    assert [c["id"] for c in load_report(pytester)["cases"]] == ["c1", "c2", "c3"]


def test_make_engine_hook_serves_a_kind_the_registry_lacks(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=["accuracy == 1"])
    (pytester.path / "models.yaml").write_text("- {name: echo, engine: always-bern}\n")
    pytester.makeconftest("""
        from harness.engines.registry import Engine
        from harness.testing.scripted import ScriptedClient

        class AlwaysBern(Engine):
            kind = "always-bern"

            def client(self, record, ctx):
                return ScriptedClient(self.spec.name, replies={"": "Bern"})

        def pytest_llm_make_engine(spec):
            return AlwaysBern(spec) if spec.engine == "always-bern" else None
    """)
    result = run_inline(pytester, "evals", "-n", workers)
    result.assert_outcomes(passed=1, failed=3)  # c3 passes; c1, c2 and the gate fail
    models = load_report(pytester)["run"]["models"]
    assert models[0]["engine"]["kind"] == "always-bern"


def test_a_make_engine_hook_that_raises_ends_the_run_naming_it_and_its_line(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=["accuracy == 1"])
    pytester.makeconftest("""
        def pytest_llm_make_engine(spec):
            raise ImportError("my engine package is broken")
    """)
    said = "pytest_llm_make_engine raised ImportError: my engine package is broken (*conftest.py:2)"
    # a kind the registry knows (the scripted one): the hook is asked first, when the run starts
    result = run_inline(pytester, "evals", "-n", workers)
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR  # as when an engine's server does not start
    result.stdout.fnmatch_lines([f"*llm-harness: model 'stub': {said}*"])
    assert "INTERNALERROR" not in result.stdout.str()
    report = load_report(pytester)  # the run's report still says what happened
    assert report["run"]["models"][0]["engine_error"].startswith("model 'stub': pytest_llm_make_engine raised")
    assert [c["id"] for c in report["cases"]] == ["c1", "c2", "c3"]
    # a kind only the hook would serve: the models file is refused before the run
    (pytester.path / "models.yaml").write_text("- {name: mine, engine: my-kind}\n")
    refused = run_inline(pytester, "evals", "-n", workers)
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines([f"*models.yaml: model 'mine': {said}"])


def test_a_make_engine_hook_that_returns_no_engine_ends_the_run_saying_what_it_returned(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES)
    pytester.makeconftest("""
        def pytest_llm_make_engine(spec):
            return "scripted"  # a kind's name, not an engine
    """)
    result = run_inline(pytester, "evals", "-n", workers)
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    assert "INTERNALERROR" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*llm-harness: model 'stub': pytest_llm_make_engine returned str, not a harness Engine*"])


BROKEN_ENGINE = """
    from harness.engines.registry import Engine
    from harness.testing.scripted import ScriptedClient

    class Broken(Engine):
        kind = "broken"

        def start(self, ctx):
            if "{failing}" == "start":
                raise ValueError("no GPU here")
            return {{"model": self.spec.name, "kind": self.kind}}

        def client(self, record, ctx):
            if "{failing}" == "client":
                raise ValueError("no GPU here")
            return ScriptedClient(self.spec.name)

        def identity(self):
            if "{failing}" == "identity":
                raise ValueError("no GPU here")
            return {{"name": self.spec.name, "engine": self.kind}}

        def metadata(self, record):
            if "{failing}" == "metadata":
                raise ValueError("no GPU here")
            return {{"source": None, "weights_sha256": None}}

    def pytest_llm_make_engine(spec):
        return Broken(spec)
"""


@pytest.mark.parametrize(("failing", "said"), [("start", "did not start"), ("client", "gave no client"),
                                               ("identity", "gave no identity")])
def test_an_engine_kind_that_raises_ends_the_run_as_an_engine_that_did_not_start(pytester, workers, failing, said):
    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record"})
    pytester.makeconftest(BROKEN_ENGINE.format(failing=failing))
    result = run_inline(pytester, "evals", "-n", workers)
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    assert "INTERNALERROR" not in result.stdout.str()
    result.stdout.fnmatch_lines([f"*llm-harness: model 'stub' (engine broken) {said}: ValueError: no GPU here "
                                 "(*conftest.py:*)*"])


def test_an_engine_kind_whose_metadata_raises_costs_the_report_only_that_entry(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record"})
    pytester.makeconftest(BROKEN_ENGINE.format(failing="metadata"))
    run_inline(pytester, "evals", "-n", workers).assert_outcomes(passed=3)
    report = load_report(pytester)
    assert report["run"]["models"][0]["engine_error"].startswith("engine broken gave no metadata: ValueError: no GPU")
    assert [c["output"] for c in report["cases"]] == ["Paris", "Rome", "Oslo"]


def test_an_engine_from_an_installed_entry_point_needs_no_change_in_harness(pytester, workers, monkeypatch):
    # a package installed beside the project: its dist-info declares the engine in our entry-point group
    site = pytester.mkdir("site")
    (site / "reverse_engine.py").write_text(textwrap.dedent("""
        from harness.engines.registry import Engine
        from harness.testing.scripted import ScriptedClient, prompt_text

        class ReversedClient(ScriptedClient):
            def _reply(self, prompt):
                reply = super()._reply(prompt)
                reply.text = reply.text[::-1] if reply.text else reply.text
                return reply

        class ReverseEngine(Engine):
            kind = "reverse"

            def client(self, record, ctx):
                return ReversedClient(self.spec.name)

            def identity(self):
                return {"name": self.spec.name, "engine": "reverse"}
    """))
    dist = site / "reverse_engine-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: reverse-engine\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pytest_llm_harness.engines]\nreverse = reverse_engine:ReverseEngine\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))  # the xdist workers find it too
    cases = answer_cases([("r1", "siraP", "Paris"), ("r2", "xx", "Rome")])
    write_suite(pytester.path / "evals", "geo", cases, **{"pass": "record"})
    (pytester.path / "models.yaml").write_text("- {name: rev, engine: reverse}\n")
    result = run_inline(pytester, "evals", "-n", workers)
    result.assert_outcomes(passed=2)
    report = load_report(pytester)
    assert [c["output"] for c in report["cases"]] == ["Paris", "xx"]
    assert report["suites"][0]["metrics"]["accuracy"] == 0.5
    assert report["run"]["models"][0]["engine"]["kind"] == "reverse"


def test_an_unknown_engine_kind_is_a_usage_error_naming_the_known_ones(pytester):
    write_suite(pytester.path / "evals", "geo", CASES)
    (pytester.path / "models.yaml").write_text("- {name: m, engine: warp-drive}\n")
    result = run_inline(pytester, "evals")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*models.yaml: model 'm': engine must be one of *scripted*vllm*not 'warp-drive'*"])


@pytest.mark.parametrize(("module", "said"), [
    ("raise ImportError('needs the cuda extra')", "could not be loaded: needs the cuda extra"),
    ("class Gone:\n    pass", "could not be loaded: entry point 'gone' in pytest_llm_harness.engines is <class "
                                 "'gone_engine.Gone'>, not a harness Engine subclass"),
])
def test_an_entry_point_engine_that_cannot_be_loaded_is_a_usage_error(pytester, monkeypatch, module, said):
    site = pytester.mkdir("site")
    (site / "gone_engine.py").write_text(module + "\n")
    dist = site / "gone_engine-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gone-engine\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pytest_llm_harness.engines]\ngone = gone_engine:Gone\n")
    monkeypatch.syspath_prepend(str(site))
    write_suite(pytester.path / "evals", "geo", CASES)
    (pytester.path / "models.yaml").write_text("- {name: m, engine: gone}\n")
    result = run_inline(pytester, "evals")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*models.yaml: model 'm': engine 'gone' {said}"])


@pytest.mark.parametrize("loaded", ["entry point", "conftest pytest_plugins"])
def test_the_garbage_collector_is_given_back_as_it_was(pytester, monkeypatch, loaded):
    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record"})
    from tests.conftest import scripted_models

    scripted_models(pytester)
    # a cleanup registered at configure time, as pytest's own unraisableexception cleanup (5 gc.collect()
    # calls) is: the collected items are still frozen when it runs, so those calls skip them
    plugins = ""
    if loaded == "conftest pytest_plugins":  # too late for pytest_load_initial_conftests
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        plugins = "pytest_plugins = ['harness.plugin']\n"
    pytester.makeconftest(plugins + """
import gc

def pytest_configure(config):
    config.add_cleanup(lambda: open("frozen.txt", "w").write(str(gc.get_freeze_count())))
""")
    # at exit (an atexit handler registered first runs last) every object is frozen, so CPython's final
    # collections skip the heap: about 0.4 s of a 1,000-case run's exit
    result = pytester.runpython_c(
        "import atexit, gc, pytest\n"
        "atexit.register(lambda: print('AT EXIT', gc.get_freeze_count() > 0, flush=True))\n"
        "gc.disable()\n"  # a user's own choice survives the run
        "code = pytest.main(['-q', '-p', 'no:cacheprovider', '--llm-models-file', 'models.yaml', "
        "'--llm-report-dir', 'out', '--llm-cache', 'off', 'evals'])\n"
        "print('RESULT', int(code), gc.get_freeze_count(), gc.isenabled())\n")
    result.stdout.fnmatch_lines(["RESULT 0 0 False", "AT EXIT True"])
    if loaded == "entry point":
        assert int((pytester.path / "frozen.txt").read_text()) > 0


def test_what_the_run_made_is_frozen_for_pytests_cleanups_after_one_collection(pytester):
    """Before pytest's cleanups (five gc.collect() calls) the harness collects once and freezes what the run
    made, so those calls skip it; garbage of the run whose finalizer raises is still found and reported."""
    write_suite(pytester.path / "evals", "geo", CASES, **{"pass": "record"})
    from tests.conftest import scripted_models

    scripted_models(pytester)
    pytester.makeconftest("""
import gc

import pytest

counts = {}

@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    counts["run"] = gc.get_freeze_count()

def pytest_configure(config):
    config.add_cleanup(lambda: open("frozen.txt", "w").write(f"{counts['run']} {gc.get_freeze_count()}"))
""")
    pytester.makepyfile(test_cycle="""
class Loop:
    def __init__(self):
        self.me = self
        self.made = [object() for _ in range(1000)]

    def __del__(self):
        raise RuntimeError("finalizer of the run's garbage")

def test_leaves_garbage():
    Loop()
""")
    # a process of its own: a warning raised in pytest's cleanups goes to its stderr
    result = pytester.runpytest_subprocess("--llm-models-file", "models.yaml", "--llm-report-dir", "out",
                                           "--llm-cache", "off", "-p", "no:cacheprovider", "evals", "test_cycle.py",
                                           timeout=300)  # a hang is this test's failure, not CI's time limit
    result.assert_outcomes(passed=4)  # three cases, the hand-written test
    at_run, at_cleanup = map(int, (pytester.path / "frozen.txt").read_text().split())
    assert at_run > 0 and at_cleanup > at_run + 1000
    shown = "\n".join(result.outlines + result.errlines)
    assert "PytestUnraisableExceptionWarning" in shown and "finalizer of the run's garbage" in shown, shown[-3000:]
