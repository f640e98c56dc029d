"""The built-in fast engine: a small OpenAI-compatible server with vLLM's usage and metrics.

It stands in for vLLM wherever a GPU is not at hand: in the local cloud's VMs, in tests, in the
gateway benchmark and in the demo. Output is deterministic (a function of the prompt), usage is
realistic (prompt tokens from a whitespace tokenisation plus per-message overhead; completion
tokens up to ``max_tokens``), and ``/metrics`` carries vLLM's counter names.

    python -m spotctl.engine.builtin --host 127.0.0.1 --port 8001 --model tiny \
        [--api-key KEY] [--ttft-ms 50] [--tokens-per-s 200] [--fail-after-tokens N] \
        [--enable-log-requests]

With ``--enable-log-requests`` (vLLM's flag of that name logs each request), every request
that ran prints one line when it ends, ``request {"request_id": ..., "prompt_tokens": P,
"generation_tokens": G, "finished": true|false}``, flushed at once: the request id is the
``X-Request-Id`` header when the client sent one (vLLM takes its request id from that header
too), ``generation_tokens`` what the engine produced, ``finished`` whether it produced all of it.
A line printed survives a ``kill -9`` of the engine, so the lines of every engine process add up
to what the engines produced (what the chaos bench compares the ledger with).

The API key may also come from ``$SPOTCTL_ENGINE_API_KEY`` (so it is not visible in ``ps``).
Prints ``READY http://HOST:PORT`` on stdout once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import sys
from dataclasses import dataclass, field

import orjson

WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "spot",
    "prices", "fall", "and", "every", "token", "is", "counted", "twice", "before", "the",
    "invoice", "arrives", "on", "time",
)


@dataclass
class EngineConfig:
    model: str = "tiny"
    api_key: str | None = None
    ttft_ms: float = 50.0
    tokens_per_s: float = 200.0
    max_tokens_default: int = 64
    fail_after_tokens: int | None = None
    log_requests: bool = False


@dataclass
class Counters:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    requests_ok: int = 0
    running: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def count_prompt_tokens(body: dict) -> int:
    """A deterministic stand-in for a tokenizer: words plus chat-template overhead."""
    if "messages" in body:
        total = 2
        for msg in body.get("messages") or []:
            content = msg.get("content", "") if isinstance(msg, dict) else ""
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            total += 4 + len(str(content).split())
        return total
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        prompt = " ".join(map(str, prompt))
    return 1 + len(str(prompt).split())


def completion_length(body: dict, cfg: EngineConfig) -> int:
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or \
        cfg.max_tokens_default
    digest = hashlib.sha256(orjson.dumps(body.get("messages") or body.get("prompt") or "",
                                         option=orjson.OPT_SORT_KEYS)).digest()
    natural = 8 + digest[0] % 120
    return max(1, min(int(max_tokens), natural))


def token_text(i: int, seed: int) -> str:
    return WORDS[(seed + i * 7) % len(WORDS)] + " "


class BuiltinEngine:
    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.counters = Counters()
        self._n = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/health":
            return await self._send(send, 200, b"")
        if not self._authorized(scope):
            return await self._json(send, 401, {"error": {"message": "Unauthorized",
                                                          "type": "invalid_request_error",
                                                          "code": 401}})
        if path == "/metrics":
            return await self._send(send, 200, self._metrics().encode(), b"text/plain")
        if path == "/v1/models" and method == "GET":
            return await self._json(send, 200, {"object": "list", "data": [
                {"id": self.cfg.model, "object": "model", "owned_by": "spotctl"}]})
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            body = await _read_body(receive)
            try:
                req = orjson.loads(body)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except ValueError:
                return await self._json(send, 400, {"error": {
                    "message": "invalid JSON body", "type": "BadRequestError", "code": 400}})
            if req.get("model") != self.cfg.model:
                return await self._json(send, 404, {"error": {
                    "message": f"The model `{req.get('model')}` does not exist.",
                    "type": "NotFoundError", "code": 404}})
            return await self._complete(send, req, chat=path.endswith("chat/completions"),
                                        request_id=_header(scope, b"x-request-id"))
        return await self._json(send, 404, {"error": {"message": "not found",
                                                      "type": "NotFoundError", "code": 404}})

    def _authorized(self, scope) -> bool:
        if not self.cfg.api_key:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, f"Bearer {self.cfg.api_key}".encode())
        return False

    def _metrics(self) -> str:
        c, m = self.counters, self.cfg.model
        return (
            "# TYPE vllm:prompt_tokens_total counter\n"
            f'vllm:prompt_tokens_total{{engine="0",model_name="{m}"}} {c.prompt_tokens}.0\n'
            "# TYPE vllm:generation_tokens_total counter\n"
            f'vllm:generation_tokens_total{{engine="0",model_name="{m}"}} '
            f"{c.generation_tokens}.0\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{engine="0",model_name="{m}"}} {c.running}.0\n'
            "# TYPE vllm:num_requests_waiting gauge\n"
            f'vllm:num_requests_waiting{{engine="0",model_name="{m}"}} 0.0\n'
        )

    async def _complete(self, send, req: dict, *, chat: bool,
                        request_id: str | None = None) -> None:
        cfg = self.cfg
        self._n += 1
        rid = f"{'chatcmpl' if chat else 'cmpl'}-builtin-{self._n}"
        produced = 0
        finished = False
        prompt_tokens = count_prompt_tokens(req)
        n_tokens = completion_length(req, cfg)
        seed = int(hashlib.sha256(rid.encode()).hexdigest()[:6], 16) % 97
        per_token = 1.0 / cfg.tokens_per_s if cfg.tokens_per_s > 0 else 0.0
        created = 1_700_000_000 + self._n
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n_tokens,
                 "total_tokens": prompt_tokens + n_tokens}
        obj = "chat.completion" if chat else "text_completion"
        self.counters.running += 1
        self.counters.prompt_tokens += prompt_tokens
        try:
            if cfg.ttft_ms > 0:
                await asyncio.sleep(cfg.ttft_ms / 1000)  # clock-ok: the engine's real latency
            if not req.get("stream"):
                if per_token:
                    await asyncio.sleep(per_token * n_tokens)  # clock-ok
                text = "".join(token_text(i, seed) for i in range(n_tokens))
                self.counters.generation_tokens += n_tokens
                produced, finished = n_tokens, True
                choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                           "finish_reason": "length", "logprobs": None} if chat else
                          {"index": 0, "text": text, "finish_reason": "length",
                           "logprobs": None})
                self.counters.requests_ok += 1
                return await self._json(send, 200, {
                    "id": rid, "object": obj, "created": created, "model": cfg.model,
                    "choices": [choice], "usage": usage})
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
            obj_chunk = "chat.completion.chunk" if chat else "text_completion"
            include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
            for i in range(n_tokens):
                if cfg.fail_after_tokens is not None and i >= cfg.fail_after_tokens:
                    os._exit(3)  # the engine dies mid-stream (fault injection)
                if i and per_token:
                    await asyncio.sleep(per_token)  # clock-ok
                piece = token_text(i, seed)
                delta = ({"index": 0, "delta": ({"role": "assistant", "content": piece} if i == 0
                                                else {"content": piece}),
                          "logprobs": None, "finish_reason": None} if chat else
                         {"index": 0, "text": piece, "logprobs": None, "finish_reason": None})
                if i == n_tokens - 1:
                    delta["finish_reason"] = "length"
                self.counters.generation_tokens += 1
                produced += 1
                finished = produced == n_tokens
                await self._event(send, {"id": rid, "object": obj_chunk, "created": created,
                                         "model": cfg.model, "choices": [delta]})
            if include_usage:
                await self._event(send, {"id": rid, "object": obj_chunk, "created": created,
                                         "model": cfg.model, "choices": [], "usage": usage})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n",
                        "more_body": False})
            self.counters.requests_ok += 1
        finally:
            self.counters.running -= 1
            if cfg.log_requests:
                print("request " + orjson.dumps({
                    "request_id": request_id or rid, "prompt_tokens": prompt_tokens,
                    "generation_tokens": produced, "finished": finished}).decode(), flush=True)

    @staticmethod
    async def _event(send, payload: dict) -> None:
        await send({"type": "http.response.body",
                    "body": b"data: " + orjson.dumps(payload) + b"\n\n", "more_body": True})

    @staticmethod
    async def _send(send, status: int, body: bytes, ctype: bytes = b"application/json") -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _json(self, send, status: int, payload: dict) -> None:
        await self._send(send, status, orjson.dumps(payload))


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return b"".join(chunks)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m spotctl.engine.builtin")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--ttft-ms", type=float, default=50.0)
    ap.add_argument("--tokens-per-s", type=float, default=200.0)
    ap.add_argument("--max-tokens-default", type=int, default=64)
    ap.add_argument("--fail-after-tokens", type=int, default=None)
    ap.add_argument("--enable-log-requests", action="store_true",
                    help="print one line per request when it ends (id, tokens, finished)")
    args = ap.parse_args(argv)
    cfg = EngineConfig(args.model, args.api_key or os.environ.get("SPOTCTL_ENGINE_API_KEY"),
                       args.ttft_ms, args.tokens_per_s, args.max_tokens_default,
                       args.fail_after_tokens, args.enable_log_requests)
    import uvicorn

    config = uvicorn.Config(BuiltinEngine(cfg), host=args.host, port=args.port,
                            log_level="warning", access_log=False, lifespan="on",
                            loop="auto", http="auto", ws="none")
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                await task
                sys.exit(1)
            await asyncio.sleep(0.01)  # clock-ok: waiting for the socket
        print(f"READY http://{args.host}:{args.port}", flush=True)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
