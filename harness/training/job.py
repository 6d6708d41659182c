"""Job files (``training/<job>/job.yaml``): loading and validation into :class:`~harness.training.api.TrainJob`.

Every problem raises :class:`JobError`, whose message starts with ``<file>:<line>: `` (the job file,
or the dataset file and row for bad data). Shape and defaults::

    name: sft_capitals            # default: the job's folder name; letters, digits, _ . -
    trainer: sft                  # required: sft | dpo | kto | grpo
    model: {tiny: {layers: 2}}    # required: {tiny: {config overrides}}, {path: local folder, relative to the job}
                                  # or {bundled: gemma-3-270m} (the harness's default model, converted once)
    tokenizer: {train: {vocab_size: 512}}   # or {path: ...} or {bundled: gemma-3-270m}; default: the model's own
    chat_template: chatml         # raw | chatml | qwen | gemma, or Jinja text; default: the tokenizer's
    dataset: data.jsonl           # required: a path, glob or list of them, in the job's folder or below
    fields: {prompt: prompt, completion: completion}   # role -> column; default: each role's own name
    loss: completion_only         # completion_only (default) | assistant_only | full
    config: {max_steps: 20}       # TRL config overrides (output_dir and seed are the harness's); default: {}
    seed: 0                       # default: 0
    gates: [label_mask, "final_loss <= 3.0"]   # default: the trainer's named checks
    markers: []                   # extra pytest markers for the job's gate items
    reward: {suite: evals/capitals}   # grpo (required): an eval suite whose extraction and scorer reward
    eval: {suite: evals/capitals, tolerance: 0.05, padding_side: left, every: 50}   # the suite evaluated in
                                  # training (at the end, and every N steps) and offline on the saved
                                  # checkpoint (check eval_parity)

A suite path is a suite file or its folder, relative to the job's folder or to any folder above it
(``evals/capitals`` from ``training/<job>/`` finds the project's ``evals/capitals``).

Roles per trainer: sft prompt/completion (or ``messages`` alone, conversational), dpo
prompt/chosen/rejected, kto prompt/completion/label (true: desirable), grpo prompt/target (the
target the reward suite scores against). The first rows of every dataset are checked for them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from harness.training.api import TRAINERS, TrainJob

JOB_FILE_NAMES = ("job.yaml", "job.yml")
JOB_KEYS = ("name", "trainer", "model", "tokenizer", "chat_template", "dataset", "datasets", "fields", "loss",
            "config", "seed", "gates", "markers", "reward", "eval")
REQUIRED_KEYS = ("trainer", "model", "dataset")
LOSS_MODES = ("completion_only", "assistant_only", "full")
ROLES: dict[str, tuple[str, ...]] = {
    "sft": ("prompt", "completion"),
    "dpo": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
    "grpo": ("prompt", "target"),
}
CONVERSATIONAL_ROLES = ("messages",)  # sft on whole conversations, instead of prompt/completion
CHECKS = ("label_mask", "training_happened", "stop_tokens", "checkpoint_roundtrip", "reference_model", "trajectory", "padding",
          "grad_accumulation", "eval_parity")
OPT_IN_CHECKS = ("trajectory", "padding", "grad_accumulation", "eval_parity")  # trajectory: a committed reference; padding: extra generation;
# grad_accumulation: two extra one-step runs
CHECK_TRAINERS = {"reference_model": ("dpo", "kto"), "grad_accumulation": ("sft",), "label_mask": ("sft", "dpo", "kto"),
                  "padding": ("sft", "dpo", "kto")}  # checks the engine computes for some trainers only
CONFIG_INTS = ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "max_length",
               "logging_steps", "num_generations", "max_prompt_length", "max_completion_length")
CONFIG_NUMBERS = ("learning_rate", "num_train_epochs", "beta", "warmup_ratio", "weight_decay", "temperature",
                  "desirable_weight", "undesirable_weight")
HARNESS_CONFIG = ("output_dir", "seed")  # set from the job's folder and its top-level seed
ROWS_CHECKED = 20
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


_TRAINER_LINE = re.compile(rb"^trainer\s*:", re.MULTILINE)


def is_job_file(path: Path) -> bool:
    """A ``job.yaml`` that declares a trainer: other files of that name (a CI or cluster manifest)
    are not training jobs and are left alone."""
    if path.name not in JOB_FILE_NAMES:
        return False
    try:
        return _TRAINER_LINE.search(path.read_bytes()) is not None
    except OSError:
        return False


class JobError(Exception):
    """Bad user input in a job file or its data; the message names the file and line."""

    def __init__(self, path: Path | str, line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        super().__init__(f"{self.path}:{line}: {message}")


def default_gates(trainer: str) -> tuple[str, ...]:
    return tuple(c for c in CHECKS if trainer in CHECK_TRAINERS.get(c, (trainer,)) and c not in OPT_IN_CHECKS)


def _key_lines(text: str) -> dict[str, int]:
    """Line of every key and list entry (``config.max_steps``, ``gates[2]``), for errors."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = f"{prefix}.{key.value}" if prefix else str(key.value)
                lines[path] = key.start_mark.line + 1
                walk(value, path)
        elif isinstance(node, yaml.SequenceNode):
            for index, value in enumerate(node.value):
                lines[f"{prefix}[{index}]"] = value.start_mark.line + 1
                walk(value, f"{prefix}[{index}]")

    walk(root, "")
    return lines


class _Reader:
    """A job file's raw mapping, with errors at the line of the key they concern."""

    def __init__(self, path: Path, text: str, raw: dict[str, Any]) -> None:
        self.path = path
        self.raw = raw
        self.lines = _key_lines(text)

    def fail(self, key: str, message: str) -> JobError:
        # the nearest enclosing key that has a line: `config.max_steps`, else `config`, else the file
        while key and key not in self.lines:
            key = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", key) if re.search(r"[.\[]", key) else ""
        return JobError(self.path, self.lines.get(key, 1), message)


def load_job(path: Path | str) -> TrainJob:
    """Parse and validate one job file, its data's first rows included."""
    path = Path(path).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobError(path, 1, f"cannot read job file: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise JobError(path, mark.line + 1 if mark is not None else 1,
                       f"invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(raw, dict):
        raise JobError(path, 1, "a job file must be a YAML mapping (name, trainer, model, dataset, ...)")
    r = _Reader(path, text, raw)
    unknown = sorted(str(k) for k in raw if k not in JOB_KEYS)
    if unknown:
        raise r.fail(unknown[0], f"unknown key {unknown[0]!r}; known keys: {', '.join(JOB_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if k not in raw and not (k == "dataset" and "datasets" in raw)]
    if missing:
        raise JobError(path, 1, f"missing required key {missing[0]!r} (required: {', '.join(REQUIRED_KEYS)})")

    name = raw.get("name", path.parent.name)
    if not isinstance(name, str) or not _NAME.match(name):
        raise r.fail("name", f"'name' must be letters, digits, '_', '.' or '-' (it names the run's folder), "
                             f"not {name!r}")
    trainer = raw["trainer"]
    if trainer not in TRAINERS:
        raise r.fail("trainer", f"unknown trainer {trainer!r}; known: {', '.join(TRAINERS)}")
    model = _model(r)
    tokenizer = _tokenizer(r, model)
    chat_template = _chat_template(r)
    datasets = _datasets(r)
    fields = _fields(r, trainer)
    loss = raw.get("loss", "completion_only")
    if loss not in LOSS_MODES:
        raise r.fail("loss", f"unknown loss {loss!r}; known: {', '.join(LOSS_MODES)}")
    config = _config(r)
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise r.fail("seed", f"'seed' must be an integer, not {seed!r}")
    gates = _gates(r, trainer)
    markers = raw.get("markers") or []
    markers = [markers] if isinstance(markers, str) else markers
    if not isinstance(markers, list) or not all(isinstance(m, str) and m.isidentifier() for m in markers):
        raise r.fail("markers", "'markers' must be a list of marker names (Python identifiers)")
    for dataset in datasets:
        _check_rows(path, dataset, fields)
    reward = _reward(r, trainer)
    evaluation = _eval(r, gates)
    return TrainJob(name=name, path=path, trainer=trainer, model=model, tokenizer=tokenizer,
                    chat_template=chat_template, datasets=datasets, fields=fields, config=config, gates=gates,
                    loss=loss, seed=seed, markers=tuple(markers), reward=reward, eval=evaluation)


def find_suite(job_folder: Path, value: str) -> Path | None:
    """The suite file ``value`` names: a file or a folder holding one, relative to the job's folder or
    to the nearest folder above it where it exists."""
    from harness.suite import suite_files_in

    for base in (job_folder, *job_folder.parents):
        candidate = (base / value).resolve()
        if candidate.is_file():
            return candidate
        if candidate.is_dir():
            files = suite_files_in(candidate)
            return files[0] if len(files) == 1 else None
    return None


def _suite_key(r: _Reader, key: str, value: Any) -> str:
    """A validated suite path (the suite loads: its errors are the job's, at this key's line)."""
    from harness.suite import SuiteError, load_suite

    if not isinstance(value, str) or not value:
        raise r.fail(f"{key}.suite", f"'{key}.suite' must be the path of an eval suite (file or folder), not {value!r}")
    found = find_suite(r.path.parent, value)
    if found is None:
        raise r.fail(f"{key}.suite", f"{key}.suite {value!r}: no suite file found there (relative to the job's "
                                     "folder or a folder above it; a folder must hold exactly one suite)")
    try:
        load_suite(found)
    except SuiteError as exc:
        raise r.fail(f"{key}.suite", f"{key}.suite {value!r}: {exc}") from exc
    return str(found)


def _reward(r: _Reader, trainer: str) -> dict[str, Any] | None:
    value = r.raw.get("reward")
    if value is None:
        if trainer == "grpo":
            raise r.fail("trainer", "a grpo job needs a reward: reward: {suite: <eval suite>} (its extraction "
                                    "and scorer score each completion)")
        return None
    if trainer != "grpo":
        raise r.fail("reward", f"'reward' applies to grpo jobs, not {trainer}")
    if not isinstance(value, dict) or set(value) != {"suite"}:
        raise r.fail("reward", f"'reward' must be {{suite: <eval suite>}}, not {value!r}")
    return {"suite": _suite_key(r, "reward", value["suite"])}


EVAL_KEYS = ("suite", "tolerance", "padding_side", "every")


def _eval(r: _Reader, gates: tuple[str, ...]) -> dict[str, Any] | None:
    value = r.raw.get("eval")
    if value is None:
        if "eval_parity" in gates:
            raise r.fail("gates", "check 'eval_parity' needs eval: {suite: <eval suite>} in the job")
        return None
    if not isinstance(value, dict) or "suite" not in value:
        raise r.fail("eval", f"'eval' must be a mapping with a suite (and tolerance, padding_side), not {value!r}")
    unknown = sorted(str(k) for k in value if k not in EVAL_KEYS)
    if unknown:
        raise r.fail(f"eval.{unknown[0]}", f"unknown eval key {unknown[0]!r}; known: {', '.join(EVAL_KEYS)}")
    tolerance = value.get("tolerance", 0.05)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance <= 1:
        raise r.fail("eval.tolerance", f"eval.tolerance must be a number from 0 to 1, not {tolerance!r}")
    side = value.get("padding_side", "left")
    if side not in ("left", "right"):
        raise r.fail("eval.padding_side", f"eval.padding_side must be left or right, not {side!r}")
    every = value.get("every")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise r.fail("eval.every", f"eval.every must be a positive number of steps, not {every!r}")
    spec = {"suite": _suite_key(r, "eval", value["suite"]), "tolerance": float(tolerance), "padding_side": side}
    return {**spec, "every": every} if every else spec


def _one_of(r: _Reader, key: str, kinds: tuple[str, ...]) -> tuple[str, Any]:
    value = r.raw[key]
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in kinds:
        raise r.fail(key, f"'{key}' must be a mapping with exactly one of {', '.join(kinds)}, not {value!r}")
    return next(iter(value.items()))


def _local_path(r: _Reader, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise r.fail(key, f"'{key}.path' must be a local folder, not {value!r}")
    folder = (r.path.parent / value).resolve()
    if not folder.exists():
        raise r.fail(f"{key}.path", f"'{key}.path' {value!r} not found (relative to the job's folder; "
                                    "nothing is downloaded)")
    return str(folder)


def _bundled(r: _Reader, key: str, value: Any) -> dict[str, Any]:
    from harness.engines.bundled import BUNDLED_MODEL_NAME

    if value not in (BUNDLED_MODEL_NAME, None, {}):
        raise r.fail(f"{key}.bundled", f"'{key}.bundled' names the bundled model, {BUNDLED_MODEL_NAME}, not {value!r}")
    return {"bundled": BUNDLED_MODEL_NAME}


def _model(r: _Reader) -> dict[str, Any]:
    kind, value = _one_of(r, "model", ("tiny", "path", "bundled"))
    if kind == "path":
        return {"path": _local_path(r, "model", value)}
    if kind == "bundled":
        return _bundled(r, "model", value)
    if value is not None and not isinstance(value, dict):
        raise r.fail("model.tiny", "'model.tiny' must be a mapping of config overrides (layers, hidden, ...)")
    return {"tiny": dict(value or {})}


def _tokenizer(r: _Reader, model: dict[str, Any]) -> dict[str, Any]:
    if r.raw.get("tokenizer") is None:
        if "tiny" in model:
            raise r.fail("model", "a tiny model has no tokenizer of its own: add tokenizer: {train: {vocab_size: 512}} "
                                  "or tokenizer: {path: ...}")
        return {}
    kind, value = _one_of(r, "tokenizer", ("train", "path", "bundled"))
    if kind == "path":
        return {"path": _local_path(r, "tokenizer", value)}
    if kind == "bundled":
        return _bundled(r, "tokenizer", value)
    if value is not None and not isinstance(value, dict):
        raise r.fail("tokenizer.train", "'tokenizer.train' must be a mapping (vocab_size, ...)")
    return {"train": dict(value or {})}


def _chat_template(r: _Reader) -> str | None:
    value = r.raw.get("chat_template")
    if value is None:
        return None
    # the names the engine can train with (cheap: tiny.py imports transformers only when it runs)
    from harness.training.tiny import JINJA_TEMPLATES

    known = ("raw", *JINJA_TEMPLATES)
    if not isinstance(value, str):
        raise r.fail("chat_template", "'chat_template' must be a template name or Jinja text")
    if "{{" in value or "{%" in value:
        import jinja2

        try:
            jinja2.Environment().parse(value)
        except jinja2.TemplateSyntaxError as exc:
            raise r.fail("chat_template", f"chat_template: Jinja error at its line {exc.lineno}: {exc.message}") \
                from exc
        return value
    if value not in known:
        raise r.fail("chat_template", f"unknown chat_template {value!r}; known: {', '.join(known)} "
                                      "(or Jinja text)")
    return value


def _datasets(r: _Reader) -> tuple[Path, ...]:
    key = "datasets" if "datasets" in r.raw else "dataset"
    value = r.raw[key]
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list) or not entries or not all(isinstance(e, str) for e in entries):
        raise r.fail(key, f"'{key}' must be a JSONL file name, a glob or a list of them")
    from harness.suite import resolve_datasets

    try:
        return resolve_datasets(r.path.parent, entries)
    except ValueError as exc:
        raise r.fail(key, str(exc).replace("suite", "job")) from exc


def _fields(r: _Reader, trainer: str) -> dict[str, str]:
    mapped = r.raw.get("fields") or {}
    if not isinstance(mapped, dict) or not all(isinstance(v, str) for v in mapped.values()):
        raise r.fail("fields", "'fields' maps roles to your column names, e.g. {prompt: question, completion: answer}")
    roles = CONVERSATIONAL_ROLES if trainer == "sft" and "messages" in mapped else ROLES[trainer]
    bad = sorted(str(k) for k in mapped if k not in roles)
    if bad:
        hint = " (or messages alone)" if trainer == "sft" else ""
        raise r.fail(f"fields.{bad[0]}", f"unknown field {bad[0]!r} for trainer {trainer}; "
                                         f"its fields: {', '.join(roles)}{hint}")
    return {role: mapped.get(role, role) for role in roles}


def _config(r: _Reader) -> dict[str, Any]:
    config = r.raw.get("config") or {}
    if not isinstance(config, dict):
        raise r.fail("config", "'config' must be a mapping of TRL config settings")
    for key, value in config.items():
        where = f"config.{key}"
        if key in HARNESS_CONFIG:
            raise r.fail(where, f"config.{key} is set by the harness (the run's folder, the job's seed)")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in CONFIG_INTS and not (number and isinstance(value, int) and value > 0):
            raise r.fail(where, f"config.{key} must be a positive integer, not {value!r}")
        if key in CONFIG_NUMBERS and not number:
            raise r.fail(where, f"config.{key} must be a number, not {value!r}")
    return dict(config)


def _gates(r: _Reader, trainer: str) -> tuple[str, ...]:
    from harness.gates import is_comparison, parse_gate

    gates = r.raw.get("gates")
    if gates is None:
        return default_gates(trainer)
    gates = [gates] if isinstance(gates, str) else gates
    if not isinstance(gates, list):
        raise r.fail("gates", "'gates' must be a list of named checks and metric expressions")
    found: list[str] = []
    for index, gate in enumerate(gates):
        where = f"gates[{index}]"
        if not isinstance(gate, str):
            raise r.fail(where, f"bad gate {gate!r}: a named check or a metric expression ('final_loss <= 3.0')")
        if gate.strip() in CHECKS:
            allowed = CHECK_TRAINERS.get(gate.strip(), TRAINERS)
            if trainer not in allowed:
                raise r.fail(where, f"check {gate.strip()!r} applies to {', '.join(allowed)} jobs, not {trainer}")
            found.append(gate.strip())
            continue
        try:
            parsed = parse_gate(gate)
        except ValueError as exc:
            raise r.fail(where, f"unknown gate {gate!r}: neither a named check ({', '.join(CHECKS)}) nor a metric "
                                f"expression: {exc}") from exc
        if is_comparison(parsed.metric):
            raise r.fail(where, f"bad gate {gate!r}: a training gate judges this run's metrics, not a comparison")
        found.append(parsed.expr)
    if len(set(found)) != len(found):
        twice = next(g for g in found if found.count(g) > 1)
        raise r.fail("gates", f"gate {twice!r} is listed twice")
    return tuple(found)


def _check_rows(job: Path, dataset: Path, fields: dict[str, str]) -> None:
    """The first rows of a dataset are JSON objects holding every mapped field: a mapping or data
    mistake is a collection error here, not a failure minutes into training."""
    rows = 0
    try:
        with dataset.open(encoding="utf-8-sig") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                rows += 1
                _check_row(job, dataset, number, line, fields)
                if rows >= ROWS_CHECKED:
                    return
    except UnicodeDecodeError as exc:
        raise JobError(dataset, 1, f"job {job}: dataset is not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise JobError(dataset, 1, f"job {job}: cannot read dataset: {exc}") from exc
    if rows == 0:
        raise JobError(dataset, 1, f"job {job}: dataset has no rows")


def _check_row(job: Path, dataset: Path, number: int, line: str, fields: dict[str, str]) -> None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise JobError(dataset, number, f"job {job}: not JSONL: this line is not JSON ({exc.msg})") from exc
    if not isinstance(row, dict):
        raise JobError(dataset, number, f"job {job}: a row must be a JSON object, not {type(row).__name__}")
    for role, column in fields.items():
        if column not in row:
            mapping = f"field {role!r}" if role == column else f"field {role!r} (mapped to column {column!r})"
            raise JobError(dataset, number, f"job {job}: row lacks {mapping}; its columns: "
                                            f"{', '.join(map(str, row)) or 'none'} (map yours with fields:)")
        value = row[column]
        if role == "target":
            continue  # whatever the reward suite's scorer takes: a string, a list of answers, a label
        wanted = (bool,) if role == "label" else (str, list)
        if not isinstance(value, wanted):
            kind = "true or false" if role == "label" else "a string or a list of chat messages"
            raise JobError(dataset, number, f"job {job}: column {column!r} ({role}) must be {kind}, "
                                            f"not {type(value).__name__}")
