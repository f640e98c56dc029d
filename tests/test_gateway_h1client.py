"""The gateway's protocol-level upstream client against raw HTTP servers on loopback: keep-alive,
content-length and chunked bodies, timeouts, refused and half-closed connections."""

from __future__ import annotations

import asyncio

import pytest

from spotctl.gateway.client import UpstreamError
from spotctl.gateway.h1client import H1Client

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await reader.readexactly(length) if length else b""
    return head + body


class Server:
    """A raw HTTP server whose behaviour per request is a coroutine ``script(n, reader,
    writer)``; counts connections and requests."""

    def __init__(self, script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> str:
        async def handle(reader, writer):
            self.connections += 1
            try:
                while True:
                    req = await _read_request(reader)
                    self.requests.append(req)
                    keep = await self.script(len(self.requests), reader, writer)
                    if not keep:
                        break
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()



async def _answer_ok(n, reader, writer):
    """A handler that answers every request with OK and keeps the connection."""
    writer.write(OK)
    await writer.drain()
    return True

def _client(**kw) -> H1Client:
    return H1Client(connect_timeout_s=kw.get("connect", 2.0), read_timeout_s=kw.get("read", 5.0))


def test_keep_alive_reuses_one_connection_and_sends_the_request_as_given():
    async def go():
        srv = Server(_answer_ok)
        async with srv as url:
            c = _client()
            for _ in range(10):
                resp = await c.post(f"{url}/v1/completions", b'{"a":1}',
                                    {"Authorization": "Bearer k"})
                assert resp.status == 200 and await resp.read() == b"{}"
                assert resp.content_type == b"application/json"
                resp.release()
            await c.close()
        return srv

    srv = asyncio.run(go())
    assert srv.connections == 1 and len(srv.requests) == 10
    req = srv.requests[0]
    assert req.startswith(b"POST /v1/completions HTTP/1.1\r\n")
    assert b"\r\nauthorization: Bearer k\r\n" in req.lower().replace(b"bearer", b"Bearer")
    assert req.endswith(b'\r\n\r\n{"a":1}')


def test_chunked_bodies_arrive_piece_by_piece():
    async def chunked(n, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        for piece in (b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def go():
        srv = Server(chunked)
        async with srv as url:
            c = _client()
            resp = await c.post(f"{url}/x", b"{}", {})
            pieces = [p async for p in resp.chunks()]
            resp.release()
            again = await c.post(f"{url}/x", b"{}", {})  # the connection is reusable
            whole = await again.read()
            again.release()
            await c.close()
        return srv, pieces, whole

    srv, pieces, whole = asyncio.run(go())
    assert b"".join(pieces) == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n" and len(pieces) >= 3
    assert whole == b"".join(pieces) and srv.connections == 1


def test_connection_close_is_honoured():
    async def close(n, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()
        return False

    async def go():
        srv = Server(close)
        async with srv as url:
            c = _client()
            for _ in range(3):
                resp = await c.post(f"{url}/x", b"", {})
                assert await resp.read() == b"ok"
                resp.release()
            await c.close()
        return srv

    assert asyncio.run(go()).connections == 3


def test_no_answer_is_a_timeout_and_a_refused_connection_is_connect():
    async def silent(n, reader, writer):
        await asyncio.sleep(5)
        return False

    async def go():
        srv = Server(silent)
        async with srv as url:
            c = _client(read=0.3)
            with pytest.raises(UpstreamError) as e1:
                await c.post(f"{url}/x", b"{}", {})
            await c.close()
        port = url.rsplit(":", 1)[1]
        c = _client()
        with pytest.raises(UpstreamError) as e2:
            await c.post(f"http://127.0.0.1:{port}/x", b"{}", {})  # closed now: refused
        return e1.value, e2.value

    e1, e2 = asyncio.run(go())
    assert e1.kind == "timeout" and e1.before_response
    assert e2.kind == "connect" and e2.before_response


def test_a_stall_between_chunks_is_a_timeout_after_bytes():
    async def stall(n, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(5)
        return False

    async def go():
        srv = Server(stall)
        async with srv as url:
            c = _client(read=0.3)
            resp = await c.post(f"{url}/x", b"{}", {})
            got = []
            with pytest.raises(UpstreamError) as err:
                async for p in resp.chunks():
                    got.append(p)
            await c.close()
        return got, err.value

    got, err = asyncio.run(go())
    assert got == [b"hello"] and err.kind == "timeout" and not err.before_response


def test_an_engine_dying_mid_body_is_broken():
    async def die(n, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        writer.transport.abort()  # a reset, not a clean end
        return False

    async def go():
        srv = Server(die)
        async with srv as url:
            c = _client()
            resp = await c.post(f"{url}/x", b"{}", {})
            got = []
            with pytest.raises(UpstreamError) as err:
                async for p in resp.chunks():
                    got.append(p)
            await c.close()
        return got, err.value

    got, err = asyncio.run(go())
    assert got == [b"abc"] and err.kind == "broken" and not err.before_response


def test_half_closed_keep_alive_connections_are_not_reused():
    async def ok_then_close(n, reader, writer):
        writer.write(OK)
        await writer.drain()
        if n == 1:  # the engine closes the idle connection (its keep-alive timeout)
            await asyncio.sleep(0.05)
            return False
        return True

    async def close_on_arrival(n, reader, writer):
        if n == 2:  # the request arrives as the engine closes: never answered
            return False
        writer.write(OK)
        await writer.drain()
        return True

    async def go(script):
        srv = Server(script)
        async with srv as url:
            c = _client()
            first = await c.post(f"{url}/x", b"", {})
            await first.read()
            first.release()
            await asyncio.sleep(0.2)
            second = await c.post(f"{url}/x", b"", {})
            body = await second.read()
            second.release()
            await c.close()
        return srv, body

    srv, body = asyncio.run(go(ok_then_close))
    assert body == b"{}" and srv.connections == 2
    srv, body = asyncio.run(go(close_on_arrival))
    assert body == b"{}" and srv.connections == 2 and len(srv.requests) == 3  # retried once


def test_a_body_nobody_reads_pauses_the_engine_not_memory():
    big = b"x" * 65536

    async def flood(n, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(200):  # 13 MB
            writer.write(b"%x\r\n%s\r\n" % (len(big), big))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return False

    async def go():
        srv = Server(flood)
        async with srv as url:
            c = _client()
            resp = await c.post(f"{url}/x", b"", {})
            await asyncio.sleep(0.5)  # nobody reads
            held = resp._conn.buffered
            total = 0
            async for p in resp.chunks():
                total += len(p)
            await c.close()
        return held, total

    held, total = asyncio.run(go())
    assert held <= 4 * 1024 * 1024 and total == 200 * 65536


def test_an_answer_trickling_past_its_deadline_is_a_timeout():
    async def trickle(n, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(40):  # a byte every 50 ms: never idle for the read timeout
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return False

    async def go():
        srv = Server(trickle)
        async with srv as url:
            c = _client(read=0.5)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            resp = await c.post(f"{url}/x", b"{}", {}, total_s=0.6)
            with pytest.raises(UpstreamError) as err:
                await resp.read()
            took = loop.time() - t0
            await c.close()
        return err.value, took

    err, took = asyncio.run(go())
    assert err.kind == "timeout" and not err.before_response and "deadline" in err.detail
    assert 0.5 <= took < 1.5  # the deadline, not the 2 s the engine would take


def test_the_request_id_goes_apart_from_the_cached_head():
    """Each request's id is sent as x-request-id, and the head cache keyed by the headers is hit
    (before: the id was one of the headers, so every request missed the cache and built its
    head again)."""

    async def go():
        srv = Server(_answer_ok)
        async with srv as url:
            c = _client()
            hdrs = (("Content-Type", "application/json"),)
            for i in range(5):
                resp = await c.post(f"{url}/v1/completions", b'{"a":1}', hdrs,
                                    request_id=f"gw-x-{i}")
                assert await resp.read() == b"{}"
                resp.release()
            heads = len(c._heads)
            await c.close()
        return srv, heads

    srv, heads = asyncio.run(go())
    assert heads == 1
    for i, req in enumerate(srv.requests):
        head, _, body = req.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /v1/completions HTTP/1.1"
        assert f"x-request-id: gw-x-{i}".encode() in lines
        assert b"content-length: 7" in lines and body == b'{"a":1}'


def test_one_parser_reads_chunked_then_sized_answers_on_a_kept_alive_connection():
    """The response parser is kept across the answers of a kept-alive connection."""

    async def mixed(n, reader, writer):
        if n % 2:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 201 Created\r\ncontent-type: text/plain\r\n"
                         b"content-length: 3\r\n\r\nxyz")
        await writer.drain()
        return True

    async def go():
        srv = Server(mixed)
        got = []
        async with srv as url:
            c = _client()
            for _ in range(4):
                resp = await c.post(f"{url}/v1/completions", b"{}", {})
                got.append((resp.status, resp.content_type, await resp.read()))
                resp.release()
            await c.close()
        return srv, got

    srv, got = asyncio.run(go())
    assert srv.connections == 1
    assert got == [(200, b"application/json", b"abcde"), (201, b"text/plain", b"xyz")] * 2
