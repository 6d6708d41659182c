"""Matching the cases of two arms: by case id and a hash of the rendered input.

A case on one side only, an id seen twice, or an input that changed between the arms is left out
of the paired statistics and listed by id: never dropped silently."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from harness.results import CaseResult


def input_hash(prompt: Any) -> str | None:
    """sha256 (16 hex digits) of a rendered prompt (text or chat messages); None without one."""
    if prompt is None:
        return None
    text = json.dumps(prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: a model of this run, or the saved baseline."""

    name: str
    results: Sequence[CaseResult]
    hashes: Sequence[str | None]  # input hash per result (a baseline keeps them; a run computes them)

    @classmethod
    def of_run(cls, name: str, results: Sequence[CaseResult]) -> "Arm":
        return cls(name, results, [input_hash(r.prompt) for r in results])


@dataclass
class Pairing:
    """Cases present once on both sides with the same input, aligned: ``reference[i]`` is ``candidate[i]``."""

    reference: list[CaseResult] = field(default_factory=list)
    candidate: list[CaseResult] = field(default_factory=list)
    only_reference: list[str] = field(default_factory=list)
    only_candidate: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    changed_input: list[str] = field(default_factory=list)

    @property
    def unmatched(self) -> int:
        return len(self.only_reference) + len(self.only_candidate) + len(self.duplicates) + len(self.changed_input)


def _index(arm: Arm, duplicates: set[str]) -> dict[str, tuple[CaseResult, str | None]]:
    seen: dict[str, tuple[CaseResult, str | None]] = {}
    for result, digest in zip(arm.results, arm.hashes):
        if result.id in seen:
            duplicates.add(result.id)
        seen[result.id] = (result, digest)
    return seen


def pair_cases(reference: Arm, candidate: Arm) -> Pairing:
    """Align two arms' clean cases in the reference's order."""
    duplicates: set[str] = set()
    ref, cand = _index(reference, duplicates), _index(candidate, duplicates)
    pairing = Pairing(duplicates=sorted(duplicates))
    for case_id, (result, digest) in ref.items():
        if case_id in duplicates:
            continue
        if case_id not in cand:
            pairing.only_reference.append(case_id)
            continue
        other, other_digest = cand[case_id]
        if digest is not None and other_digest is not None and digest != other_digest:
            pairing.changed_input.append(case_id)
            continue
        pairing.reference.append(result)
        pairing.candidate.append(other)
    pairing.only_candidate = [case_id for case_id in cand if case_id not in ref and case_id not in duplicates]
    return pairing
