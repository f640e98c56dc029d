"""The gateway: a raw ASGI app (no framework on the hot path) in front of the tiers.

Per request, the hot path does: a key lookup in memory, a JSON parse, a read of the cached gate
state and tier states, and one pooled upstream request. Everything that touches SQLite (usage
rows, the gate, the key table, tier states) happens in background threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

from spotctl.clock import Clock, to_ms
from spotctl.config import Config, TierConfig
from spotctl.gateway.errors import error_body
from spotctl.gateway.gate import BILLING_STALE, OPEN, GateState, evaluate_gate
from spotctl.gateway.keys import KeyInfo, KeyTable, list_keys
from spotctl.gateway.metrics import Metrics
from spotctl.gateway.recorder import UsageRecorder
from spotctl.gateway.upstreams import SERVING, WAKING, TierRuntime, Upstream
from spotctl.ledger.db import Ledger
from spotctl.ledger.records import UsageRecord

COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")
JSON = [(b"content-type", b"application/json")]


class GatewayError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or []


class Gateway:
    def __init__(self, cfg: Config, clock: Clock, runtime: TierRuntime, *,
                 ledger_path: Path | None = None, log: Callable[[str], None] | None = None,
                 refresh_s: float | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.runtime = runtime
        self.ledger_path = ledger_path or cfg.ledger_path
        self.log = log or (lambda msg: None)
        self.refresh_s = cfg.gateway.gate_cache_s if refresh_s is None else refresh_s
        self.keys = KeyTable()
        self.metrics = Metrics()
        self.recorder = UsageRecorder(self.ledger_path, self.log)
        self.gate = GateState(BILLING_STALE, "not checked yet", None, None, 0, 60, 0)
        self.tier_state: dict[str, Upstream] = {}
        self.models: dict[str, list[TierConfig]] = {}
        for tier in sorted(cfg.tiers, key=lambda t: (t.priority, t.name)):
            self.models.setdefault(tier.public_model, []).append(tier)
        self._wakes: dict[str, asyncio.Future] = {}
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self.client: httpx.AsyncClient | None = None
        self.refreshed = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------
    def start_background(self) -> None:
        Ledger(self.ledger_path).close()  # create and migrate before readers start
        self.recorder.start()
        self.refresh()
        self._refresher = threading.Thread(target=self._refresh_loop, name="gate", daemon=True)
        self._refresher.start()

    def stop_background(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=10)
        self.recorder.close()

    def refresh(self) -> None:
        """Recompute the gate, the key table and the tier states (in the background thread)."""
        try:
            with Ledger(self.ledger_path) as ledger:
                self.keys.load(list_keys(ledger))
                self.gate = evaluate_gate(ledger, self.cfg, self.clock)
        except Exception as exc:
            now = to_ms(self.clock.now())
            self.gate = GateState(BILLING_STALE, f"cannot read the ledger: {type(exc).__name__}",
                                  None, None, now, 60, now)
        self.metrics.gate_open = int(self.gate.open)
        states = {}
        for tier in self.cfg.tiers:
            try:
                states[tier.name] = self.runtime.current(tier)
            except Exception as exc:
                self.log(f"tier {tier.name}: state unknown ({type(exc).__name__})")
                states[tier.name] = Upstream("failed")
        self.tier_state = states
        self.refreshed.set()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    # -- ASGI -----------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        try:
            if method == "POST" and path in COMPLETION_PATHS:
                await self._completion(scope, receive, send)
            elif method == "GET" and path == "/healthz":
                await _respond(send, 200, b'{"status":"ok"}')
            elif method == "GET" and path == "/readyz":
                await self._readyz(send)
            elif method == "GET" and path == "/metrics":
                await _respond(send, 200, self.metrics.render(),
                               [(b"content-type", b"text/plain; version=0.0.4")])
            elif method == "GET" and path == "/v1/models":
                self._authenticate(scope)
                data = [{"id": m, "object": "model", "owned_by": "spotctl"} for m in self.models]
                await _respond(send, 200, orjson.dumps({"object": "list", "data": data}))
            else:
                raise GatewayError(404, "not_found", f"no route for {method} {path}")
        except GatewayError as exc:
            await _respond(send, exc.status, error_body(exc.status, exc.code, exc.message),
                           JSON + exc.headers)

    async def _lifespan(self, receive, send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                self.client = httpx.AsyncClient(
                    limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256),
                    timeout=httpx.Timeout(self.cfg.gateway.total_timeout_s,
                                          connect=self.cfg.gateway.connect_timeout_s,
                                          read=self.cfg.gateway.first_token_timeout_s))
                await asyncio.to_thread(self.start_background)
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await asyncio.to_thread(self.stop_background)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _readyz(self, send) -> None:
        ready, reason = self.gate.open, self.gate.reason
        if ready:
            serving = [t for t, s in self.tier_state.items() if s.state == SERVING or s.wakeable]
            if not serving:
                ready, reason = False, "no tier is serving or wakeable"
        body = orjson.dumps({"ready": ready, "reason": reason, "gate": self.gate.status,
                             "tiers": {t: s.state for t, s in self.tier_state.items()}})
        await _respond(send, 200 if ready else 503, body)

    # -- the request path -----------------------------------------------------------------
    def _authenticate(self, scope) -> KeyInfo:
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                raw = value.decode("latin-1")
                if raw[:7].lower() == "bearer ":
                    token = raw[7:].strip()
                break
        info = self.keys.lookup(token) if token else None
        if info is None:
            raise GatewayError(401, "invalid_api_key",
                               "Missing, unknown or revoked API key." if token is None or token
                               else "Missing API key.")
        return info

    async def _read_body(self, scope, receive) -> bytes:
        limit = self.cfg.gateway.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise GatewayError(413, "request_too_large", f"the body exceeds {limit} bytes")
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise GatewayError(400, "invalid_request", "the client went away")
            body = msg.get("body", b"")
            size += len(body)
            if size > limit:
                raise GatewayError(413, "request_too_large", f"the body exceeds {limit} bytes")
            chunks.append(body)
            if not msg.get("more_body"):
                return b"".join(chunks)

    async def _completion(self, scope, receive, send) -> None:
        key = self._authenticate(scope)
        raw = await self._read_body(scope, receive)
        try:
            req = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise GatewayError(400, "invalid_request", "the body is not valid JSON") from None
        if not isinstance(req, dict) or not isinstance(req.get("model"), str):
            raise GatewayError(400, "invalid_request",
                               "the body must be a JSON object with a string 'model'")
        model = req["model"]
        tiers = self.models.get(model)
        if not tiers:
            raise GatewayError(404, "model_not_found", f"no tier serves the model {model!r}")
        started_ms = to_ms(self.clock.now())
        t0 = self.clock.monotonic()
        rid = "gw-" + uuid.uuid4().hex
        ctx = _Req(rid, key.name, model, started_ms, t0, bool(req.get("stream")))
        try:
            self._check_gate(key)
            tier, upstream = await self._pick(tiers)
            ctx.tier = tier.name
            await self._proxy(scope, receive, send, req, raw, tier, upstream, ctx)
        except GatewayError as exc:
            ctx.status, ctx.http_status = exc.code, exc.status
            self._finish(ctx)
            raise
        self._finish(ctx)

    def _check_gate(self, key: KeyInfo) -> None:
        gate = self.gate
        if gate.status == BILLING_STALE:
            raise GatewayError(503, "billing_stale", f"serving is paused: {gate.reason}",
                               [(b"retry-after", b"60")])
        if gate.status != OPEN:
            raise GatewayError(429, "budget_exhausted", gate.reason,
                               [(b"retry-after", str(gate.retry_after_s).encode())])
        if key.name in gate.closed_keys:
            raise GatewayError(429, "budget_exhausted", f"the daily budget of key {key.name!r} "
                               "is spent", [(b"retry-after", str(gate.retry_after_s).encode())])

    async def _pick(self, tiers: list[TierConfig]) -> tuple[TierConfig, Upstream]:
        for tier in tiers:
            up = self.tier_state.get(tier.name)
            if up is not None and up.state == SERVING and up.endpoint:
                return tier, up
        for tier in tiers:
            up = self.tier_state.get(tier.name) or Upstream("absent")
            if up.wakeable or up.state == WAKING:
                return tier, await self._wake(tier)
        raise GatewayError(503, "no_upstream", "no tier for this model is serving or wakeable")

    async def _wake(self, tier: TierConfig) -> Upstream:
        fut = self._wakes.get(tier.name)
        if fut is None or fut.done():
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(None, self._wake_blocking, tier)
            self._wakes[tier.name] = fut
        try:
            up = await asyncio.wait_for(asyncio.shield(fut), self.cfg.gateway.wake_timeout_s)
        except TimeoutError:
            raise GatewayError(504, "wake_timeout", f"tier {tier.name!r} did not wake within "
                               f"{self.cfg.gateway.wake_timeout_s:g} s") from None
        except Exception as exc:
            raise GatewayError(503, "no_upstream",
                               f"waking tier {tier.name!r} failed: {exc}") from None
        if up.state != SERVING or not up.endpoint:
            raise GatewayError(503, "no_upstream", f"tier {tier.name!r} is {up.state}")
        return up

    def _wake_blocking(self, tier: TierConfig) -> Upstream:
        t0 = self.clock.monotonic()
        up = self.runtime.wake(tier)
        self.metrics.wakes += 1
        self.metrics.wake_seconds += self.clock.monotonic() - t0
        self.tier_state = {**self.tier_state, tier.name: up}
        return up

    async def _proxy(self, scope, receive, send, req: dict, raw: bytes, tier: TierConfig,
                     up: Upstream, ctx: _Req) -> None:
        assert self.client is not None
        path = scope["path"]
        headers = {"content-type": "application/json"}
        if up.api_key:
            headers["authorization"] = f"Bearer {up.api_key}"
        added_usage = False
        if ctx.stream:
            opts = req.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage")):
                req = {**req, "stream_options": {**(opts if isinstance(opts, dict) else {}),
                                                 "include_usage": True}}
                raw = orjson.dumps(req)
                added_usage = True
        url = f"{up.endpoint}{path}"
        try:
            async with asyncio.timeout(self.cfg.gateway.total_timeout_s):
                if not ctx.stream:
                    await self._plain(send, url, raw, headers, ctx)
                else:
                    await self._stream(receive, send, url, raw, headers, ctx, added_usage,
                                       len(raw))
        except TimeoutError:
            if ctx.sent_headers:
                ctx.status = "upstream_timeout"
                return
            raise GatewayError(504, "upstream_timeout", "the engine did not answer in time"
                               ) from None
        except httpx.TimeoutException:
            if ctx.sent_headers:
                ctx.status = "upstream_timeout"
                return
            raise GatewayError(504, "upstream_timeout", "the engine did not answer in time"
                               ) from None
        except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
            if ctx.sent_headers:
                ctx.status = "upstream_error"
                return
            raise GatewayError(502, "upstream_unreachable",
                               f"the engine for tier {tier.name!r} is unreachable "
                               f"({type(exc).__name__})") from None

    async def _plain(self, send, url: str, raw: bytes, headers: dict, ctx: _Req) -> None:
        assert self.client is not None
        resp = await self.client.post(url, content=raw, headers=headers)
        body = resp.content
        ctx.http_status = resp.status_code
        ctx.ttft_s = self.clock.monotonic() - ctx.t0
        self.metrics.observe_latency(ctx.ttft_s)
        if resp.status_code == 200:
            try:
                usage = orjson.loads(body).get("usage") or {}
                ctx.prompt = int(usage.get("prompt_tokens", 0))
                ctx.completion = int(usage.get("completion_tokens", 0))
                ctx.status = "ok"
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                ctx.status, ctx.estimated = "ok", True
        else:
            ctx.status = f"upstream_http_{resp.status_code}"
        ctype = resp.headers.get("content-type", "application/json").encode()
        ctx.sent_headers = True
        await _respond(send, resp.status_code, body, [(b"content-type", ctype)])

    async def _stream(self, receive, send, url: str, raw: bytes, headers: dict, ctx: _Req,
                      added_usage: bool, body_len: int) -> None:
        assert self.client is not None
        disconnected = asyncio.Event()

        async def watch() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    disconnected.set()
                    return

        watcher = asyncio.create_task(watch())
        try:
            async with self.client.stream("POST", url, content=raw, headers=headers) as resp:
                ctx.http_status = resp.status_code
                if resp.status_code != 200:
                    body = await resp.aread()
                    ctx.status = f"upstream_http_{resp.status_code}"
                    ctx.sent_headers = True
                    ctype = resp.headers.get("content-type", "application/json").encode()
                    await _respond(send, resp.status_code, body, [(b"content-type", ctype)])
                    return
                await send({"type": "http.response.start", "status": 200, "headers": [
                    (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
                ctx.sent_headers = True
                buf = b""
                chunks = 0
                try:
                    async for piece in resp.aiter_raw():
                        if disconnected.is_set():
                            ctx.status = "client_cancelled"
                            break
                        buf += piece
                        out = []
                        while b"\n\n" in buf:
                            event, buf = buf.split(b"\n\n", 1)
                            if self._inspect(event, ctx, added_usage):
                                out.append(event + b"\n\n")
                                if event.startswith(b"data: {"):
                                    chunks += 1
                        if out:
                            if ctx.ttft_s is None:
                                ctx.ttft_s = self.clock.monotonic() - ctx.t0
                                self.metrics.observe_latency(ctx.ttft_s)
                            try:
                                await send({"type": "http.response.body",
                                            "body": b"".join(out), "more_body": True})
                            except OSError:
                                ctx.status = "client_cancelled"
                                break
                except httpx.TimeoutException:
                    ctx.status = "upstream_timeout"
                except httpx.TransportError:
                    ctx.status = "upstream_error"
                if ctx.status is None:
                    ctx.status = "ok" if ctx.done else "upstream_error"
                if not ctx.usage_seen:
                    ctx.estimated = True
                    ctx.completion = max(ctx.completion, chunks)
                    ctx.prompt = ctx.prompt or max(1, body_len // 4)
                if ctx.status in ("upstream_error", "upstream_timeout"):
                    # tell the client in-band: the OpenAI SDK raises on an error event
                    err = orjson.dumps({"error": {
                        "message": "the engine stopped mid-stream" if ctx.status ==
                        "upstream_error" else "the engine stopped answering in time",
                        "type": "api_error", "code": ctx.status}})
                    with contextlib.suppress(OSError):
                        await send({"type": "http.response.body",
                                    "body": b"data: " + err + b"\n\n", "more_body": True})
                with contextlib.suppress(OSError):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()

    @staticmethod
    def _inspect(event: bytes, ctx: _Req, added_usage: bool) -> bool:
        """Read usage from the final chunk; drop that chunk if only the gateway asked for it."""
        if event.startswith(b"data: [DONE]"):
            ctx.done = True
            return True
        if b'"usage"' not in event:
            return True
        try:
            data = orjson.loads(event[6:])
        except orjson.JSONDecodeError:
            return True
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict):
            ctx.prompt = int(usage.get("prompt_tokens") or 0)
            ctx.completion = int(usage.get("completion_tokens") or 0)
            ctx.usage_seen = True
            if added_usage and not data.get("choices"):
                return False
        return True

    def _finish(self, ctx: _Req) -> None:
        now_ms = to_ms(self.clock.now())
        latency_ms = int((self.clock.monotonic() - ctx.t0) * 1000)
        status = ctx.status or "error"
        self.metrics.requests[(ctx.model, status)] += 1
        self.metrics.tokens["prompt"] += ctx.prompt
        self.metrics.tokens["completion"] += ctx.completion
        self.recorder.record(UsageRecord(
            id=ctx.rid, started_ms=ctx.started_ms, completed_ms=max(now_ms, ctx.started_ms),
            status=status, key_id=ctx.key, tier=ctx.tier, model=ctx.model,
            prompt_tokens=ctx.prompt, completion_tokens=ctx.completion,
            http_status=ctx.http_status, latency_ms=latency_ms,
            ttft_ms=None if ctx.ttft_s is None else int(ctx.ttft_s * 1000),
            stream=ctx.stream, tokens_estimated=ctx.estimated))


class _Req:
    __slots__ = ("completion", "done", "estimated", "http_status", "key", "model", "prompt",
                 "rid", "sent_headers", "started_ms", "status", "stream", "t0", "tier",
                 "ttft_s", "usage_seen")

    def __init__(self, rid: str, key: str, model: str, started_ms: int, t0: float,
                 stream: bool) -> None:
        self.rid, self.key, self.model, self.started_ms, self.t0 = rid, key, model, started_ms, t0
        self.stream = stream
        self.tier: str | None = None
        self.status: str | None = None
        self.http_status: int | None = None
        self.prompt = self.completion = 0
        self.ttft_s: float | None = None
        self.estimated = self.usage_seen = self.done = self.sent_headers = False


async def _respond(send, status: int, body: bytes,
                   headers: list[tuple[bytes, bytes]] | None = None) -> None:
    hdrs = list(headers or JSON)
    hdrs.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})
