"""Serving the gateway: uvicorn with limits for unauthenticated clients, and worker processes.

uvicorn's httptools protocol has no limit on header size, no deadline for a request's headers
and no cap on connections (issue 11 §7: four connections sending endless headers grew a
gateway to 2 GB; idle sockets exhausted its file descriptors). :func:`guarded_protocol` adds:

- a deadline for the request line and headers (``[gateway] header_timeout_s``): 408, closed;
- limits on header bytes and header fields (``max_header_bytes``, ``max_headers``): 431, closed;
- a cap on open connections per worker (``max_connections``): a connection past it gets 503
  and is closed at once, before a byte is parsed.

The body has its own deadline in the app (``body_timeout_s``), idle keep-alive connections close
after ``keep_alive_s``, and requests in flight are capped by the app (``overloaded``). Run it
behind a reverse proxy for per-client limits (docs/notes/gateway.md).

``--workers N`` starts N processes that each bind the port with ``SO_REUSEPORT`` (the kernel
spreads connections); they share the gate, keys and tier state through the ledger and take one
file lock per tier to wake it. The parent restarts a worker that dies and forwards SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from spotctl.gateway.proxy import BODY_WRITER


def _reject(transport, status: int, message: bytes) -> None:
    if transport is None or transport.is_closing():
        return
    body = b'{"error":{"message":"' + message + b'","type":"invalid_request_error",' + \
        b'"param":null,"code":"' + {408: b"request_timeout", 431: b"headers_too_large",
                                     503: b"overloaded"}[status] + b'"}}'
    transport.write(STATUS_LINE[status] + b"content-type: application/json\r\ncontent-length: "
                    + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
    transport.close()


class BodyWriter:
    """Writes body pieces of a started chunked response straight to the client socket, in the
    caller's callback (no ASGI ``send`` and no task switch per piece). ``write`` returns False
    when the client is gone or reads slower than we write (then wait for ``drain``)."""

    __slots__ = ("cycle",)

    def __init__(self, cycle) -> None:
        self.cycle = cycle

    def write(self, data: bytes) -> bool:
        c = self.cycle
        if c.disconnected or c.response_complete:
            return False
        if not (c.response_started and c.chunked_encoding):
            raise RuntimeError("BodyWriter needs a started chunked response")
        c.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        return not c.flow.write_paused

    @property
    def gone(self) -> bool:
        return bool(self.cycle.disconnected)

    async def drain(self) -> None:
        await self.cycle.flow.drain()


def guarded_protocol(*, max_header_bytes: int, max_headers: int, header_timeout_s: float,
                     max_connections: int, body_timeout_s: float = 30.0
                     ) -> type[HttpToolsProtocol]:
    class GuardedProtocol(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None
        _body_timer: asyncio.TimerHandle | None = None
        _in_headers = True
        _header_bytes = 0
        _header_fields = 0
        _rejected = False

        def connection_made(self, transport) -> None:  # type: ignore[override]
            if len(self.connections) >= max_connections:
                self.transport = transport
                self._rejected = True
                _reject(transport, 503, b"too many connections")
                return
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            if self._rejected and self.flow is None:
                self.connections.discard(self)
                return
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._timer is None:
                self._timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _headers_late(self) -> None:
            self._timer = None
            if self._in_headers and (self.cycle is None or self.cycle.response_complete):
                self._rejected = True
                _reject(self.transport, 408, b"the request headers did not arrive in time")

        def data_received(self, data: bytes) -> None:
            if self._rejected:
                return
            was_in_headers = self._in_headers
            super().data_received(data)
            if self._rejected:
                return
            if was_in_headers and self._in_headers:
                self._header_bytes += len(data)
                if self._header_bytes > max_header_bytes:
                    self._too_large()

        def _too_large(self) -> None:
            self._rejected = True
            self._disarm()
            _reject(self.transport, 431, b"request headers too large")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_headers = True
            self._header_bytes = 0
            self._header_fields = 0
            self._arm()

        def on_url(self, url: bytes) -> None:
            if not self._rejected:
                super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_fields += 1
            self._header_bytes += len(name) + len(value) + 4
            if self._header_fields > max_headers or self._header_bytes > max_header_bytes:
                if not self._rejected:
                    self._too_large()
                return
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._disarm()
            if self._rejected:
                return
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None:
                cycle.scope.setdefault("extensions", {})[BODY_WRITER] = BodyWriter(cycle)
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(body_timeout_s, self._body_late)

        def _body_late(self) -> None:
            self._body_timer = None
            cycle = self.cycle
            if cycle is not None and cycle.more_body and not cycle.response_started:
                self._rejected = True
                _reject(self.transport, 408, b"the request body did not arrive in time")

        def on_body(self, body: bytes) -> None:
            if not self._rejected:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            if not self._rejected:
                super().on_message_complete()

    return GuardedProtocol


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


def uvicorn_config(app, gw) -> object:
    import uvicorn

    return uvicorn.Config(
        app, http=guarded_protocol(max_header_bytes=gw.max_header_bytes,
                                   max_headers=gw.max_headers,
                                   header_timeout_s=gw.header_timeout_s,
                                   max_connections=gw.max_connections,
                                   body_timeout_s=gw.body_timeout_s),
        lifespan="on", ws="none", log_level="warning", access_log=False,
        timeout_keep_alive=gw.keep_alive_s, timeout_graceful_shutdown=gw.shutdown_grace_s,
        server_header=False, date_header=False, proxy_headers=False)


def serve_one(app, gw, host: str, port: int, *, reuse_port: bool) -> int:
    """Serve ``app`` in this process until SIGTERM/SIGINT; 1 when it could not start."""
    import gc

    import uvicorn

    sock = listen_socket(host, port, reuse_port=reuse_port)
    server = uvicorn.Server(uvicorn_config(app, gw))
    # fewer, cheaper collections on the request path: the start-up objects live forever, and
    # a request's objects are freed by reference counting
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    server.run(sockets=[sock])
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
