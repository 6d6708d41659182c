"""A GRPO reward that is an eval suite's own scoring: its extraction steps and scorer, case by case.

Training and evaluation then score with the same function (seed 000's rule): a completion earns in
training exactly the score the suite gives that output in an eval run. A completion the suite cannot
score (the scorer raises) earns 0 and is counted in ``errors``, as an eval run counts it an error."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from harness.case_scoring import score_reply
from harness.suite import Case, Suite, load_suite

RewardFn = Callable[..., list[float]]


def completion_text(completion: Any) -> str:
    """A TRL completion as text: conversational completions are lists of messages."""
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    return str(completion)


def prompt_text(prompt: Any) -> Any:
    """The case input: the last user turn of a conversational prompt, else the text."""
    if isinstance(prompt, list):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else completion_text(prompt)
    return prompt


def score(suite: Suite, prompt: Any, completion: Any, target: Any, index: int = 0) -> tuple[float, str | None]:
    """(score, error) of one completion under the suite's extraction and scorer."""
    case = Case(id=f"reward-{index}", input=prompt_text(prompt), target=target, metadata={}, record={},
                dataset=suite.path, line=0)
    result = score_reply(suite, case, "policy", "", "", {"text": completion_text(completion)})
    if result.error is not None:
        return 0.0, result.error
    return float(result.score or 0.0), None


class SuiteReward:
    """TRL reward function (``reward_funcs=[SuiteReward(path)]``): the dataset's ``target`` column is
    what the suite scores each completion against."""

    def __init__(self, suite_path: str | Path) -> None:
        self.suite = load_suite(Path(suite_path))
        self.__name__ = f"suite_{self.suite.name}"  # TRL logs rewards/<name>/mean
        self.calls = 0
        self.errors = 0
        self.first_error: str | None = None

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], target: Sequence[Any] | None = None,
                 **_: Any) -> list[float]:
        if target is None:
            raise ValueError(f"reward suite {self.suite.name}: the dataset has no 'target' column to score against")
        rewards = []
        for index, (prompt, completion, expected) in enumerate(zip(prompts, completions, target)):
            value, error = score(self.suite, prompt, completion, expected, index)
            if error is not None:
                self.errors += 1
                self.first_error = self.first_error or error
            rewards.append(value)
        self.calls += len(rewards)
        return rewards
