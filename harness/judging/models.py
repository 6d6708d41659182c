"""Which model judges a suite, checked at collection: :func:`judge_model`, :func:`check_judge`.

A judge scorer's ``model:`` names it, else ``--llm-judge-model`` (ini ``llm_judge_model``). It
must be a model of the run: a model under test (it then grades itself, which the report says),
a models-file entry with ``role: judge`` (a judge only: no suite runs on it), or the bundled
model, which ``--llm-judge-model gemma-3-270m`` adds as a judge when the run does not test it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.engines.bundled import BUNDLED_MODEL_NAME
from harness.models import ModelSpec

if TYPE_CHECKING:
    from harness.run import RunState
    from harness.suite import Suite

__all__ = ["add_judge_model", "check_judge", "judge_model", "self_grading"]


def add_judge_model(models: list[ModelSpec], name: str) -> list[ModelSpec]:
    """The run's models with ``--llm-judge-model`` among them. Raises ValueError for an unknown name."""
    if not name or name in {m.name for m in models}:
        return models
    if name == BUNDLED_MODEL_NAME:
        return [*models, ModelSpec(name, role="judge")]
    raise ValueError(f"--llm-judge-model {name!r} is not a model of this run ({', '.join(m.name for m in models)}): "
                     f"declare it in the models file (role: judge for a judge only), or use {BUNDLED_MODEL_NAME}")


def judge_model(spec: Any, state: RunState) -> str:
    """The judge of a suite's judge spec: its own ``model``, else the run's ``--llm-judge-model``."""
    return spec.model or state.settings.judge_model


def check_judge(suite: Suite, state: RunState, models: list[str], baseline: bool = False) -> None:
    """A judged suite's judge must be a model of the run, and a pairwise judge needs two models of the
    run answering the suite (``models``): else a SuiteError at the scorer's line."""
    from harness.suite import SuiteError, _line_of

    if suite.judge is None:
        return
    name = judge_model(suite.judge, state)

    def fail(message: str) -> SuiteError:
        try:
            line = _line_of(suite.path.read_text(encoding="utf-8"), "scorer")
        except OSError:
            line = None
        return SuiteError(suite.path, line, message)

    if not name:
        raise fail(f"scorer {suite.scorer!r} is graded by a judge model, and none is named: add model: NAME "
                   f"to the scorer, or run with --llm-judge-model NAME")
    if name not in state.all_model_names:
        raise fail(f"judge model {name!r} is not a model of this run ({', '.join(state.all_model_names)}): "
                   f"add it to the models file (role: judge for a judge only), or name one with --llm-judge-model")
    if suite.judge.pairwise and len(models) < 2:
        raise fail(f"scorer 'judge_pairwise' compares two models' answers to each case, and this suite runs on "
                   f"one ({', '.join(models)}): add a model (--llm-model, or the models file)")
    if suite.judge.pairwise and baseline:
        raise fail("scorer 'judge_pairwise' compares the answers of models of this run; it cannot judge against a "
                   "saved baseline (--llm-baseline)")


def self_grading(suite: Suite, models: list[str], state: RunState) -> str | None:
    """A note when a suite's judge is also one of the models it grades; else None."""
    if suite.judge is None:
        return None
    name = judge_model(suite.judge, state)
    if name in models:
        return (f"the judge {name!r} also answers this suite: it grades its own replies (self-grading), "
                f"so its verdicts on them may be biased; use a judge that is not under test (role: judge)")
    return None
