"""The proxy: one completion request to an engine and back, retried while that is safe.

- Non-streaming: the engine's body is relayed as it is; usage is read from it.
- Streaming: bytes pass through as they arrive (one send per read from the engine); a pure
  :class:`~spotctl.gateway.usagetap.UsageTap` watches them for usage. The gateway asks the
  engine for usage (``stream_options.include_usage``) when the client did not, and then drops
  that one usage-only chunk. Our response headers go out with the first chunk, so an engine that
  fails after its own headers but before any data is still a failure "before any byte".
- A request that failed before any byte reached the client (the engine refused the connection,
  died, or cut its answer) is retried, on another serving tier of the model or on the same one
  once it recovers, up to ``[gateway] retry_attempts`` times. Never once a byte was sent.
- A stream cut by the engine, by ``total_timeout_s`` or by the client ends with its row
  recorded and flagged estimated when the engine's usage did not arrive; the client gets an
  in-band ``data: {"error": ...}`` event (the OpenAI SDK raises on it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson

from spotctl.clock import Clock
from spotctl.config import Config, TierConfig
from spotctl.gateway.client import RelaysBody, UpstreamClient, UpstreamError
from spotctl.gateway.errors import GatewayError
from spotctl.gateway.h1client import H1Client
from spotctl.gateway.record import RequestRecord
from spotctl.gateway.tiers import TierBoard
from spotctl.gateway.upstreams import Upstream
from spotctl.gateway.usagetap import UsageTap, read_usage

SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
# An ASGI scope extension our server adds (gateway/server.py BodyWriter): with it, and an
# upstream response that RelaysBody, a stream's pieces go from the engine's socket to the
# client's in the read callback: no task switch and no ASGI send per piece.
BODY_WRITER = "spotctl.body_writer"


def _overhead_header(rec: RequestRecord, t_start: float) -> tuple[bytes, bytes]:
    """Time spent in the gateway so far, not waiting on the engine (clock-ok: real time)."""
    spent = max(0.0, time.perf_counter() - t_start - rec.upstream_s)  # clock-ok
    rec.overhead_s = spent
    return (b"x-spotctl-overhead-ms", b"%.2f" % (spent * 1000))


def request_id_header(rec: RequestRecord) -> tuple[bytes, bytes]:
    """The request's id (its usage row's id in the ledger), as OpenAI and vLLM name it."""
    return (b"x-request-id", rec.rid.encode())


def _deadline(seconds: float, t_start: float) -> float:
    """``seconds`` after ``t_start`` (perf_counter), as the running loop's time."""
    elapsed = time.perf_counter() - t_start  # clock-ok: real time, like the loop's
    return asyncio.get_running_loop().time() + seconds - elapsed


class Proxy:
    def __init__(self, cfg: Config, clock: Clock, board: TierBoard, client: UpstreamClient,
                 log: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.clock = clock
        self.board = board
        self.client = client
        self.log = log
        self._hdrs: dict[str | None, tuple[tuple[str, str], ...]] = {}
        # the h1 client takes the request id apart, so that its cached request head (keyed
        # by the headers) is not missed on every request
        self._own_id = isinstance(client, H1Client)

    async def forward(self, path: str, receive, send, req: dict, raw: bytes,
                      rec: RequestRecord, tiers: list[TierConfig], t_start: float,
                      writer=None, attempts: int = 0) -> None:
        g = self.cfg.gateway
        added_usage = False
        if rec.stream:
            opts = req.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage")):
                raw = orjson.dumps({**req, "stream_options": {
                    **(opts if isinstance(opts, dict) else {}), "include_usage": True}})
                added_usage = True
        # the wake deadline: wake_timeout_s from the request's start, on the loop's clock (real
        # time, like the network timeouts); read only when needed (a pick that has to wait or
        # wake, a retry), since asyncio.get_running_loop() costs a getpid() call
        deadline = None
        while True:
            picked = self.board.serving(tiers)
            if picked is None:
                if deadline is None:
                    deadline = _deadline(g.wake_timeout_s, t_start)
                picked = await self.board.pick(tiers, deadline=deadline)
            tier, up = picked
            if rec.tier != tier.name:
                if rec.tier is not None:
                    self.board.end(rec.tier, rec.started_ms)
                rec.tier = tier.name
                self.board.begin(tier.name, rec.started_ms)
            try:
                if rec.stream:
                    await self._stream(path, receive, send, raw, up, rec, added_usage, t_start,
                                       writer)
                else:
                    await self._plain(path, send, raw, up, rec, t_start, writer)
                return
            except UpstreamError as err:
                if rec.sent_bytes:  # cannot happen: relays handle their own mid-body errors
                    raise
                self.board.report_failure(tier.name, err)
                attempts += 1
                if err.kind == "timeout":
                    raise GatewayError(504, "upstream_timeout",
                                       "the engine did not answer in time") from None
                if deadline is None:
                    deadline = _deadline(g.wake_timeout_s, t_start)
                if attempts > g.retry_attempts or asyncio.get_running_loop().time() >= deadline:
                    raise GatewayError(502, "upstream_unreachable",
                                       f"the engine for tier {tier.name!r} could not be "
                                       f"reached ({err.kind})") from None
                self.log(f"tier {tier.name}: request failed before any byte was sent "
                         f"({err.kind}: {err.detail}); retrying ({attempts})")
            except TimeoutError:
                if rec.sent_bytes:
                    return
                raise GatewayError(504, "upstream_timeout",
                                   "the engine did not answer in time") from None

    def _headers(self, up: Upstream) -> tuple[tuple[str, str], ...]:
        hdrs = self._hdrs.get(up.api_key)
        if hdrs is None:
            hdrs = (("Content-Type", "application/json"),)
            if up.api_key:
                hdrs += (("Authorization", f"Bearer {up.api_key}"),)
            if len(self._hdrs) > 64:
                self._hdrs.clear()
            self._hdrs[up.api_key] = hdrs
        return hdrs

    def _post(self, up: Upstream, path: str, raw: bytes, rid: str,
              total_s: float | None = None) -> Awaitable:
        """Send the request to the engine. Its headers: the key's part cached per key; the
        request's id goes too (vLLM takes it as its own request id), so its logs name the same
        request as the ledger."""
        hdrs = self._headers(up)
        url = up.endpoint + path
        if self._own_id:
            return self.client.post(url, raw, hdrs, total_s, request_id=rid)
        return self.client.post(url, raw, (*hdrs, ("X-Request-Id", rid)), total_s)

    def send_now(self, path: str, raw: bytes, up: Upstream, rec: RequestRecord, ended) -> bool:
        """The fast path's exchange (non-streaming, the h1 client, a kept-alive connection):
        sent now, ``ended(conn)`` called from the read callback when the answer is whole or
        failed. False when it cannot go this way (the caller goes the usual way)."""
        if not self._own_id:
            return False
        conn = self.client.post_now(up.endpoint + path, raw, self._headers(up),
                                    self.cfg.gateway.total_timeout_s, rec.rid, ended)
        if conn is None:
            return False
        rec.reached_engine = True
        return True

    def answered(self, rec: RequestRecord, status: int, content_type: bytes, body: bytes,
                 t_start: float) -> list[tuple[bytes, bytes]]:
        """A whole non-streaming answer: its usage into ``rec``; the headers to send."""
        rec.http_status = status
        rec.ttft_s = self.clock.monotonic() - rec.t0
        if status == 200:
            usage = None
            invalid = False
            try:
                obj = orjson.loads(body)
                if isinstance(obj, dict) and obj.get("usage") is not None:
                    usage = read_usage(obj["usage"])
                    invalid = usage is None
            except orjson.JSONDecodeError:
                invalid = True
            rec.take_usage(usage, invalid)
            rec.status = "ok"
        else:
            rec.status = f"upstream_http_{status}"
        rec.sent_bytes = True
        return [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                _overhead_header(rec, t_start), request_id_header(rec)]

    async def _plain(self, path: str, send, raw: bytes, up: Upstream, rec: RequestRecord,
                     t_start: float, writer=None) -> None:
        t_up = time.perf_counter()  # clock-ok: time waiting on the engine (overhead figure)
        rec.reached_engine = True
        try:
            resp = await self._post(up, path, raw, rec.rid, self.cfg.gateway.total_timeout_s)
        except UpstreamError as err:
            if err.kind == "connect":
                rec.reached_engine = False
            rec.upstream_s += time.perf_counter() - t_up  # clock-ok
            raise
        try:
            body = await resp.read()
        finally:
            resp.release()
            rec.upstream_s += time.perf_counter() - t_up  # clock-ok
        headers = self.answered(rec, resp.status, resp.content_type, body, t_start)
        if writer is not None:  # our server: one write, no ASGI messages
            writer.respond(resp.status, headers, body)
            return
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _stream(self, path: str, receive, send, raw: bytes, up: Upstream,
                      rec: RequestRecord, added_usage: bool, t_start: float,
                      writer=None) -> None:
        t_up = time.perf_counter()  # clock-ok
        rec.reached_engine = True
        try:
            resp = await self._post(up, path, raw, rec.rid)
        except UpstreamError as err:
            if err.kind == "connect":
                rec.reached_engine = False
            rec.upstream_s += time.perf_counter() - t_up  # clock-ok
            raise
        rec.http_status = resp.status
        if resp.status != 200:
            try:
                body = await resp.read()
            finally:
                resp.release()
                rec.upstream_s += time.perf_counter() - t_up  # clock-ok
            rec.status = f"upstream_http_{resp.status}"
            rec.sent_bytes = True
            await send({"type": "http.response.start", "status": resp.status, "headers": [
                (b"content-type", resp.content_type),
                (b"content-length", str(len(body)).encode()), _overhead_header(rec, t_start),
                request_id_header(rec)]})
            await send({"type": "http.response.body", "body": body})
            return
        tap = rec.tap = UsageTap(strip_usage=added_usage)
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    gone.set()
                    resp.close()  # stop the engine's work at once
                    return

        watcher = asyncio.create_task(watch())
        complete = False
        try:
            try:
                async with asyncio.timeout(self.cfg.gateway.total_timeout_s):
                    if writer is not None and isinstance(resp, RelaysBody):
                        await self._relay(send, resp, tap, writer, gone, rec, t_start, t_up)
                    else:
                        async for piece in resp.chunks():
                            out = tap.feed(piece)
                            if not out:
                                continue
                            if not rec.sent_bytes:
                                rec.upstream_s += time.perf_counter() - t_up  # clock-ok
                                rec.ttft_s = self.clock.monotonic() - rec.t0
                                await self._start_sse(send, rec, t_start)
                            await send({"type": "http.response.body", "body": out,
                                        "more_body": True})
                            if gone.is_set():
                                break
                tail = b"" if gone.is_set() else tap.flush()
                if tail:
                    if not rec.sent_bytes:
                        await self._start_sse(send, rec, t_start)
                    await send({"type": "http.response.body", "body": tail, "more_body": True})
                # a client that leaves once it read [DONE] (the OpenAI SDK closes right
                # there) got the whole stream: ok
                rec.status = "ok" if tap.done else (
                    "client_cancelled" if gone.is_set() else "upstream_error")
                complete = tap.done and not gone.is_set()
            except UpstreamError as err:
                if tap.done:  # the engine's body broke after [DONE] (or we cut it: gone)
                    rec.status = "ok"
                elif gone.is_set():
                    rec.status = "client_cancelled"
                elif not rec.sent_bytes:
                    raise  # nothing reached the client: the caller may retry
                else:
                    rec.status = "upstream_timeout" if err.kind == "timeout" else "upstream_error"
            except TimeoutError:  # total_timeout_s
                if not rec.sent_bytes:
                    raise GatewayError(504, "upstream_timeout",
                                       "the engine did not answer in time") from None
                rec.status = "upstream_timeout"
            if gone.is_set():
                return
            if not rec.sent_bytes:
                await self._start_sse(send, rec, t_start)
            if rec.status in ("upstream_error", "upstream_timeout"):
                err_ev = orjson.dumps({"error": {
                    "message": "the engine stopped mid-stream" if rec.status == "upstream_error"
                    else "the engine stopped answering in time",
                    "type": "api_error", "code": rec.status}})
                await send({"type": "http.response.body", "body": b"data: " + err_ev + b"\n\n",
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            if complete:
                resp.release()
            else:
                resp.close()

    async def _relay(self, send, resp: RelaysBody, tap: UsageTap, writer, gone: asyncio.Event,
                     rec: RequestRecord, t_start: float, t_up: float) -> None:
        """The fast path: the first data goes out through ASGI (with our headers), the rest
        from the engine's read callback straight to the client socket."""
        while not rec.sent_bytes:
            piece = await resp.first()
            if not piece:
                return  # the engine's body ended before any data
            out = tap.feed(piece)
            if out:
                rec.upstream_s += time.perf_counter() - t_up  # clock-ok
                rec.ttft_s = self.clock.monotonic() - rec.t0
                await self._start_sse(send, rec, t_start)
                await send({"type": "http.response.body", "body": out, "more_body": True})
        if gone.is_set():
            return
        draining: list[asyncio.Task] = []

        async def drain() -> None:
            await writer.drain()
            draining.clear()
            resp.resume()

        def sink(data: bytes) -> None:
            out = tap.feed(data)
            if out and not writer.write(out) and not writer.gone and not draining:
                resp.pause()  # the client reads slower than the engine writes
                draining.append(asyncio.ensure_future(drain()))

        try:
            await resp.relay(sink)
        finally:
            for task in draining:
                task.cancel()

    @staticmethod
    async def _start_sse(send, rec: RequestRecord, t_start: float) -> None:
        rec.sent_bytes = True
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*SSE_HEADERS, _overhead_header(rec, t_start),
                                request_id_header(rec)]})
