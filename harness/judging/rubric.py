"""The judge's prompt for one case: :func:`render_judge_prompt`.

Two chat messages: a system message stating the reply format exactly (reasoning, then a final
``VERDICT:`` line, as :func:`harness.judging.verdict.parse_verdict` reads it), and a user message
with the rubric rendered over the case. The rubric renders in the harness's sandboxed Jinja
environment (:func:`harness.templates.jinja_env`); the case's values, the model's output above
all, are untrusted and only ever passed as values, never rendered as templates.
"""

from __future__ import annotations

from typing import Any

from harness.judging.rubrics import builtin_rubric
from harness.judging.spec import JudgeSpec

__all__ = ["RubricRenderError", "render_judge_prompt", "system_message"]


class RubricRenderError(ValueError):
    """A rubric that cannot render a case (an undefined field, a type error, a sandbox violation)."""


def _number(value: float) -> str:
    return f"{value:g}"


def system_message(spec: JudgeSpec) -> str:
    """The system message: what the judge's reply must end with, in the spec's language."""
    if spec.numeric:
        placeholder = f"<number from {_number(spec.lo)} to {_number(spec.hi)}>"
        if spec.language == "zh":
            placeholder = f"<{_number(spec.lo)} 到 {_number(spec.hi)} 之间的一个数>"
            return (f"你是一名评审。先写出你的理由，最后单独一行写 `VERDICT: {placeholder}`："
                    f"即单词 VERDICT、一个冒号和一个数（可以是小数，如 0.5），这一行不要写别的内容。")
        return (f"You are an evaluator. Reply with your reasoning, then a final line `VERDICT: {placeholder}`: "
                f"the word VERDICT, a colon and one number (a decimal such as 0.5 is allowed), "
                f"nothing else on that line.")
    choices = "|".join(spec.labels)
    if spec.language == "zh":
        return (f"你是一名评审。先写出你的理由，最后单独一行写 `VERDICT: <{choices} 之一>`："
                f"即单词 VERDICT、一个冒号和其中一个标签（照原样拼写），这一行不要写别的内容。")
    return (f"You are an evaluator. Reply with your reasoning, then a final line `VERDICT: <one of {choices}>`: "
            f"the word VERDICT, a colon and exactly one of these labels, spelled as given, nothing else on that line.")


def _problem(exc: BaseException) -> str:
    import jinja2

    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined variable: {exc}"
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"blocked by the template sandbox: {exc}"
    return f"{type(exc).__name__}: {exc}"


def render_judge_prompt(spec: JudgeSpec, *, input: Any, output: Any, target: Any, metadata: Any,
                        prediction: Any) -> list[dict[str, str]]:
    """The judge's chat messages for one case: the system message, then the rubric rendered over
    the case (``input``, ``output`` (the model's reply), ``target``, ``metadata``, ``prediction``,
    and the spec's ``labels`` and ``scale``). A missing ``output`` renders as empty text.

    Raises :class:`RubricRenderError` naming the rubric and the problem when it cannot render."""
    from harness.templates import template

    name = f"built-in rubric {spec.builtin!r} ({spec.language})" if spec.builtin else "rubric"
    builtin = builtin_rubric(spec.builtin) if spec.builtin else None
    if builtin is not None and builtin.needs_target and target is None:
        raise RubricRenderError(f"judge {name} cannot render this case: it needs the case's target "
                                f"(the key points), and the case has none")
    context = {
        "input": input,
        "output": "" if output is None else output,
        "target": target,
        "metadata": {} if metadata is None else metadata,
        "prediction": prediction,
        "labels": list(spec.labels),
        "scale": list(spec.scale),
    }
    try:
        text = template(spec.rubric).render(context)
    except Exception as exc:
        raise RubricRenderError(f"judge {name} cannot render this case: {_problem(exc)}") from exc
    return [{"role": "system", "content": system_message(spec)}, {"role": "user", "content": text}]
