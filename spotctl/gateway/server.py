"""Serving the gateway: an HTTP/1.1 server of our own (asyncio + httptools), and worker processes.

Why our own (issue 15): uvicorn's per-request layer (its request cycle object, scope, flow
control, keep-alive and header timers armed and cancelled per request, one write for the head
and another for the body) was the largest share of the gateway's CPU per request after the
upstream client (py-spy, bench/gateway_overhead.py). This server speaks the small subset of
ASGI the gateway needs (http and lifespan; no websockets, no trailers) and keeps the limits of
issue 11 §7 in one place:

- a deadline for the request line and headers (``[gateway] header_timeout_s``): 408, closed;
- limits on header bytes and header fields (``max_header_bytes``, ``max_headers``): 431, closed;
- a deadline for the body (``body_timeout_s``): 408, closed (the app has its own as well);
- idle keep-alive connections close after ``keep_alive_s``;
- a cap on open connections per worker (``max_connections``): a connection past it gets 503 and
  is closed at once, before a byte is parsed.

Deadlines are checked by one sweep per server every ``tick`` (a tenth of a second or less)
instead of a timer armed and cancelled per request. Requests in flight are capped by the app
(``overloaded``). On SIGTERM the server stops accepting, closes idle connections, lets requests
in flight finish for ``shutdown_grace_s``, cancels the rest (their usage rows are recorded by the
app's ``finally``), then runs the app's lifespan shutdown (pending usage rows are flushed).

Streams: the cycle object is also the ``BODY_WRITER`` scope extension (see
:mod:`spotctl.gateway.proxy`): a stream's pieces are written to the client socket from the
engine's read callback, with no ASGI ``send`` and no task switch per piece.

``--workers N`` starts N processes that each bind the port with ``SO_REUSEPORT`` (the kernel
spreads connections); they share the gate, keys and tier state through the ledger and take one
file lock per tier to wake it. The parent restarts a worker that dies and forwards SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import http
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import unquote_to_bytes

import httptools

from spotctl.gateway.proxy import BODY_WRITER

STATUS_LINE = {int(s): b"HTTP/1.1 %d %s\r\n" % (s, s.phrase.encode()) for s in http.HTTPStatus}
ASGI = {"version": "3.0", "spec_version": "2.3"}
DISCONNECT = {"type": "http.disconnect"}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
BODY_HIGH_WATER = 1 << 16  # pause reading a request body the app has not taken past 64 KiB
HEAD, BODY, BUSY, IDLE = 1, 2, 3, 4  # what a connection is waiting for (its deadline's kind)
ERROR_CODES = {400: b"invalid_request", 408: b"request_timeout", 431: b"headers_too_large",
               500: b"internal_error", 503: b"overloaded"}


def _status_line(status: int) -> bytes:
    line = STATUS_LINE.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


def _reject(transport, status: int, message: bytes) -> None:
    """Answer ``status`` with an OpenAI-shaped error body and close the connection."""
    if transport is None or transport.is_closing():
        return
    body = (b'{"error":{"message":"' + message + b'","type":"invalid_request_error",'
            b'"param":null,"code":"' + ERROR_CODES.get(status, b"error") + b'"}}')
    transport.write(_status_line(status) + b"content-type: application/json\r\n"
                    b"content-length: " + str(len(body)).encode() +
                    b"\r\nconnection: close\r\n\r\n" + body)
    transport.close()


@runtime_checkable
class FastPath(Protocol):
    """An app that can answer some requests from callbacks, without a task: ``fast(cycle)``
    returns False to decline (the ASGI handler runs as usual), or True when it took the
    request; it then ends it with ``cycle.respond(...)`` and ``cycle.end()``, or hands it to
    the ASGI handler with ``cycle.run_app()`` (the body is still there to ``receive``)."""

    def fast(self, cycle: Cycle) -> bool: ...


class Limits:
    """The per-connection limits (``[gateway]``)."""

    __slots__ = ("body_timeout_s", "header_timeout_s", "keep_alive_s", "max_connections",
                 "max_header_bytes", "max_headers", "shutdown_grace_s")

    def __init__(self, gw) -> None:
        self.max_header_bytes = gw.max_header_bytes
        self.max_headers = gw.max_headers
        self.header_timeout_s = gw.header_timeout_s
        self.body_timeout_s = gw.body_timeout_s
        self.keep_alive_s = gw.keep_alive_s
        self.max_connections = gw.max_connections
        self.shutdown_grace_s = gw.shutdown_grace_s


# -- one request ------------------------------------------------------------------------------------
class Cycle:
    """One request and its response: the ASGI ``receive``/``send`` pair, and the
    ``BODY_WRITER`` of a started chunked response (``write``/``gone``/``drain``)."""

    __slots__ = ("body", "body_complete", "buffered", "chunked", "conn", "delivered",
                 "expect_continue", "head_only", "headers", "keep_alive", "response_complete",
                 "scope", "small_body", "started", "status", "task", "waiter")

    def __init__(self, conn: Connection, scope: dict, keep_alive: bool,
                 expect_continue: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.head_only = scope["method"] == "HEAD"
        self.body: list[bytes] = []
        self.buffered = 0
        self.body_complete = False
        self.delivered = False  # the whole body went to the app
        self.waiter: asyncio.Future | None = None
        self.status = 0
        self.headers: list = []
        self.started = False  # the head is written
        self.chunked = False
        self.response_complete = False
        self.task: asyncio.Task | None = None
        self.small_body = False  # a known length under BODY_HIGH_WATER: may wait for it whole

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- ASGI --------------------------------------------------------------------------------
    async def receive(self) -> dict:
        conn = self.conn
        while True:
            if conn.lost or self.response_complete:
                return DISCONNECT
            if self.body or (self.body_complete and not self.delivered):
                parts = self.body
                body = parts[0] if len(parts) == 1 else b"".join(parts)
                self.body = []
                self.buffered = 0
                more = not self.body_complete
                if not more:
                    self.delivered = True
                elif conn.paused and not conn.pipeline:
                    conn.resume()
                return {"type": "http.request", "body": body, "more_body": more}
            if self.expect_continue:
                self.expect_continue = False
                conn.transport.write(CONTINUE)
            if conn.paused and not conn.pipeline:
                conn.resume()
            self.waiter = conn.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started or self.status:
                raise RuntimeError("the response was already started")
            self.status = message["status"]
            self.headers = message.get("headers") or []
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.status:
            raise RuntimeError("http.response.body before http.response.start")
        if self.response_complete:
            raise RuntimeError("the response is already complete")
        conn = self.conn
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if conn.lost:
            if not more:
                self.response_complete = True
            return
        transport = conn.transport
        if not self.started:
            transport.write(self._head(body, more))
        elif self.head_only:
            pass
        elif self.chunked:
            if body:
                transport.write(b"%x\r\n%s\r\n" % (len(body), body) if more else
                                b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            elif not more:
                transport.write(b"0\r\n\r\n")
        elif body:
            transport.write(body)
        if not more:
            self.response_complete = True
            conn.cycle_done(self)
        elif conn.write_paused:
            await conn.drain()

    def _head(self, body: bytes, more: bool) -> bytes:
        """Status line, headers and the first body piece, framed: one write."""
        self.started = True
        out = [_status_line(self.status)]
        length = False
        for name, value in self.headers:
            if name == b"content-length":
                length = True
            elif name == b"connection" and value.lower() == b"close":
                self.keep_alive = False
            out += (name, b": ", value, b"\r\n")
        if not length and not self.head_only and self.status not in (204, 304):
            if more:
                self.chunked = True
                out.append(b"transfer-encoding: chunked\r\n")
            else:
                out += (b"content-length: ", str(len(body)).encode(), b"\r\n")
        if not self.keep_alive:
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        if body and not self.head_only:
            if self.chunked:
                out.append(b"%x\r\n%s\r\n" % (len(body), body))
                if not more:
                    out.append(b"0\r\n\r\n")
            else:
                out.append(body)
        elif self.chunked and not more:
            out.append(b"0\r\n\r\n")
        return b"".join(out)

    # -- BODY_WRITER ----------------------------------------------------------------------
    def respond(self, status: int, headers: list, body: bytes) -> None:
        """The whole response at once (``http.response.start`` and its only body, in one
        write): the proxy's non-streaming answer."""
        if self.started or self.status:
            raise RuntimeError("the response was already started")
        self.status, self.headers = status, headers
        self.response_complete = True
        conn = self.conn
        if not conn.lost:
            conn.transport.write(self._head(body, False))
            conn.cycle_done(self)

    def write(self, data: bytes) -> bool:
        """Write a body piece of the started chunked response now; False when the client is
        gone or reads slower than we write (then wait for :meth:`drain`)."""
        conn = self.conn
        if conn.lost or self.response_complete:
            return False
        if not (self.started and self.chunked):
            raise RuntimeError("write() needs a started chunked response")
        conn.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        return not conn.write_paused

    @property
    def gone(self) -> bool:
        return self.conn.lost

    async def drain(self) -> None:
        await self.conn.drain()

    # -- the fast path ----------------------------------------------------------------------------
    def end(self) -> None:
        """The app's fast path answered this request (see :class:`FastPath`)."""
        self.conn.server.busy -= 1
        self.scope = None

    def run_app(self) -> None:
        """The app's fast path hands this request to its ASGI handler after all."""
        self.conn.run_app(self)

    # -- the app's task ended -----------------------------------------------------------------
    def done(self, task: asyncio.Task) -> None:
        conn = self.conn
        conn.server.busy -= 1
        # no reference cycles left for the GC (cycle → task → coroutine → cycle, and the scope
        # naming the cycle as its BODY_WRITER): a request's objects go by reference counting
        self.task = None
        self.scope = None
        if task.cancelled():
            exc: BaseException | None = None
        else:
            exc = task.exception()
            if exc is not None:
                conn.server.log("error in the request handler: " + "".join(
                    traceback.format_exception_only(type(exc), exc)).strip())
        if self.response_complete or conn.lost:
            return
        if not self.started:
            _reject(conn.transport, 500, b"internal error")
        else:
            conn.transport.close()  # a response the app did not finish


# -- one connection -----------------------------------------------------------------------------
class Connection(asyncio.Protocol):
    __slots__ = ("client", "cycle", "deadline", "deferred", "drainers", "hbytes",
                 "headers", "in_headers", "local", "loop", "lost", "nheaders", "parser",
                 "parsing", "paused", "phase", "pipeline", "rejected", "server", "transport",
                 "url", "write_paused")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.cycle: Cycle | None = None  # the request the app is answering
        self.parsing: Cycle | None = None  # the request the parser is reading (pipelining)
        self.pipeline: deque[Cycle] = deque()
        self.lost = False
        self.rejected = False
        self.paused = False
        self.write_paused = False
        self.drainers: list[asyncio.Future] = []
        self.deferred: Cycle | None = None  # started, its launch waiting for its body (_start)
        self.in_headers = True
        self.hbytes = self.nheaders = 0
        self.url = b""
        self.headers: list = []
        self.phase = HEAD
        self.deadline = 0.0
        self.client = self.local = None

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        server = self.server
        if len(server.conns) >= server.limits.max_connections or server.stopping:
            self.rejected = True
            _reject(transport, 503, b"too many connections")
            return
        server.conns.add(self)
        self.deadline = self.loop.time() + server.limits.header_timeout_s
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client = tuple(peer[:2]) if isinstance(peer, tuple) else None
        self.local = tuple(local[:2]) if isinstance(local, tuple) else None

    def connection_lost(self, exc) -> None:
        self.lost = True
        self.server.conns.discard(self)
        if self.deferred is not None:  # its body never came whole: it was never launched
            self.deferred = None
            self.server.busy -= 1
        if self.cycle is not None:
            self.cycle.wake()
        self._wake_drainers()
        self.parser = None  # it holds this protocol: no cycle for the GC

    def eof_received(self) -> bool | None:
        return None  # the client closed its side: close ours (a response in flight is cut)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drainers()

    def _wake_drainers(self) -> None:
        for f in self.drainers:
            if not f.done():
                f.set_result(None)
        self.drainers.clear()

    async def drain(self) -> None:
        if self.write_paused and not self.lost:
            f = self.loop.create_future()
            self.drainers.append(f)
            await f

    def data_received(self, data: bytes) -> None:
        if self.rejected:
            return
        was_in_headers = self.in_headers
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, b"protocol upgrades are not supported")
            return
        except httptools.HttpParserError:
            if not self.rejected:
                self._refuse(400, b"malformed HTTP request")
            return
        if was_in_headers and self.in_headers and not self.rejected:
            self.hbytes += len(data)
            if self.hbytes > self.server.limits.max_header_bytes:
                self._refuse(431, b"request headers too large")

    def _refuse(self, status: int, message: bytes) -> None:
        self.rejected = True
        if self.cycle is not None and self.cycle.started:
            self.transport.close()
        else:
            _reject(self.transport, status, message)

    def pause(self) -> None:
        if not self.paused and not self.lost:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and not self.lost:
            self.paused = False
            self.transport.resume_reading()

    # -- httptools callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.in_headers = True
        self.url = b""
        self.headers = []
        self.hbytes = self.nheaders = 0
        if self.cycle is None:
            self.phase = HEAD
            self.deadline = self.loop.time() + self.server.limits.header_timeout_s

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.nheaders += 1
        self.hbytes += len(name) + len(value) + 4
        limits = self.server.limits
        if self.nheaders > limits.max_headers or self.hbytes > limits.max_header_bytes:
            if not self.rejected:
                self._refuse(431, b"request headers too large")
            return
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.in_headers = False
        if self.rejected:
            return
        parser = self.parser
        url = self.url
        if url[:1] != b"/":
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        else:
            q = url.find(b"?")
            raw_path, query = (url, b"") if q < 0 else (url[:q], url[q + 1:])
        # find(), not `in`: see usagetap.UsageTap.feed
        path = (unquote_to_bytes(raw_path) if raw_path.find(b"%") >= 0 else raw_path
                ).decode("latin-1")
        headers = self.headers
        expect = False
        length = -1
        for name, value in headers:
            if name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"expect" and value.lower() == b"100-continue":
                expect = True
        scope = {"type": "http", "asgi": ASGI, "http_version": parser.get_http_version(),
                 "server": self.local, "client": self.client, "scheme": "http",
                 "method": parser.get_method().decode("ascii"), "root_path": "", "path": path,
                 "raw_path": raw_path, "query_string": query, "headers": headers,
                 "extensions": {}}
        cycle = Cycle(self, scope, parser.should_keep_alive(), expect)
        cycle.small_body = not expect and 0 <= length <= BODY_HIGH_WATER
        scope["extensions"][BODY_WRITER] = cycle
        self.parsing = cycle
        if self.cycle is None:
            self._start(cycle)
        else:  # pipelined: wait for the response in flight, read no further meanwhile
            self.pipeline.append(cycle)
            self.pause()

    def on_body(self, body: bytes) -> None:
        c = self.parsing
        if c is None or c.response_complete or self.rejected:
            return
        c.body.append(body)
        c.buffered += len(body)
        if c.buffered > BODY_HIGH_WATER:
            self.pause()
        c.wake()

    def on_message_complete(self) -> None:
        c = self.parsing
        if c is None or self.rejected:
            return
        c.body_complete = True
        if c is self.cycle and self.phase == BODY:
            self.phase = BUSY
            self.deadline = 0.0
        c.wake()
        if self.deferred is c:
            self.deferred = None
            self._launch(c)

    # -- requests -----------------------------------------------------------------------------
    def _start(self, cycle: Cycle) -> None:
        self.cycle = cycle
        server = self.server
        if cycle.body_complete:
            self.phase, self.deadline = BUSY, 0.0
        else:
            self.phase = BODY
            self.deadline = self.loop.time() + server.limits.body_timeout_s
        server.busy += 1
        if server.fast is not None and not cycle.body_complete and cycle.small_body:
            # a body of a known size under BODY_HIGH_WATER (reading never pauses for it):
            # decide once it is whole (on_message_complete); the sweep's body deadline (408)
            # still holds meanwhile
            self.deferred = cycle
            return
        self._launch(cycle)

    def _launch(self, cycle: Cycle) -> None:
        if self.server.fast is not None and cycle.body_complete:
            # the app's fast path, from the loop's ready queue rather than inside this read
            # callback: the other reads of this wake-up are parsed first and their requests
            # go out together (measured, bench/gateway_overhead.py: inside the read callback the
            # fast path was 8 % slower than a task per request at 32 connections, from the
            # ready queue 20 % faster)
            self.loop.call_soon(self._fast, cycle)
            return
        self.run_app(cycle)

    def _fast(self, cycle: Cycle) -> None:
        if self.lost or not self.server.fast(cycle):
            self.run_app(cycle)  # declined: the ASGI handler answers it, as usual

    def run_app(self, cycle: Cycle) -> None:
        """The request's ASGI handler, in a task of its own."""
        server = self.server
        task = cycle.task = self.loop.create_task(server.app(cycle.scope, cycle.receive,
                                                              cycle.send))
        task.add_done_callback(cycle.done)

    def cycle_done(self, cycle: Cycle) -> None:
        """The response of ``cycle`` is complete: next request, keep-alive or close."""
        cycle.wake()
        if not cycle.keep_alive or not cycle.body_complete or self.server.stopping:
            self.transport.close()
            return
        self.cycle = None
        if self.pipeline:
            self._start(self.pipeline.popleft())
            if not self.pipeline:
                self.resume()
            return
        self.phase = IDLE
        self.deadline = self.loop.time() + self.server.limits.keep_alive_s
        self.resume()

    def expire(self) -> None:
        """The sweep found this connection past its deadline."""
        self.deadline = 0.0
        phase = self.phase
        if phase == HEAD and self.cycle is None:
            self.rejected = True
            _reject(self.transport, 408, b"the request headers did not arrive in time")
        elif phase == BODY and self.cycle is not None and not self.cycle.started:
            self.rejected = True
            _reject(self.transport, 408, b"the request body did not arrive in time")
        elif phase == IDLE:
            self.transport.close()

    def shutdown(self) -> None:
        if self.cycle is None:
            self.transport.close()
        else:
            self.cycle.keep_alive = False


# -- the server ---------------------------------------------------------------------------------
class Server:
    """Serves an ASGI app (``http`` and ``lifespan``) on given sockets until asked to stop.

    ``run(sockets)`` blocks (its own event loop: uvloop when installed); ``started`` turns True
    once the app's startup completed and the sockets accept; ``should_exit = True`` (from any
    thread) or SIGTERM/SIGINT (in the main thread) stop it gracefully."""

    def __init__(self, app, gw, log: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.fast = app.fast if isinstance(app, FastPath) else None
        self.limits = Limits(gw)
        self.log = log or _stderr
        self.conns: set[Connection] = set()
        self.busy = 0  # requests whose handler is running
        self.started = False
        self.should_exit = False
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None  # serving(): the thread it runs in
        lim = self.limits
        self.tick = min(0.1, max(0.01, min(lim.header_timeout_s, lim.body_timeout_s,
                                           lim.keep_alive_s) / 5))

    def run(self, sockets: list[socket.socket]) -> None:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(self.serve(sockets))

    async def serve(self, sockets: list[socket.socket]) -> None:
        self.loop = loop = asyncio.get_running_loop()
        lifespan = _Lifespan(self.app)
        if not await lifespan.startup():
            self.log(f"startup failed: {lifespan.error}")
            return
        servers = []
        stop = asyncio.Event()
        handlers = threading.current_thread() is threading.main_thread()
        if handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        try:
            for sock in sockets:
                servers.append(await loop.create_server(lambda: Connection(self), sock=sock,
                                                        backlog=2048))
            self.started = True
            while not stop.is_set() and not self.should_exit:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.tick):
                        await stop.wait()
                self._sweep()
            await self._shutdown(servers)
        finally:
            if handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            await lifespan.shutdown()

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in [c for c in self.conns if c.deadline and now >= c.deadline]:
            conn.expire()

    async def _shutdown(self, servers) -> None:
        self.stopping = True
        for s in servers:
            s.close()
        for conn in list(self.conns):
            conn.shutdown()
        deadline = time.monotonic() + self.limits.shutdown_grace_s  # clock-ok: real grace
        while self.busy and time.monotonic() < deadline:  # clock-ok
            await asyncio.sleep(0.05)
        tasks = [c.cycle.task for c in list(self.conns)
                 if c.cycle is not None and c.cycle.task is not None and not c.cycle.task.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        for conn in list(self.conns):
            conn.transport.close()


class _Lifespan:
    """The ASGI lifespan protocol: startup before serving, shutdown after."""

    def __init__(self, app) -> None:
        self.app = app
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.error = ""

    async def startup(self) -> bool:
        self.task = asyncio.create_task(self.app({"type": "lifespan", "asgi": ASGI},
                                                 self.inbox.get, self.outbox.put))
        await self.inbox.put({"type": "lifespan.startup"})
        got = asyncio.ensure_future(self.outbox.get())
        await asyncio.wait([got, self.task], return_when=asyncio.FIRST_COMPLETED)
        if not got.done():
            got.cancel()
            exc = None if self.task.cancelled() else self.task.exception()
            self.error = f"{type(exc).__name__}: {exc}" if exc else "the app ended"
            self.task = None
            return False
        msg = got.result()
        if msg["type"] != "lifespan.startup.complete":
            self.error = msg.get("message", "")
            return False
        return True

    async def shutdown(self) -> None:
        if self.task is None or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait([self.task], timeout=60)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _stderr(msg: str) -> None:
    """One log line; never raises (a full disk refuses log lines too)."""
    with contextlib.suppress(OSError, ValueError):
        print(f"gateway[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def listen_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


@contextlib.contextmanager
def serving(app, gw, sock: socket.socket, *, timeout_s: float = 30.0):
    """Serve ``app`` on ``sock`` in a thread of this process for the ``with`` block, as
    ``spotctl gateway`` serves it (tests); yields the :class:`Server`."""
    server = Server(app, gw)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run([sock])
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)

    thread = server.thread = threading.Thread(target=run, name="gateway-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s  # clock-ok: real waiting for a real server
    while not server.started:
        if failure or not thread.is_alive():
            raise RuntimeError(f"the gateway did not start: {failure or 'exited'}")
        if time.monotonic() > deadline:  # clock-ok
            server.should_exit = True
            raise TimeoutError(f"the gateway did not start in {timeout_s:g} s")
        time.sleep(0.01)  # clock-ok
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout_s)


def serve_one(app, gw, host: str, port: int, *, reuse_port: bool) -> int:
    """Serve ``app`` in this process until SIGTERM/SIGINT; 1 when it could not start."""
    import gc

    sock = listen_socket(host, port, reuse_port=reuse_port)
    server = Server(app, gw)
    # fewer, cheaper collections on the request path: the start-up objects live forever, and
    # a request's objects are freed by reference counting
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    server.run([sock])
    return 0 if server.started else 1


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the parent dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _worker(build: Callable[[], object], gw, host: str, port: int) -> None:
    _die_with_parent()
    sys.exit(serve_one(build(), gw, host, port, reuse_port=True))


def serve_workers(build: Callable[[], object], gw, host: str, port: int, workers: int,
                  log: Callable[[str], None]) -> int:
    """Run ``workers`` processes on one port (SO_REUSEPORT). Returns the exit status."""
    if workers <= 1:
        return serve_one(build(), gw, host, port, reuse_port=False)
    # check the address before forking: a clear error instead of N failing workers
    listen_socket(host, port, reuse_port=True).close()
    metrics_dir = Path(tempfile.mkdtemp(prefix="spotctl-gateway-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, multiprocessing.process.BaseProcess] = {}
    stopping = False

    def start(i: int) -> None:
        p = ctx.Process(target=_worker, args=(build, gw, host, port), name=f"gateway-{i}",
                        daemon=False)
        p.start()
        procs[i] = p

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        for p in procs.values():
            if p.is_alive() and p.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(workers):
        start(i)
    restarts = 0
    status = 0
    from prometheus_client import multiprocess as mp

    try:
        while True:
            for i, p in list(procs.items()):
                p.join(timeout=0.2)
                if p.is_alive():
                    continue
                if p.pid:
                    mp.mark_process_dead(p.pid)
                if stopping:
                    procs.pop(i)
                    continue
                restarts += 1
                log(f"worker {i} exited ({p.exitcode}); restarting it")
                start(i)
            if stopping and not procs:
                return status
            if not stopping and restarts > 10 * workers:
                log("workers keep dying; giving up")
                status = 1
                stop(None, None)
    finally:
        with contextlib.suppress(OSError):
            for f in metrics_dir.glob("*"):
                f.unlink()
            metrics_dir.rmdir()
