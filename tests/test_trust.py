"""Hostile suite files and scorer trust: sandboxed templates, prompts checked at collection, scorers
that fail are errors (never zeros), and import strings limited to the project or what the user allows.

Inline pytester runs on the in-process scripted engine; a few unit tests of the import policy."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import jinja2
import pytest

from harness.scoring.imports import ImportNotAllowed, ImportPolicy, use_policy
from tests.conftest import answer_cases, load_report, run_inline, write_suite

CASES = answer_cases([("c1", "Paris", "Paris"), ("c2", "Rome", "Rome"), ("c3", "Oslo", "Bern")])
# what pytest returns for errors during collection: it stops (2); xdist reports them as failures (1)
COLLECTION_ERROR = {"0": pytest.ExitCode.INTERRUPTED, "2": pytest.ExitCode.TESTS_FAILED}


@pytest.fixture(params=["0", "2"], ids=["n0", "n2"])
def workers(request: pytest.FixtureRequest) -> str:
    return request.param


def project(pytester: pytest.Pytester, allow: str | None = None, **modules: str) -> None:
    """pytester.path as the rootdir, on every process's sys.path (xdist workers too), with these
    modules in it; ``allow`` is the ini's llm_allow_imports."""
    pytester.makeini("[pytest]\npythonpath = .\n" + (f"llm_allow_imports = {allow}\n" if allow else ""))
    for name, source in modules.items():
        (pytester.path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")


def output(result: pytest.RunResult) -> str:
    return result.stdout.str() + result.stderr.str()


# ---------------------------------------------------------------------------- templates

ESCAPES = [
    "{{{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}}}",
    ("{{% for c in ''.__class__.__mro__[1].__subclasses__() %}}{{% if c.__name__ == 'Popen' %}}"
     "{{{{ c(['touch', '{marker}']).wait() }}}}{{% endif %}}{{% endfor %}}"),
]


@pytest.mark.parametrize("part", ["template", "system"])
@pytest.mark.parametrize("payload", ESCAPES, ids=["globals", "subclasses"])
def test_a_template_cannot_escape_the_sandbox(pytester, payload, part):
    marker = pytester.path / "escaped"
    source = payload.format(marker=marker)
    # the payload is real: an unsandboxed environment runs it
    jinja2.Environment().from_string(source).render()
    assert marker.exists()
    marker.unlink()

    prompt = {"template": "{{ input }}", part: source}
    write_suite(pytester.path / "evals", "geo", CASES, prompt=prompt)
    result = run_inline(pytester, "evals")
    assert not marker.exists()
    assert result.ret == COLLECTION_ERROR["0"]
    text = output(result)
    assert "geo/suite.yaml: case 'c1': prompt." + part + " cannot render this case: blocked by the template sandbox" \
        in text and "is unsafe" in text
    assert "geo/cases.jsonl:1:" in text
    assert not (pytester.path / "out" / "report.json").exists()  # nothing was sent


def test_data_is_never_rendered_as_a_template(pytester):
    cases = [{"id": "t", "input": "ANSWER: {{ 7*7 }}", "target": "{{ 7*7 }}", "note": "{% raw %}{{ 6*6 }}"}]
    write_suite(pytester.path / "evals", "lit", cases,
                prompt={"system": "Note: {{ record.note }}", "template": "Q: {{ input }}"})
    result = run_inline(pytester, "evals")
    result.assert_outcomes(passed=1)
    case = load_report(pytester)["cases"][0]
    assert case["prompt"] == [{"role": "system", "content": "Note: {% raw %}{{ 6*6 }}"},
                              {"role": "user", "content": "Q: ANSWER: {{ 7*7 }}"}]
    assert case["output"] == "{{ 7*7 }}"


def test_an_undefined_variable_is_a_collection_error_naming_suite_line_and_variable(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, prompt="{{ input }} {{ nosuchvar }}")
    result = run_inline(pytester, "evals", "-n", workers)
    assert result.ret == COLLECTION_ERROR[workers]
    text = output(result)
    assert "geo/cases.jsonl:1: suite " in text
    assert ("geo/suite.yaml: case 'c1': prompt.template cannot render this case: undefined variable: "
            "'nosuchvar' is undefined (3 of 3 cases fail to render)") in text
    assert not (pytester.path / "out" / "report.json").exists()  # nothing was sent, nothing scored 0


def test_the_line_of_the_one_case_a_template_cannot_render(pytester):
    cases = [{**case, "extra": {"name": "x"}} for case in CASES]
    del cases[1]["extra"]
    write_suite(pytester.path / "evals", "geo", cases, prompt="{{ record.extra.name }}: {{ input }}")
    result = run_inline(pytester, "evals")
    assert result.ret == COLLECTION_ERROR["0"]
    text = output(result)
    assert "geo/cases.jsonl:2: suite " in text
    assert "case 'c2': prompt.template cannot render this case: undefined variable: " \
           "'dict object' has no attribute 'extra'" in text
    assert "of 3 cases" not in text  # one case fails: no count


def test_a_type_error_in_a_template_is_a_collection_error(pytester):
    write_suite(pytester.path / "evals", "geo", CASES, prompt={"template": "{{ input + 1 }}"})
    result = run_inline(pytester, "evals")
    assert result.ret == COLLECTION_ERROR["0"]
    assert ("prompt.template cannot render this case: TypeError: can only concatenate str (not \"int\") to str"
            in output(result))


def test_a_case_is_rendered_once_collection_and_request_share_it(pytester, monkeypatch):
    from harness import prompts

    calls: list[str] = []
    original = prompts.render_messages

    def counting(suite, case):
        calls.append(case.id)
        return original(suite, case)

    monkeypatch.setattr(prompts, "render_messages", counting)
    write_suite(pytester.path / "evals", "geo", CASES, prompt="Q {{ id }}: {{ input }}")
    result = run_inline(pytester, "evals")
    result.assert_outcomes(passed=2, failed=1)  # c3 fails: its failure shows the prompt too
    assert sorted(calls) == ["c1", "c2", "c3"]
    assert "Q c3: question c3" in result.stdout.str()


# ---------------------------------------------------------------------------- scorers that fail

def test_a_scorer_that_raises_is_an_error_counted_in_error_rate(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, scorer="fragile", gates=["error_rate == 0"])
    (pytester.path / "evals" / "conftest.py").write_text(textwrap.dedent("""
        import harness

        @harness.scorer("fragile")
        def fragile(prediction, target, case):
            if prediction == "Oslo":
                raise KeyError("no rule for Oslo")
            return prediction == target
    """))
    result = run_inline(pytester, "evals", "-n", workers)
    result.assert_outcomes(passed=2, failed=2)  # c3 and the gate
    report = load_report(pytester)
    c3 = next(c for c in report["cases"] if c["id"] == "c3")
    assert c3["error"] == c3["reason"] == "scorer raised KeyError: 'no rule for Oslo'"
    metrics = report["suites"][0]["metrics"]
    assert metrics["errors"] == 1 and metrics["error_rate"] == pytest.approx(1 / 3)


BROKEN_TOX = """
    ATTEMPTS = __file__ + ".attempts"

    class Broken:
        def __init__(self, level=0.5):
            with open(ATTEMPTS, "a") as log:
                log.write("x")
            raise RuntimeError("weights are corrupt")

        def scores(self, texts):
            return [0.0] * len(texts)

    class Fine:
        def __init__(self, level=0.5):
            self.level = level

        def scores(self, texts):
            return [self.level] * len(texts)
"""


def test_a_classifier_that_fails_to_load_makes_every_case_an_error(pytester):
    project(pytester, mytox=BROKEN_TOX)
    write_suite(pytester.path / "evals", "tox", CASES, scorer={"name": "toxicity", "classifier": "mytox:Broken"},
                gates=["error_rate == 0"], **{"pass": "record"})
    result = run_inline(pytester, "evals")
    result.assert_outcomes(passed=3, failed=1)  # record-only cases pass; the error_rate gate fails
    report = load_report(pytester)
    reason = "toxicity classifier 'mytox:Broken' did not load: RuntimeError: weights are corrupt"
    assert [c["error"] for c in report["cases"]] == [reason] * 3
    metrics = report["suites"][0]["metrics"]
    assert metrics["error_rate"] == 1.0 and metrics["total_samples"] == 0 and metrics["toxic_ratio"] is None
    assert (pytester.path / "mytox.py.attempts").read_text() == "x"  # loaded once, not once per case


@pytest.mark.parametrize("scorer, message", [
    ({"name": "toxicity", "classifier": "mytox:Fine", "classifier_options": {"levle": 0.2}},
     "toxicity classifier 'mytox:Fine': bad classifier_options: got an unexpected keyword argument 'levle'"),
    ({"name": "toxicity", "classifier": "wordlist", "classifier_options": {"term": ["x"]}},
     "toxicity classifier 'wordlist': bad classifier_options: got an unexpected keyword argument 'term'"),
    ({"name": "toxicity", "classifier": "mytox:Missing"}, "toxicity classifier 'mytox:Missing': 'mytox' has no"),
    ({"name": "toxicity", "classifier": "perspective"}, "unknown toxicity classifier 'perspective'"),
    ("exploding", "scorer 'exploding' cannot be built: RuntimeError: no licence"),
], ids=["import-options", "builtin-options", "missing-attr", "unknown", "scorer-init"])
def test_a_scorer_that_cannot_be_built_is_a_collection_error(pytester, scorer, message):
    project(pytester, mytox=BROKEN_TOX)
    pytester.makeconftest("""
        import harness

        @harness.scorer("exploding")
        class Exploding(harness.Scorer):
            def __init__(self, **options):
                raise RuntimeError("no licence")
    """)
    write_suite(pytester.path / "evals", "tox", CASES, scorer=scorer)
    result = run_inline(pytester, "evals")
    assert result.ret == COLLECTION_ERROR["0"]
    text = output(result)
    assert "tox/suite.yaml: " in text and message in text


# ---------------------------------------------------------------------------- what a suite may import

REEXPORT = """
    import os
    from subprocess import Popen
"""


OUTSIDE_IMPORTS = {
    "stdlib-class": ("subprocess:Popen", {"args": ["touch", "{marker}"]},
                     "module 'subprocess' is not part of the project"),
    "stdlib-function": ("os:system", {"command": "touch {marker}"}, "module 'os' is not part of the project"),
    "re-exported": ("reexport:Popen", {"args": ["touch", "{marker}"]},
                    "module 'subprocess' is not part of the project"),
    "through-a-module": ("reexport:os.system", {"command": "touch {marker}"},
                         "module 'os' is not part of the project"),
    "dunder": ("reexport:__builtins__", {}, "'__builtins__' is not a public attribute"),
}


def write_toxicity_suite(pytester: pytest.Pytester, name: str, classifier: str, options: dict[str, Any],
                         marker: Path) -> None:
    options = {k: [str(a).format(marker=marker) for a in v] if isinstance(v, list) else v.format(marker=marker)
               for k, v in options.items()}
    write_suite(pytester.path / "evals", name, CASES,
                scorer={"name": "toxicity", "classifier": classifier, "classifier_options": options})


def assert_refused(text: str, name: str, classifier: str, refused: str) -> None:
    assert f"{name}/suite.yaml: toxicity classifier {classifier!r}: {refused}" in text
    if "not part of the project" in refused:
        assert "list it in the ini key llm_allow_imports" in text


@pytest.mark.parametrize("classifier, options, refused", list(OUTSIDE_IMPORTS.values()), ids=list(OUTSIDE_IMPORTS))
def test_an_import_outside_the_project_is_a_collection_error(pytester, classifier, options, refused):
    marker = pytester.path / "ran"
    project(pytester, reexport=REEXPORT)
    write_toxicity_suite(pytester, "tox", classifier, options, marker)
    result = run_inline(pytester, "evals")
    assert not marker.exists()
    assert result.ret == COLLECTION_ERROR["0"]
    assert_refused(output(result), "tox", classifier, refused)


def test_imports_outside_the_project_are_collection_errors_under_xdist(pytester):
    # every import above in one run, each suite with a marker of its own: no worker runs any of them
    project(pytester, reexport=REEXPORT)
    for name, (classifier, options, _) in OUTSIDE_IMPORTS.items():
        write_toxicity_suite(pytester, name, classifier, options, pytester.path / f"ran-{name}")
    result = run_inline(pytester, "evals", "-n", "2")
    assert result.ret == COLLECTION_ERROR["2"]
    assert not list(pytester.path.glob("ran-*"))
    for name, (classifier, _, refused) in OUTSIDE_IMPORTS.items():
        assert_refused(output(result), name, classifier, refused)


def test_llm_allow_imports_opts_a_module_outside_the_project_in(pytester, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("installed")
    (elsewhere / "vendortox.py").write_text(textwrap.dedent(BROKEN_TOX), encoding="utf-8")
    pytester.syspathinsert(elsewhere)
    scorer = {"name": "toxicity", "classifier": "vendortox:Fine", "classifier_options": {"level": 0.9}}
    write_suite(pytester.path / "evals", "tox", CASES, scorer=scorer, **{"pass": "record"})

    project(pytester)
    refused = run_inline(pytester, "evals")
    assert refused.ret == COLLECTION_ERROR["0"]
    assert "module 'vendortox' is not part of the project" in output(refused)

    project(pytester, allow="otherpkg vendortox")
    allowed = run_inline(pytester, "evals")
    assert allowed.ret == 0
    assert load_report(pytester)["suites"][0]["metrics"]["toxic_ratio"] == 1.0


def test_a_project_module_needs_no_opt_in(pytester):
    project(pytester, mytox=BROKEN_TOX)
    write_suite(pytester.path / "evals", "tox", CASES,
                scorer={"name": "toxicity", "classifier": "mytox:Fine", "classifier_options": {"level": 0.1}},
                gates=["toxic_ratio == 0", "error_rate == 0"], **{"pass": "record"})
    run_inline(pytester, "evals").assert_outcomes(passed=5)


# ---------------------------------------------------------------------------- the policy itself

def test_policy_allows_project_files_only(tmp_path, monkeypatch):
    root = tmp_path / "project"
    (root / "mine").mkdir(parents=True)
    (root / "mine" / "__init__.py").write_text("")
    venv = root / ".venv" / "lib" / "python3.11" / "site-packages"
    (venv / "theirs").mkdir(parents=True)
    (venv / "theirs" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.syspath_prepend(str(venv))
    policy = ImportPolicy((root,))
    assert policy.problem("mine") is None and policy.problem("mine.sub") is None
    for refused in ("theirs", "subprocess", "os.path", "posix", "sys", "json", "no_such_module_anywhere"):
        assert policy.problem(refused) is not None, refused
    assert ImportPolicy((root,), ("theirs", "json")).problem("theirs.deep") is None
    assert ImportPolicy((root,), ("json",)).problem("jsonschema") is not None  # a prefix is a whole name
    with pytest.raises(ImportNotAllowed, match="list it in the ini key llm_allow_imports"):
        policy.check("subprocess", "toxicity classifier 'subprocess:Popen'")


def test_an_entry_point_registered_classifier_needs_no_import_string(tmp_path, monkeypatch):
    import importlib

    from harness.scoring.scorers import get_scorer
    from harness.scoring.toxicity import known_classifiers

    site = tmp_path / "site"
    (site / "epclf").mkdir(parents=True)
    (site / "epclf" / "__init__.py").write_text("class Tox:\n    def scores(self, texts):\n"
                                                "        return [0.8 for _ in texts]\n")
    dist = site / "epclf-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: epclf\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pytest_llm_harness.classifiers]\nep-tox = epclf:Tox\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    previous = use_policy(ImportPolicy((tmp_path / "project",)))
    try:
        assert "ep-tox" in known_classifiers()
        assert get_scorer("toxicity", {"classifier": "ep-tox"}).score("hi", None, None).value == 0.0
        with pytest.raises(ImportNotAllowed, match="module 'epclf' is not part of the project"):
            get_scorer("toxicity", {"classifier": "epclf:Tox"})  # the module itself, by import string: no
    finally:
        use_policy(previous)
