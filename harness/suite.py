"""Reading suite files (YAML) and their JSONL cases into frozen objects.

Every problem in user input raises :class:`SuiteError`, which names the file and line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from harness.robustness import RobustnessSpec, parse_robustness

SUITE_FILE_NAMES = ("suite.yaml", "suite.yml")
SUITE_FILE_GLOBS = ("*.suite.yaml", "*.suite.yml")
API_MODES = ("chat", "completion")
GENERATION_KEYS = ("max_tokens", "temperature", "top_p", "stop", "seed")
SUITE_KEYS = {
    "name", "description", "dataset", "datasets", "fields", "prompt", "api", "chat_template",
    "generation", "extract", "scorer", "pass", "gates", "markers", "extra_body", "robustness",
}
LINE_ID = "@line"


class SuiteError(Exception):
    """Bad user input in a suite or dataset file; names the file and line."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, eq=False)
class Case:
    """One eval case: what goes to the model and what it is judged against."""

    id: str
    input: Any  # a string, or a list of chat messages
    target: Any
    metadata: dict[str, Any]
    record: dict[str, Any]  # the raw JSONL object, for templates over unmapped fields
    dataset: Path
    line: int
    attack: str | None = None  # a robustness copy: the attack its input went through


@dataclass(frozen=True)
class PromptSpec:
    system: str | None = None
    template: str = "{{ input }}"
    few_shot: tuple[dict[str, Any], ...] = ()


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
        }


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
    if not isinstance(data_list, list) or not all(isinstance(d, str) for d in data_list):
        raise fail(data_key, "'dataset' must be a file name or a list of file names")
    datasets = []
    for entry in data_list:
        dataset = (path.parent / entry).resolve()
        if dataset.suffix != ".jsonl":
            raise fail(data_key, f"dataset {entry!r} must be a .jsonl file")
        if dataset.parent != path.parent.resolve():
            raise fail(data_key, f"dataset {entry!r} must lie beside the suite file")
        if not dataset.is_file():
            raise fail(data_key, f"dataset {entry!r} not found")
        datasets.append(dataset)

    fields = {"id": "id", "input": "input", "target": "target", "metadata": "metadata"}
    mapped = raw.get("fields") or {}
    if not isinstance(mapped, dict) or not all(isinstance(v, str) for v in mapped.values()):
        raise fail("fields", "'fields' maps id/input/target/metadata to your column names")
    bad = set(mapped) - set(fields)
    if bad:
        raise fail("fields", f"unknown field {sorted(bad)[0]!r} in 'fields'; use id, input, target, metadata")
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

    pass_rule = raw.get("pass", "score >= 1")
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
    )


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


def suite_files_in(directory: Path) -> list[Path]:
    found = [directory / n for n in SUITE_FILE_NAMES if (directory / n).is_file()]
    for pattern in SUITE_FILE_GLOBS:
        found.extend(sorted(directory.glob(pattern)))
    return found


@lru_cache(maxsize=None)
def _suites_in(directory: Path, stamp: tuple[tuple[str, float], ...]) -> tuple[Suite, ...]:
    return tuple(load_suite(Path(p)) for p, _ in stamp)


def suites_in(directory: Path) -> tuple[Suite, ...]:
    """All suites defined in one directory (cached until a suite file changes)."""
    files = suite_files_in(directory)
    stamp = tuple((str(p), p.stat().st_mtime) for p in files)
    return _suites_in(directory.resolve(), stamp)


def suite_for_dataset(dataset: Path) -> Suite | None:
    """The suite that lists this JSONL file, or None when no suite claims it."""
    dataset = dataset.resolve()
    owners = [s for s in suites_in(dataset.parent) if dataset in s.datasets]
    if len(owners) > 1:
        raise SuiteError(dataset, None, f"claimed by several suites: {', '.join(str(s.path) for s in owners)}")
    return owners[0] if owners else None


def load_cases(suite: Suite, dataset: Path) -> list[Case]:
    """Read one dataset of a suite; every bad line raises a SuiteError naming it."""
    cases: list[Case] = []
    seen: dict[str, int] = {}
    f = suite.fields
    try:
        handle = dataset.open(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(dataset, None, f"cannot read dataset: {exc}") from exc
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SuiteError(dataset, number, f"malformed JSON: {exc.msg} (column {exc.colno})") from exc
            if not isinstance(record, dict):
                raise SuiteError(dataset, number, "each line must be a JSON object")
            if f["id"] == LINE_ID:
                case_id = str(number)
            elif f["id"] not in record:
                raise SuiteError(dataset, number, f"missing id field {f['id']!r}")
            else:
                case_id = record[f["id"]]
                if not isinstance(case_id, (str, int)) or isinstance(case_id, bool) or str(case_id).strip() == "":
                    raise SuiteError(dataset, number, f"id {case_id!r} must be a non-empty string or an integer")
                case_id = str(case_id)
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
            cases.append(Case(case_id, value, record[f["target"]], metadata, record, dataset, number))
    return cases


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
