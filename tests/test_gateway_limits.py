"""Issue 11 §7: unauthenticated clients cannot exhaust the gateway (raw sockets on loopback)."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from spotctl.config import parse_config
from tests.fixtures_engines import Script, gateway_key, start_gateway, tier_toml

LIMITS = ("[gateway]\nheader_timeout_s = 0.5\nbody_timeout_s = 0.5\nmax_header_bytes = 4096\n"
          "max_headers = 20\nmax_connections = 6\nkeep_alive_s = 1\n")


@pytest.fixture
def gw(scripted, tmp_path, clock):
    _engine, url = scripted
    cfg = parse_config(tier_toml("s", "scripted", url) + LIMITS, tmp_path / "spotctl.toml")
    key = gateway_key(cfg.ledger_path)
    handle = start_gateway(cfg, clock)
    yield handle, key
    handle.stop()


def _connect(handle) -> socket.socket:
    host, port = handle.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=5)
    return s


def _answer(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 5 s pass)."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def test_endless_headers_are_cut_at_the_limit(gw):
    handle, _ = gw
    s = _connect(handle)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    sent = 0
    try:
        for i in range(2000):  # 2000 headers of 100 bytes: far past both limits
            s.sendall(f"x-filler-{i}: {'a' * 80}\r\n".encode())
            sent += 1
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = _answer(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 431") and b"headers_too_large" in answer
    assert sent < 2000 or answer  # the server stopped reading long before the end


def test_one_endless_header_line_is_cut(gw):
    handle, _ = gw
    s = _connect(handle)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-long: ")
    try:
        for _ in range(200):
            s.sendall(b"b" * 1024)
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = _answer(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 431")


def test_slow_headers_and_idle_connections_are_closed(gw):
    handle, _ = gw
    slow = _connect(handle)
    slow.sendall(b"GET /healthz HTT")  # and then nothing
    idle = _connect(handle)  # never sends a byte
    t0 = time.monotonic()  # clock-ok
    a1, a2 = _answer(slow), _answer(idle)
    took = time.monotonic() - t0  # clock-ok
    slow.close()
    idle.close()
    assert a1.startswith(b"HTTP/1.1 408") and a2.startswith(b"HTTP/1.1 408")
    assert took < 4


def test_a_slow_body_gets_408(gw):
    handle, key = gw
    s = _connect(handle)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
              b"Authorization: Bearer " + key.encode() + b"\r\n\r\n{\"model\":")
    answer = _answer(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer


def test_connections_past_the_cap_are_refused_and_real_requests_resume(gw):
    handle, _key = gw
    idle = [_connect(handle) for _ in range(6)]
    time.sleep(0.1)  # clock-ok: let the server accept them
    extra = _connect(handle)
    refused = _answer(extra)
    extra.close()
    assert refused.startswith(b"HTTP/1.1 503")
    time.sleep(0.8)  # clock-ok: the idle ones pass the header deadline and are closed
    for s in idle:
        s.close()
    r = httpx.get(f"{handle.url}/healthz", timeout=5)
    assert r.status_code == 200


def test_requests_in_flight_are_capped(scripted, tmp_path, clock):
    engine, url = scripted
    engine.script = Script(delay_s=1.0)
    cfg = parse_config(tier_toml("s", "scripted", url) +
                       "[gateway]\nmax_concurrent_requests = 2\n", tmp_path / "spotctl.toml")
    key = gateway_key(cfg.ledger_path)
    handle = start_gateway(cfg, clock)
    codes: list[int] = []
    try:
        def call() -> None:
            r = httpx.post(f"{handle.url}/v1/chat/completions", timeout=10,
                           headers={"Authorization": f"Bearer {key}"},
                           json={"model": "scripted", "messages": []})
            codes.append(r.status_code)
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"]

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
            time.sleep(0.1)  # clock-ok: in order
        for t in threads:
            t.join(20)
    finally:
        handle.stop()
    assert sorted(codes) == [200, 200, 503]


def test_a_client_that_stops_reading_pauses_the_engine_not_our_memory(scripted, tmp_path, clock):
    engine, url = scripted
    engine.script = Script(tokens=40_000, pad=2000)  # 80 MB if nothing held it back
    cfg = parse_config(tier_toml("s", "scripted", url), tmp_path / "spotctl.toml")
    key = gateway_key(cfg.ledger_path)
    handle = start_gateway(cfg, clock)
    relayed = []
    fast = handle.app.proxy._relay

    async def counting(*a, **kw):
        relayed.append(1)
        return await fast(*a, **kw)

    handle.app.proxy._relay = counting
    try:
        s = _connect(handle)
        body = b'{"model":"scripted","stream":true,"messages":[]}'
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                  str(len(body)).encode() + b"\r\nAuthorization: Bearer " + key.encode() +
                  b"\r\n\r\n" + body)
        s.settimeout(10)
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        time.sleep(1.5)  # clock-ok: the client reads nothing
        held = engine.sent
        assert held < 40_000 // 2  # the engine was paused: bounded by socket buffers
        total, tail = len(first), first[-5:]
        while not tail.endswith(b"0\r\n\r\n"):
            chunk = s.recv(1 << 20)
            assert chunk, "the stream ended early"
            total += len(chunk)
            tail = (tail + chunk)[-5:]
        s.close()
        assert engine.sent == 40_000 and total > 40_000 * 2000
        assert relayed  # the stream went through the fast path (engine socket → client)
    finally:
        handle.stop()


def test_a_client_that_leaves_at_done_has_an_ok_row(scripted, tmp_path, clock):
    """The OpenAI SDK closes the connection as soon as it reads ``data: [DONE]``, before the
    end of the chunked body: the stream was complete, its row is ``ok`` (it read
    ``client_cancelled`` when the close won the race with the end of the engine's body)."""
    from tests.fixtures_engines import wait_rows

    engine, url = scripted
    engine.script = Script(tokens=3, tail_delay_s=0.5)
    cfg = parse_config(tier_toml("s", "scripted", url), tmp_path / "spotctl.toml")
    key = gateway_key(cfg.ledger_path)
    handle = start_gateway(cfg, clock)
    try:
        s = _connect(handle)
        body = b'{"model":"scripted","stream":true,"messages":[]}'
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                  str(len(body)).encode() + b"\r\nAuthorization: Bearer " + key.encode() +
                  b"\r\n\r\n" + body)
        s.settimeout(10)
        got = b""
        while b"data: [DONE]" not in got:
            chunk = s.recv(65536)
            assert chunk, "the stream ended before [DONE]"
            got += chunk
        s.close()  # at [DONE], as the SDK does
        [row] = wait_rows(cfg.ledger_path, 1)
    finally:
        handle.stop()
    assert row["status"] == "ok" and row["tokens_estimated"] == 0
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 3)
