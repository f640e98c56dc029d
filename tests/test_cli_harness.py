"""The shared harness (spotctl/testing.py): every server it starts is gone when its block ends,
even when the block fails."""

from __future__ import annotations

import socket

import httpx
import pytest

from spotctl.config import parse_config
from spotctl.testing import (
    running_engine,
    running_gateway,
    serve_asgi,
    toml_text,
    wait_http,
    write_config,
)


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def hello(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def test_serve_asgi_stops_its_server_even_when_the_block_fails():
    port = None
    with pytest.raises(AssertionError), serve_asgi(hello) as served:
        port = served.port
        assert httpx.get(served.url, timeout=5).text == "hello"
        raise AssertionError("a failing test")
    assert port is not None and not listening(port)


def test_wait_http_names_the_url_when_nothing_answers():
    with serve_asgi(hello) as served:
        url = served.url
    with pytest.raises(TimeoutError, match=url):
        wait_http(url, timeout_s=0.3)


def test_running_engine_and_gateway_serve_a_request_and_stop(tmp_path):
    from spotctl.ledger.db import Ledger
    from spotctl.ledger.keys import create_key

    with running_engine() as engine:
        assert wait_http(f"{engine.url}/v1/models") == 200
        path = write_config(tmp_path, {
            "ledger": {"path": "spotctl.db"},
            "tiers": [{"name": "t", "model": "tiny", "endpoint": engine.url}]})
        cfg = parse_config(path.read_text(), path)
        with Ledger(cfg.ledger_path) as ledger:
            key = create_key(ledger, "harness", 0, None)
        with running_gateway(cfg) as gw:
            r = httpx.post(f"{gw.base_url}/chat/completions", timeout=30,
                           headers={"Authorization": f"Bearer {key}"},
                           json={"model": "tiny", "max_tokens": 4,
                                 "messages": [{"role": "user", "content": "hi"}]})
            gw_port = gw.served.port
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] > 0
        assert not listening(gw_port)
    assert engine.proc.poll() is not None  # reaped


def test_toml_builder_leaves_out_none_and_writes_paths(tmp_path):
    text = toml_text({"ledger": {"path": tmp_path / "l.db"}, "budget": {"daily_usd": None},
                      "providers": [{"name": "p", "kind": "vast", "api_key_env": "K"}]})
    cfg = parse_config(text, tmp_path / "spotctl.toml")
    assert cfg.ledger_path == tmp_path / "l.db"
    assert cfg.budget.daily_usd is None and cfg.providers[0].kind == "vast"
