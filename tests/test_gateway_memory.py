"""Memory stays flat under load: a request leaves no reference cycle behind (its objects go by
reference counting the moment it ends, not at the next full collection; issue 15's soak grew
while cyclic garbage waited for the GC)."""

from __future__ import annotations

import gc
import socket

from spotctl.config import parse_config
from tests.fixtures_engines import gateway_key, start_gateway


def _exchange(s: socket.socket, request: bytes, end: bytes) -> bytes:
    s.sendall(request)
    got = b""
    while not got.endswith(end):
        chunk = s.recv(65536)
        assert chunk, got
        got += chunk
    return got


def test_requests_leave_no_reference_cycles(builtin_engine, tmp_path, clock, monkeypatch):
    monkeypatch.setenv("ENGINE_KEY", builtin_engine.api_key)
    cfg = parse_config(f'[[tiers]]\nname = "t"\nmodel = "tiny"\nendpoint = '
                       f'"{builtin_engine.base_url}"\napi_key_env = "ENGINE_KEY"\n',
                       tmp_path / "spotctl.toml")
    key = gateway_key(cfg.ledger_path)
    handle = start_gateway(cfg, clock)
    host, port = handle.url.removeprefix("http://").split(":")

    def request(stream: bool) -> bytes:
        body = (b'{"model":"tiny","max_tokens":4,"stream":' + (b"true" if stream else b"false")
                + b',"messages":[{"role":"user","content":"hi"}]}')
        return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/json\r\nAuthorization: Bearer " + key.encode() +
                b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    plain, stream = request(False), request(True)
    n = 150
    try:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            for _ in range(10):  # warm up: connections, caches, lazy imports
                _exchange(s, plain, b"}")
                _exchange(s, stream, b"0\r\n\r\n")
            gc.collect()
            gc.disable()
            try:
                for _ in range(n):
                    assert _exchange(s, plain, b"}").startswith(b"HTTP/1.1 200")
                    assert b"[DONE]" in _exchange(s, stream, b"0\r\n\r\n")
                found = gc.collect()
            finally:
                gc.enable()
    finally:
        handle.stop()
    # before: ~15 objects per request (the request's task, coroutine, cycle and scope)
    assert found < n, f"{found} objects in reference cycles after {2 * n} requests"
