"""A suite that names a training job as its model (``model: {train: training/sft_capitals}``): it runs on the
job's model before training (``sft_capitals-initial``, the reference) and its checkpoint (``sft_capitals``)
only, while the run's other suites run on the run's models; comparison gates judge trained against initial.

No torch here: the fake runner of tests/test_training_jobs.py stands for TRL (its runs.log counts the
trainings), and a ``pytest_llm_make_engine`` hook in the test's conftest.py serves ``engine: trained`` with
the in-process scripted engine: it takes the job's shared run as the real engine does (so a run trains once),
then answers from the case's ``ANSWER:`` directive, or, per checkpoint, from ``replies.json``. The real
thing (TRL, the CPU server) is tests/test_training_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import harness.training.collect  # noqa: F401 - imported before pytester snapshots sys.modules
import harness.training.job  # noqa: F401
import harness.training.shared
from tests.conftest import load_report, run_inline, write_suite
from tests.test_training_jobs import FAKE_RUNNER, write_job

JOB = "training/sft_capitals/job.yaml"
CAPITALS = [("france", "Paris"), ("germany", "Berlin"), ("italy", "Rome"), ("spain", "Madrid"),
            ("japan", "Tokyo"), ("peru", "Lima"), ("chile", "Santiago"), ("cuba", "Havana"),
            ("egypt", "Cairo"), ("kenya", "Nairobi"), ("india", "Delhi"), ("china", "Beijing"),
            ("canada", "Ottawa"), ("mexico", "Mexico City"), ("brazil", "Brasilia"), ("norway", "Oslo"),
            ("sweden", "Stockholm"), ("finland", "Helsinki"), ("poland", "Warsaw"), ("greece", "Athens"),
            ("turkey", "Ankara"), ("iran", "Tehran"), ("iraq", "Baghdad"), ("cyprus", "Nicosia")]
N = len(CAPITALS)
CAPITAL_CASES = [{"id": cid, "input": f"Capital of {cid}?\nANSWER: {city}", "target": city} for cid, city in CAPITALS]
GEO_CASES = [{"id": f"g{i}", "input": f"q{i}\nANSWER: A{i}", "target": f"A{i}"} for i in range(4)]
COMPARE_GATES = ["accuracy >= 0", "delta(accuracy) >= 0.5", "regressed_cases == 0"]
CONFTEST = '''
import json
from pathlib import Path

from harness.testing.scripted import ScriptedClient, ScriptedEngine
from harness.training.job import load_job
from harness.training.shared import run_in, training_root

HERE = Path(__file__).parent


class FakeTrained(ScriptedEngine):
    """engine: trained, in process: the job's shared run (trained once per pytest run), scripted replies."""

    kind = "trained"

    @property
    def checkpoint(self):
        return self.spec.options.get("checkpoint", "trained")

    def start(self, ctx):
        run = run_in(training_root(ctx.runtime_dir), load_job(self.spec.model_path))
        assert not run.error, run.error
        with open(HERE / "starts.log", "a") as log:
            log.write(f"{self.spec.name} {self.checkpoint} {self.spec.model_path}\\n")
        return super().start(ctx)

    def client(self, record, ctx):
        replies = json.loads((HERE / "replies.json").read_text()) if (HERE / "replies.json").exists() else {}
        return ScriptedClient(self.spec.name, 0.0, replies.get(self.checkpoint))

    def identity(self):
        return {"name": self.spec.name, "engine": "fake-trained", "checkpoint": self.checkpoint}


def pytest_llm_make_engine(spec):
    return FakeTrained(spec) if spec.engine == "trained" else None
'''
RUN = {"checks": {"label_mask": {"passed": True, "reason": "only completion tokens trained"},
                  "stop_tokens": {"passed": True, "reason": "<|im_end|> in the stop set"}},
       "metrics": {"final_loss": 0.5, "loss_drop": 2.0, "steps": 20}}  # the job's 4 gates pass
# before training every capital is answered wrongly; after, all are right (the ANSWER: directive)
BEFORE_AND_AFTER = {"initial": {"Capital of": "I do not know"}}


@pytest.fixture(params=["0", "2"], ids=["n0", "n2"])
def workers(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A job (training/sft_capitals), the fake runner and engine, a run model ``stub`` (models.yaml) and a
    plain suite ``geo`` beside the suite ``capitals_trained`` that names the job."""
    write_job(pytester, run=RUN)
    (pytester.path / "fake_runner.py").write_text(FAKE_RUNNER, encoding="utf-8")
    monkeypatch.setenv(harness.training.shared.RUNNER_ENV, f"{pytester.path / 'fake_runner.py'}:run_job")
    (pytester.path / "conftest.py").write_text(CONFTEST, encoding="utf-8")
    (pytester.path / "replies.json").write_text(json.dumps(BEFORE_AND_AFTER), encoding="utf-8")
    write_suite(pytester.path / "evals", "geo", GEO_CASES, gates=["accuracy >= 0.5"])
    capitals_suite(pytester)
    return pytester


def capitals_suite(pytester: pytest.Pytester, name: str = "capitals_trained",
                   model: object = {"train": "../../training/sft_capitals"}, gates: list[str] = COMPARE_GATES,
                   **extra: object) -> Path:
    return write_suite(pytester.path / "evals", name, CAPITAL_CASES, gates=gates, model=model,
                       **{"pass": "record", **extra})


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_suite_naming_a_job_runs_on_its_two_models_and_a_plain_suite_on_the_runs(project):
    listed = run_inline(project, "evals", "--co", "-q")
    items = [line for line in listed.outlines if "::" in line]
    capitals = [i for i in items if i.startswith("evals/capitals_trained/")]
    # the plain suite: the run's one model, no [model] suffix; nothing of the job's models
    assert [i for i in items if i.startswith("evals/geo/")] == [
        "evals/geo/cases.jsonl::g0", "evals/geo/cases.jsonl::g1", "evals/geo/cases.jsonl::g2",
        "evals/geo/cases.jsonl::g3", "evals/geo/suite.yaml::gate[accuracy >= 0.5]"]
    # the suite naming the job: initial (the reference, first) and trained, never the run's stub
    assert capitals[:2] == ["evals/capitals_trained/cases.jsonl::france[sft_capitals-initial]",
                            "evals/capitals_trained/cases.jsonl::france[sft_capitals]"]
    assert len([i for i in capitals if "cases.jsonl::" in i]) == 2 * N and not any("[stub]" in i for i in capitals)
    # comparison gates have no item on the reference
    assert [i for i in capitals if "::gate[" in i] == [
        "evals/capitals_trained/suite.yaml::gate[accuracy >= 0][sft_capitals-initial]",
        "evals/capitals_trained/suite.yaml::gate[accuracy >= 0][sft_capitals]",
        "evals/capitals_trained/suite.yaml::gate[delta(accuracy) >= 0.5][sft_capitals]",
        "evals/capitals_trained/suite.yaml::gate[regressed_cases == 0][sft_capitals]"]
    assert lines(project.path / "runs.log") == []  # collection trains nothing


def test_gates_judge_the_trained_model_against_initial_with_one_training(project, workers):
    capitals_suite(project, "capitals_again")  # a second suite naming the same job shares its two models
    result = run_inline(project, "training", "evals", "-n", workers)
    training, geo, capitals = 4, 4 + 1, 2 * N + 4  # gates; cases and gates; both models' cases and 4 gates
    result.assert_outcomes(passed=training + geo + 2 * capitals)
    assert len(lines(project.path / "runs.log")) == 1, lines(project.path / "runs.log")  # one training in all
    starts = sorted(line.split()[0] for line in lines(project.path / "starts.log"))
    assert starts == ["sft_capitals", "sft_capitals-initial"]  # one engine per model, whichever suites use it
    result.stdout.fnmatch_lines(["*capitals_again: sft_capitals vs sft_capitals-initial, 24 paired*"])
    result.stdout.fnmatch_lines(["*capitals_trained: sft_capitals vs sft_capitals-initial, 24 paired*"])
    report = load_report(project)
    suites = sorted((s["name"], s["model"], s["metrics"]["accuracy"]) for s in report["suites"])
    assert suites == [("capitals_again", "sft_capitals", 1.0), ("capitals_again", "sft_capitals-initial", 0.0),
                      ("capitals_trained", "sft_capitals", 1.0), ("capitals_trained", "sft_capitals-initial", 0.0),
                      ("geo", "stub", 1.0)]
    gates = {(s["name"], s["model"], g["expr"]): (g["status"], g["reason"]) for s in report["suites"]
             for g in s["gates"]}
    status, reason = gates[("capitals_trained", "sft_capitals", "delta(accuracy) >= 0.5")]
    assert status == "passed" and "(sft_capitals - sft_capitals-initial, 24 paired)" in reason
    assert ("capitals_trained", "sft_capitals-initial", "delta(accuracy) >= 0.5") not in gates
    block = report["comparison"]
    assert [(p["suite"], p["reference"], p["candidate"], p["matched"]) for p in block["pairs"]] == [
        ("capitals_again", "sft_capitals-initial", "sft_capitals", N),
        ("capitals_trained", "sft_capitals-initial", "sft_capitals", N)]  # geo, on one model, compares nothing
    assert block["reference"]["name"] == "sft_capitals-initial"
    assert block["reference"]["suites"] == {"capitals_again": "sft_capitals-initial",
                                            "capitals_trained": "sft_capitals-initial"}
    models = {m["name"]: m for m in report["run"]["models"]}
    assert set(models) == {"stub", "sft_capitals", "sft_capitals-initial"}
    assert report["run"]["suites_config"][0]["name"] == "capitals_again"
    assert report["run"]["suites_config"][0]["model"]["models"] == ["sft_capitals-initial", "sft_capitals"]
    markdown = (project.path / "out" / "report.md").read_text()
    assert "### capitals_trained: sft_capitals vs sft_capitals-initial" in markdown
    assert "| **accuracy** (main) | 0 | 1 |" in markdown


def test_a_failing_delta_gate_fails_with_the_figures(project, workers):
    # before training only kenya is right; after, 9 capitals are still wrong and kenya is lost: 14 of 24
    wrong = {f"Capital of {cid}?": "I do not know" for cid, _ in CAPITALS[:9]}
    knew = {"Capital of kenya?": "Nairobi"}
    (project.path / "replies.json").write_text(json.dumps({"initial": {**knew, "Capital of": "no"},
                                                           "trained": {**wrong, "Capital of kenya?": "Mombasa"}}))
    result = run_inline(project, "evals", "-n", workers)
    result.assert_outcomes(passed=4 + 1 + 2 * N + 2, failed=2)
    result.stdout.fnmatch_lines([
        "*gate delta(accuracy) >= 0.5 on suite capitals_trained (sft_capitals): failed: "
        "delta(accuracy) = 0.5417 [[]*judged on its lower bound *, needs >= 0.5 "
        "(sft_capitals - sft_capitals-initial, 24 paired)*"])
    result.stdout.fnmatch_lines(["*gate regressed_cases == 0 on suite capitals_trained (sft_capitals): failed: "
                                 "regressed_cases = 1, needs == 0 (sft_capitals - sft_capitals-initial*"])
    (pair,) = load_report(project)["comparison"]["pairs"]
    row = next(r for r in pair["rows"] if r["metric"] == "accuracy")
    assert (row["reference"], row["candidate"]) == (pytest.approx(1 / N), pytest.approx(14 / N))
    assert (row["improved"], row["regressed"]) == (14, 1)


def test_the_runs_reference_is_not_forced_onto_a_suites_own_pair(project):
    (project.path / "models2.yaml").write_text(yaml.safe_dump(
        [{"name": "stub", "engine": "scripted"},
         {"name": "stub-b", "engine": "scripted", "options": {"replies": {"q1": "wrong"}}}]), encoding="utf-8")
    write_suite(project.path / "evals", "geo", GEO_CASES, gates=["accuracy >= 0.5", "regressed_cases == 0"])
    result = run_inline(project, "evals", "--llm-reference", "stub-b", models="models2.yaml")
    result.assert_outcomes(passed=2 * 4 + 3 + 2 * N + 4, failed=0)
    pairs = {(p["suite"], p["reference"], p["candidate"]) for p in load_report(project)["comparison"]["pairs"]}
    assert pairs == {("geo", "stub-b", "stub"), ("capitals_trained", "sft_capitals-initial", "sft_capitals")}
    result.stdout.fnmatch_lines(["paired comparison against stub-b; capitals_trained against sft_capitals-initial:*"])
    markdown = (project.path / "out" / "report.md").read_text()
    assert "Reference: model **stub-b** (capitals_trained: **sft_capitals-initial**)" in markdown


def test_a_baseline_is_not_forced_onto_a_suites_own_pair_either(project):
    write_suite(project.path / "evals", "geo", GEO_CASES, gates=["accuracy >= 0.5", "regressed_cases == 0"])
    saved = run_inline(project, "evals", "--llm-baseline-save", "base.json", "--llm-baseline-reason", "test")
    saved.assert_outcomes(passed=4 + 1 + 2 * N + 4, failed=1)  # geo's regressed_cases: nothing to compare with yet
    result = run_inline(project, "evals", "--llm-baseline", "base.json")
    result.assert_outcomes(passed=4 + 2 + 2 * N + 4)
    block = load_report(project)["comparison"]
    pairs = {(p["suite"], p["reference"], p["candidate"]) for p in block["pairs"]}
    assert pairs == {("geo", "baseline:stub", "stub"), ("capitals_trained", "sft_capitals-initial", "sft_capitals")}
    assert block["reference"]["kind"] == "baseline"
    assert block["reference"]["suites"] == {"capitals_trained": "sft_capitals-initial"}


def test_compare_false_runs_the_trained_model_alone(project):
    capitals_suite(project, model={"train": "../../training/sft_capitals", "compare": False},
                   gates=["accuracy >= 0.9", "delta(accuracy) >= 0.5"])
    listed = run_inline(project, "evals/capitals_trained", "--co", "-q")
    assert "evals/capitals_trained/cases.jsonl::france" in listed.outlines  # one model: no suffix
    result = run_inline(project, "evals/capitals_trained")
    result.assert_outcomes(passed=N + 1, failed=1)
    result.stdout.fnmatch_lines(["*delta(accuracy) >= 0.5*compares two arms, but this suite's model says "
                                 "compare: false*"])
    assert [line.split()[0] for line in lines(project.path / "starts.log")] == ["sft_capitals"]


def test_a_job_path_relative_to_the_rootdir(project):
    capitals_suite(project, model={"train": JOB})  # not beside the suite file: the rootdir's
    listed = run_inline(project, "evals/capitals_trained", "--co", "-q")
    assert "evals/capitals_trained/cases.jsonl::france[sft_capitals]" in listed.outlines


def test_a_name_clashing_with_a_run_model_is_an_error_naming_both(project):
    (project.path / "clash.yaml").write_text(yaml.safe_dump(
        [{"name": "sft_capitals", "engine": "trained", "model_path": JOB}]), encoding="utf-8")
    result = run_inline(project, "evals", "--co", models="clash.yaml")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([f"*evals/capitals_trained/suite.yaml:*: model 'sft_capitals' (training job "
                                 f"*{JOB}, named by this suite's 'model') is also a model of the run "
                                 f"(--llm-models-file clash.yaml): rename one*"])


def test_two_jobs_of_one_name_are_an_error_naming_both(project):
    other = project.path / "other" / "sft_capitals"
    other.mkdir(parents=True)
    job = (project.path / JOB).read_text().replace("max_steps: 20", "max_steps: 30")
    (other / "job.yaml").write_text(job)
    (other / "data.jsonl").write_text((project.path / "training/sft_capitals/data.jsonl").read_text())
    capitals_suite(project, "capitals_other", model={"train": "../../other/sft_capitals"})
    result = run_inline(project, "evals", "--co")
    result.stdout.fnmatch_lines(["*suite.yaml:*: model 'sft_capitals-initial' is training job */job.yaml here, "
                                 "but another suite names a model 'sft_capitals-initial' from */job.yaml*"])


MODEL_LINES = ["name: capitals_trained", "dataset: cases.jsonl", "model:", "  train: ../../training/sft_capitals",
               "gates: [accuracy >= 0]"]
BAD_MODELS = [
    # (the lines from 3 on, the line the error names, what it says)
    pytest.param(["model: training/sft_capitals"], 3, "'model' must be a mapping, model: {train: <job folder "
                 "or job.yaml>, compare: initial | false}, not 'training/sft_capitals'", id="not-a-mapping"),
    pytest.param(["model:", "  train: ../../training/sft_capitals", "  checkpoint: initial"], 5,
                 "unknown model key 'checkpoint'; known: train, compare", id="unknown-key"),
    pytest.param(["model: {train: ../../training/sft_capitals, comapre: false}"], 3,
                 "unknown model key 'comapre'", id="unknown-key-flow"),
    pytest.param(["model: {compare: false}"], 3, "'model' needs 'train'", id="no-train"),
    pytest.param(["model:", "  train: [a, b]"], 4, "'model.train' must be a job folder or job.yaml path",
                 id="train-not-a-path"),
    pytest.param(["model:", "  train: ../../training/sft_capitals", "  compare: trained"], 5,
                 "'model.compare' must be initial (compare with the model before training, the default) or "
                 "false (the trained model only), not 'trained'", id="bad-compare"),
    pytest.param(["model:", "  train: ../../training/nope"], 4,
                 "'model.train' '../../training/nope' not found (looked in the suite's folder * and the rootdir *)",
                 id="not-found"),
    pytest.param(["model:", "  train: ../geo"], 4, "'model.train' '../geo' is not a training job: the folder * "
                 "holds no job file (a job.yaml or job.yml that declares trainer:)", id="folder-without-job"),
    pytest.param(["model:", "  train: ../geo/suite.yaml"], 4, "'model.train' '../geo/suite.yaml' is not a training "
                 "job: */evals/geo/suite.yaml is not a job file", id="not-a-job-file"),
    pytest.param(["model:", "  train: ../../training/broken"], 4, "'model.train' '../../training/broken': the "
                 "training job is not valid: */training/broken/job.yaml:2: unknown trainer 'sftt'", id="invalid-job"),
]


@pytest.mark.parametrize("model_lines, line, message", BAD_MODELS)
def test_a_bad_model_is_a_collection_error_naming_file_and_line(project, model_lines, line, message):
    broken = project.path / "training" / "broken"
    broken.mkdir()
    (broken / "job.yaml").write_text("name: broken\ntrainer: sftt\nmodel: {tiny: {}}\ndataset: d.jsonl\n")
    (project.path / "evals" / "capitals_trained" / "suite.yaml").write_text(
        "\n".join(MODEL_LINES[:2] + model_lines + MODEL_LINES[4:]) + "\n", encoding="utf-8")
    result = run_inline(project, "evals", "--co")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([f"*evals/capitals_trained/suite.yaml:{line}: {message}*"])
    # the suite's cases are collection errors too, with the same message, and the plain suite still collects
    result.stdout.fnmatch_lines(["*ERROR collecting evals/capitals_trained/cases.jsonl*"])
    assert "evals/geo/suite.yaml" not in result.stdout.str().split("short test summary")[-1]


def test_a_job_that_evaluates_the_suite_naming_it_loads_without_a_loop(tmp_path):
    """A job's eval suite (``eval: {suite: ...}``) may be the very suite that names the job as its model:
    each loads the other once, not forever."""
    from harness.suite import load_suite
    from harness.training.job import JOB_KEYS, load_job

    if "eval" not in JOB_KEYS:
        pytest.skip("job files have no eval key in this version")
    job = tmp_path / "training" / "sft_capitals"
    job.mkdir(parents=True)
    (job / "job.yaml").write_text("trainer: sft\nmodel: {tiny: {}}\ntokenizer: {train: {vocab_size: 512}}\n"
                                  "dataset: data.jsonl\n"
                                  "eval: {suite: ../../evals/capitals_trained}\n")
    (job / "data.jsonl").write_text(json.dumps({"prompt": "Capital of France?", "completion": "Paris"}) + "\n")
    suite = write_suite(tmp_path / "evals", "capitals_trained", CAPITAL_CASES[:2],
                        model={"train": "../../training/sft_capitals"}) / "suite.yaml"
    loaded = load_suite(suite)
    assert loaded.trained is not None and loaded.trained.names == ("sft_capitals-initial", "sft_capitals")
    assert load_job(job / "job.yaml").eval["suite"] == str(suite.resolve())
