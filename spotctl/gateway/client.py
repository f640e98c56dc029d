"""The upstream HTTP client: one pooled aiohttp session, its errors mapped here, once.

Chosen by measurement (issue 15, ``bench/gateway_overhead.py``): httpx's connection pool costs
several hundred µs of CPU per request under concurrency (encode/httpcore#1035); aiohttp's
keep-alive pool and C parser cost a fraction of it.

Every failure leaves this module as an :class:`UpstreamError` whose ``kind`` says what is known:

- ``connect``: no connection was made (refused, unreachable, connect timeout): the engine never
  saw the request;
- ``reset``: the connection broke before a response arrived (the engine may have started);
- ``timeout``: no byte for ``first_token_timeout_s`` (before or between chunks);
- ``broken``: the response was cut mid-body (the engine died, a truncated chunk);
- ``protocol``: the engine answered something that is not HTTP.

``before_response`` says whether any byte of a response had arrived: a request that failed
before that can be retried elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol, runtime_checkable

import aiohttp


class UpstreamError(Exception):
    def __init__(self, kind: str, detail: str, *, before_response: bool) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.before_response = before_response


def _map(exc: BaseException, before_response: bool) -> UpstreamError:
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return UpstreamError("connect", name, before_response=True)
    if isinstance(exc, TimeoutError):  # SocketTimeoutError, ServerTimeoutError, asyncio's
        return UpstreamError("timeout", name, before_response=before_response)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError("broken", name, before_response=before_response)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return UpstreamError("reset" if before_response else "broken", name,
                             before_response=before_response)
    if isinstance(exc, aiohttp.ClientResponseError):
        return UpstreamError("protocol", name, before_response=before_response)
    return UpstreamError("broken", name, before_response=before_response)


@runtime_checkable
class RelaysBody(Protocol):
    """A response whose body can be handed to a callback as it is read, without a task switch
    per piece (the h1 client's): the proxy's fast path for streams."""

    async def first(self) -> bytes: ...

    def relay(self, sink: Callable[[bytes], None]) -> asyncio.Future: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class UpstreamResponse:
    __slots__ = ("_deadline", "_resp", "content_type", "status")

    def __init__(self, resp: aiohttp.ClientResponse, deadline: float | None = None) -> None:
        self._resp = resp
        self._deadline = deadline  # loop time the whole exchange must end by
        self.status = resp.status
        self.content_type = resp.headers.get("Content-Type", "application/json").encode(
            "latin-1")

    async def read(self) -> bytes:
        try:
            async with asyncio.timeout_at(self._deadline):
                return await self._resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _map(exc, before_response=False) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (each read as one piece; no re-chunking)."""
        content = self._resp.content
        while True:
            try:
                async with asyncio.timeout_at(self._deadline):
                    piece = await content.readany()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise _map(exc, before_response=False) from None
            if not piece:
                return
            yield piece

    def release(self) -> None:
        self._resp.release()

    def close(self) -> None:
        """Drop the connection (a response abandoned mid-stream cannot be reused)."""
        self._resp.close()


class UpstreamClient:
    def __init__(self, *, connect_timeout_s: float, read_timeout_s: float,
                 max_connections: int = 0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s,
                                              connect=connect_timeout_s,
                                              sock_read=read_timeout_s)

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0,
                                             keepalive_timeout=30, ttl_dns_cache=60)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
                cookie_jar=aiohttp.DummyCookieJar())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes, headers, total_s: float | None = None
                   ) -> UpstreamResponse:
        """Send the request; returns once the response's status and headers arrived.
        ``headers``: a dict or pairs; ``total_s``: the whole exchange (head and body) must end
        within it, else the ``timeout`` UpstreamError."""
        if self._session is None:
            await self.start()
        assert self._session is not None
        deadline = asyncio.get_running_loop().time() + total_s if total_s else None
        try:
            async with asyncio.timeout_at(deadline):
                resp = await self._session.post(url, data=body, headers=headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _map(exc, before_response=True) from None
        return UpstreamResponse(resp, deadline)

    async def probe(self, url: str, headers, timeout_s: float) -> int:
        """GET ``url`` within ``timeout_s``: the status, or an UpstreamError."""
        if self._session is None:
            await self.start()
        assert self._session is not None
        try:
            async with asyncio.timeout(timeout_s):
                async with self._session.get(url, headers=headers) as resp:
                    await resp.read()
                    return resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _map(exc, before_response=True) from None
