"""The CI and platform templates under ci/: each parses, every command it runs invokes this project as
it really is (options pytest accepts with the plugin, harness modules and subcommands that exist,
installs from the checkout with real extras, scripts that exist), and ci/run_eval.sh behaves as the
platform jobs rely on (indicator files collected, pytest's exit code, an empty run fails)."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.conftest import answer_cases, scripted_models, write_suite

ROOT = Path(__file__).resolve().parent.parent
CI = ROOT / "ci"
RUN_EVAL = CI / "run_eval.sh"
SHELL_SUFFIXES = (".sh", ".sbatch")
TEMPLATES = sorted(p for p in CI.rglob("*") if p.is_file() and p.name != "README.md" and "__pycache__" not in p.parts)
EXPECTED = {"run_eval.sh", "github/eval.yml", "github/eval-vs-base.yml", "github/nightly-baseline.yml",
            "github/compare-models.yml", "gitlab/.gitlab-ci.yml", "platforms/azureml-job.yml",
            "platforms/dgx-slurm.sbatch", "platforms/volcengine-task.yaml", "platforms/bailian-job.yaml"}
# keys of the platform job specs that hold the command they run (Args is appended to Entrypoint)
COMMAND_KEYS = (("command",), ("Entrypoint", "Args"), ("UserCommand",))
SEPARATOR = re.compile(r"[;&|()<>]+")


def rel(path: Path) -> str:
    return path.relative_to(CI).as_posix()


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# -- what the templates run ------------------------------------------------------------------------


def scripts(path: Path) -> list[str]:
    """Every shell script text the template runs."""
    if path.suffix in SHELL_SUFFIXES:
        return [path.read_text(encoding="utf-8")]
    doc = load(path)
    if rel(path).startswith("github/"):
        return [step["run"] for job in doc["jobs"].values() for step in job.get("steps", []) if "run" in step]
    if path.name == ".gitlab-ci.yml":
        jobs = [job for job in doc.values() if isinstance(job, dict)]
        return [line for job in jobs for key in ("before_script", "script", "after_script")
                for line in _flatten(job.get(key))]
    for keys in COMMAND_KEYS:
        if keys[0] in doc:
            return [" ".join(str(doc[k]) for k in keys if doc.get(k))]
    return []


def _flatten(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):  # GitLab allows nested lists (from !reference)
        for item in value:
            yield from _flatten(item)


def simple_commands(script: str) -> list[list[str]]:
    """Token lists of the simple commands in a script: continuations joined, GitHub ${{ }} expressions
    made one word, comments dropped, split at ; && || | ( ) and redirections."""
    text = re.sub(r"\$\{\{.*?\}\}", "EXPR", script, flags=re.S)
    text = re.sub(r"\\\n", " ", text)
    commands: list[list[str]] = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if SEPARATOR.fullmatch(token):
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


def invocations(command: list[str]) -> Iterator[tuple[str, list[str]]]:
    """(kind, arguments) of each invocation of this project in a simple command (after env
    assignments and wrappers such as srun): pytest, pip, a harness module, a script of ci/."""
    for i, token in enumerate(command):
        name = token.rsplit("/", 1)[-1]
        rest = command[i + 1:]
        if name in ("pytest", "py.test"):
            yield "pytest", rest
            return
        if re.fullmatch(r"python(3(\.\d+)?)?", name) and rest[:1] == ["-m"] and len(rest) > 1:
            module, args = rest[1], rest[2:]
            if module == "pytest":
                yield "pytest", args
            elif module == "pip":
                yield "pip", args
            elif module.split(".")[0] == "harness":
                yield "module", [module, *args]
            return
        if name in ("pip", "pip3"):
            yield "pip", rest
            return
        if token.endswith(SHELL_SUFFIXES) and "ci/" in token:
            yield "script", [token, *rest]
            return


# -- the checks ------------------------------------------------------------------------------------


# Prints every option string of pytest's parser once the installed plugins (this one, xdist) have
# added theirs. `pytest --help` is not enough: its formatter hides aliases such as --junitxml.
PROBE = """
import json, pytest

class Probe:
    @pytest.hookimpl(tryfirst=True)
    def pytest_cmdline_main(self, config):
        parser = config._parser  # private, but the one object that lists every option
        groups = [parser._anonymous, *parser._groups]
        print(json.dumps(sorted({name for g in groups for option in g.options for name in option.names()})))
        return 0

raise SystemExit(pytest.main([], plugins=[Probe()]))
"""


@functools.cache
def known_pytest_options() -> frozenset[str]:
    """Option strings pytest accepts with the installed plugins, read in an empty folder (no conftest.py)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    with tempfile.TemporaryDirectory() as empty:
        result = subprocess.run([sys.executable, "-c", PROBE], cwd=empty, env=env, capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    options = frozenset(json.loads(result.stdout.strip().splitlines()[-1]))
    assert {"--junitxml", "-p", "-n", "--llm-report-dir"} <= options, "the probe did not see pytest's options"
    return options


def pytest_option_problems(args: list[str]) -> list[str]:
    problems = []
    for token in args:
        if token.startswith("${") and ":+-" in token:  # ${VAR:+--llm-base-url "$VAR"}
            token = token.split(":+", 1)[1]
        if not token.startswith("-") or token == "-":
            continue
        name = token.split("=", 1)[0] if token.startswith("--") else token[:2]
        if name not in known_pytest_options():
            problems.append(f"pytest does not accept {name}")
    return problems


@functools.cache
def known_extras() -> frozenset[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return frozenset(tomllib.load(f)["project"]["optional-dependencies"])


def pip_problems(args: list[str]) -> list[str]:
    if args[:1] != ["install"]:
        return []
    targets, tokens = [], iter(args[1:])
    for token in tokens:
        if token in ("-e", "--editable"):
            targets.append(next(tokens, ""))
        elif not token.startswith("-"):
            targets.append(token)
    if not targets:
        return ["pip install names nothing to install"]
    problems = []
    for target in targets:
        match = re.fullmatch(r"\./?(?:\[([^\]]*)\])?", target)
        if not match:
            problems.append(f"pip install {target!r}: install from the checkout ('.', '-e .', '.[extra]')")
            continue
        extras = {e.strip() for e in (match.group(1) or "").split(",") if e.strip()}
        problems += [f"pip install {target!r}: no extra {e!r} in pyproject.toml" for e in sorted(extras - known_extras())]
    return problems


def module_problems(args: list[str]) -> list[str]:
    module, rest = args[0], args[1:]
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        return [f"python -m {module}: no such module"]
    if spec.submodule_search_locations is not None and importlib.util.find_spec(module + ".__main__") is None:
        return [f"python -m {module}: the package has no __main__"]
    command = [module]
    if module == "harness.comparison":
        if rest[:1] != ["report"]:
            return [f"python -m {module}: the subcommand must be 'report', not {rest[:1]}"]
        command.append("report")
    shown = subprocess.run([sys.executable, "-m", *command, "--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    if shown.returncode != 0:
        return [f"python -m {' '.join(command)} --help exits {shown.returncode}: {shown.stderr.strip()[-300:]}"]
    known = set(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", shown.stdout))
    used = {t.split("=", 1)[0] for t in rest if t.startswith("--")}
    return [f"python -m {' '.join(command)} has no option {o}" for o in sorted(used - known)]


def script_problems(args: list[str]) -> list[str]:
    script = args[0]
    path = ROOT / script[script.index("ci/"):]
    if not path.is_file():
        return [f"{script}: no such file in the checkout"]
    # run_eval.sh hands its arguments to pytest
    return pytest_option_problems(args[1:]) if path == RUN_EVAL else []


CHECKS = {"pytest": pytest_option_problems, "pip": pip_problems, "module": module_problems,
          "script": script_problems}


# -- tests -----------------------------------------------------------------------------------------


def test_the_templates_are_all_there():
    found = {rel(p) for p in TEMPLATES}
    assert EXPECTED <= found, f"missing: {sorted(EXPECTED - found)}"
    assert not (CI / "github-actions.yml").exists()  # replaced by github/eval.yml
    readme = (CI / "README.md").read_text(encoding="utf-8")
    assert all(name in readme for name in found), "ci/README.md should list every template"


@pytest.mark.parametrize("path", TEMPLATES, ids=rel)
def test_template_parses(path: Path):
    if path.suffix in SHELL_SUFFIXES:
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    else:
        assert isinstance(load(path), dict)


@pytest.mark.parametrize("path", TEMPLATES, ids=rel)
def test_template_commands_are_real(path: Path):
    commands = [c for script in scripts(path) for c in simple_commands(script)]
    found = [(kind, args) for command in commands for kind, args in invocations(command)]
    assert any(kind in ("pytest", "script") for kind, _ in found), f"{rel(path)} runs no eval: {commands}"
    problems = [p for kind, args in found for p in CHECKS[kind](args)]
    problems += [f"pushes with git: {' '.join(c)}" for c in commands if c[:2] == ["git", "push"]]
    assert not problems, f"{rel(path)}:\n" + "\n".join(problems)


def test_the_command_parser_sees_what_bash_runs():
    script = ('pytest evals/ -n 2 \\\n  --llm-report-dir "reports/${{ matrix.id }}" ${URL:+--llm-base-url "$URL"} '
              '|| [ $? -eq 1 ]\nLLM_REPORT_DIR=x srun --ntasks=1 bash ci/run_eval.sh --llm-nope  # comment --llm-x\n'
              'python -m pip install -q ".[dev,nope]" && python3 -m harness.nope')
    found = [(k, a) for c in simple_commands(script) for k, a in invocations(c)]
    assert [k for k, _ in found] == ["pytest", "script", "pip", "module"]
    assert found[0][1] == ["evals/", "-n", "2", "--llm-report-dir", "reports/EXPR", "${URL:+--llm-base-url", "$URL}"]
    assert pytest_option_problems(found[0][1]) == []
    assert script_problems(found[1][1]) == ["pytest does not accept --llm-nope"]
    assert pip_problems(found[2][1]) == ["pip install '.[dev,nope]': no extra 'nope' in pyproject.toml"]
    assert pip_problems(["install", "pytest-llm-harness[cpu]"])  # the old template's line: not the checkout
    assert module_problems(found[3][1]) == ["python -m harness.nope: no such module"]


GITHUB = [p for p in TEMPLATES if rel(p).startswith("github/")]


@pytest.mark.parametrize("path", GITHUB, ids=rel)
def test_github_reports_are_kept_and_the_gate_still_fails(path: Path):
    """After the step that runs the suites, the upload/summary/comment steps run always, and nothing
    lets the suites' step pass when pytest fails."""
    for job in load(path)["jobs"].values():
        steps = job.get("steps", [])
        runs = [i for i, s in enumerate(steps) if "pytest" in str(s.get("run", ""))]
        if not runs:
            continue
        assert not any(steps[i].get("continue-on-error") for i in runs)
        assert "continue-on-error" not in job
        after = steps[runs[-1] + 1:]
        reporting = [s for s in after if "upload-artifact" in s.get("uses", "") or "GITHUB_STEP_SUMMARY" in
                     str(s.get("run", "")) or "github-script" in s.get("uses", "")]
        assert any("upload-artifact" in s.get("uses", "") for s in reporting)
        assert all("always()" in str(s.get("if", "")) for s in reporting), [s.get("name") for s in reporting]


def test_github_eval_summarises_and_comments():
    doc = load(CI / "github" / "eval.yml")
    assert doc[True] == {"pull_request": None}  # YAML 1.1 reads the key `on` as True
    assert doc["permissions"]["pull-requests"] == "write"
    steps = doc["jobs"]["eval"]["steps"]
    assert any("GITHUB_STEP_SUMMARY" in s.get("run", "") and "report.md" in s.get("run", "") for s in steps)
    assert any(s.get("uses", "").startswith("actions/github-script") for s in steps)
    assert any("pytest-llm-harness" in str(s.get("with", {}).get("path", "")) for s in steps)  # the cache


def test_gitlab_stages_and_artifacts():
    doc = load(CI / "gitlab" / ".gitlab-ci.yml")
    assert doc["stages"] == ["baseline", "candidate", "regression-check"]
    jobs = {name: job for name, job in doc.items() if isinstance(job, dict) and "stage" in job}
    assert sorted(job["stage"] for job in jobs.values()) == sorted(doc["stages"])
    assert all(job["artifacts"].get("expire_in") for job in jobs.values())
    assert "CI_MERGE_REQUEST_DIFF_BASE_SHA" in " ".join(jobs["baseline"]["script"])
    assert jobs["candidate"]["artifacts"]["reports"]["junit"]


def test_azureml_job_shape():
    doc = load(CI / "platforms" / "azureml-job.yml")
    assert doc["$schema"] == "https://azuremlschemas.azureedge.net/latest/commandJob.schema.json"
    assert doc["type"] == "command" and doc["environment"] and doc["outputs"]
    assert (CI / "platforms" / doc["code"]).resolve() == ROOT  # the upload is the repository root
    assert "bash ci/run_eval.sh" in doc["command"]


# -- ci/run_eval.sh --------------------------------------------------------------------------------


def run_eval(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.RunResult:
    """ci/run_eval.sh copied into a pytester project, on the scripted engine (no install, no server)."""
    script = pytester.path / "ci" / "run_eval.sh"
    script.parent.mkdir(exist_ok=True)
    script.write_text(RUN_EVAL.read_text(encoding="utf-8"), encoding="utf-8")
    scripted_models(pytester)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LLM_REPORT_DIR", "out")
    monkeypatch.setenv("LLM_INDICATOR_DIR", str(pytester.path / "collected"))
    monkeypatch.setenv("LLM_HARNESS_CACHE", str(pytester.path / "harness-cache"))
    monkeypatch.setenv("LLM_INSTALL", "no")
    return pytester.run("bash", str(script), "--llm-models-file", "models.yaml", "--llm-cache-path", "cache.sqlite",
                        "-p", "no:cacheprovider", timeout=300)


@pytest.mark.parametrize(("gate", "exit_code"), [("f1 >= 0.5", 0), ("f1 >= 0.9", 1)])
def test_run_eval_collects_the_indicators_and_exits_like_pytest(pytester, monkeypatch, gate, exit_code):
    # macro F1 of these four answers: (2/3 + 4/5) / 2 = 0.733
    cases = answer_cases([("c1", "pos", "pos"), ("c2", "neg", "neg"), ("c3", "pos", "neg"), ("c4", "neg", "neg")])
    write_suite(pytester.path / "evals", "sentiment", cases, gates=[gate], **{"pass": "record"},
                scorer={"name": "classification_f1", "labels": ["pos", "neg"]})
    result = run_eval(pytester, monkeypatch)
    assert result.ret == exit_code, result.outlines[-20:] + result.errlines[-20:]
    indicator = json.loads((pytester.path / "collected" / "accuracy_f1.json").read_text(encoding="utf-8"))
    assert indicator["indicator"] == "accuracy_f1" and indicator["samples"] == 4
    assert indicator["f1"] == pytest.approx(0.7333, abs=1e-3)
    assert (pytester.path / "collected" / "stub" / "sentiment" / "accuracy_f1.json").is_file()  # per model/suite
    assert (pytester.path / "out" / "junit.xml").is_file() and (pytester.path / "out" / "report.json").is_file()


def test_run_eval_fails_when_nothing_was_collected(pytester, monkeypatch):
    (pytester.path / "evals").mkdir()
    result = run_eval(pytester, monkeypatch)
    assert result.ret == 5
    assert "collected no eval items" in result.stderr.str()
    assert not (pytester.path / "collected").exists()
