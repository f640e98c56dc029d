"""A fast OpenAI-shaped engine and a light stream client, for measuring proxies (not spotctl).

The engine is a raw asyncio protocol on httptools: canned non-streaming answers (with
``usage``), and SSE streams either at full speed (every event written at once, as a batch of
GPUs would) or paced like a batched decoder (one ticker writes an event to every open stream
every ``--tick-ms``). Every event carries ``"t": <CLOCK_MONOTONIC ns>`` of its emission, so a
client on the same machine measures each event's delivery latency through any proxy.

    python bench/gateway_engine.py --port P [--tick-ms 5]     # prints READY

The stream client (``run_streams``) keeps N keep-alive connections, each running streams back to
back; it parses HTTP with httptools and counts events and their delivery latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time

import httptools
import orjson

USAGE = {"prompt_tokens": 9, "completion_tokens": 16, "total_tokens": 25}
PLAIN = orjson.dumps({"id": "cmpl-bench", "object": "chat.completion", "created": 1,
                      "model": "bench", "choices": [{"index": 0, "message": {
                          "role": "assistant", "content": "x " * 16}, "finish_reason": "length"}],
                      "usage": USAGE})
PLAIN_RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " +
                  str(len(PLAIN)).encode() + b"\r\n\r\n" + PLAIN)
SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
MODELS = b'{"object":"list","data":[{"id":"bench","object":"model"}]}'
MODELS_RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " +
                   str(len(MODELS)).encode() + b"\r\n\r\n" + MODELS)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(i: int) -> bytes:
    return (b'data: {"id":"c","object":"chat.completion.chunk","model":"bench","choices":'
            b'[{"index":0,"delta":{"content":"tok' + str(i).encode() + b' "}}],"t":' +
            str(time.monotonic_ns()).encode() + b"}\n\n")  # clock-ok: bench timestamps


def _final(include_usage: bool) -> bytes:
    tail = b""
    if include_usage:
        tail = _chunk(b'data: {"id":"c","object":"chat.completion.chunk","model":"bench",'
                      b'"choices":[],"usage":' + orjson.dumps(USAGE) + b"}\n\n")
    return tail + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class Engine:
    def __init__(self, tick_ms: float) -> None:
        self.tick_ms = tick_ms
        self.paced: list[list] = []  # [transport, events_left, sent, include_usage]

    async def ticker(self) -> None:
        period = self.tick_ms / 1000
        loop = asyncio.get_running_loop()
        nxt = loop.time()
        while True:
            nxt += period
            await asyncio.sleep(max(0.0, nxt - loop.time()))
            if not self.paced:
                continue
            keep = []
            for s in self.paced:
                tr = s[0]
                if tr.is_closing():
                    continue
                if s[1] > 0:
                    tr.write(_chunk(_event(s[2])))
                    s[1] -= 1
                    s[2] += 1
                    keep.append(s)
                else:
                    tr.write(_final(s[3]))
            self.paced = keep


class EngineProtocol(asyncio.Protocol):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.url.startswith(b"/v1/models") or self.url.startswith(b"/health"):
            self.transport.write(MODELS_RESPONSE)
            return
        req = orjson.loads(b"".join(self.body) or b"{}")
        if not req.get("stream"):
            self.transport.write(PLAIN_RESPONSE)
            return
        n = int(req.get("max_tokens") or 16)
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        self.transport.write(SSE_HEAD)
        if self.engine.tick_ms > 0 and req.get("paced"):
            self.engine.paced.append([self.transport, n, 0, include_usage])
            return
        self.transport.write(b"".join(_chunk(_event(i)) for i in range(n)) +
                             _final(include_usage))


async def serve(port: int, tick_ms: float) -> None:
    engine = Engine(tick_ms)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: EngineProtocol(engine), "127.0.0.1", port,
                                      backlog=2048)
    print(f"READY http://127.0.0.1:{port}", flush=True)
    ticker = asyncio.create_task(engine.ticker())
    async with server:
        await server.serve_forever()
    ticker.cancel()


# -- the stream client -------------------------------------------------------------------------
_T = re.compile(rb'"t":(\d+)')


class _StreamConn(asyncio.Protocol):
    def __init__(self, stats: dict, paced: bool) -> None:
        self.stats = stats
        self.paced = paced
        self.done: asyncio.Future | None = None
        self.carry = b""
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_status(self, status: bytes) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        data = self.carry + body
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self.carry = data
            return
        self.carry = data[cut + 2:]
        data = data[:cut + 2]
        now = time.monotonic_ns()  # clock-ok: bench timestamps
        if self.paced:
            lats = self.stats["lat"]
            for m in _T.finditer(data):
                lats.append(now - int(m.group(1)))
        self.stats["events"] += data.count(b'"t":')

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(self.status)

    def connection_lost(self, exc) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(-1)


async def run_streams(host: str, port: int, path: str, headers: bytes, body: bytes,
                      conns: int, seconds: float, paced: bool) -> dict:
    """``conns`` connections, each streaming back to back for ``seconds``: events, errors,
    streams and (paced) the delivery latencies in ns."""
    loop = asyncio.get_running_loop()
    stats = {"events": 0, "errors": 0, "streams": 0, "lat": []}
    request = (b"POST " + path.encode() + b" HTTP/1.1\r\nhost: bench\r\ncontent-type: "
               b"application/json\r\ncontent-length: " + str(len(body)).encode() + b"\r\n" +
               headers + b"\r\n" + body)
    deadline = loop.time() + seconds

    async def one() -> None:
        tr, proto = await loop.create_connection(lambda: _StreamConn(stats, paced), host, port)
        try:
            while loop.time() < deadline:
                proto.done = loop.create_future()
                proto.carry = b""
                tr.write(request)
                status = await proto.done
                if status != 200:
                    stats["errors"] += 1
                    if status == -1:
                        return
                else:
                    stats["streams"] += 1
        finally:
            tr.close()

    t0 = loop.time()
    await asyncio.gather(*(one() for _ in range(conns)))
    stats["seconds"] = loop.time() - t0
    return stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tick-ms", type=float, default=5.0)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.port, args.tick_ms))


if __name__ == "__main__":
    main()
