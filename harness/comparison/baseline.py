"""Saved baselines: an earlier run's per-case rows and fingerprints, to compare a run against.

Aggregates alone cannot be paired, so a baseline keeps one row per case (id, input hash, score,
pass, latency, the scorer's per-case data), plus what makes a comparison meaningful: each suite's
configuration (one hash per part: prompt, generation, scorer, ...) and each dataset's sha256 and
row count, which must match for a comparison to be made at all, and the environment (git commit
and dirty flag, Python, platform, package versions, model identity), whose differences are
warnings. Writing one is always explicit (``--llm-baseline-save PATH --llm-baseline-reason ...``).
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from harness.comparison.pairing import Arm, input_hash
from harness.results import CaseResult
from harness.suite import Suite

SCHEMA = "pytest-llm-harness/baseline"
VERSION = 1
PACKAGES = ("pytest-llm-harness", "pytest", "numpy", "torch", "transformers", "vllm", "sglang", "openai", "trl")
# what of a case a baseline keeps: enough to recompute every metric, not the prompt itself
_CASE_FIELDS = ("suite", "id", "model", "nodeid", "dataset", "line", "target", "output", "extracted", "score",
                "passed", "reason", "error", "latency_ms", "output_tokens", "cached", "ttft_ms", "tpot_ms",
                "sent_at", "done_at", "tool_calls", "truncated", "cluster", "metadata", "data")


class BaselineError(Exception):
    """A baseline file that cannot be used: the message names the file and what is wrong."""


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def suite_fingerprint(suite: Suite) -> dict[str, str]:
    """One hash per part of a suite's configuration that changes what its cases are asked or how
    they are judged (gates and markers are left out: they judge, they do not measure)."""
    config = suite.config_dict()
    return {
        "prompt": _digest(config["prompt"]),
        "api": _digest([config["api"], config["chat_template"]]),
        "generation": _digest([config["generation"], dict(suite.extra_body)]),
        "extract": _digest(config["extract"]),
        "scorer": _digest(config["scorer"]),
        "pass": _digest(config["pass"]),
        "fields": _digest(dict(suite.fields)),
        "robustness": _digest(config["robustness"]),
        "truncated": _digest(config["truncated"]),
    }


def dataset_fingerprint(suite: Suite) -> list[dict[str, Any]]:
    """Each data file of a suite: its path from the suite's folder, sha256 and non-empty rows."""
    rows = []
    for dataset in suite.datasets:
        digest, count = hashlib.sha256(), 0
        with dataset.open("rb") as handle:
            for line in handle:
                digest.update(line)
                count += bool(line.strip())
        rows.append({"path": dataset.relative_to(suite.path.parent).as_posix(), "sha256": digest.hexdigest(),
                     "rows": count})
    return rows


def environment() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            continue
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": packages}


def build_baseline(reason: str, root: Path, suites: Sequence[Suite], results: Iterable[CaseResult],
                   models: list[dict[str, Any]], git_commit: str | None, git_dirty: bool | None,
                   metrics: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """The baseline document of a finished run (clean cases only: comparisons pair those)."""
    cases = []
    for result in results:
        if result.attack is not None:
            continue
        row = {key: getattr(result, key) for key in _CASE_FIELDS}
        row["input_sha256"] = input_hash(result.prompt)
        cases.append(row)
    present = {(c["suite"], c["model"]) for c in cases}
    entries = []
    for suite in suites:
        for model in sorted({m for s, m in present if s == suite.name}):
            path = suite.path.relative_to(root).as_posix() if suite.path.is_relative_to(root) else str(suite.path)
            entries.append({"suite": suite.name, "model": model, "path": path, "config": suite_fingerprint(suite),
                            "datasets": dataset_fingerprint(suite), "metrics": metrics.get((suite.name, model), {}),
                            "cases": sum(1 for c in cases if c["suite"] == suite.name and c["model"] == model)})
    return {"schema": SCHEMA, "version": VERSION, "reason": reason,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit, "git_dirty": git_dirty, "environment": environment(), "models": models,
            "suites": entries, "cases": cases}


def save_baseline(path: Path, document: dict[str, Any]) -> Path:
    from harness.report.files import write_text

    lines = ",\n".join(json.dumps(case, ensure_ascii=False, default=str) for case in document["cases"])
    head = json.dumps({k: v for k, v in document.items() if k != "cases"}, ensure_ascii=False, indent=1,
                      default=str)
    # one case per line, like report.json: diffs of a refreshed baseline read case by case
    return write_text(Path(path), head[:-2] + ',\n "cases": [\n' + lines + "\n]}\n")


@dataclass
class Baseline:
    """A loaded baseline file."""

    path: Path
    document: dict[str, Any]

    @property
    def reason(self) -> str | None:
        return self.document.get("reason")

    def describe(self) -> dict[str, Any]:
        d = self.document
        return {"kind": "baseline", "name": "baseline", "path": str(self.path), "reason": d.get("reason"),
                "created": d.get("created"), "git_commit": d.get("git_commit"), "git_dirty": d.get("git_dirty")}

    def suite_names(self) -> list[str]:
        return sorted({entry["suite"] for entry in self.document["suites"]})

    def entry(self, suite: str, model: str) -> dict[str, Any]:
        """The baseline's record of a suite for a model of this run: the same model's when it has one,
        else its only model's; BaselineError otherwise."""
        entries = [e for e in self.document["suites"] if e["suite"] == suite]
        if not entries:
            raise BaselineError(f"baseline {self.path} has no suite {suite!r} (it holds: "
                                f"{', '.join(self.suite_names()) or 'none'})")
        same = [e for e in entries if e["model"] == model]
        if same:
            return same[0]
        if len(entries) == 1:
            return entries[0]
        raise BaselineError(f"baseline {self.path} holds suite {suite!r} for several models "
                            f"({', '.join(e['model'] for e in entries)}) and none is {model!r}")

    def refusal(self, suite: Suite, entry: dict[str, Any]) -> str | None:
        """Why this suite's data or configuration differ from the baseline's (None: they match)."""
        problems = [f"{part} differs" for part, digest in suite_fingerprint(suite).items()
                    if entry["config"].get(part) != digest]
        saved = {d["path"]: d for d in entry["datasets"]}
        now = {d["path"]: d for d in dataset_fingerprint(suite)}
        for path in sorted(saved.keys() | now.keys()):
            old, new = saved.get(path), now.get(path)
            if old is None or new is None:
                problems.append(f"data file {path} is {'new' if old is None else 'gone'}")
            elif old["sha256"] != new["sha256"]:
                problems.append(f"data file {path} differs (sha256 {old['sha256'][:12]} -> {new['sha256'][:12]}, "
                                f"rows {old['rows']} -> {new['rows']})")
        if not problems:
            return None
        return (f"baseline {self.path} was made with different data or configuration for suite {suite.name!r}: "
                + "; ".join(problems) + " (save a new baseline to compare against this configuration)")

    def environment_warnings(self) -> list[str]:
        """Differences of environment: worth knowing, not a reason to refuse."""
        old, new = self.document.get("environment") or {}, environment()
        notes = [f"{key}: {old.get(key)} -> {new[key]}" for key in ("python", "platform")
                 if old.get(key) and old.get(key) != new[key]]
        before, after = old.get("packages") or {}, new["packages"]
        notes += [f"{name} {before.get(name, 'absent')} -> {after.get(name, 'absent')}"
                  for name in sorted(before.keys() | after.keys()) if before.get(name) != after.get(name)]
        return [f"environment differs from the baseline: {', '.join(notes)}"] if notes else []

    def arm(self, entry: dict[str, Any]) -> Arm:
        rows = [c for c in self.document["cases"] if c["suite"] == entry["suite"] and c["model"] == entry["model"]]
        return Arm(f"baseline:{entry['model']}", [CaseResult.from_dict({"prompt": None, **row}) for row in rows],
                   [row.get("input_sha256") for row in rows])


def load_baseline(path: Path, shown: str | Path | None = None) -> Baseline:
    """Read and check a baseline file; BaselineError names the file (as ``shown``, default its path)
    and the problem."""
    where = Path(path)
    path = Path(shown) if shown is not None else where
    try:
        text = where.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"cannot read baseline {path}: {exc}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineError(f"baseline {path} is not valid JSON (truncated or corrupt?): {exc.msg} at line "
                            f"{exc.lineno} column {exc.colno}") from exc
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise BaselineError(f"{path} is not a baseline file (no \"schema\": \"{SCHEMA}\"); write one with "
                            f"--llm-baseline-save")
    if document.get("version") != VERSION:
        raise BaselineError(f"baseline {path} has version {document.get('version')!r}; this harness reads {VERSION}")
    suites, cases = document.get("suites"), document.get("cases")
    if not isinstance(suites, list) or not isinstance(cases, list):
        raise BaselineError(f"baseline {path} lacks its 'suites' or 'cases' list")
    for index, entry in enumerate(suites):
        if not isinstance(entry, dict) or not {"suite", "model", "config", "datasets"} <= entry.keys():
            raise BaselineError(f"baseline {path}: suite entry {index} lacks suite/model/config/datasets")
    for index, case in enumerate(cases):
        if not isinstance(case, dict) or not {"suite", "id", "model", "score"} <= case.keys():
            raise BaselineError(f"baseline {path}: case row {index} lacks suite/id/model/score")
        case.setdefault("nodeid", f"{case['suite']}::{case['id']}")
        case.setdefault("dataset", "")
        case.setdefault("line", 0)
        case.setdefault("target", None)
    return Baseline(path, document)
