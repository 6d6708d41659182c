"""The scorer interface and registry: :class:`Scorer`, :class:`Score`, ``@harness.scorer``.

The built-in scorers live in :mod:`harness.scoring.scorers`, :mod:`~harness.scoring.checklist`
and :mod:`~harness.scoring.toxicity`; importing :mod:`harness.scoring` registers them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

from harness.results import CaseResult


@dataclass
class Score:
    """A case's score in [0, 1], why it is not 1, and values the aggregate needs."""

    value: float
    reason: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


class ScorerUnavailable(RuntimeError):
    """A scorer that cannot judge any case (say, its classifier did not load): each case it is
    asked to score becomes an error with this reason, never a score of 0."""


class Scorer:
    """Base class: override ``score``; override ``aggregate`` for metrics beyond the mean."""

    name: ClassVar[str] = ""
    main_metric: ClassVar[str] = "accuracy"
    options: ClassVar[dict[str, Any]] = {}  # accepted options and their defaults

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - set(self.options)
        if unknown:
            known = ", ".join(self.options) or "none"
            raise ValueError(f"scorer {self.name!r}: unknown option {sorted(unknown)[0]!r} (options: {known})")
        self.opts = {**self.options, **options}

    def score(self, prediction: Any, target: Any, case: Any) -> Score:
        raise NotImplementedError

    def aggregate(self, results: Sequence[CaseResult]) -> dict[str, float | None]:
        """Mean score over every case, with its interval; an errored case counts as 0."""
        from harness.scoring.stats import mean_interval, with_interval

        if not results:
            return {self.main_metric: None}
        scores = [r.score or 0.0 for r in results]
        metrics: dict[str, float | None] = {self.main_metric: sum(scores) / len(scores)}
        with_interval(metrics, self.main_metric, mean_interval(scores))
        return metrics


_REGISTRY: dict[str, type[Scorer]] = {}


def register(cls: type[Scorer]) -> type[Scorer]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a 'name'")
    _REGISTRY[cls.name] = cls
    return cls


def scorer(name: str, main_metric: str | None = None) -> Callable[[Any], Any]:
    """Register a scorer: a function ``(prediction, target, case) -> float | bool | Score``
    (extra keyword arguments become suite-file options), or a :class:`Scorer` subclass."""

    def decorate(obj: Any) -> Any:
        if inspect.isclass(obj) and issubclass(obj, Scorer):
            obj.name = name
            if main_metric:
                obj.main_metric = main_metric
            return register(obj)
        params = inspect.signature(obj).parameters
        defaults = {k: p.default for k, p in list(params.items())[3:] if p.default is not inspect.Parameter.empty}

        def score(self: Scorer, prediction: Any, target: Any, case: Any) -> Score:
            return as_score(obj(prediction, target, case, **self.opts))

        cls = type(
            f"Scorer_{name}",
            (Scorer,),
            {"name": name, "main_metric": main_metric or name, "options": defaults, "score": score},
        )
        register(cls)
        return obj

    return decorate


def as_score(value: Any) -> Score:
    if isinstance(value, Score):
        return value
    if isinstance(value, bool):
        return Score(1.0 if value else 0.0)
    if isinstance(value, (int, float)):
        return Score(float(value))
    raise TypeError(f"a scorer must return a float, a bool or a Score, not {type(value).__name__}")


def get_scorer(name: str, options: dict[str, Any] | None = None) -> Scorer:
    """An instance of a registered scorer; ValueError names the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown scorer {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**(options or {}))


def known_scorers() -> list[str]:
    return sorted(_REGISTRY)
