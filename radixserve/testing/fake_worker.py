"""A small OpenAI-compatible fake worker (testing tooling): the router's test and benchmark target.

It speaks the same HTTP surface as a `radixserve serve` replica (`/health`, `/generate`,
`/v1/completions`, `/v1/chat/completions` with SSE, `/v1/models`, `/metrics`,
`/get_server_info`) but "generates" numbered words instead of running a model. It keeps a
token-level prefix trie so that `usage.prompt_tokens_details.cached_tokens` behaves like a
prefix cache (the router's cache-aware routing can be observed without a GPU), and counts
client disconnects so that tests can check the router propagates them.

Run it as a process: `python -m radixserve.testing.fake_worker --port 0`; it prints
`READY <port>` on stdout once it listens (port 0 picks a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

WORKER_ID_HEADER = "x-worker-id"


@dataclass
class FakeWorkerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    worker_id: str = ""
    model: str = "fake-model"
    default_max_tokens: int = 16
    token_delay: float = 0.0  # seconds between streamed tokens; 0 answers at once
    first_token_delay: float = 0.0
    api_key: str | None = None
    cache_capacity_tokens: int = 1_000_000


@dataclass
class FakeWorkerStats:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    disconnects: int = 0
    active: int = 0
    paths: dict[str, int] = field(default_factory=dict)


class PrefixTrie:
    """Token-level trie standing in for a replica's RadixCache (cleared when over capacity)."""

    def __init__(self, capacity_tokens: int) -> None:
        self.capacity = capacity_tokens
        self.root: dict[str, Any] = {}
        self.size = 0

    def match_and_insert(self, tokens: Sequence[str]) -> int:
        node = self.root
        matched = 0
        walking = True
        for tok in tokens:
            child = node.get(tok)
            if child is None:
                walking = False
                child = {}
                node[tok] = child
                self.size += 1
            elif walking:
                matched += 1
            node = child
        if self.size > self.capacity:
            self.root, self.size = {}, 0
        return matched


def _prompt_text(body: dict[str, Any], path: str) -> str:
    if path == "/v1/chat/completions":
        parts = []
        for msg in body.get("messages") or []:
            content = msg.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"{msg.get('role', '')}: {content or ''}")
        return "\n".join(parts)
    if path == "/generate":
        if "input_ids" in body:
            return " ".join(str(i) for i in body["input_ids"])
        text = body.get("text", "")
        return text if isinstance(text, str) else " ".join(map(str, text))
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        return " ".join(str(p) for p in prompt)
    return str(prompt)


def _max_tokens(body: dict[str, Any], default: int) -> int:
    sampling = body.get("sampling_params") or {}
    for value in (body.get("max_completion_tokens"), body.get("max_tokens"), sampling.get("max_new_tokens")):
        if isinstance(value, int):
            return value
    return default


def _error(status: int, message: str, err_type: str) -> web.Response:
    payload = {"error": {"message": message, "type": err_type, "param": None, "code": status}}
    return web.json_response(payload, status=status)


class FakeWorker:
    def __init__(self, config: FakeWorkerConfig) -> None:
        self.config = config
        self.stats = FakeWorkerStats()
        self.cache = PrefixTrie(config.cache_capacity_tokens)
        self.healthy = True
        self.app = self._build_app()
        self._headers: dict[str, str] = {}

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/get_server_info", self.server_info)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/fake/stats", self.get_stats)
        app.router.add_post("/fake/health", self.set_health)
        for path in ("/generate", "/v1/completions", "/v1/chat/completions"):
            app.router.add_post(path, self.generate)
        return app

    def set_port(self, port: int) -> None:
        if not self.config.worker_id:
            self.config.worker_id = f"fake-{port}"
        self._headers = {WORKER_ID_HEADER: self.config.worker_id}

    def _authorized(self, request: web.Request) -> bool:
        key = self.config.api_key
        return key is None or request.headers.get("Authorization") == f"Bearer {key}"

    async def health(self, request: web.Request) -> web.Response:
        if not self.healthy:
            return web.Response(status=503, text="unhealthy", headers=self._headers)
        return web.Response(text="", headers=self._headers)

    async def set_health(self, request: web.Request) -> web.Response:
        self.healthy = bool((await request.json()).get("healthy", True))
        return web.json_response({"healthy": self.healthy}, headers=self._headers)

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": self.config.model, "object": "model", "created": 0, "owned_by": "radixserve"}]
        return web.json_response({"object": "list", "data": data}, headers=self._headers)

    async def server_info(self, request: web.Request) -> web.Response:
        return web.json_response({"worker_id": self.config.worker_id, "model_path": self.config.model})

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.__dict__, headers=self._headers)

    async def metrics(self, request: web.Request) -> web.Response:
        s = self.stats
        text = (
            f"fake_worker_requests_total {s.requests}\n"
            f"fake_worker_prompt_tokens_total {s.prompt_tokens}\n"
            f"fake_worker_cached_tokens_total {s.cached_tokens}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    async def generate(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return _error(401, "invalid API key", "authentication_error")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "body is not JSON", "invalid_request_error")
        path = request.path
        stats = self.stats
        stats.requests += 1
        stats.paths[path] = stats.paths.get(path, 0) + 1
        tokens = _prompt_text(body, path).split()
        cached = self.cache.match_and_insert(tokens)
        stats.prompt_tokens += len(tokens)
        stats.cached_tokens += cached
        n_out = max(0, _max_tokens(body, self.config.default_max_tokens))
        usage = {
            "prompt_tokens": len(tokens),
            "completion_tokens": n_out,
            "total_tokens": len(tokens) + n_out,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        stats.active += 1
        done = False
        try:
            if self.config.first_token_delay:
                await asyncio.sleep(self.config.first_token_delay)
            if body.get("stream"):
                resp = await self._stream(request, body, path, n_out, usage)
            else:
                if self.config.token_delay:
                    await asyncio.sleep(self.config.token_delay * n_out)
                resp = web.json_response(self._final(path, body, n_out, usage), headers=self._headers)
            stats.completion_tokens += n_out
            done = True
            return resp
        finally:
            stats.active -= 1
            if not done:
                stats.disconnects += 1

    def _final(self, path: str, body: dict[str, Any], n_out: int, usage: dict[str, Any]) -> dict[str, Any]:
        text = "".join(f" w{i}" for i in range(n_out))
        if path == "/generate":
            meta = {"id": uuid.uuid4().hex, "prompt_tokens": usage["prompt_tokens"],
                    "completion_tokens": n_out, "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
                    "finish_reason": {"type": "length"}}
            return {"text": text, "meta_info": meta}
        common = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.config.model,
                  "usage": usage}
        if path == "/v1/chat/completions":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
            return {**common, "object": "chat.completion", "choices": [choice]}
        return {**common, "object": "text_completion",
                "choices": [{"index": 0, "text": text, "finish_reason": "length"}]}

    async def _stream(self, request: web.Request, body: dict[str, Any], path: str, n_out: int,
                      usage: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           **self._headers})
        await resp.prepare(request)
        rid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        cumulative = ""
        for i in range(n_out):
            if i and self.config.token_delay:
                await asyncio.sleep(self.config.token_delay)
            piece = f" w{i}"
            last = i == n_out - 1
            if path == "/generate":
                cumulative += piece
                chunk: dict[str, Any] = {"text": cumulative, "meta_info": {"id": rid, "completion_tokens": i + 1}}
            elif path == "/v1/chat/completions":
                delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                chunk = {"id": rid, "object": "chat.completion.chunk", "created": created,
                         "model": self.config.model,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": "length" if last else None}]}
            else:
                chunk = {"id": rid, "object": "text_completion", "created": created, "model": self.config.model,
                         "choices": [{"index": 0, "text": piece, "finish_reason": "length" if last else None}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        if include_usage and path != "/generate":
            obj = "chat.completion.chunk" if path == "/v1/chat/completions" else "text_completion"
            chunk = {"id": rid, "object": obj, "created": created, "model": self.config.model,
                     "choices": [], "usage": usage}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def start_fake_worker(config: FakeWorkerConfig) -> tuple[FakeWorker, web.AppRunner, int]:
    """Start a fake worker inside the running event loop; returns (worker, runner, port)."""
    worker = FakeWorker(config)
    # handler_cancellation: a client that goes away cancels the handler, as in a real server.
    runner = web.AppRunner(worker.app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
    await site.start()
    port = int(runner.addresses[0][1])
    worker.set_port(port)
    return worker, runner, port


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m radixserve.testing.fake_worker",
                                description="OpenAI-compatible fake worker for router tests and benchmarks.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default 0)")
    p.add_argument("--worker-id", default="", help="name returned in the x-worker-id header (default fake-PORT)")
    p.add_argument("--model", default="fake-model", help="model id listed by /v1/models")
    p.add_argument("--max-tokens", type=int, default=16, help="output words when the request sets no limit")
    p.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed words (default 0)")
    p.add_argument("--first-token-delay", type=float, default=0.0, help="seconds before the first word")
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on generation routes")
    return p


async def _serve(config: FakeWorkerConfig) -> None:
    _, runner, port = await start_fake_worker(config)
    print(f"READY {port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = FakeWorkerConfig(host=args.host, port=args.port, worker_id=args.worker_id, model=args.model,
                              default_max_tokens=args.max_tokens, token_delay=args.token_delay,
                              first_token_delay=args.first_token_delay, api_key=args.api_key)
    try:
        import uvloop

        uvloop.run(_serve(config))
    except ImportError:
        asyncio.run(_serve(config))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
