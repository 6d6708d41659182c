"""A judge scorer's options, checked once at collection: :class:`JudgeSpec` and :func:`parse_spec`.

Suite file::

    scorer:
      name: judge
      model: judge-model        # a model of the run; absent: --llm-judge-model
      rubric: |                 # Jinja over input, output, target, metadata, prediction, labels, scale
        Does the answer name the capital of {{ input }}? ...
        Answer: {{ output }}
      scale: [0, 1]             # [lo, hi] numbers, or labels: [refuse, answer]
      samples: 1                # > 1: mean (numbers) or majority (labels) of k replies
      temperature: 0
      max_tokens: 256
      pass_threshold: 0.5       # numeric scales: a case passes when the verdict is >= this (scale units)
      positive: answer          # label scales: the label that scores 1 (default: the first label)
      language: en              # en | zh: the built-in rubrics' and the system message's language
      api: chat                 # completion: the rubric alone is the prompt, for small base models; a
                                # rubric ending in "VERDICT:" then reads the one-line continuation as the verdict

``rubric`` may instead name a built-in rubric (``refusal``, ``toxicity``, ``key_points``, see
:mod:`harness.judging.rubrics`), which brings its own scale and positive label.

Every problem is a ValueError naming the option; the caller turns it into a collection error
naming the suite file and line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

from harness.judging.rubrics import BUILTIN_RUBRICS, LANGUAGES, builtin_rubric

__all__ = ["ALLOWED_VARIABLES", "SPEC_KEYS", "JudgeSpec", "parse_spec", "rubric_source"]

SPEC_KEYS = ("model", "rubric", "scale", "samples", "temperature", "max_tokens", "pass_threshold", "positive",
             "language", "api")
JUDGE_APIS = ("chat", "completion")
ALLOWED_VARIABLES = frozenset({"input", "output", "target", "metadata", "prediction", "labels", "scale"})
DEFAULT_MAX_TOKENS = 256
# characters a label cannot hold: the verdict parser strips markdown (* and `) around the value, and
# the system message lists labels joined by |
_LABEL_FORBIDDEN = frozenset("*`|\n\r")


@dataclass(frozen=True)
class JudgeSpec:
    """A judge scorer's options, validated. ``scale`` is ``(lo, hi)`` floats or a tuple of labels."""

    rubric: str  # the Jinja source; for a built-in rubric, its text in ``language``
    scale: tuple[float, float] | tuple[str, ...]
    model: str | None = None  # None: the run's --llm-judge-model
    samples: int = 1
    temperature: float = 0.0
    max_tokens: int = DEFAULT_MAX_TOKENS
    pass_threshold: float | None = None  # numeric scales only, in the scale's units
    positive: str | None = None  # label scales: the label scoring 1 (always set for a label scale)
    language: str = "en"
    builtin: str | None = None  # the built-in rubric's name, if the rubric is one
    pairwise: bool = False  # judge_pairwise: which of two models' answers is better (scale A, B, tie)
    api: str = "chat"  # "completion": the rendered rubric is the whole prompt (no system message)

    def config_dict(self) -> dict[str, Any]:
        """The spec as report metadata shows it (a built-in rubric by name, not its text)."""
        return {"model": self.model, "rubric": self.builtin or self.rubric, "scale": list(self.scale),
                "pairwise": self.pairwise, "api": self.api,
                "samples": self.samples, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "pass_threshold": self.pass_threshold, "positive": self.positive, "language": self.language}

    @property
    def numeric(self) -> bool:
        """Whether the scale is a [lo, hi] range of numbers (else a list of labels)."""
        return not isinstance(self.scale[0], str)

    @property
    def lo(self) -> float:
        if not self.numeric:
            raise AttributeError("a label scale has no lo")
        return float(self.scale[0])

    @property
    def hi(self) -> float:
        if not self.numeric:
            raise AttributeError("a label scale has no hi")
        return float(self.scale[1])

    @property
    def labels(self) -> tuple[str, ...]:
        """The scale's labels; empty for a numeric scale."""
        return () if self.numeric else tuple(str(x) for x in self.scale)


def _is_number(value: Any) -> bool:
    # YAML's true/false are bools, which are ints to Python: never a scale number
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_scale(value: Any, where: str) -> tuple[float, float] | tuple[str, ...]:
    bad = f"{where}: scale must be [lo, hi] (two numbers, lo < hi) or a list of at least two distinct labels"
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{bad}, not {value!r}")
    if all(_is_number(x) for x in value):
        if len(value) != 2:
            raise ValueError(f"{bad}; a numeric scale has exactly two numbers, not {len(value)}: {list(value)!r}")
        lo, hi = float(value[0]), float(value[1])
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{bad}; {list(value)!r} is not finite")
        if not lo < hi:
            raise ValueError(f"{bad}; lo {value[0]!r} is not below hi {value[1]!r}")
        return lo, hi
    for x in value:
        if isinstance(x, bool):
            raise ValueError(f"{where}: scale label {x!r} is a YAML boolean (yes/no/true/false unquoted): "
                             f"quote it, e.g. \"{'yes' if x else 'no'}\"")
        if not isinstance(x, str):
            raise ValueError(f"{bad}; {x!r} is neither a label (a string) nor part of a [lo, hi] pair")
    labels = tuple(x.strip() for x in value)
    for label in labels:
        if not label:
            raise ValueError(f"{bad}; a label is empty")
        if _LABEL_FORBIDDEN & set(label):
            raise ValueError(f"{where}: scale label {label!r} may not contain '*', '`', '|' or a line break")
    if len(labels) < 2:
        raise ValueError(f"{bad}; one label {labels[0]!r} cannot tell replies apart")
    folded = [label.casefold() for label in labels]
    duplicates = sorted({label for label, key in zip(labels, folded) if folded.count(key) > 1})
    if duplicates:
        # verdicts match labels case-insensitively: labels equal but for case could not be told apart
        raise ValueError(f"{bad}; duplicate label(s) (compared ignoring case): {', '.join(duplicates)}")
    return labels


def _unsafe_attributes(node: Any) -> Iterator[str]:
    """Attribute names starting with '_' that a template reads (``x.__class__``, ``x['__init__']``):
    the sandbox refuses them at render time; finding them here makes it a collection error."""
    from jinja2 import nodes

    for found in node.find_all((nodes.Getattr, nodes.Getitem)):
        name = found.attr if isinstance(found, nodes.Getattr) else (
            found.arg.value if isinstance(found.arg, nodes.Const) else None)
        if isinstance(name, str) and name.startswith("_"):
            yield name


def _check_rubric(source: str, where: str, allowed: frozenset[str] = ALLOWED_VARIABLES,
                  shows: tuple[str, ...] = ("output", "prediction")) -> None:
    import jinja2
    from jinja2 import meta

    from harness.templates import jinja_env

    try:
        tree = jinja_env().parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"{where}: rubric is not a valid Jinja template: line {exc.lineno}: {exc.message}") from exc
    undefined = sorted(meta.find_undeclared_variables(tree) - allowed)
    if undefined:
        raise ValueError(f"{where}: rubric uses undefined variable(s) {', '.join(undefined)}; "
                         f"a rubric may read {', '.join(sorted(allowed))}")
    unsafe = sorted(set(_unsafe_attributes(tree)))
    if unsafe:
        raise ValueError(f"{where}: rubric is blocked by the template sandbox: it reads the attribute(s) "
                         f"{', '.join(unsafe)} (names starting with '_' are not accessible)")
    if shows == ("output", "prediction") and not meta.find_undeclared_variables(tree) & set(shows):
        # a rubric that never shows the judge the answer grades nothing; a common slip in a new rubric
        raise ValueError(f"{where}: rubric never shows the answer to grade: use {{{{ output }}}} "
                         f"(the reply) or {{{{ prediction }}}} (the extracted prediction)")
    missing = [name for name in shows if shows != ("output", "prediction")
               and name not in meta.find_undeclared_variables(tree)]
    if missing:
        raise ValueError(f"{where}: rubric never shows {' and '.join(missing)}: a pairwise rubric shows both "
                         f"answers, {{{{ output_a }}}} and {{{{ output_b }}}}")


def rubric_source(name: str, language: str) -> str:
    """A built-in rubric's text in a language (``en`` or ``zh``)."""
    rubric = builtin_rubric(name)
    if rubric is None:
        raise ValueError(f"unknown built-in rubric {name!r}; built-ins: {', '.join(BUILTIN_RUBRICS)}")
    return rubric.texts[language]


def _looks_like_a_name(text: str) -> bool:
    # one word without template syntax ("refusl", "key-points"): meant as a built-in's name, not a rubric text
    return "{" not in text and not any(c.isspace() for c in text)


def _number(options: dict[str, Any], key: str, where: str, default: Any) -> Any:
    value = options.get(key, default)
    if value is None or not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{where}: {key} must be a number, not {value!r}")
    return value


def parse_spec(options: dict[str, Any], where: str) -> JudgeSpec:
    """A judge scorer's options (the suite file's ``scorer:`` mapping without ``name``) as a
    :class:`JudgeSpec`. ``where`` starts every error message (e.g. "scorer 'judge'").

    Raises ValueError, naming the option, for an unknown key, a scale the verdict parser cannot
    use, samples < 1, a bad number, a rubric that is not Jinja, reads an undefined variable or a
    sandbox-blocked attribute, or never shows the answer."""
    if not isinstance(options, dict):
        raise ValueError(f"{where}: the judge's options must be a mapping, not {type(options).__name__}")
    unknown = sorted(set(options) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown option {unknown[0]!r} (options: {', '.join(SPEC_KEYS)})")

    model = options.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ValueError(f"{where}: model must be a model name of the run (or absent for --llm-judge-model), "
                         f"not {model!r}")

    language = options.get("language", "en")
    if language not in LANGUAGES:
        raise ValueError(f"{where}: language must be one of {', '.join(LANGUAGES)}, not {language!r}")

    rubric = options.get("rubric")
    if not isinstance(rubric, str) or not rubric.strip():
        raise ValueError(f"{where}: rubric is required: a Jinja text, or a built-in rubric's name "
                         f"({', '.join(BUILTIN_RUBRICS)})")
    builtin = builtin_rubric(rubric.strip())
    if builtin is None and _looks_like_a_name(rubric.strip()):
        raise ValueError(f"{where}: unknown built-in rubric {rubric.strip()!r}; built-ins: "
                         f"{', '.join(BUILTIN_RUBRICS)} (a rubric of your own is a Jinja text showing {{{{ output }}}})")

    if builtin is not None:
        scale = builtin.scale
        if "scale" in options and _parse_scale(options["scale"], where) != scale:
            # the built-in text asks for its own labels / range: another scale could never parse
            raise ValueError(f"{where}: built-in rubric {builtin.name!r} has the scale {list(scale)!r}; "
                             f"leave scale out, or write a rubric of your own")
        source = builtin.texts[language]
    else:
        if "scale" not in options:
            raise ValueError(f"{where}: scale is required with a rubric of your own: [lo, hi] or a list of labels")
        scale = _parse_scale(options["scale"], where)
        source = rubric
    _check_rubric(source, where)
    numeric = not isinstance(scale[0], str)

    samples = options.get("samples", 1)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"{where}: samples must be a whole number >= 1, not {samples!r}")
    temperature = float(_number(options, "temperature", where, 0.0))
    if temperature < 0:
        raise ValueError(f"{where}: temperature must be >= 0, not {temperature!r}")
    if samples > 1 and temperature == 0:
        # greedy decoding gives the same reply k times (and the response cache answers the copies):
        # k samples would only look like k opinions
        raise ValueError(f"{where}: samples: {samples} with temperature 0 asks the same greedy question "
                         f"{samples} times; set temperature above 0 (e.g. 0.7) or samples: 1")
    max_tokens = options.get("max_tokens", DEFAULT_MAX_TOKENS)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError(f"{where}: max_tokens must be a whole number >= 1, not {max_tokens!r}")

    pass_threshold = None
    if options.get("pass_threshold") is not None:
        if not numeric:
            raise ValueError(f"{where}: pass_threshold applies to a numeric scale; with labels, "
                             f"'positive' names the label that passes")
        pass_threshold = float(_number(options, "pass_threshold", where, None))
        if not scale[0] <= pass_threshold <= scale[1]:
            raise ValueError(f"{where}: pass_threshold {pass_threshold:g} is outside the scale "
                             f"{scale[0]:g} to {scale[1]:g}")

    positive = None
    if not numeric:
        given = options.get("positive")
        if given is None:
            positive = builtin.positive if builtin is not None and builtin.positive else str(scale[0])
        else:
            match = [label for label in scale if isinstance(given, str) and label.casefold() == given.strip().casefold()]
            if not match:
                raise ValueError(f"{where}: positive must be one of the scale's labels "
                                 f"({', '.join(map(str, scale))}), not {given!r}")
            positive = str(match[0])
    elif options.get("positive") is not None:
        raise ValueError(f"{where}: positive applies to a label scale; a numeric scale scores (v - lo) / (hi - lo)")

    api = options.get("api", "chat")
    if api not in JUDGE_APIS:
        raise ValueError(f"{where}: api must be one of {', '.join(JUDGE_APIS)}, not {api!r}")
    if api == "completion" and builtin is not None:
        raise ValueError(f"{where}: api: completion sends the rubric alone, and built-in rubric {builtin.name!r} is "
                         f"written for a chat model; write a rubric of your own (ending in 'VERDICT:') for a base model")
    return JudgeSpec(rubric=source, scale=scale, model=model, samples=samples, temperature=temperature, api=api,
                     max_tokens=max_tokens, pass_threshold=pass_threshold, positive=positive, language=language,
                     builtin=builtin.name if builtin is not None else None)
