"""Rendering a case into what the engine receives: chat messages or a completion prompt."""

from __future__ import annotations

import json
import weakref
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from harness.engines.client import Request
from harness.templates import CHAT_TEMPLATES, Messages, jinja_env, template

if TYPE_CHECKING:
    from harness.suite import Case, Suite

DEFAULT_MAX_TOKENS = 256
_PART_NOTE = "while rendering "

# what each case rendered to, by case: collection renders every case once to check it, and the
# request built later reuses that (a case's prompt is rendered once per process)
_RENDERED: weakref.WeakKeyDictionary[Case, tuple[Suite, Messages | str]] = weakref.WeakKeyDictionary()


def _render(source: str, context: dict[str, Any], part: str) -> str:
    """One template of the suite file over one case; an error carries a note naming ``part``.

    Case values are only ever context, never template source: data is not rendered."""
    try:
        return template(source).render(context)
    except Exception as exc:
        exc.add_note(_PART_NOTE + part)
        raise


@lru_cache(maxsize=256)
def _reads_only(source: str, given: frozenset[str]) -> bool:
    """Whether a template reads no variable but ``given``: then its text is the same for every case."""
    from jinja2 import meta

    return meta.find_undeclared_variables(jinja_env().parse(source)) <= given


# texts of a suite's templates that read nothing of the case (a fixed system prompt, few-shot
# examples over their own fields), by suite and part: rendered once per suite, not once per case
_SHARED: weakref.WeakKeyDictionary[Suite, dict[str, str]] = weakref.WeakKeyDictionary()


def _render_part(suite: Suite, source: str, context: dict[str, Any], part: str, given: frozenset[str]) -> str:
    if not _reads_only(source, given):
        return _render(source, context, part)
    shared = _SHARED.setdefault(suite, {})
    if part not in shared:
        shared[part] = _render(source, context, part)
    return shared[part]


def render_messages(suite: Suite, case: Case) -> Messages:
    """The chat messages for a case: system prompt, then the case's turns or templated input."""
    context = {
        "input": case.input,
        "target": case.target,
        "id": case.id,
        "metadata": case.metadata,
        "record": case.record,
    }
    messages: Messages = []
    if suite.prompt.system:
        messages.append({"role": "system", "content": _render_part(suite, suite.prompt.system, context,
                                                                    "prompt.system", frozenset())})
    for number, shot in enumerate(suite.prompt.few_shot):
        # each example is one exchange: the template over the example's input, then its output
        reply = shot.get("output", "")
        messages.append({"role": "user", "content": _render_part(
            suite, suite.prompt.template, {**context, **shot}, f"prompt.template for prompt.few_shot[{number}]",
            frozenset(shot))})
        messages.append({"role": "assistant",
                         "content": reply if isinstance(reply, str) else json.dumps(reply, ensure_ascii=False)})
    if isinstance(case.input, list):
        messages.extend({"role": m["role"], "content": str(m["content"])} for m in case.input)
    else:
        messages.append({"role": "user", "content": _render(suite.prompt.template, context, "prompt.template")})
    return messages


def render(suite: Suite, case: Case, keep: bool = True) -> Messages | str:
    """What is sent: messages in chat mode, a prompt string in completion mode.

    Kept for the case's lifetime unless ``keep`` is false, and then returned as it is: collection
    renders every case to check it, and the request built later in the same process reuses it.
    An xdist worker, which builds no requests, checks without keeping."""
    kept = _RENDERED.get(case)
    if kept is not None and kept[0] is suite:
        return kept[1]
    messages = render_messages(suite, case)
    prompt = messages if suite.api == "chat" else CHAT_TEMPLATES[suite.chat_template](messages)
    if keep:
        _RENDERED[case] = (suite, prompt)
    return prompt


def forget_rendered() -> None:
    """Drop what collection rendered: once the run's requests are built they hold their prompts (a
    case rendered again later, to show a failure, renders the same text)."""
    global _RENDERED
    # a new mapping, not clear(): a dict keeps its table at its largest size after its keys go
    _RENDERED = weakref.WeakKeyDictionary()


def render_problem(exc: BaseException) -> str:
    """Why a case could not be rendered, for a collection error: the template part and the problem."""
    import jinja2

    parts = [note.removeprefix(_PART_NOTE) for note in getattr(exc, "__notes__", ()) if note.startswith(_PART_NOTE)]
    if isinstance(exc, jinja2.UndefinedError):
        problem = f"undefined variable: {exc}"
    elif isinstance(exc, jinja2.exceptions.SecurityError):
        problem = f"blocked by the template sandbox: {exc}"
    else:
        problem = f"{type(exc).__name__}: {exc}"
    return f"{parts[0] if parts else 'the prompt'} cannot render this case: {problem}"


_SHARED_DICTS: dict[str, dict[str, Any]] = {}
_SHARED_DICTS_MAX = 1024


def shared_dict(values: dict[str, Any]) -> dict[str, Any]:
    """One copy of equal small dicts (a suite's request parameters, the same on every case): requests
    are frozen and the harness never changes their dicts in place, so a million of them need not hold
    a million copies (not shared when a ``pytest_llm_build_request`` hook could). A dict that cannot be
    keyed (not JSON) is copied."""
    try:
        key = json.dumps(values, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError):
        return dict(values)
    shared = _SHARED_DICTS.get(key)
    if shared is None:
        shared = dict(values)
        if len(_SHARED_DICTS) < _SHARED_DICTS_MAX:
            _SHARED_DICTS[key] = shared
    return shared


def build_request(suite: Suite, case: Case, model: str, stream: bool = False, hook: Any = None,
                  overrides: dict[str, Any] | None = None, served: str | None = None) -> Request:
    """The request of one case, rendered once; ``hook`` (a pytest hook relay) lets
    ``pytest_llm_build_request`` implementations rewrite it. ``overrides``: generation settings over
    the suite's (``--llm-set``, a model's own ``generation``); ``served``: the name the engine serves
    the model under (a variant's base), sent as the request's model."""
    gen = {**suite.generation, **(overrides or {})}
    params = {
        "max_tokens": gen.get("max_tokens", DEFAULT_MAX_TOKENS),
        "temperature": gen.get("temperature", 0.0),
        "top_p": gen.get("top_p"),
        "stop": gen.get("stop"),
        "seed": gen.get("seed"),
    }
    # a pytest_llm_build_request implementation may change the dicts in place: then each request has its own
    rewrites = hook is not None and bool(hook.pytest_llm_build_request.get_hookimpls())
    share = dict if rewrites else shared_dict
    request = Request(suite.api, served or model, render(suite, case), share(params), share(suite.extra_body),
                      stream=stream or bool(gen.get("stream")))
    if rewrites:
        rewritten = hook.pytest_llm_build_request(suite=suite, case=case, model=model, request=request)
        if rewritten is not None:
            if not isinstance(rewritten, Request):
                raise TypeError(f"pytest_llm_build_request returned {type(rewritten).__name__}, not a Request")
            request = rewritten
    return request
