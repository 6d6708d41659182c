"""Replies of every shape: one parse boundary turns any 200 body into a Reply or a reason; odd
shapes, cut-off replies (finish_reason length), long Retry-After waits and hung requests end
as scored cases or errors with their reason, never as a crashed run."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.case_scoring import TRUNCATED_ERROR
from harness.engines.client import OpenAICompatClient, Reply, Request, parse_reply
from harness.engines.limiter import AdaptiveLimit
from harness.results import CaseResult
from harness.suite import SuiteError, load_suite
from harness.testing.stub_server import SHAPES, STREAM_SHAPES
from tests.conftest import load_report, stub_server, stub_stats, write_suite

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REASONS = ("malformed reply: ", "incomplete reply: ", "empty reply")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
# keys the parser reads, so random objects reach past the first check
KEYS = st.sampled_from(["choices", "message", "content", "text", "usage", "completion_tokens", "finish_reason",
                        "tool_calls", "function", "name", "arguments", "delta", "error", "index", "type"])
shaped_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.sampled_from(["", "a", "length"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)


def assert_well_typed(reply: Reply) -> None:
    """What the rest of the harness relies on: an error with a known reason, or typed fields."""
    assert isinstance(reply, Reply)
    assert reply.truncated == (reply.finish_reason == "length")
    if reply.error is not None:
        assert isinstance(reply.error, str) and reply.error.startswith(REASONS), reply.error
        return
    assert reply.text is None or isinstance(reply.text, str)
    assert reply.text or reply.tool_calls  # an empty success is an error
    assert reply.finish_reason is None or isinstance(reply.finish_reason, str)
    tokens = reply.output_tokens
    assert tokens is None or (isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0)
    for call in reply.tool_calls or []:
        assert isinstance(call["function"]["name"], str) and call["function"]["name"]
        assert isinstance(call["function"]["arguments"], str)
    json.dumps(reply.to_dict())  # it travels to the board, the cache and xdist workers as JSON


def body(text: Any = "hello", tokens: Any = 2, finish: Any = "stop", chat: bool = True, **message: Any) -> dict:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if chat:
        choice["message"] = {"role": "assistant", "content": text, **message}
    else:
        choice["text"] = text
    return {"id": "x", "object": "chat.completion", "choices": [choice],
            "usage": {"prompt_tokens": 3, "completion_tokens": tokens}}


def sse(events: list[Any], done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(event)}\n\n" for event in events] + (["data: [DONE]\n\n"] if done else [])
    return "".join(lines).encode()


def stream_events(words: list[str], finish: str = "stop", chat: bool = True) -> list[dict]:
    def piece(text: str) -> dict:
        return {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}

    events = [{"choices": [{**piece(w if i == 0 else " " + w), "finish_reason": None}]} for i, w in enumerate(words)]
    return events + [{"choices": [{**piece(""), "finish_reason": finish}]},
                     {"choices": [], "usage": {"completion_tokens": len(words)}}]


# -- the boundary, fuzzed -------------------------------------------------------------------------------------

@FUZZ
@given(value=json_values | shaped_values, api=st.sampled_from(["chat", "completion"]), stream=st.booleans())
def test_any_json_value_becomes_a_reply_or_a_reason(value, api, stream):
    raw = sse([value]) if stream else json.dumps(value).encode()
    assert_well_typed(parse_reply(api, raw, stream=stream))


@FUZZ
@given(raw=st.binary(max_size=300), api=st.sampled_from(["chat", "completion"]), stream=st.booleans())
def test_any_bytes_become_a_reply_or_a_reason(raw, api, stream):
    reply = parse_reply(api, raw, stream=stream)
    assert_well_typed(reply)


def paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every location in a JSON value, the root included."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from paths(child, (*prefix, key))


def replaced(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    copy = json.loads(json.dumps(value))
    holder = copy
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = new
    return copy


def kind(value: Any) -> type:
    return int if isinstance(value, float) else type(value)  # JSON has one number type


valid_bodies = st.builds(
    body, text=st.text(min_size=1, max_size=10), tokens=st.integers(0, 50),
    finish=st.sampled_from(["stop", "length", None]), chat=st.booleans(),
    tool_calls=st.sampled_from([None, [{"id": "c1", "type": "function",
                                        "function": {"name": "f", "arguments": "{\"a\": 1}"}}]]),
)


@FUZZ
@given(data=st.data(), valid=valid_bodies)
def test_a_wrong_type_at_any_level_of_a_valid_body_is_a_reason(data, valid):
    api = "chat" if "message" in valid["choices"][0] else "completion"
    assert_well_typed(parse_reply(api, json.dumps(valid).encode()))
    path = data.draw(st.sampled_from(list(paths(valid))))
    old = valid
    for key in path:
        old = old[key]
    new = data.draw((json_values | shaped_values).filter(lambda v: kind(v) is not kind(old)))
    reply = parse_reply(api, json.dumps(replaced(valid, path, new)).encode())
    assert_well_typed(reply)


@FUZZ
@given(data=st.data(), words=st.lists(st.text("abc xyz", min_size=1, max_size=5).map(str.strip).filter(bool),
                                      min_size=1, max_size=5), chat=st.booleans())
def test_a_wrong_type_inside_a_stream_event_is_a_reason(data, words, chat):
    events = stream_events(words, chat=chat)
    index = data.draw(st.integers(0, len(events) - 1))
    path = data.draw(st.sampled_from(list(paths(events[index]))))
    new = data.draw(json_values | shaped_values)
    events[index] = replaced(events[index], path, new)
    assert_well_typed(parse_reply("chat" if chat else "completion", sse(events), stream=True))


@FUZZ
@given(words=st.lists(st.sampled_from(["alpha", "b", "ç", "日本", "{}", "\"q\""]), min_size=1, max_size=6),
       chat=st.booleans(), finish=st.sampled_from(["stop", "length"]), data=st.data())
def test_a_stream_cut_at_any_byte_is_incomplete_or_whole(words, chat, finish, data):
    raw = sse(stream_events(words, finish, chat))
    api = "chat" if chat else "completion"
    whole = parse_reply(api, raw, stream=True)
    assert whole.error is None and whole.text == " ".join(words) and whole.output_tokens == len(words)
    assert whole.truncated == (finish == "length")
    cut = data.draw(st.integers(0, len(raw)))
    reply = parse_reply(api, raw[:cut], stream=True)
    assert_well_typed(reply)
    if reply.error is None:  # only a stream that reached its finish event may be read as done
        assert reply.text == whole.text and reply.finish_reason == finish
    else:
        assert reply.error.startswith("incomplete reply") and reply.transient


# -- the boundary, case by case -------------------------------------------------------------------------------

@pytest.mark.parametrize("payload, api, reason", [
    ({**body(), "usage": "12 tokens"}, "chat", "malformed reply: usage is not an object (string)"),
    (body(tokens="3"), "chat", "malformed reply: usage.completion_tokens is not a count (string 3)"),
    (body(tokens=-1), "chat", "malformed reply: usage.completion_tokens is not a count (number -1)"),
    ([body()], "chat", "malformed reply: body is not an object (array)"),
    (None, "chat", "malformed reply: body is not an object (null)"),
    ({"choices": {"0": {}}}, "chat", "malformed reply: choices is not a list (object)"),
    ({"choices": []}, "chat", "malformed reply: choices is empty"),
    ({"choices": ["hi"]}, "chat", "malformed reply: choices[0] is not an object (string)"),
    ({"choices": [{"message": "hi"}]}, "chat", "malformed reply: message is not an object (string)"),
    (body(text=42), "chat", "malformed reply: message.content is not a string (number)"),
    (body(text=42, chat=False), "completion", "malformed reply: text is not a string (number)"),
    (body(finish=3), "chat", "malformed reply: finish_reason is not a string (number)"),
    (body(text=None, tool_calls={"name": "f"}), "chat", "malformed reply: message.tool_calls is not a list (object)"),
    (body(text=None, tool_calls=[{"function": {"name": 7}}]), "chat",
     "malformed reply: message.tool_calls[0].function.name is not a string (number)"),
    ({"error": {"message": "overloaded"}}, "chat", "malformed reply: no choices, an error instead: overloaded"),
    (body(text=[{"type": "text", "text": 5}]), "chat",
     "malformed reply: message.content[0].text is not a string (number)"),
])
def test_each_odd_shape_names_where_it_is_wrong(payload, api, reason):
    reply = parse_reply(api, json.dumps(payload).encode())
    assert (reply.text, reply.error, reply.transient, reply.status) == (None, reason, False, 200)


def test_shapes_that_are_valid_after_all_are_read():
    parts = parse_reply("chat", json.dumps(body(text=[{"type": "reasoning", "text": "hmm"},
                                                      {"type": "text", "text": "Par"}, "is"])).encode())
    assert (parts.text, parts.error) == ("Paris", None)
    call = {"id": "c", "type": "function", "function": {"name": "get", "arguments": {"city": "Oslo"}}}
    tools = parse_reply("chat", json.dumps(body(text=None, tool_calls=[call])).encode())
    assert tools.error is None and tools.tool_calls == [
        {"id": "c", "type": "function", "function": {"name": "get", "arguments": '{"city": "Oslo"}'}}]
    assert parse_reply("chat", json.dumps(body(tokens=4.0)).encode()).output_tokens == 4
    cut = parse_reply("chat", json.dumps(body()).encode()[:-3])
    assert cut.error.startswith("incomplete reply: body is not JSON") and cut.transient


def test_stream_timing_and_tool_call_pieces():
    events = [{"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f"}}]}}]},
              {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": '}}]}}]},
              {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]},
              {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}]
    reply = parse_reply("chat", sse(events), stream=True)
    assert reply.error is None and reply.tool_calls == [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]
    raw = sse(stream_events(["a", "b", "c"]))
    arrivals = [10.0 * (i + 1) for i in range(raw.count(b"\n") + 1)]
    timed = parse_reply("chat", raw, stream=True, latency_ms=100.0, arrivals=arrivals)
    assert timed.ttft_ms == 10.0 and timed.tpot_ms == pytest.approx((100.0 - 10.0) / 2)


def test_truncated_travels_as_a_case_result_dict():
    result = CaseResult("s", "c", "m", "n", "d", 1, "p", "t", truncated=True)
    assert CaseResult.from_dict(json.loads(json.dumps(result.to_dict()))).truncated is True
    assert CaseResult.from_dict({k: v for k, v in result.to_dict().items() if k != "truncated"}).truncated is False


def test_suite_option_truncated_is_record_or_error(tmp_path):
    folder = write_suite(tmp_path, "s", [{"id": "a", "input": "x", "target": "y"}], truncated="error")
    assert load_suite(folder / "suite.yaml").truncated == "error"
    assert load_suite(write_suite(tmp_path, "d", [{"id": "a", "input": "x", "target": "y"}]) / "suite.yaml").truncated \
        == "record"
    with pytest.raises(SuiteError, match="'truncated' must be record or error"):
        load_suite(write_suite(tmp_path, "bad", [{"id": "a", "input": "x", "target": "y"}], truncated="drop")
                   / "suite.yaml")


def test_a_429_never_starves_the_run_below_its_floor():
    async def scenario(maximum: int, floor: int | None = None) -> tuple[int, int]:
        limit = AdaptiveLimit(maximum, cooldown_s=0.0, floor=floor)
        for _ in range(20):
            await limit.acquire()
            limit.release(throttled=True)
        return limit.allowed, limit.lowest_limit

    assert asyncio.run(scenario(16)) == (2, 2)  # max(1, 16 // 8)
    assert asyncio.run(scenario(64)) == (8, 8)
    assert asyncio.run(scenario(4)) == (1, 1)
    assert asyncio.run(scenario(16, floor=5)) == (5, 5)


def test_the_limit_serves_waiters_first_come_first_served():
    """A request that just finished cannot take its slot back ahead of one already waiting (judge
    requests wait for slots the generation workers would otherwise keep)."""
    async def scenario() -> list[str]:
        limit = AdaptiveLimit(1, cooldown_s=0.0)
        order: list[str] = []
        await limit.acquire()  # a worker holds the only slot

        async def waiter() -> None:
            await limit.acquire()
            order.append("waiter")
            limit.release(throttled=False)

        waiting = asyncio.create_task(waiter())
        await asyncio.sleep(0)  # the waiter queues
        limit.release(throttled=False)
        await limit.acquire()  # the worker comes straight back for its next request
        order.append("worker")
        limit.release(throttled=False)
        await waiting
        return order

    assert asyncio.run(scenario()) == ["waiter", "worker"]


def test_a_waiter_cancelled_after_it_was_handed_a_slot_passes_it_on():
    async def scenario() -> tuple[int, bool]:
        limit = AdaptiveLimit(1, cooldown_s=0.0)
        await limit.acquire()
        first = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0)
        second = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0)
        limit.release(throttled=False)  # hands the slot to `first`...
        first.cancel()  # ...which is cancelled before it runs again
        await asyncio.gather(first, return_exceptions=True)
        await asyncio.wait_for(second, 1)  # the slot went on to `second`
        return limit.in_flight, second.done()

    assert asyncio.run(scenario()) == (1, True)


# -- against a real stub server -------------------------------------------------------------------------------

@contextmanager
def stub(*args: str) -> Iterator[str]:
    with stub_server("--models", "stub", *args) as (_, url):
        yield url


def run(pytester: pytest.Pytester, url: str, *args: str, workers: str = "0") -> pytest.RunResult:
    # pytest in this process (with -n 2 its workers are processes of their own) against a real stub process
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-n", workers, "--llm-base-url", url,
                                        "--llm-model", "stub", "--llm-report-dir", "out", "--llm-cache", "off",
                                        "evals", *args)


# what each odd shape becomes (chat, completion); None: the reply is read and scored
SHAPE_OUTCOMES: dict[str, tuple[str | None, str | None]] = {
    "body_list": ("body is not an object (array)",) * 2,
    "body_string": ("body is not an object (string)",) * 2,
    "body_null": ("body is not an object (null)",) * 2,
    "error_200": ("no choices, an error instead: overloaded, in a 200",) * 2,
    "choices_object": ("choices is not a list (object)",) * 2,
    "choices_empty": ("choices is empty",) * 2,
    "choice_string": ("choices[0] is not an object (string)",) * 2,
    "message_string": ("message is not an object (string)", "text is not a string (array)"),
    "content_number": ("message.content is not a string (number)", "text is not a string (number)"),
    "content_object": ("message.content is not a string (object)", "text is not a string (object)"),
    "content_parts": (None, None),
    "tool_calls_object": ("message.tool_calls is not a list (object)", None),
    "tool_call_name_number": ("message.tool_calls[0].function.name is not a string (number)", None),
    "finish_number": ("finish_reason is not a string (number)",) * 2,
    "usage_string": ("usage is not an object (string)",) * 2,
    "usage_list": ("usage is not an object (array)",) * 2,
    "tokens_string": ("usage.completion_tokens is not a count (string 3)",) * 2,
    "tokens_negative": ("usage.completion_tokens is not a count (number -1)",) * 2,
}


def shape_cases(shapes: Any) -> list[dict[str, str]]:
    return [{"id": "ok", "input": "ANSWER: a", "target": "a"}] + [
        {"id": name, "input": f"SHAPE:{name}\nANSWER: a", "target": "a"} for name in shapes]


def assert_every_case_once(report: dict, planned: dict[str, list[dict]]) -> dict[tuple[str, str], dict]:
    seen = [(case["suite"], case["id"]) for case in report["cases"]]
    assert sorted(seen) == sorted((suite, case["id"]) for suite, cases in planned.items() for case in cases)
    return {(case["suite"], case["id"]): case for case in report["cases"]}


@pytest.mark.parametrize("workers", ["0", "2"])
def test_odd_shapes_end_as_reasons_and_only_a_gate_fails_the_run(pytester, workers):
    assert set(SHAPE_OUTCOMES) == set(SHAPES)
    planned = {"chat_shapes": shape_cases(SHAPES), "completion_shapes": shape_cases(SHAPES)}
    write_suite(pytester.path / "evals", "chat_shapes", planned["chat_shapes"], gates=["error_rate == 0"],
                **{"pass": "record"})
    write_suite(pytester.path / "evals", "completion_shapes", planned["completion_shapes"], api="completion",
                gates=["cases >= 1"], **{"pass": "record"})
    with stub() as url:
        result = run(pytester, url, "--llm-retries", "2", workers=workers)
        requests = stub_stats(url)["requests"]
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output and "Traceback" not in output
    assert result.ret == 1, output  # the error_rate gate, and nothing else
    assert result.parseoutcomes()["failed"] == 1 and "gate[error_rate == 0]" in output
    cases = assert_every_case_once(load_report(pytester), planned)
    for suite, column in (("chat_shapes", 0), ("completion_shapes", 1)):
        assert cases[(suite, "ok")]["score"] == 1.0
        for name, outcomes in SHAPE_OUTCOMES.items():
            case, reason = cases[(suite, name)], outcomes[column]
            if reason is None:
                assert case["error"] is None and case["score"] == 1.0, case
            else:
                assert case["error"] == f"malformed reply: {reason}", case
                assert case["score"] == 0.0 and case["attempts"] == 1
    # a complete body of the wrong shape is not retried: the same request gets the same body
    assert requests == 2 * len(planned["chat_shapes"])


STREAM_OUTCOMES: dict[str, tuple[str | None, str | None]] = {
    "event_list": ("malformed reply: stream event is not an object (array)",) * 2,
    "delta_string": ("malformed reply: delta is not an object (string)",
                     "malformed reply: text is not a string (number)"),
    "choices_object": ("malformed reply: choices is not a list (object)",) * 2,
    "usage_string": ("malformed reply: usage is not an object (string)",) * 2,
    "content_parts": (None, None),
    "cut": ("incomplete reply: stream event is not JSON",) * 2,
}


def test_odd_stream_shapes_end_as_reasons(pytester):
    assert set(STREAM_OUTCOMES) == set(STREAM_SHAPES)
    planned = {"chat_stream": shape_cases(STREAM_SHAPES), "completion_stream": shape_cases(STREAM_SHAPES)}
    write_suite(pytester.path / "evals", "chat_stream", planned["chat_stream"], **{"pass": "record"})
    write_suite(pytester.path / "evals", "completion_stream", planned["completion_stream"], api="completion",
                **{"pass": "record"})
    with stub() as url:
        result = run(pytester, url, "--llm-stream", "--llm-retries", "1", "--llm-retry-passes", "1")
        requests = stub_stats(url)["requests"]
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == 0 and "INTERNALERROR" not in output, output
    cases = assert_every_case_once(load_report(pytester), planned)
    for suite, column in (("chat_stream", 0), ("completion_stream", 1)):
        assert cases[(suite, "ok")]["score"] == 1.0 and cases[(suite, "ok")]["ttft_ms"] is not None
        for name, outcomes in STREAM_OUTCOMES.items():
            case, reason = cases[(suite, name)], outcomes[column]
            if reason is None:
                assert case["error"] is None and case["score"] == 1.0, case
            else:
                assert (case["error"] or "").startswith(reason), case
    # per suite: the ok case and the odd shapes once each, the cut stream 2 attempts in each of 2 passes
    assert requests == 2 * (1 + (len(STREAM_SHAPES) - 1) + 2 * 2)


def test_cut_off_replies_are_recorded_or_made_errors(pytester):
    cases = [{"id": "whole", "input": "ANSWER: a", "target": "a"},
             {"id": "cut", "input": "FINISH:length\nANSWER: a", "target": "a"}]
    write_suite(pytester.path / "evals", "recorded", cases, gates=["truncated_rate <= 0.5"], **{"pass": "record"})
    write_suite(pytester.path / "evals", "strict", cases, truncated="error", gates=["truncated_rate <= 0.5"],
                **{"pass": "record"})
    with stub() as url:
        result = run(pytester, url)
        report = load_report(pytester)
        streamed = run(pytester, url, "--llm-stream", "-k", "recorded")
        streamed_report = load_report(pytester)
    assert result.ret == 0 and streamed.ret == 0, result.stdout.str() + streamed.stdout.str()
    cases = {(c["suite"], c["id"]): c for c in report["cases"]}
    assert [(c["truncated"], c["error"], c["score"]) for c in cases.values()] == [
        (False, None, 1.0), (True, None, 1.0), (False, None, 1.0), (True, TRUNCATED_ERROR, 0.0)]
    metrics = {s["name"]: s["metrics"] for s in report["suites"]}
    assert metrics["recorded"]["truncated_rate"] == 0.5 and metrics["recorded"]["error_rate"] == 0
    assert metrics["strict"]["truncated_rate"] == 0.5 and metrics["strict"]["error_rate"] == 0.5
    assert [(c["id"], c["truncated"], c["error"]) for c in streamed_report["cases"]] == [
        ("whole", False, None), ("cut", True, None)]


def test_retry_after_beyond_the_limit_fails_at_once(stub_url):
    async def go() -> Reply:
        client = OpenAICompatClient(stub_url, retries=4, max_retry_after_s=60.0)
        try:
            return await client.send(Request("chat", "stub", [{"role": "user", "content": "THROTTLE:3600 x"}]))
        finally:
            await client.close()

    before = stub_stats(stub_url)["requests"]
    started = time.monotonic()
    reply = asyncio.run(go())
    assert time.monotonic() - started < 5
    assert reply.error == ("HTTP 429: quota exceeded; server asked to retry after 3600 s, above the 60 s limit")
    assert reply.attempts == 1 and not reply.transient and reply.status == 429
    assert stub_stats(stub_url)["requests"] - before == 1


def test_throttled_requests_shrink_the_limit_down_to_its_floor(stub_url):
    async def go() -> tuple[list[Reply], AdaptiveLimit]:
        limit = AdaptiveLimit(16, cooldown_s=0.0)  # every 429 halves: the floor is all that stops it
        client = OpenAICompatClient(stub_url, retries=0, limiter=limit)
        prompts = [f"q{i} THROTTLE:3600" for i in range(24)] + [f"ok{i} SLEEP:20\nANSWER: a" for i in range(24)]
        try:
            replies = await asyncio.gather(*(client.send(Request("chat", "stub", [{"role": "user", "content": p}]))
                                             for p in prompts))
        finally:
            await client.close()
        return replies, limit

    started = time.monotonic()
    replies, limit = asyncio.run(go())
    assert time.monotonic() - started < 10
    assert all(r.status == 429 and "above the 60 s limit" in r.error for r in replies[:24])
    assert all(r.text == "a" for r in replies[24:])
    assert limit.throttles >= 3 and limit.lowest_limit == 2 == limit.floor  # max(1, 16 // 8), never 1


def test_time_waiting_for_a_slot_is_not_the_requests_deadline_or_latency(stub_url):
    async def go() -> tuple[Reply, float]:
        limit = AdaptiveLimit(1, cooldown_s=0.0)
        client = OpenAICompatClient(stub_url, retries=0, deadline_s=1.0, limiter=limit)
        await limit.acquire()  # another request holds the run's only slot for 1.5 s, beyond the deadline
        asyncio.get_running_loop().call_later(1.5, limit.release, False)
        started = time.monotonic()
        try:
            reply = await client.send(Request("chat", "stub", [{"role": "user", "content": "SLEEP:100\nANSWER: a"}]))
        finally:
            await client.close()
        return reply, time.monotonic() - started

    reply, elapsed = asyncio.run(go())
    assert reply.error is None and reply.text == "a"
    assert elapsed >= 1.5
    assert reply.latency_ms < 1000  # the 100 ms answer, not the 1.5 s in the queue


def test_a_run_against_a_spent_quota_ends_without_waiting(pytester):
    cases = ([{"id": f"quota{i}", "input": f"q{i} THROTTLE:3600", "target": "a"} for i in range(12)]
             + [{"id": f"ok{i}", "input": f"ok{i}\nANSWER: a", "target": "a"} for i in range(12)])
    write_suite(pytester.path / "evals", "quota", cases, **{"pass": "record"})
    with stub() as url:
        started = time.monotonic()
        result = run(pytester, url, "--llm-concurrency", "16", "--llm-retries", "3")
        elapsed = time.monotonic() - started
        requests = stub_stats(url)["requests"]
    assert result.ret == 0, result.stdout.str()
    assert elapsed < 30  # waiting as asked: 60 s per attempt
    report = load_report(pytester)
    by_id = {case["id"]: case for case in report["cases"]}
    assert all(by_id[f"quota{i}"]["error"] == "HTTP 429: quota exceeded; server asked to retry after 3600 s, "
               "above the 60 s limit" for i in range(12))
    assert all(by_id[f"ok{i}"]["error"] is None for i in range(12))
    assert report["run"]["generation"]["in_flight"]["lowest_limit"] >= 2
    assert requests == 24  # each throttled request sent once: no retry, no second pass


def test_the_deadline_bounds_a_request_across_passes(pytester):
    cases = [{"id": "hang", "input": "HANG", "target": "a"},
             {"id": "late", "input": "FAILN:3:503\nANSWER: a", "target": "a"}]
    write_suite(pytester.path / "evals", "deadline", cases, **{"pass": "record"})
    with stub() as url:
        started = time.monotonic()
        # one attempt per pass, four passes: the hang times out after 1 s, 1 s, then the 0.5 s left
        result = run(pytester, url, "--llm-timeout", "1", "--llm-deadline", "2.5", "--llm-retries", "0",
                     "--llm-retry-passes", "3")
        elapsed = time.monotonic() - started
        requests = stub_stats(url)["requests"]
    assert result.ret == 0, result.stdout.str()
    by_id = {case["id"]: case for case in load_report(pytester)["cases"]}
    # the third pass gets what is left of 2.5 s (0.5 s, less the first connection's set-up)
    assert re.fullmatch(r"timeout after 0\.\d+ s \(deadline of 2\.5 s reached after 1 attempts\)",
                        by_id["hang"]["error"]), by_id["hang"]["error"]
    # fast failures leave their budget to later passes: 3 failures, then the answer in the fourth pass
    assert by_id["late"]["error"] is None and by_id["late"]["score"] == 1.0
    # with a fresh deadline per pass the hang would be sent in all four passes (3 + 4 + 1); on a loaded
    # machine a slow first attempt may spend the budget before the third pass (3 + 3)
    assert requests in (3 + 3, 3 + 4), requests
    assert elapsed < 25
