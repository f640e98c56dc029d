"""A protocol-level HTTP/1.1 client for the gateway's upstream: asyncio + httptools, keep-alive.

Why not a library: measured in bench/gateway_overhead.py, aiohttp's request path (request and
response objects, header multidicts, payload registry, tracing hooks) was the largest share of
the gateway's CPU per request; the gateway needs a small subset of HTTP/1.1 towards engines it
knows (POST with a body, GET for probes; content-length or chunked answers; keep-alive). This
client does only that, in one small protocol class, and has its own tests
(tests/test_gateway_h1client.py: keep-alive, chunked, timeouts, half-closed sockets).

It has the same surface and the same error kinds as :mod:`spotctl.gateway.client` (the
aiohttp client, kept as ``[gateway] upstream_client = "aiohttp"``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from urllib.parse import urlsplit

import httptools

from spotctl.gateway.client import UpstreamError

HIGH_WATER = 1 << 20  # pause reading from the engine past 1 MiB not yet relayed


class _Conn(asyncio.Protocol):
    __slots__ = ("_done", "_head", "_paused", "_wake", "activity", "body", "buffered", "closed",
                 "complete", "content_type", "deadline", "ended", "error", "got_bytes",
                 "keep_alive", "loop", "parser", "pool", "sink", "status", "transport")

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self._head: asyncio.Future | None = None
        self._wake: asyncio.Future | None = None
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self._paused = False
        self.complete = False
        self.got_bytes = False
        self.error: UpstreamError | None = None
        self.status = 0
        self.content_type = b"application/json"
        self.keep_alive = True
        self.activity = 0.0  # loop time of the last byte (the sweep's read timeout)
        self.deadline = 0.0  # loop time the whole exchange must end by (0: none)
        self.sink = None  # relay(): body pieces go straight to it, in the read callback
        self._done: asyncio.Future | None = None
        self.ended = None  # start(): called once, with this connection, when the answer is whole
        # or has failed

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self.activity = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("protocol", type(exc).__name__,
                                     before_response=self.status == 0))
            self._close()

    def eof_received(self) -> bool:
        return False  # the engine closed its side: close ours (connection_lost judges)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pool.discard(self)
        if not self.complete:
            self._fail(UpstreamError("reset" if self.status == 0 else "broken",
                                     type(exc).__name__ if exc else "closed by the engine",
                                     before_response=self.status == 0))
        self.pool.client.busy.discard(self)
        self.parser = None  # it holds this protocol: no cycle for the GC

    def pause_writing(self) -> None:  # a request body larger than the socket buffer: rare
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks ------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 12 and name.lower() == b"content-type":
            self.content_type = value

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        head = self._head
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink(body)
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._notify()

    def on_message_complete(self) -> None:
        self.complete = True
        self.pool.client.busy.discard(self)
        self._notify()
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)
        ended = self.ended
        if ended is not None:
            self.ended = None
            ended(self)

    # -- helpers ------------------------------------------------------------------------------
    def _notify(self) -> None:
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, err: UpstreamError) -> None:
        if self.error is None:
            self.error = err
        head = self._head
        if head is not None and not head.done():
            head.set_exception(err)
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)
        done = self._done
        if done is not None and not done.done():
            done.set_exception(err)
        ended = self.ended
        if ended is not None:
            self.ended = None
            ended(self)

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def relay(self, sink) -> asyncio.Future:
        """From now on hand each piece of the body to ``sink(bytes)`` as it is read (no task
        switch per piece). The future ends with the body, or with the UpstreamError."""
        done = self._done = self.loop.create_future()
        if self.body:
            pending = b"".join(self.body)
            self.body.clear()
            self.buffered = 0
            self.resume()
            sink(pending)
        if self.error is not None:
            done.set_exception(self.error)
        elif self.complete:
            done.set_result(None)
        else:
            self.sink = sink
        return done

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def expire(self, now: float, read_timeout: float) -> None:
        """The client's sweep: no byte for ``read_timeout``, or past the exchange's deadline."""
        if self.complete or self.closed:
            return
        if now - self.activity >= read_timeout:
            detail = f"no byte for {read_timeout:g} s"
        elif self.deadline and now >= self.deadline:
            detail = "the answer took longer than its deadline"
        else:
            return
        self._fail(UpstreamError("timeout", detail, before_response=self.status == 0))
        self._close()

    # -- one exchange -------------------------------------------------------------------------
    async def request(self, data: bytes, deadline: float) -> None:
        # after a complete answer the parser waits at the start of the next message (kept
        # alive); a new connection's parser is fresh too
        fresh = self.complete or not self.got_bytes
        self._reset()
        if not fresh:
            self.parser = httptools.HttpResponseParser(self)
        self._head = self.loop.create_future()
        assert self.transport is not None
        self.transport.write(data)
        self.activity = self.loop.time()
        self.deadline = deadline
        self.pool.client.watch(self)
        await self._head

    def start(self, data: bytes, deadline: float, ended) -> None:
        """:meth:`request` without a future: ``ended(self)`` is called once, from the read
        callback, when the whole answer arrived (``complete``) or the exchange failed
        (``error``). The gateway's fast path for non-streaming requests."""
        fresh = self.complete or not self.got_bytes
        self._reset()
        if not fresh:
            self.parser = httptools.HttpResponseParser(self)
        self.ended = ended
        assert self.transport is not None
        self.transport.write(data)
        self.activity = self.loop.time()
        self.deadline = deadline
        self.pool.client.watch(self)

    def take_body(self) -> bytes:
        """The whole body of a complete answer (after ``ended``)."""
        body = self.body
        piece = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self.buffered = 0
        return piece

    async def next_piece(self) -> bytes:
        """Everything of the body that arrived since the last call (one piece per read, not
        per chunk of the chunked encoding: a burst of events is relayed in one send); b"" at
        its end."""
        while True:
            if self.body:
                body = self.body
                piece = body.popleft() if len(body) == 1 else b"".join(body)
                body.clear()
                self.buffered = 0
                if self._paused and self.buffered < HIGH_WATER // 2 and self.transport:
                    self._paused = False
                    self.transport.resume_reading()
                return piece
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            self._wake = self.loop.create_future()
            await self._wake
            self._wake = None


class _Pool:
    def __init__(self, client: H1Client, host: str, port: int, connect_timeout: float) -> None:
        self.client = client
        self.host, self.port = host, port
        self.connect_timeout = connect_timeout
        self.idle: list[_Conn] = []
        self.all: set[_Conn] = set()

    def take_idle(self) -> _Conn | None:
        """A kept-alive connection, or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and \
                    not conn.transport.is_closing():
                return conn
        return None

    async def connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Conn(self), self.host,
                                                       self.port)
        except (OSError, TimeoutError) as exc:
            raise UpstreamError("connect", type(exc).__name__, before_response=True) from None
        self.all.add(conn)
        return conn

    def release(self, conn: _Conn) -> None:
        if conn.complete and conn.keep_alive and not conn.closed and conn.error is None:
            self.idle.append(conn)
        else:
            conn._close()

    def discard(self, conn: _Conn) -> None:
        self.all.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def close(self) -> None:
        for conn in list(self.all):
            conn._close()
        self.idle.clear()


class UpstreamResponse:
    __slots__ = ("_conn", "_pool", "content_type", "status")

    def __init__(self, conn: _Conn, pool: _Pool) -> None:
        self._conn, self._pool = conn, pool
        self.status = conn.status
        self.content_type = conn.content_type

    async def read(self) -> bytes:
        conn = self._conn
        if conn.complete and conn.error is None:  # the common case: it all came in one read
            piece = conn.take_body()
            conn.resume()
            return piece
        parts = []
        while piece := await self._conn.next_piece():
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        while piece := await self._conn.next_piece():
            yield piece

    async def first(self) -> bytes:
        """The first piece of the body (b"" when it is empty)."""
        return await self._conn.next_piece()

    def relay(self, sink) -> asyncio.Future:
        return self._conn.relay(sink)

    def pause(self) -> None:
        self._conn.pause()

    def resume(self) -> None:
        self._conn.resume()

    def release(self) -> None:
        self._pool.release(self._conn)

    def close(self) -> None:
        self._conn._close()


class H1Client:
    """The gateway's upstream client (same surface as ``client.UpstreamClient``).

    Read timeouts and deadlines are checked by one sweep per client every ``tick`` (a tenth of
    the read timeout, at most 0.25 s) while exchanges are under way, not by a timer armed and
    cancelled per request."""

    def __init__(self, *, connect_timeout_s: float, read_timeout_s: float,
                 max_connections: int = 0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.tick = min(0.25, max(0.005, read_timeout_s / 10))
        self._pools: dict[str, tuple[_Pool, bytes]] = {}
        self._heads: dict[tuple, tuple[_Pool, bytes]] = {}  # (method, url, headers) → head
        self.busy: set[_Conn] = set()  # exchanges under way (the sweep watches them)
        self._sweeping: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for pool, _ in self._pools.values():
            pool.close()
        self._pools.clear()
        self._heads.clear()
        if self._sweeping is not None:
            self._sweeping.cancel()
            self._sweeping = None

    # -- timeouts -------------------------------------------------------------------------------
    def watch(self, conn: _Conn) -> None:
        self.busy.add(conn)
        if self._sweeping is None:
            self._sweeping = conn.loop.call_later(self.tick, self._sweep, conn.loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeping = None
        now = loop.time()
        for conn in list(self.busy):
            if conn.complete or conn.closed:
                self.busy.discard(conn)
            else:
                conn.expire(now, self.read_timeout_s)
        if self.busy:
            self._sweeping = loop.call_later(self.tick, self._sweep, loop)

    # -- requests -------------------------------------------------------------------------------
    def _pool(self, origin: str) -> tuple[_Pool, bytes]:
        entry = self._pools.get(origin)
        if entry is None:
            parts = urlsplit(origin)
            if parts.scheme != "http":
                raise UpstreamError("connect", f"{parts.scheme} is not supported by the h1 "
                                    "client (use upstream_client = \"aiohttp\")",
                                    before_response=True)
            host = parts.hostname or "127.0.0.1"
            port = parts.port or 80
            entry = (_Pool(self, host, port, self.connect_timeout_s),
                     parts.netloc.encode("ascii"))
            self._pools[origin] = entry
        return entry

    def _head(self, method: bytes, url: str, headers) -> tuple[_Pool, bytes]:
        """The pool for the URL's origin and the request's head up to its content-length value
        (cached: a gateway sends the same few heads over and over)."""
        items = tuple(headers.items()) if isinstance(headers, dict) else tuple(headers)
        key = (method, url, items)
        got = self._heads.get(key)
        if got is not None:
            return got
        scheme_end = url.find("://")
        slash = url.find("/", scheme_end + 3)
        origin = url[:slash] if slash >= 0 else url
        target = url[slash:] if slash >= 0 else "/"
        pool, host = self._pool(origin)
        lines = [method, b" ", target.encode("ascii"), b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
        for k, v in items:
            lines += [k.encode("latin-1"), b": ", v.encode("latin-1"), b"\r\n"]
        lines.append(b"content-length: ")
        if len(self._heads) > 1024:
            self._heads.clear()
        got = self._heads[key] = (pool, b"".join(lines))
        return got

    async def _exchange(self, url: str, method: bytes, body: bytes, headers,
                        total_s: float | None = None,
                        request_id: str | None = None) -> UpstreamResponse:
        pool, head = self._head(method, url, headers)
        if request_id is None:
            data = b"%s%d\r\n\r\n%s" % (head, len(body), body)
        else:  # the per-request header stays out of the cached head
            data = b"%s%d\r\nx-request-id: %s\r\n\r\n%s" % (
                head, len(body), request_id.encode("latin-1"), body)
        for attempt in (0, 1):
            conn, reused = pool.take_idle(), True
            if conn is None:
                conn, reused = await pool.connect(), False
            try:
                await conn.request(data, conn.loop.time() + total_s if total_s else 0.0)
            except UpstreamError as err:
                conn._close()
                # a kept-alive connection the engine closed meanwhile: one fresh try at once
                if reused and attempt == 0 and err.before_response and not conn.got_bytes:
                    continue
                raise
            return UpstreamResponse(conn, pool)
        raise AssertionError("unreachable")

    def post_now(self, url: str, body: bytes, headers, total_s: float | None, request_id: str,
                 ended) -> _Conn | None:
        """Send the request on a kept-alive connection now, without a task: ``ended(conn)``
        is called when the answer is whole or failed (see :meth:`_Conn.start`); the caller
        then takes the body and calls :meth:`release`. ``None`` when no connection is idle
        (the caller goes the usual way, which connects)."""
        pool, head = self._head(b"POST", url, headers)
        conn = pool.take_idle()
        if conn is None:
            return None
        conn.start(b"%s%d\r\nx-request-id: %s\r\n\r\n%s" % (
            head, len(body), request_id.encode("latin-1"), body),
            conn.loop.time() + total_s if total_s else 0.0, ended)
        return conn

    @staticmethod
    def release(conn: _Conn) -> None:
        conn.pool.release(conn)

    def post(self, url: str, body: bytes, headers, total_s: float | None = None, *,
             request_id: str | None = None) -> Coroutine[None, None, UpstreamResponse]:
        """Send the request; returns once the response's status and headers arrived.
        ``headers``: a dict or pairs (the same few, over and over: their head is cached);
        ``request_id``: sent as ``x-request-id``, apart from the cached head (it differs per
        request); ``total_s``: the whole exchange (head and body) must end within it, else the
        ``timeout`` UpstreamError."""
        return self._exchange(url, b"POST", body, headers, total_s, request_id)

    async def probe(self, url: str, headers, timeout_s: float) -> int:
        try:
            async with asyncio.timeout(timeout_s):
                resp = await self._exchange(url, b"GET", b"", headers)
                try:
                    await resp.read()
                finally:
                    resp.release()
                return resp.status
        except TimeoutError:
            raise UpstreamError("timeout", f"no answer within {timeout_s:g} s",
                                before_response=True) from None
