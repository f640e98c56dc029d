"""The gateway: a raw ASGI app (no framework on the hot path) in front of the tiers.

Routing, authentication and the gate live here; the parts are their own modules:
:mod:`~spotctl.gateway.auth` (keys), :mod:`~spotctl.gateway.gate` (budget and billing
freshness), :mod:`~spotctl.gateway.tiers` (tier states, probes, wakes), :mod:`~spotctl.gateway.proxy`
(the upstream exchange, with the pure :mod:`~spotctl.gateway.usagetap`),
:mod:`~spotctl.gateway.record` (the request record → its usage row) and
:mod:`~spotctl.gateway.recorder` (rows to the ledger, or the spool).

Per request, the hot path does: a key lookup in memory, a JSON parse, a read of the cached gate
state and tier states, one pooled upstream request, and a row put on a queue. Everything that
touches the ledger happens in background threads: the gate thread (keys, gate, journal, open
requests per tier, every ``[gateway] gate_cache_s``) and the usage writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from spotctl.clock import Clock, SystemClock, to_ms
from spotctl.config import Config
from spotctl.gateway.auth import KeyTable, authenticate
from spotctl.gateway.client import UpstreamClient
from spotctl.gateway.errors import GatewayError, error_body, scrub
from spotctl.gateway.gate import (
    BILLING_STALE,
    BUDGET_EXHAUSTED,
    HTTP_STATUS,
    LEDGER_UNREACHABLE,
    OPEN,
    STATES,
    GateState,
    PollWatch,
    evaluate_gate,
)
from spotctl.gateway.h1client import H1Client
from spotctl.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from spotctl.gateway.proxy import BODY_WRITER, Proxy, request_id_header
from spotctl.gateway.record import RequestRecord
from spotctl.gateway.recorder import UsageRecorder
from spotctl.gateway.spool import Spool
from spotctl.gateway.tiers import TierBoard
from spotctl.gateway.upstreams import TierRuntime
from spotctl.gateway.usageproc import ProcessRecorder
from spotctl.ledger.db import Ledger
from spotctl.ledger.keys import list_keys
from spotctl.ledger.usage import forget_gateways, latest_tier_events, publish_tiers

COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")
JSON = [(b"content-type", b"application/json")]
CLOSE = (b"connection", b"close")
DAY_MS = 86_400_000
BUSY_PUBLISH_S = 0.25
# The gate thread's connection waits at most this long for the ledger's write lock (its
# heartbeat write, publish_tiers): under another writer's long lock, a 15 s wait per cycle
# left the gate uncomputed, and open, for 15 s after billing went stale.
GATE_BUSY_MS = 250
ADMITTED = "spotctl.admitted"  # scope key: a request the fast path authenticated and parsed
HANDED = "spotctl.handed"  # scope key: a fast-path request handed to _completion for its retry


class Gateway:
    def __init__(self, cfg: Config, clock: Clock, runtime: TierRuntime, *,
                 ledger_path: Path | None = None, log: Callable[[str], None] | None = None,
                 refresh_s: float | None = None, gateway_id: str | None = None) -> None:
        g = cfg.gateway
        self.cfg = cfg
        self.clock = clock
        self.runtime = runtime
        self.ledger_path = Path(ledger_path or cfg.ledger_path)  # side files (spool, locks)
        # what Ledger() opens: the given path, else [ledger] (a SQLite path or PostgreSQL url)
        self.ledger_target = ledger_path if ledger_path is not None else cfg.ledger_target
        self.log = log or (lambda msg: None)
        self.refresh_s = g.gate_cache_s if refresh_s is None else refresh_s
        self.gateway_id = gateway_id or f"{socket.gethostname()}-{os.getpid()}"
        self.secrets = tuple(v for v in (os.environ.get(n) for n in {
            *(t.api_key_env for t in cfg.tiers if t.api_key_env),
            *(p.api_key_env for p in cfg.providers if p.api_key_env)}) if v)
        self.keys = KeyTable()
        self.gate = GateState(BILLING_STALE, "not checked yet", None, None, 0, 60, 0)
        self.watch = PollWatch()
        self.board = TierBoard(cfg, clock, runtime, lock_dir=self._state_dir("locks"),
                               log=self.log, secrets=self.secrets, on_wake=self._woke)
        self.models = self.board.models
        self.metrics = GatewayMetrics(list(self.models), [t.name for t in cfg.tiers])
        spool_dir = g.spool_dir or self._state_dir("spool")
        self.recorder: UsageRecorder | ProcessRecorder
        if g.usage_writer == "process":
            self.recorder = ProcessRecorder(self.ledger_target, spool_dir, self.gateway_id,
                                            g.spool_max_bytes, self.log)
        else:
            self.recorder = UsageRecorder(
                self.ledger_target, Spool(spool_dir, self.gateway_id, g.spool_max_bytes),
                self.log)
        client_class = H1Client if g.upstream_client == "h1" else UpstreamClient
        if any((t.endpoint or "").startswith("https:") for t in cfg.tiers):
            client_class = UpstreamClient  # the h1 client speaks plain http:// only
        self.client = client_class(connect_timeout_s=g.connect_timeout_s,
                                   read_timeout_s=g.first_token_timeout_s)
        self.proxy = Proxy(cfg, clock, self.board, self.client, self.log)
        self._fast = isinstance(self.client, H1Client)  # the fast path needs its post_now
        self._closing = False
        self.active = 0
        self._now_ms = _ms_reader(clock)
        self._rid = f"gw-{secrets.token_hex(6)}-"
        self._seq = itertools.count(1)
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self._gate_ledger: Ledger | None = None
        # One thread at a time uses (or closes) the gate's ledger connection: the refresher,
        # start-up, shutdown and tests calling refresh() all go through it. Closing a SQLite
        # connection another thread is using crashes the process (seen: a segfault in a read).
        self._gate_lock = threading.RLock()
        self._last_good: GateState | None = None  # the last gate computed from the ledger
        self._last_good_mono = 0.0  # when, on the monotonic clock (a wall clock may step back)
        self._publish_error: str | None = None

    def _state_dir(self, what: str) -> Path:
        return self.ledger_path.with_name(f"{self.ledger_path.name}.{what}")

    # -- lifecycle --------------------------------------------------------------------------
    def start_background(self) -> None:
        try:
            Ledger(self.ledger_target).close()  # create and migrate before readers start
        except Exception as exc:  # serve anyway: the gate stays closed until it can read
            self.log(f"cannot open the ledger yet ({type(exc).__name__}: "
                     f"{scrub(str(exc), self.secrets)})")
        self.recorder.start()
        self.refresh()
        self._refresher = threading.Thread(target=self._refresh_loop, name="gate", daemon=True)
        self._refresher.start()

    def stop_background(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=10)
        with self._gate_lock:
            self._publish(final=True)
            if self._gate_ledger is not None:
                with contextlib.suppress(Exception):
                    self._gate_ledger.close()
                self._gate_ledger = None
        if not self.recorder.close():
            self.log("some usage rows could not be made durable before exit")

    async def startup(self) -> None:
        await self.client.start()
        try:
            await asyncio.to_thread(self.start_background)
        except BaseException:
            await self.client.close()
            raise
        await self.board.start(self.client)

    async def shutdown(self, grace_s: float = 5.0) -> None:
        self._closing = True
        deadline = time.monotonic() + grace_s  # clock-ok: real wait for cancelled handlers
        while self.active and time.monotonic() < deadline:  # clock-ok
            await asyncio.sleep(0.01)
        await self.board.stop()
        await self.client.close()
        # fast-path exchanges the close cut answer from the ready queue: their rows are
        # recorded (gateway_shutdown) before the usage writer stops
        for _ in range(2):
            await asyncio.sleep(0)
        await asyncio.to_thread(self.stop_background)

    # -- the gate thread ------------------------------------------------------------------------
    def refresh(self) -> None:
        """Recompute the gate and the key table, and ask the runtime for every tier's state."""
        self.refresh_gate()
        self.board.refresh_blocking()

    def refresh_gate(self) -> None:
        with self._gate_lock:
            self._refresh_gate()

    def _refresh_gate(self) -> None:
        try:
            if self._gate_ledger is None:
                self._gate_ledger = Ledger(self.ledger_target)
                self._gate_ledger.set_busy_timeout(GATE_BUSY_MS)
            led = self._gate_ledger
            keys = list_keys(led)
            self.keys.load(keys)
            self.gate = evaluate_gate(led, self.cfg, self.clock, watch=self.watch, keys=keys)
            self._last_good = self.gate
            self._last_good_mono = self.clock.monotonic()
            events = latest_tier_events(led, list(self.board.tiers))
            self.board.draining = frozenset(t for t, ev in events.items() if ev == "draining")
        except Exception as exc:
            if self._gate_ledger is not None:
                with contextlib.suppress(Exception):
                    self._gate_ledger.close()
                self._gate_ledger = None
            now = to_ms(self.clock.now())
            last = self._last_good
            age_s = self.clock.monotonic() - self._last_good_mono
            if last is not None and age_s <= self.cfg.billing.stale_after_s:
                # a shared ledger restarting: serve from the last gate state for at most
                # [billing] stale_after_s (the same staleness billing itself is allowed)
                self.gate = last
            else:
                self.gate = GateState(LEDGER_UNREACHABLE, "cannot read the ledger: "
                                      f"{type(exc).__name__}: {scrub(str(exc), self.secrets)}",
                                      None, None, now, 60, now)
        self._publish()
        self._gauges()

    def _publish(self, final: bool = False) -> None:
        """Open requests per tier for the fleet (``gateway_tiers``); 0 on shutdown."""
        with self._gate_lock:
            self._publish_locked(final)

    def _publish_locked(self, final: bool) -> None:
        board = self.board
        tiers = {t: (0 if final else board.in_flight.get(t, 0), board.last_request_ms.get(t))
                 for t in board.tiers}
        try:
            if self._gate_ledger is None or final:
                with Ledger(self.ledger_target) as led:
                    if not final:
                        led.set_busy_timeout(GATE_BUSY_MS)
                    publish_tiers(led, self.gateway_id, to_ms(self.clock.now()), tiers)
            else:
                publish_tiers(self._gate_ledger, self.gateway_id, to_ms(self.clock.now()), tiers)
            self._publish_error = None
        except Exception as exc:
            err = type(exc).__name__
            if err != self._publish_error:  # say it once, not every refresh
                self.log(f"cannot publish open requests ({err}: "
                         f"{scrub(str(exc), self.secrets)})")
            self._publish_error = err

    def _refresh_loop(self) -> None:
        """The gate every ``refresh_s``; in between, when a tier goes from 0 to 1 request in
        flight, only its open requests are published (at most every ``BUSY_PUBLISH_S``), so
        the fleet learns of it before its next idle check. That pause never runs past the gate's
        next re-read: the key-budget overshoot bound counts on one every ``refresh_s``."""
        n = 0
        due = time.monotonic() + self.refresh_s  # clock-ok: real pacing of background work
        while not self._stop.is_set():
            left = due - time.monotonic()  # clock-ok
            busy = self.board.became_busy.wait(max(0.0, left))
            if self._stop.is_set():
                return
            if busy and time.monotonic() < due:  # clock-ok
                self.board.became_busy.clear()
                self._publish()
                self._stop.wait(min(BUSY_PUBLISH_S, max(0.0, due - time.monotonic())))  # clock-ok
                continue
            due = time.monotonic() + self.refresh_s  # clock-ok
            self.refresh_gate()
            n += 1
            if n % 1000 == 0:
                with self._gate_lock, contextlib.suppress(Exception):
                    if self._gate_ledger is not None:
                        forget_gateways(self._gate_ledger, to_ms(self.clock.now()) - DAY_MS)

    def _gauges(self) -> None:
        m, gate = self.metrics, self.gate
        nan = float("nan")
        m.spend.set(nan if gate.spend_micros is None else gate.spend_micros / 1e6)
        m.budget.set(nan if gate.budget_micros is None else gate.budget_micros / 1e6)
        m.billing_age.set(nan if gate.billing_age_s is None else gate.billing_age_s)
        status = self._gate_status()
        m.gate_open.set(int(status == OPEN))
        for s in STATES:
            m.gate_state.labels(s).set(int(s == status))
        for p in self.cfg.providers:
            m.rate_mismatch.labels(p.name).set(len(gate.rate_mismatches.get(p.name, ())))
        m.not_durable.set(self.recorder.pending)
        m.spooled.set(self.recorder.spool_rows)
        for t, n in self.board.in_flight.items():
            m.in_flight.labels(t).set(n)

    def _gate_status(self) -> str:
        return self.gate.status if self.recorder.durable else "usage_unrecordable"

    def _woke(self, tier: str, seconds: float) -> None:
        self.metrics.wake.labels(tier).observe(seconds)

    # -- ASGI ------------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        t_start = time.perf_counter()  # clock-ok: the gateway's own time, for overhead
        try:
            if method == "POST" and path in COMPLETION_PATHS:
                await self._completion(scope, receive, send, t_start)
                return
            if method == "GET" and path == "/healthz":
                await _respond(send, 200, b'{"status":"ok"}')
            elif method == "GET" and path == "/readyz":
                await self._readyz(scope, send)
            elif method == "GET" and path == "/metrics":
                if self.cfg.gateway.protect_status:
                    authenticate(self.keys, scope["headers"])
                self._gauges()
                await _respond(send, 200, self.metrics.render(), [(b"content-type",
                                                                   CONTENT_TYPE)])
            elif method == "GET" and path == "/v1/models":
                authenticate(self.keys, scope["headers"])
                data = [{"id": m, "object": "model", "owned_by": "spotctl"} for m in self.models]
                await _respond(send, 200, orjson.dumps({"object": "list", "data": data}))
            else:
                raise GatewayError(404, "not_found", f"no route for {method} {path}")
        except GatewayError as exc:
            self.metrics.request("", exc.code, exc.status)
            self.metrics.maybe_flush(idle=not self.active)
            await _respond(send, exc.status, error_body(exc.status, exc.code, exc.message),
                           JSON + exc.headers)

    async def _lifespan(self, receive, send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed",
                                "message": f"{type(exc).__name__}: {scrub(str(exc))}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _readyz(self, scope, send) -> None:
        if self.cfg.gateway.protect_status:
            authenticate(self.keys, scope["headers"])
        status = self._gate_status()
        ready, reason = status == OPEN, self.gate.reason
        if not self.recorder.durable:
            reason = "usage rows cannot be made durable: " + (self.recorder.last_error or "")
        if ready and not self.board.ready():
            ready, reason = False, "no tier is serving or wakeable"
        body = orjson.dumps({"ready": ready, "reason": reason, "gate": status,
                             "tiers": self.board.snapshot(),
                             "usage": {"durable": self.recorder.durable,
                                       "spooled_rows": self.recorder.spool_rows}})
        await _respond(send, 200 if ready else 503, body)

    # -- the request path ---------------------------------------------------------------------
    async def _read_body(self, scope, receive) -> bytes:
        g = self.cfg.gateway
        limit = g.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise GatewayError(413, "request_too_large", f"the body exceeds {limit} bytes",
                                   [CLOSE])
        msg = await receive()  # the common case: the whole body is already here
        if msg["type"] == "http.request" and not msg.get("more_body"):
            body = msg.get("body", b"")
            if len(body) > limit:
                raise GatewayError(413, "request_too_large", f"the body exceeds {limit} bytes",
                                   [CLOSE])
            return body
        if msg["type"] == "http.disconnect":
            raise GatewayError(400, "invalid_request", "the client went away")
        chunks, size = [msg.get("body", b"")], len(msg.get("body", b""))
        try:
            async with asyncio.timeout(g.body_timeout_s):
                while True:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        raise GatewayError(400, "invalid_request", "the client went away")
                    body = msg.get("body", b"")
                    size += len(body)
                    if size > limit:
                        raise GatewayError(413, "request_too_large",
                                           f"the body exceeds {limit} bytes", [CLOSE])
                    chunks.append(body)
                    if not msg.get("more_body"):
                        return b"".join(chunks) if len(chunks) != 1 else chunks[0]
        except TimeoutError:
            raise GatewayError(408, "request_timeout", "the request body did not arrive within "
                               f"{g.body_timeout_s:g} s", [CLOSE]) from None

    def _admit(self, raw: bytes) -> tuple[dict, bool, list]:
        """The request body parsed and checked: ``(request, stream, tiers)``, else the
        GatewayError to answer."""
        try:
            req = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise GatewayError(400, "invalid_request", "the body is not valid JSON") from None
        if not isinstance(req, dict) or not isinstance(req.get("model"), str):
            raise GatewayError(400, "invalid_request",
                               "the body must be a JSON object with a string 'model'")
        stream = req.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise GatewayError(400, "invalid_request", "'stream' must be a JSON boolean "
                               f"(true or false), got {orjson.dumps(stream)[:40].decode()}")
        model = req["model"]
        tiers = self.models.get(model)
        if not tiers:
            raise GatewayError(404, "model_not_found", f"no tier serves the model {model!r}")
        if self.active >= self.cfg.gateway.max_concurrent_requests:
            raise GatewayError(503, "overloaded", "too many requests in flight; retry shortly",
                               [(b"retry-after", b"1")])
        return req, stream, tiers

    def _record(self, key, req: dict, raw: bytes, stream: bool) -> RequestRecord:
        return RequestRecord(f"{self._rid}{next(self._seq):x}", key.name, req["model"],
                             self._now_ms(), self.clock.monotonic(), stream, len(raw))

    async def _completion(self, scope, receive, send, t_start: float) -> None:
        handed = scope.get(HANDED)
        if handed is None:
            admitted = scope.get(ADMITTED)
            if admitted is None:
                key = authenticate(self.keys, scope["headers"])
                raw = await self._read_body(scope, receive)
                req, stream, tiers = self._admit(raw)
            else:  # the fast path checked and parsed it, then declined (a stream, a wake...)
                key, raw, req, stream, tiers = admitted
            rec = self._record(key, req, raw, stream)
            attempts = 0
        else:  # the fast path's exchange failed before any byte: retried here
            key, req, raw, rec, tiers, t_start, attempts = handed
        self.active += 1
        try:
            self._check_gate(key)
            await self.proxy.forward(scope["path"], receive, send, req, raw, rec, tiers, t_start,
                                     scope.get("extensions", {}).get(BODY_WRITER), attempts)
        except GatewayError as exc:
            rec.status, rec.http_status = exc.code, exc.status
            if not rec.sent_bytes:
                rec.overhead_s = time.perf_counter() - t_start - rec.upstream_s  # clock-ok
                await _respond(send, exc.status, error_body(exc.status, exc.code, exc.message),
                               [*JSON, *exc.headers, request_id_header(rec)])
        except asyncio.CancelledError:
            rec.status = rec.status or "gateway_shutdown"
            raise
        finally:
            self.active -= 1
            now_ms = self._now_ms()
            if rec.tier is not None:
                self.board.end(rec.tier, now_ms)
            self._finish(rec, t_start, now_ms)

    # -- the fast path (our server, the h1 client) ---------------------------------------------
    def fast(self, cycle) -> bool:
        """A non-streaming completion whose body is here, for an open gate and a serving tier
        with a kept-alive engine connection, answered from read callbacks: no task, no
        coroutine (issue 15: the task and its steps were the largest fixed cost per request).
        Anything else (an error to answer, a wake, a stream, a new connection) returns False
        and goes through :meth:`_completion`, which answers it the same way; an exchange that
        fails before any byte continues there as its retry (:meth:`_fast_ended`)."""
        scope = cycle.scope
        if not self._fast or self._closing or scope["method"] != "POST" or \
                scope["path"] not in COMPLETION_PATHS:
            return False
        t_start = time.perf_counter()  # clock-ok: the gateway's own time, for overhead
        parts = cycle.body
        raw = parts[0] if len(parts) == 1 else b"".join(parts)
        if len(raw) > self.cfg.gateway.max_body_bytes:
            return False
        try:
            key = authenticate(self.keys, scope["headers"])
            req, stream, tiers = self._admit(raw)
        except GatewayError:
            return False
        # declined from here on: _completion takes these as they are (no second parse)
        scope[ADMITTED] = (key, raw, req, stream, tiers)
        gate = self.gate
        if stream or not self.recorder.durable or gate.status != OPEN or \
                key.name in gate.closed_keys:
            return False
        picked = self.board.serving(tiers)
        if picked is None:
            return False
        tier, up = picked
        rec = self._record(key, req, raw, False)
        rec.tier = tier.name
        self.active += 1
        self.board.begin(tier.name, rec.started_ms)
        t_up = time.perf_counter()  # clock-ok

        def ended(conn) -> None:  # from the engine's read callback: answer from the ready
            conn.loop.call_soon(answer, conn)  # queue (see server.Connection._launch)

        def answer(conn) -> None:
            rec.upstream_s += time.perf_counter() - t_up  # clock-ok
            try:
                self._fast_ended(cycle, conn, key, req, raw, rec, tiers, t_start)
            except Exception as exc:  # a defect: answer 500, record the row, keep serving
                self.log(f"error in the fast path: {type(exc).__name__}: {exc}")
                if not rec.sent_bytes:
                    self._fast_error(cycle, rec, t_start, GatewayError(
                        500, "internal_error", "internal error"))
                else:
                    self._fast_end(cycle, rec, t_start)

        if not self.proxy.send_now(scope["path"], raw, up, rec, ended):
            self.active -= 1
            self.board.end(tier.name, rec.started_ms)
            return False
        return True

    def _fast_ended(self, cycle, conn, key, req, raw, rec, tiers, t_start) -> None:
        if conn.complete:  # a whole answer (even if the engine closed the socket since)
            body = conn.take_body()
            status = conn.status
            headers = self.proxy.answered(rec, status, conn.content_type, body, t_start)
            cycle.respond(status, headers, body)
            self.client.release(conn)  # after respond: a pipelined request may start there
            self._fast_end(cycle, rec, t_start)
            return
        err = conn.error
        conn._close()
        if self._closing:  # the gateway stops (it closed the engine connections)
            rec.status = "gateway_shutdown"
            self._fast_end(cycle, rec, t_start)
            return
        if err.kind == "timeout":
            self.board.report_failure(rec.tier, err)
            self._fast_error(cycle, rec, t_start, GatewayError(
                504, "upstream_timeout", "the engine did not answer in time"))
            return
        attempts = 0
        if not (err.before_response and not conn.got_bytes):  # not a stale kept-alive socket
            self.board.report_failure(rec.tier, err)
            attempts = 1
            if attempts > self.cfg.gateway.retry_attempts:
                self._fast_error(cycle, rec, t_start, GatewayError(
                    502, "upstream_unreachable", f"the engine for tier {rec.tier!r} could not "
                    f"be reached ({err.kind})"))
                return
            self.log(f"tier {rec.tier}: request failed before any byte was sent "
                     f"({err.kind}: {err.detail}); retrying (1)")
        self.active -= 1  # _completion counts it again
        cycle.scope[HANDED] = (key, req, raw, rec, tiers, t_start, attempts)
        cycle.run_app()

    def _fast_error(self, cycle, rec: RequestRecord, t_start: float, exc: GatewayError) -> None:
        rec.status, rec.http_status = exc.code, exc.status
        rec.overhead_s = time.perf_counter() - t_start - rec.upstream_s  # clock-ok
        body = error_body(exc.status, exc.code, exc.message)
        cycle.respond(exc.status, [*JSON, *exc.headers, request_id_header(rec),
                                   (b"content-length", str(len(body)).encode())], body)
        self._fast_end(cycle, rec, t_start)

    def _fast_end(self, cycle, rec: RequestRecord, t_start: float) -> None:
        self.active -= 1
        now_ms = self._now_ms()
        self.board.end(rec.tier, now_ms)
        self._finish(rec, t_start, now_ms)
        cycle.end()

    def _check_gate(self, key) -> None:
        if not self.recorder.durable:
            raise GatewayError(503, "usage_unrecordable", "serving is paused: usage cannot be "
                               "recorded (the ledger and the spool refuse writes)",
                               [(b"retry-after", b"30")])
        gate = self.gate
        if gate.status == OPEN:
            if key.name in gate.closed_keys:
                raise GatewayError(429, "budget_exhausted", f"the daily budget of key "
                                   f"{key.name!r} is spent",
                                   [(b"retry-after", str(gate.retry_after_s).encode())])
            return
        if gate.status == BUDGET_EXHAUSTED:
            raise GatewayError(429, "budget_exhausted", gate.reason,
                               [(b"retry-after", str(gate.retry_after_s).encode())])
        raise GatewayError(HTTP_STATUS.get(gate.status, 503), gate.status,
                           f"serving is paused: {gate.reason}", [(b"retry-after", b"60")])

    def _finish(self, rec: RequestRecord, t_start: float, now_ms: int) -> None:
        row = rec.to_row(now_ms, self.clock.monotonic())
        self.recorder.record(row)
        m = self.metrics
        m.request(rec.model, row.status, rec.http_status or 0)
        m.finished(rec.tier, row.prompt_tokens, row.completion_tokens, row.tokens_estimated,
                   rec.ttft_s, time.perf_counter() - t_start, rec.overhead_s,  # clock-ok
                   idle=not self.active)


def _ms_reader(clock: Clock) -> Callable[[], int]:
    """The clock's epoch milliseconds, read twice per request: for real time, without building
    a datetime (the same floor as ``to_ms(clock.now())``)."""
    if type(clock) is SystemClock:
        return lambda: time.time_ns() // 1_000_000  # clock-ok: SystemClock.now's own source
    return lambda: to_ms(clock.now())


async def _respond(send, status: int, body: bytes,
                   headers: list[tuple[bytes, bytes]] | None = None) -> None:
    hdrs = list(headers or JSON)
    hdrs.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})
