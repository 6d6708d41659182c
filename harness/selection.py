"""Quick runs: a part of each suite instead of all of it.

``--llm-limit N`` keeps the first N cases of each suite (data order, across its files);
``--llm-sample N`` (or ``--llm-sample 10%``) keeps a random sample of each suite, drawn with
``--llm-seed S`` (default 0) and the suite's name, so every process (xdist workers, the
controller) and every re-run with the same seed draws the same cases. The suite is then those
cases: items, gates and metrics see only them, and each gate says it judged a sample ("a sample
of 5 of 40 cases (--llm-limit 5)"). A robustness suite keeps the perturbed copies of the cases
it keeps.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

__all__ = ["Selection", "parse_selection"]


@dataclass(frozen=True)
class Selection:
    """How much of each suite a run takes; inactive by default (every case)."""

    limit: int | None = None
    sample: int | None = None  # a number of cases
    share: float | None = None  # or a share of them (0 < share <= 1)
    seed: int = 0

    @property
    def active(self) -> bool:
        return self.limit is not None or self.sample is not None or self.share is not None

    @property
    def option(self) -> str:
        """The options as the user gave them, for messages."""
        if self.limit is not None:
            return f"--llm-limit {self.limit}"
        size = f"{self.sample}" if self.sample is not None else f"{self.share * 100:g}%"  # type: ignore[operator]
        return f"--llm-sample {size} --llm-seed {self.seed}"

    def choose(self, keys: Sequence[Hashable], suite: str) -> set[Hashable]:
        """The keys kept out of a suite's cases (``keys`` in data order)."""
        if self.limit is not None:
            return set(keys[:self.limit])
        if self.sample is None and self.share is None:
            return set(keys)
        n = self.sample if self.sample is not None else math.ceil(self.share * len(keys))  # type: ignore[operator]
        n = min(max(n, 0), len(keys))
        return set(random.Random(f"{self.seed}:{suite}").sample(list(keys), n))

    def note(self, kept: int, total: int) -> str | None:
        """What a gate says about the cases it judged; None when the suite was kept whole."""
        if not self.active or kept >= total:
            return None
        kind = "the first" if self.limit is not None else "a sample of"
        return f"{kind} {kept} of {total} cases ({self.option})"

    def to_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "sample": self.sample, "share": self.share,
                "seed": None if self.limit is not None else self.seed, "option": self.option}


def parse_selection(limit: Any, sample: Any, seed: Any) -> Selection:
    """The selection from the option values (strings or None). Raises ValueError with the option's name."""
    if limit not in (None, "") and sample not in (None, ""):
        raise ValueError("--llm-limit and --llm-sample choose cases two ways: give one of them")
    try:
        seed_value = int(seed) if seed not in (None, "") else 0
    except ValueError:
        raise ValueError(f"--llm-seed takes a whole number, not {seed!r}") from None
    if limit not in (None, ""):
        return Selection(limit=_count(limit, "--llm-limit", "a number of cases"), seed=seed_value)
    if sample in (None, ""):
        return Selection(seed=seed_value)
    text = str(sample).strip()
    if not text.endswith("%"):
        return Selection(sample=_count(text, "--llm-sample", "a number of cases or a share such as 10%"),
                         seed=seed_value)
    try:
        share = float(text[:-1]) / 100
    except ValueError:
        raise ValueError(f"--llm-sample takes a number of cases or a share such as 10%, not {sample!r}") from None
    if not 0 < share <= 1:
        raise ValueError(f"--llm-sample {text}: a share is above 0% and at most 100%")
    return Selection(share=share, seed=seed_value)


def _count(value: Any, option: str, takes: str) -> int:
    """A whole number of cases >= 1 given to ``option``. Raises ValueError naming it."""
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"{option} takes {takes}, not {value!r}") from None
    if count < 1:
        raise ValueError(f"{option} takes a number of cases >= 1, not {count}")
    return count
