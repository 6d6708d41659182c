"""One model under several generation settings: models-file variants (variant_of, generation) served by
one engine, and --llm-set overriding a setting for every suite."""

from __future__ import annotations

import json

import pytest
import yaml

import harness.generation  # noqa: F401  (loaded once here: pytester's in-process runs drop what they import)
import harness.report  # noqa: F401
import harness.testing.scripted  # noqa: F401
from tests.conftest import load_report, run_inline, write_suite

# records every request the run builds: (the model of the run, the model named in the request, its settings)
RECORDER = '''
import json, pathlib

def pytest_llm_build_request(suite, case, model, request):
    with pathlib.Path("requests.jsonl").open("a") as f:
        f.write(json.dumps({"model": model, "sent_as": request.model, "params": request.params}) + "\\n")
'''


def setup(pytester: pytest.Pytester, entries: list[dict], **suite: object) -> None:
    (pytester.path / "models.yaml").write_text(yaml.safe_dump(entries), encoding="utf-8")
    (pytester.path / "conftest.py").write_text(RECORDER, encoding="utf-8")
    write_suite(pytester.path / "evals", "s", [{"id": f"c{i}", "input": f"q{i}\nANSWER: a", "target": "a"}
                                                for i in range(3)], **suite)


def built(pytester: pytest.Pytester) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for line in (pytester.path / "requests.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.setdefault(row["model"], []).append(row)
    return out


VARIANTS = [{"name": "base", "engine": "scripted"},
            {"name": "hot", "variant_of": "base", "generation": {"temperature": 0.7, "seed": 3}}]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_two_variants_of_one_model_run_side_by_side_on_one_engine(pytester, workers):
    setup(pytester, VARIANTS, generation={"temperature": 0, "max_tokens": 8})
    result = run_inline(pytester, "-n", workers, "evals")
    result.assert_outcomes(passed=6)
    requests = built(pytester)
    assert {r["sent_as"] for rows in requests.values() for r in rows} == {"base"}  # the engine's own name
    assert {r["params"]["temperature"] for r in requests["base"]} == {0}
    assert {(r["params"]["temperature"], r["params"]["seed"], r["params"]["max_tokens"]) for r in requests["hot"]} \
        == {(0.7, 3, 8)}  # the variant's settings over the suite's; the rest from the suite
    report = load_report(pytester)
    models = {m["name"]: m for m in report["run"]["models"]}
    assert models["hot"]["variant_of"] == "base" and models["hot"]["generation"] == {"temperature": 0.7, "seed": 3}
    assert models["hot"]["engine"] == models["base"]["engine"]  # one engine served both
    assert report["comparison"]["pairs"][0]["candidate"] == "hot"  # a comparison run, base the reference
    assert report["run"]["generation"]["requests"] == 6  # different settings: different requests, none shared


def test_llm_set_overrides_every_suite_and_a_variants_own_setting_wins(pytester):
    setup(pytester, VARIANTS, generation={"temperature": 0, "max_tokens": 8})
    result = run_inline(pytester, "evals", "--llm-set", "temperature=0.3", "--llm-set", "max_tokens=5",
                        "--llm-set", "stop=[END]")
    result.assert_outcomes(passed=6)
    requests = built(pytester)
    assert {(r["params"]["temperature"], r["params"]["max_tokens"], tuple(r["params"]["stop"]))
            for r in requests["base"]} == {(0.3, 5, ("END",))}
    assert {r["params"]["temperature"] for r in requests["hot"]} == {0.7}
    assert load_report(pytester)["run"]["generation"]["set"] == {"temperature": 0.3, "max_tokens": 5, "stop": ["END"]}


def test_llm_set_changes_the_cache_key(pytester):
    setup(pytester, [{"name": "base", "engine": "scripted"}])
    run_inline(pytester, "evals").assert_outcomes(passed=3)
    run_inline(pytester, "evals").assert_outcomes(passed=3)
    assert load_report(pytester)["run"]["generation"]["cached"] == 3
    run_inline(pytester, "evals", "--llm-set", "temperature=0.9").assert_outcomes(passed=3)
    assert load_report(pytester)["run"]["generation"]["cached"] == 0


@pytest.mark.parametrize("args", [["--llm-set", "temprature=0.3"], ["--llm-set", "temperature"]])
def test_a_bad_llm_set_is_a_usage_error(pytester, args):
    setup(pytester, [{"name": "base", "engine": "scripted"}])
    result = run_inline(pytester, "evals", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--llm-set takes KEY=VALUE with KEY one of max_tokens, temperature" in result.stderr.str()


@pytest.mark.parametrize("item, message", [
    ("max_tokens=64k", "max_tokens must be a whole number >= 1, not '64k'"),
    ("max_tokens=0", "max_tokens must be a whole number >= 1, not 0"),
    ("temperature=hot", "temperature must be a number >= 0, not 'hot'"),
    ("top_p=1.5", "top_p must be a number in (0, 1], not 1.5"),
    ("seed=0.5", "seed must be a whole number, not 0.5"),
    ("stop=[a, 1]", "stop must be a string or a list of strings, not ['a', 1]"),
])
def test_a_generation_setting_of_the_wrong_kind_is_refused_before_the_run(pytester, item, message):
    """Caught where it is written (--llm-set, a models file, a suite file), not as every request's HTTP 400."""
    setup(pytester, [{"name": "base", "engine": "scripted"}])
    result = run_inline(pytester, "evals", "--llm-set", item)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"--llm-set {item!r}: {message}" in result.stderr.str()
    key, _, raw = item.partition("=")
    value = yaml.safe_load(raw)
    setup(pytester, [{"name": "base", "engine": "scripted", "generation": {key: value}}])
    result = run_inline(pytester, "evals")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"model 'base': generation.{message}" in result.stderr.str()
    setup(pytester, [{"name": "base", "engine": "scripted"}], generation={"temperature": 0, key: value})
    result = run_inline(pytester, "evals")
    lines = (pytester.path / "evals" / "s" / "suite.yaml").read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if text.strip().startswith(f"{key}:"))
    assert f"suite.yaml:{line}: generation.{key}: {message.split(' ', 1)[1]}" in result.stdout.str()  # its line
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error


@pytest.mark.parametrize("entries, message", [
    ([{"name": "hot", "variant_of": "nowhere"}], "variant_of 'nowhere' is not a model of this file"),
    ([{"name": "base", "engine": "scripted"}, {"name": "hot", "variant_of": "base", "engine": "scripted"}],
     "a variant (variant_of) takes its engine from 'base': 'engine' does not apply"),
    ([{"name": "base", "engine": "scripted"}, {"name": "a", "variant_of": "base"}, {"name": "b", "variant_of": "a"}],
     "itself a variant"),
    ([{"name": "base", "engine": "scripted", "generation": {"temp": 1}}], "unknown generation setting 'temp'"),
])
def test_bad_variants_are_usage_errors_naming_the_model(pytester, entries, message):
    setup(pytester, entries)
    result = run_inline(pytester, "evals")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_a_variant_of_the_bundled_model_needs_no_entry_for_it():
    from harness.models import resolve_models
    from harness.run import RunState, Settings

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "models.yaml"
        path.write_text(yaml.safe_dump([{"name": "greedy", "variant_of": "gemma-3-270m"},
                                        {"name": "t07", "variant_of": "gemma-3-270m",
                                         "generation": {"temperature": 0.7}}]), encoding="utf-8")
        specs = resolve_models([], None, None, str(path), Path(folder))
    assert [s.name for s in specs] == ["greedy", "t07"]  # the bundled model itself is not tested
    state = RunState.new(specs, Settings())
    assert state.served_name("t07") == "gemma-3-270m"
    assert state.engine_of("greedy") is state.engine_of("t07")  # one engine for both


@pytest.mark.parametrize("args, message", [
    (["--llm-concurrency", "0"], "--llm-concurrency (ini llm_concurrency) takes a number >= 1, not 0"),
    (["--llm-timeout", "-1"], "--llm-timeout (ini llm_timeout) takes a number > 0, not -1"),
    (["--llm-retries", "-1"], "--llm-retries (ini llm_retries) takes a number >= 0, not -1"),
    (["--llm-deadline", "-5"], "--llm-deadline (ini llm_deadline) takes a number >= 0, not -5"),
    (["--llm-wait-interval", "0"], "--llm-wait-interval (ini llm_wait_interval) takes a number > 0, not 0"),
    (["-o", "llm_max_batch=0"], "--llm-max-batch (ini llm_max_batch) takes a number >= 1, not 0"),
])
def test_a_number_option_out_of_its_range_is_a_usage_error(pytester, args, message):
    """A timeout of 0 used to time out every request; a concurrency of 0 was quietly taken as 1."""
    setup(pytester, [{"name": "base", "engine": "scripted"}])
    result = run_inline(pytester, "evals", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"llm-harness: {message}" in result.stderr.str()
    # 0 turns off the deadline and the progress lines
    run_inline(pytester, "evals", "--llm-deadline", "0", "--llm-progress", "0").assert_outcomes(passed=3)

