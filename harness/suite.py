"""Reading suite files (YAML) and their JSONL cases into frozen objects.

Every problem in user input raises :class:`SuiteError`, which names the file and line.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import yaml

from harness.robustness import RobustnessSpec, parse_robustness

SUITE_FILE_NAMES = ("suite.yaml", "suite.yml")
SUITE_FILE_GLOBS = ("*.suite.yaml", "*.suite.yml")
GLOB_CHARS = frozenset("*?[")
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
API_MODES = ("chat", "completion")
GENERATION_KEYS = ("max_tokens", "temperature", "top_p", "stop", "seed")
SUITE_KEYS = {
    "name", "description", "dataset", "datasets", "fields", "prompt", "api", "chat_template",
    "generation", "extract", "scorer", "pass", "gates", "markers", "extra_body", "robustness", "truncated", "model",
}
MODEL_KEYS = ("train", "compare")  # a suite's own model: model: {train: <job>, compare: initial | false}
LINE_ID = "@line"
_SURROGATE = re.compile("[\ud800-\udfff]")
_DATASET_ENTRIES: dict[Path, tuple[str, ...]] = {}  # suite file -> its dataset entries, to see a glob's matches change
_GENERATIONS: dict[Path, int] = {}  # folder -> how often its suites were reloaded for that reason
_ROOT: list[Path] = []  # the pytest rootdir (harness.plugin sets it): a suite's model.train may be relative to it
_JOBS_LOADING: set[Path] = set()  # job files loading for a suite's model (a job's eval suite may name the job)


class SuiteError(Exception):
    """Bad user input in a suite or dataset file; names the file and line."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, eq=False, slots=True, weakref_slot=True)
class Case:
    """One eval case: what goes to the model and what it is judged against.

    Slotted: every process holds one per case (the controller until the reports are written)."""

    id: str
    input: Any  # a string, or a list of chat messages
    target: Any
    metadata: dict[str, Any]
    record: dict[str, Any]  # the raw JSONL object, for templates over unmapped fields
    dataset: Path
    line: int
    attack: str | None = None  # a robustness copy: the attack its input went through
    cluster: str | None = None  # cases sharing a context (a document): comparisons resample them together
    human_label: Any = None  # a person's verdict on the reply (``human_label`` field): judges are checked against it


@dataclass(frozen=True)
class PromptSpec:
    system: str | None = None
    template: str = "{{ input }}"
    few_shot: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class TrainedModel:
    """A suite's own model (``model: {train: training/sft_capitals}``): a training job's checkpoint of this
    run, served with the CPU engine (``engine: trained``), and unless ``compare`` is false the job's model
    before training too, listed first: the reference of the suite's comparison gates."""

    job: Path  # the job file, resolved
    job_name: str
    compare: bool = True  # compare: initial (the default) | false
    entry: str = ""  # model.train as the suite file gives it (reports)
    line: int | None = None  # the suite file's line of 'model:', for errors

    @property
    def initial(self) -> str:
        """The model before training: ``<job name>-initial``."""
        return f"{self.job_name}-initial"

    @property
    def names(self) -> tuple[str, ...]:
        """The suite's models, the reference first."""
        return (self.initial, self.job_name) if self.compare else (self.job_name,)

    def reference_of(self, model: str) -> str | None:
        """The model ``model`` is compared against in this suite; None for the reference (or without compare)."""
        return self.initial if self.compare and model == self.job_name else None

    def config_dict(self) -> dict[str, Any]:
        return {"train": self.entry, "job": str(self.job), "compare": "initial" if self.compare else False,
                "models": list(self.names)}


@dataclass(frozen=True, eq=False)
class Suite:
    """A suite file, resolved: where its data is and how its cases are run and judged."""

    name: str
    path: Path
    datasets: tuple[Path, ...]
    fields: dict[str, str]
    prompt: PromptSpec
    api: str
    chat_template: str
    generation: dict[str, Any]
    extract: tuple[Any, ...]
    scorer: str
    scorer_options: dict[str, Any]
    pass_rule: str | None  # None: record only; gates alone judge
    gates: tuple[str, ...]
    markers: tuple[str, ...]
    extra_body: dict[str, Any] = field(default_factory=dict)
    robustness: RobustnessSpec | None = None
    truncated: str = "record"  # a reply cut off at max_tokens: "record" it, or make it an "error"
    trained: TrainedModel | None = None  # model: {train: ...}: the suite runs on its own models only
    judge: Any = None  # harness.judging.spec.JudgeSpec: a model grades the replies (scorer judge, method: judge)

    def config_dict(self) -> dict[str, Any]:
        """The suite's settings as they appear in report metadata."""
        return {
            "name": self.name,
            "path": str(self.path),
            "api": self.api,
            "chat_template": self.chat_template,
            "prompt": {"system": self.prompt.system, "template": self.prompt.template,
                       "few_shot": list(self.prompt.few_shot)},
            "generation": dict(self.generation),
            "extract": list(self.extract),
            "scorer": {"name": self.scorer, "options": dict(self.scorer_options)},
            "pass": self.pass_rule or "record",
            "gates": list(self.gates),
            "robustness": self.robustness.config_dict() if self.robustness else None,
            "truncated": self.truncated,
            **({"model": self.trained.config_dict()} if self.trained is not None else {}),
            **({"judge": self.judge.config_dict()} if self.judge is not None else {}),
        }


def generation_problem(key: str, value: Any) -> str | None:
    """What is wrong with a generation setting's value (a suite's ``generation``, ``--llm-set``), or None: caught
    before the run rather than as every request's HTTP 400. None leaves a setting to the server."""
    if value is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key in ("max_tokens", "seed"):
        if not isinstance(value, int) or isinstance(value, bool) or (key == "max_tokens" and value < 1):
            return f"must be a whole number{' >= 1' if key == 'max_tokens' else ''}, not {value!r}"
    elif key == "temperature":
        if not number or value < 0:
            return f"must be a number >= 0, not {value!r}"
    elif key == "top_p":
        if not number or not 0 < value <= 1:
            return f"must be a number in (0, 1], not {value!r}"
    elif key == "stop":
        if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            return f"must be a string or a list of strings, not {value!r}"
    return None


def _line_of(text: str, key: str) -> int | None:
    """Best-effort line of a top-level key in a YAML text, for error messages."""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith(f"{key}:"):
            return number
    return None


def load_suite(path: Path) -> Suite:
    """Parse and validate one suite file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(path, None, f"cannot read suite file: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise SuiteError(path, line, f"invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(raw, dict):
        raise SuiteError(path, 1, "a suite file must be a YAML mapping")

    def fail(key: str, message: str) -> SuiteError:
        return SuiteError(path, _line_of(text, key), message)

    unknown = sorted(set(raw) - SUITE_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key {unknown[0]!r}; known keys: {', '.join(sorted(SUITE_KEYS))}")

    name = raw.get("name") or path.parent.name
    if not isinstance(name, str) or not name.strip():
        raise fail("name", "'name' must be a non-empty string")

    data = raw.get("datasets", raw.get("dataset"))
    if data is None:
        raise SuiteError(path, None, "missing 'dataset': the JSONL file(s) this suite runs")
    data_key = "datasets" if "datasets" in raw else "dataset"  # the key whose line errors name
    data_list = [data] if isinstance(data, str) else data
    if not isinstance(data_list, list) or not data_list or not all(isinstance(d, str) for d in data_list):
        raise fail(data_key, "'dataset' must be a file name, a glob or a list of them")
    try:
        datasets = resolve_datasets(path.parent, data_list)
    except ValueError as exc:
        raise fail(data_key, str(exc)) from exc
    _DATASET_ENTRIES[path.resolve()] = tuple(data_list)

    fields = {"id": "id", "input": "input", "target": "target", "metadata": "metadata", "cluster": "cluster"}
    # human_label is mapped only when named (a suite's fingerprint in saved baselines stays as it was)
    known_fields = (*fields, "human_label")
    mapped = raw.get("fields") or {}
    if not isinstance(mapped, dict) or not all(isinstance(v, str) for v in mapped.values()):
        raise fail("fields", f"'fields' maps {'/'.join(known_fields)} to your column names")
    bad = set(mapped) - set(known_fields)
    if bad:
        raise fail("fields", f"unknown field {sorted(bad)[0]!r} in 'fields'; use {', '.join(known_fields)}")
    fields.update(mapped)

    prompt_raw = raw.get("prompt") or {}
    if isinstance(prompt_raw, str):
        prompt_raw = {"template": prompt_raw}
    if not isinstance(prompt_raw, dict):
        raise fail("prompt", "'prompt' must be a template string or a mapping")
    unknown_prompt = set(prompt_raw) - {"system", "template", "few_shot"}
    if unknown_prompt:
        raise fail("prompt", f"unknown prompt key {sorted(unknown_prompt)[0]!r}; use system, template, few_shot")
    few_shot = prompt_raw.get("few_shot") or []
    if not isinstance(few_shot, list) or not all(isinstance(s, dict) and "input" in s for s in few_shot):
        raise fail("prompt", "'prompt.few_shot' must be a list of {input, output} examples")
    prompt = PromptSpec(
        system=prompt_raw.get("system"),
        template=prompt_raw.get("template", "{{ input }}"),
        few_shot=tuple(few_shot),
    )
    _check_templates(path, text, prompt)

    api = raw.get("api", "chat")
    if api not in API_MODES:
        raise fail("api", f"'api' must be one of {', '.join(API_MODES)}, not {api!r}")
    from harness.templates import CHAT_TEMPLATES

    chat_template = raw.get("chat_template", "raw")
    if api == "completion" and chat_template not in CHAT_TEMPLATES:
        raise fail("chat_template", f"unknown chat_template {chat_template!r}; known: {', '.join(CHAT_TEMPLATES)}")

    generation = raw.get("generation") or {}
    if not isinstance(generation, dict):
        raise fail("generation", "'generation' must be a mapping")
    unknown_gen = set(generation) - set(GENERATION_KEYS)
    if unknown_gen:
        raise fail("generation", f"unknown generation setting {sorted(unknown_gen)[0]!r}; "
                   f"known: {', '.join(GENERATION_KEYS)} (put other request fields in 'extra_body')")
    for key, value in generation.items():
        if (problem := generation_problem(key, value)) is not None:
            raise SuiteError(path, _sub_line(text, "generation", key) or _line_of(text, "generation"),
                             f"generation.{key}: {problem}")

    extract = raw.get("extract") or []
    if isinstance(extract, (str, dict)):
        extract = [extract]
    from harness.scoring.extract import validate_steps

    try:
        validate_steps(extract)
    except ValueError as exc:
        raise fail("extract", str(exc)) from exc

    scorer_raw = raw.get("scorer", "exact_match")
    if isinstance(scorer_raw, str):
        scorer, scorer_options = scorer_raw, {}
    elif isinstance(scorer_raw, dict) and isinstance(scorer_raw.get("name"), str):
        scorer = scorer_raw["name"]
        scorer_options = {k: v for k, v in scorer_raw.items() if k != "name"}
        scorer_options = scorer_options.get("options", scorer_options)
    else:
        raise fail("scorer", "'scorer' must be a scorer name or a mapping with 'name'")
    try:
        scorer_options = _resolve_files(scorer_options, path.parent)
    except FileNotFoundError as exc:
        raise fail("scorer", f"scorer option {exc.args[0]!r}: file {exc.args[1]!r} not found") from exc
    from harness.judging.options import split_judge

    try:
        judge, scorer_options = split_judge(scorer, scorer_options, f"scorer {scorer!r}")
    except ValueError as exc:
        raise fail("scorer", str(exc)) from exc

    # a pairwise case passes unless the reference's answer won (a tie scores 0.5)
    pass_rule = raw.get("pass", "score >= 0.5" if scorer == "judge_pairwise" else "score >= 1")
    if pass_rule in ("record", None, False):
        pass_rule = None
    else:
        from harness.gates import parse_gate

        try:
            rule = parse_gate(str(pass_rule))
        except ValueError as exc:
            raise fail("pass", f"bad pass rule: {exc}") from exc
        if rule.metric != "score":
            raise fail("pass", f"a pass rule judges 'score', not {rule.metric!r} (e.g. 'score >= 1', or 'record')")
        pass_rule = str(pass_rule)

    gates = raw.get("gates") or []
    if isinstance(gates, str):
        gates = [gates]
    if not isinstance(gates, list):
        raise fail("gates", "'gates' must be a list of expressions like 'f1 >= 0.75'")
    from harness.gates import parse_gate

    for gate in gates:
        try:
            parse_gate(str(gate))
        except ValueError as exc:
            raise fail("gates", f"bad gate {gate!r}: {exc}") from exc

    markers = raw.get("markers") or []
    if isinstance(markers, str):
        markers = [markers]

    extra_body = raw.get("extra_body") or {}
    if not isinstance(extra_body, dict):
        raise fail("extra_body", "'extra_body' must be a mapping of extra request fields")

    try:
        robustness = parse_robustness(raw.get("robustness"))
    except ValueError as exc:
        raise fail("robustness", str(exc)) from exc
    truncated = raw.get("truncated", "record")
    if truncated not in ("record", "error"):
        raise fail("truncated", f"'truncated' must be record or error, not {truncated!r}")
    trained = _trained_model(path, text, raw["model"]) if "model" in raw else None

    return Suite(
        name=name.strip(),
        path=path.resolve(),
        datasets=tuple(datasets),
        fields=fields,
        prompt=prompt,
        api=api,
        chat_template=chat_template,
        generation=dict(generation),
        extract=tuple(extract),
        scorer=scorer,
        scorer_options=dict(scorer_options),
        pass_rule=pass_rule,
        gates=tuple(str(g) for g in gates),
        markers=tuple(str(m) for m in markers),
        extra_body=dict(extra_body),
        robustness=robustness,
        truncated=truncated,
        trained=trained,
        judge=judge,
    )


def set_root(root: Path | None) -> None:
    """The pytest rootdir: a suite's ``model.train`` not found beside the suite file is looked for there
    (the working directory when none is set, as for ``python -m harness.comparison``)."""
    _ROOT[:] = [Path(root).resolve()] if root is not None else []


def _sub_line(text: str, key: str, sub: str) -> int | None:
    """Best-effort line of ``sub`` inside the top-level mapping ``key`` (block or flow style)."""
    start = _line_of(text, key)
    if start is None:
        return None
    lines = text.splitlines()
    pattern = re.compile(rf"(^|[\s{{,]){re.escape(sub)}\s*:")
    for number in range(start, len(lines) + 1):
        line = lines[number - 1]
        if number > start and line[:1] not in (" ", "\t", "#", ""):
            break  # the next top-level key
        if pattern.search(line.split("#", 1)[0] if number > start else line.partition(":")[2].split("#", 1)[0]):
            return number
    return start


def _trained_model(path: Path, text: str, raw: Any) -> TrainedModel:
    """``model: {train: <job folder or job.yaml>, compare: initial | false}``: the path is relative to the
    suite's folder, else to the rootdir; the job is loaded (YAML and its data's first rows, no torch)."""
    from harness.training.job import JOB_FILE_NAMES, JobError, is_job_file, load_job

    def fail(sub: str | None, message: str) -> SuiteError:
        line = _sub_line(text, "model", sub) if sub else _line_of(text, "model")
        return SuiteError(path, line, message)

    shape = "model: {train: <job folder or job.yaml>, compare: initial | false}"
    if not isinstance(raw, dict):
        raise fail(None, f"'model' must be a mapping, {shape}, not {raw!r}")
    unknown = sorted(str(k) for k in raw if k not in MODEL_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown model key {unknown[0]!r}; known: {', '.join(MODEL_KEYS)} ({shape})")
    entry = raw.get("train")
    if "train" not in raw:
        raise fail(None, f"'model' needs 'train': the training job whose checkpoint this suite evaluates ({shape})")
    if not isinstance(entry, str) or not entry.strip():
        raise fail("train", f"'model.train' must be a job folder or job.yaml path, not {entry!r}")
    compare = raw.get("compare", "initial")
    if compare not in ("initial", False):
        raise fail("compare", f"'model.compare' must be initial (compare with the model before training, the "
                              f"default) or false (the trained model only), not {compare!r}")
    roots = [path.parent.resolve(), *(_ROOT or [Path.cwd().resolve()])]
    found = next((candidate for root in roots if (candidate := (root / entry)).exists()), None)
    if found is None:
        raise fail("train", f"'model.train' {entry!r} not found (looked in the suite's folder {roots[0]} and the "
                            f"rootdir {roots[1]})")
    job = found = found.resolve()
    if found.is_dir():
        job = next((found / name for name in JOB_FILE_NAMES if is_job_file(found / name)), found / JOB_FILE_NAMES[0])
    if not is_job_file(job):
        what = f"the folder {found} holds no job file" if found.is_dir() else f"{job} is not a job file"
        raise fail("train", f"'model.train' {entry!r} is not a training job: {what} "
                            f"(a {' or '.join(JOB_FILE_NAMES)} that declares trainer:)")
    job = job.resolve()
    if job in _JOBS_LOADING:  # the job names this suite (its eval or reward): its name is all this needs
        return TrainedModel(job, _job_name(job), compare is not False, entry, _line_of(text, "model"))
    _JOBS_LOADING.add(job)
    try:
        loaded = load_job(job)
    except JobError as exc:
        raise fail("train", f"'model.train' {entry!r}: the training job is not valid: {exc}") from exc
    finally:
        _JOBS_LOADING.discard(job)
    return TrainedModel(loaded.path, loaded.name, compare is not False, entry, _line_of(text, "model"))


def _job_name(job: Path) -> str:
    try:
        raw = yaml.safe_load(job.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        raw = None
    name = raw.get("name") if isinstance(raw, dict) else None
    return name if isinstance(name, str) and name else job.parent.name


def _resolve_files(options: Any, base: Path) -> Any:
    """Scorer options named `*_file` are paths relative to the suite file; made absolute here."""
    if isinstance(options, dict):
        resolved = {}
        for key, value in options.items():
            if isinstance(key, str) and key.endswith("_file") and isinstance(value, str):
                target = (base / value).resolve()
                if not target.is_file():
                    raise FileNotFoundError(key, value)
                resolved[key] = str(target)
            else:
                resolved[key] = _resolve_files(value, base)
        return resolved
    if isinstance(options, list):
        return [_resolve_files(value, base) for value in options]
    return options


def _check_templates(path: Path, text: str, prompt: PromptSpec) -> None:
    import jinja2

    from harness.templates import jinja_env

    for key, source in (("system", prompt.system), ("template", prompt.template)):
        if source is None:
            continue
        try:
            jinja_env().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise SuiteError(path, _line_of(text, "prompt"), f"prompt.{key}: template error: {exc.message}") from exc


def resolve_datasets(folder: Path, entries: list[str] | tuple[str, ...]) -> tuple[Path, ...]:
    """The JSONL files a suite's dataset entries name: paths or globs relative to the suite's folder,
    each glob's matches sorted, a file named twice kept once. Raises ValueError saying what is wrong."""
    root = folder.resolve()
    found: dict[Path, None] = {}
    for entry in entries:
        for dataset in _expand_dataset(root, entry):
            found.setdefault(dataset, None)
    return tuple(found)


def _expand_dataset(root: Path, entry: str) -> list[Path]:
    if not Path(entry).name.endswith(".jsonl"):
        raise ValueError(f"dataset {entry!r} must be a .jsonl file, or a glob of them such as 'data/*.jsonl'")
    if not GLOB_CHARS.intersection(entry):
        return [_dataset_in(root, repr(entry), root / entry)]
    # glob.glob, not Path.glob: as in a shell, a wildcard does not match hidden files and folders
    # (.ipynb_checkpoints, .cache), which pytest does not collect either
    matches = sorted(glob.glob(entry, root_dir=root, recursive=True))
    if not matches:
        raise ValueError(f"dataset glob {entry!r} matches no file in {root}")
    return [_dataset_in(root, f"{entry!r} (match {match!r})", root / match) for match in matches]


def _dataset_in(root: Path, label: str, candidate: Path) -> Path:
    """One dataset, resolved; it must be a file in the suite's folder or below it."""
    dataset = candidate.resolve()
    if not dataset.is_relative_to(root):
        link = " is a link to a file that" if Path(os.path.normpath(candidate)).is_relative_to(root) else ""
        raise ValueError(f"dataset {label}{link} lies outside the suite folder {root}: "
                         "a suite's data lies in its folder or below it")
    if dataset.is_dir():
        raise ValueError(f"dataset {label} is a directory, not a JSONL file")
    if not dataset.is_file():
        raise ValueError(f"dataset {label} not found")
    return dataset


def _globs_current(suite: Suite) -> bool:
    """Whether the suite's dataset globs still match the files it was loaded with."""
    entries = _DATASET_ENTRIES.get(suite.path, ())
    if not any(GLOB_CHARS.intersection(entry) for entry in entries):
        return True
    try:
        return resolve_datasets(suite.path.parent, entries) == suite.datasets
    except ValueError:
        return False


def is_suite_file_name(path: Path) -> bool:
    """Whether a path is named as a suite file is (suite.yaml, x.suite.yml, ...)."""
    return path.name in SUITE_FILE_NAMES or any(fnmatch.fnmatchcase(path.name, p) for p in SUITE_FILE_GLOBS)


def _suite_named(directory: Path) -> list[Path]:
    """The entries of a folder named as suite files are, whatever they are (a folder named suite.yaml too)."""
    found = [directory / n for n in SUITE_FILE_NAMES if (directory / n).exists()]
    for pattern in SUITE_FILE_GLOBS:
        found.extend(sorted(directory.glob(pattern)))
    return found


def suite_files_in(directory: Path) -> list[Path]:
    return [path for path in _suite_named(directory) if path.is_file()]


def _levels(folder: Path, top: Path | None) -> list[Path]:
    """folder and the folders above it, up to top (every one when top is None or not above folder)."""
    levels = [folder, *folder.parents]
    top = top.resolve() if top is not None else None
    if top is not None and folder.is_relative_to(top):
        return levels[:len(folder.relative_to(top).parts) + 1]
    return levels


def under_suite(file_path: Path, top: Path | None = None) -> bool:
    """Whether a suite file (or a folder named as one) lies in the file's folder or above it, up to top."""
    return any(_suite_named(level) for level in _levels(file_path.resolve().parent, top))


@lru_cache(maxsize=None)
def _suites_in(directory: Path, stamp: tuple[tuple[str, int, int], ...], generation: int,
               root: tuple[Path, ...] = ()) -> tuple[Suite, ...]:
    return tuple(load_suite(Path(p)) for p, _, _ in stamp)


def suites_in(directory: Path) -> tuple[Suite, ...]:
    """All suites defined in one directory: the same objects until a suite file changes or a dataset
    glob matches other files (collection and the run's plan match suites by identity)."""
    directory = directory.resolve()
    stamp = tuple((str(p), st.st_mtime_ns, st.st_size) for p in suite_files_in(directory) for st in [p.stat()])
    # the rootdir is part of the key: a suite's model.train may be relative to it
    suites = _suites_in(directory, stamp, _GENERATIONS.get(directory, 0), tuple(_ROOT))
    if not all(_globs_current(suite) for suite in suites):
        _GENERATIONS[directory] = _GENERATIONS.get(directory, 0) + 1
        suites = _suites_in(directory, stamp, _GENERATIONS[directory], tuple(_ROOT))
    return suites


def suite_for_dataset(dataset: Path, top: Path | None = None) -> Suite | None:
    """The suite that lists this JSONL file, from its folder or a folder above it up to top; None when
    no suite claims it. Raises when several do, or when none does and a suite file above is broken
    (that suite may be the file's own)."""
    dataset = dataset.resolve()
    owners: list[Suite] = []
    problems: list[SuiteError] = []
    for level in _levels(dataset.parent, top):
        problems.extend(SuiteError(named, None, "a folder where a suite file should be: a suite file is a YAML file")
                        for named in _suite_named(level) if named.is_dir())
        try:
            owners.extend(suite for suite in suites_in(level) if dataset in suite.datasets)
        except SuiteError as exc:
            problems.append(exc)
    if len(owners) > 1:
        raise SuiteError(dataset, None, f"claimed by several suites: {', '.join(str(s.path) for s in owners)}")
    if not owners and problems:
        raise problems[0]
    return owners[0] if owners else None


def load_cases(suite: Suite, dataset: Path) -> list[Case]:
    """Read one dataset of a suite; every bad line raises a SuiteError naming it.

    UTF-8, one JSON object a line; a byte order mark, CRLF line ends and blank lines are accepted."""
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for number, record in _records(dataset):
        cases.append(_case(suite, dataset, number, record, seen))
    if not cases:
        raise SuiteError(dataset, None, "no cases: the dataset holds no JSON line (a suite runs at least one case)")
    return cases


def _records(dataset: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) of every non-blank line of a JSONL file."""
    try:
        handle = dataset.open("rb")
    except OSError as exc:
        raise SuiteError(dataset, None, f"cannot read dataset: {exc}") from exc
    offset = 0
    number = 0
    with handle:
        while True:
            try:
                raw = handle.readline()
            except OSError as exc:
                raise SuiteError(dataset, number + 1, f"cannot read dataset: {exc}") from exc
            if not raw:
                return
            number += 1
            text = _decode(dataset, number, offset, raw)
            offset += len(raw)
            if text.strip(" \t\r\n"):
                yield number, _parse(dataset, number, text)


def _decode(dataset: Path, number: int, offset: int, raw: bytes) -> str:
    """One line as text; a BOM at its start (the file's, or a concatenated file's) is dropped."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = ""
        if number == 1 and raw.startswith(UTF16_BOMS):
            hint = "; the file is UTF-16 (it starts with a UTF-16 byte order mark): save it as UTF-8"
        raise SuiteError(dataset, number, f"not UTF-8: byte 0x{raw[exc.start]:02x} at byte offset "
                                          f"{offset + exc.start} of the file (byte {exc.start + 1} of the line)"
                                          f"{hint}") from exc
    return text.removeprefix("\ufeff")


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
               type(None): "null"}


def _parse(dataset: Path, number: int, text: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SuiteError(dataset, number, f"malformed JSON: {exc.msg} (column {exc.colno})") from exc
    except ValueError as exc:  # an integer of over 4300 digits
        raise SuiteError(dataset, number, f"malformed JSON: {exc}") from exc
    except RecursionError as exc:
        raise SuiteError(dataset, number, "malformed JSON: arrays or objects nested too deeply") from exc
    if not isinstance(record, dict):
        raise SuiteError(dataset, number, f"each line must be a JSON object, not {_JSON_TYPES[type(record)]}")
    # every line spells the same field names: one copy of each, not one per case (a million cases
    # kept three of them each, in every process)
    return {sys.intern(key): value for key, value in record.items()}


def _case(suite: Suite, dataset: Path, number: int, record: dict[str, Any], seen: dict[str, int]) -> Case:
    """One JSON object as a case of the suite; ``seen``: the ids so far and their lines."""
    f = suite.fields
    if f["id"] == LINE_ID:
        case_id = str(number)
    elif f["id"] not in record:
        raise SuiteError(dataset, number, f"missing id field {f['id']!r}")
    else:
        case_id = record[f["id"]]
        if not isinstance(case_id, (str, int)) or isinstance(case_id, bool) or str(case_id).strip() == "":
            raise SuiteError(dataset, number, f"id {case_id!r} must be a non-empty string or an integer")
        case_id = str(case_id)
        if _SURROGATE.search(case_id):
            # valid JSON, but no UTF-8 text (terminal, JUnit XML, reports) can hold it: the id names them all
            shown = case_id.encode("utf-8", "backslashreplace").decode()
            raise SuiteError(dataset, number, f"id '{shown}' holds a lone UTF-16 surrogate escape, which is not text")
    if case_id in seen:
        raise SuiteError(dataset, number, f"duplicate id {case_id!r} (first on line {seen[case_id]})")
    seen[case_id] = number
    if f["input"] not in record:
        raise SuiteError(dataset, number, f"missing input field {f['input']!r}")
    value = record[f["input"]]
    if not isinstance(value, (str, list)):
        raise SuiteError(dataset, number, "input must be a string or a list of chat messages")
    if isinstance(value, list) and not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in value
    ):
        raise SuiteError(dataset, number, "a messages input must be a list of {role, content} objects")
    if f["target"] not in record:
        raise SuiteError(dataset, number, f"missing target field {f['target']!r}")
    metadata = record.get(f["metadata"]) or {}
    if not isinstance(metadata, dict):
        raise SuiteError(dataset, number, "metadata must be a JSON object")
    cluster = record.get(f["cluster"])
    if cluster is not None and (not isinstance(cluster, (str, int)) or isinstance(cluster, bool)):
        raise SuiteError(dataset, number, f"cluster {cluster!r} must be a string or an integer")
    return Case(case_id, value, record[f["target"]], metadata, record, dataset, number,
                cluster=None if cluster is None else str(cluster), human_label=record.get(f.get("human_label", "human_label")))


def file_digest(path: Path) -> tuple[str, int]:
    """md5 and non-empty line count of a dataset, for report metadata."""
    md5 = hashlib.md5()
    rows = 0
    with path.open("rb") as handle:
        for line in handle:
            md5.update(line)
            if line.strip():
                rows += 1
    return md5.hexdigest(), rows
