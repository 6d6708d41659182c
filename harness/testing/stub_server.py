"""A deterministic OpenAI-compatible stub server, for testing and measuring the harness itself.

The reply is the text after the last ``ANSWER:`` in the prompt (else ``ok``). Directives in
the prompt inject faults: ``FAIL:<status>`` answers that HTTP status, ``EMPTY`` gives an empty
reply, ``SLEEP:<ms>`` delays the answer, ``FLAKY:<n>`` answers 429 with ``retry-after-ms: 200``
to the first n attempts of that prompt. ``--api-key`` makes every request without that bearer
key a 401. ``--delay-ms`` delays every answer. Every request is
counted; ``GET /stats`` returns the counts, the maximum in flight and the Authorization headers
seen (hashed, so a test can check a key arrived without the key being stored).

Run: ``python -m harness.testing.stub_server --port 8000 [--models a,b] [--delay-ms 50]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import time
from typing import Any

from aiohttp import web

_ANSWER = re.compile(r"ANSWER:\s*(.*)")


def reply_for(prompt: str) -> str:
    answers = _ANSWER.findall(prompt)
    return answers[-1].strip() if answers else "ok"


class Stub:
    def __init__(self, models: list[str] | None, delay_ms: float, api_key: str | None = None) -> None:
        self.models = models
        self.api_key = api_key
        self.attempts: dict[str, int] = {}
        self.delay_s = delay_ms / 1000
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth: set[str] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/stats", self.stats)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completion)
        return app

    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models or []]})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "max_in_flight": self.max_in_flight,
                                  "auth_sha256": sorted(self.auth)})

    async def chat(self, request: web.Request) -> web.Response:
        return await self._answer(request, chat=True)

    async def completion(self, request: web.Request) -> web.Response:
        return await self._answer(request, chat=False)

    async def _answer(self, request: web.Request, chat: bool) -> web.Response:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if "Authorization" in request.headers:
                self.auth.add(hashlib.sha256(request.headers["Authorization"].encode()).hexdigest())
            if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
                return web.json_response({"error": {"message": "invalid api key"}}, status=401)
            body = await request.json()
            model = body.get("model")
            if self.models is not None and model not in self.models:
                return web.json_response({"error": {"message": f"model {model!r} not found"}}, status=404)
            if chat:
                prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
            else:
                prompt = str(body.get("prompt", ""))
            delay = self.delay_s
            sleep = re.search(r"SLEEP:(\d+)", prompt)
            if sleep:
                delay = int(sleep.group(1)) / 1000
            if delay:
                await asyncio.sleep(delay)
            flaky = re.search(r"FLAKY:(\d+)", prompt)
            if flaky:
                self.attempts[prompt] = self.attempts.get(prompt, 0) + 1
                if self.attempts[prompt] <= int(flaky.group(1)):
                    return web.json_response({"error": {"message": "slow down"}}, status=429,
                                             headers={"retry-after-ms": "200"})
            fail = re.search(r"FAIL:(\d{3})", prompt)
            if fail:
                return web.json_response({"error": {"message": "injected failure"}}, status=int(fail.group(1)))
            text = "" if "EMPTY" in prompt else reply_for(prompt)
            usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                     "total_tokens": len(prompt.split()) + len(text.split())}
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            return web.json_response({"id": f"stub-{self.requests}", "object": "chat.completion" if chat
                                      else "text_completion", "created": int(time.time()), "model": model,
                                      "choices": [choice], "usage": usage})
        finally:
            self.in_flight -= 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models", default=None, help="comma-separated model names (default: any)")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--api-key", default=None, help="require this bearer key (else 401)")
    args = parser.parse_args()
    models = args.models.split(",") if args.models else None
    web.run_app(Stub(models, args.delay_ms, args.api_key).app(), host=args.host, port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
