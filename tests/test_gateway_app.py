"""The gateway app in process (httpx.ASGITransport) in front of a real scripted engine."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from spotctl.config import parse_config
from tests.fixtures_engines import Script, asgi_gateway, gateway_key, tier_toml, wait_rows


def _cfg(tmp_path, url, extra=""):
    return parse_config(tier_toml("s", "scripted", url) + extra, tmp_path / "spotctl.toml")


def _chat(stream=None, **kw):
    body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], **kw}
    if stream is not None:
        body["stream"] = stream
    return body


def test_stream_must_be_a_json_boolean(scripted, tmp_path, clock):
    engine, url = scripted
    cfg = _cfg(tmp_path, url)
    key = gateway_key(cfg.ledger_path)

    async def go():
        async with asgi_gateway(cfg, clock) as (_app, c):
            h = {"Authorization": f"Bearer {key}"}
            bad = [await c.post("/v1/chat/completions", json=_chat(v), headers=h)
                   for v in ("false", "true", 1, 0, [])]
            ok = [await c.post("/v1/chat/completions", json=_chat(v), headers=h)
                  for v in (None, False)]
            return bad, ok

    bad, ok = asyncio.run(go())
    assert [r.status_code for r in bad] == [400] * 5
    assert all(r.json()["error"]["code"] == "invalid_request" for r in bad)
    assert "boolean" in bad[0].json()["error"]["message"]
    assert [r.status_code for r in ok] == [200, 200]
    assert ok[0].headers["content-type"] == "application/json"  # not a stream
    assert engine.requests and all(not r.get("stream") for r in engine.requests)


@pytest.mark.parametrize("eol", [b"\r\n", b"\r", b"\n"], ids=["crlf", "cr", "lf"])
def test_any_sse_framing_streams_and_counts(scripted, tmp_path, clock, eol):
    engine, url = scripted
    engine.script = Script(tokens=5, eol=eol)
    cfg = _cfg(tmp_path, url)
    key = gateway_key(cfg.ledger_path)

    async def go():
        async with asgi_gateway(cfg, clock) as (_app, c):
            return await c.post("/v1/chat/completions", json=_chat(True),
                                headers={"Authorization": f"Bearer {key}"})

    r = asyncio.run(go())
    assert r.status_code == 200
    assert r.content.count(b"data: {") == 5 and r.content.count(b"[DONE]") == 1
    assert b'"usage"' not in r.content  # the gateway asked for usage: its chunk is dropped
    [row] = wait_rows(cfg.ledger_path, 1)
    assert row["status"] == "ok" and not row["tokens_estimated"]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 5)


@pytest.mark.parametrize("stream", [True, False])
def test_an_unreadable_usage_value_still_records_and_streams(scripted, tmp_path, clock,
                                                             stream):
    engine, url = scripted
    engine.script = Script(tokens=6, usage={"prompt_tokens": 7, "completion_tokens": "12x"})
    cfg = _cfg(tmp_path, url)
    key = gateway_key(cfg.ledger_path)

    async def go():
        async with asgi_gateway(cfg, clock) as (_app, c):
            return await c.post("/v1/chat/completions", json=_chat(stream),
                                headers={"Authorization": f"Bearer {key}"})

    r = asyncio.run(go())
    assert r.status_code == 200
    if stream:
        assert r.content.count(b"data: {") == 6 and r.content.endswith(b"data: [DONE]\n\n")
    [row] = wait_rows(cfg.ledger_path, 1)
    assert row["status"] == "ok" and row["tokens_estimated"] == 1
    assert row["completion_tokens"] == (6 if stream else 0) and row["prompt_tokens"] > 0


def test_status_endpoints_can_require_a_key(scripted, tmp_path, clock):
    _engine, url = scripted
    cfg = _cfg(tmp_path, url, "[gateway]\nprotect_status = true\n")
    key = gateway_key(cfg.ledger_path)

    async def go():
        async with asgi_gateway(cfg, clock) as (_app, c):
            anon = [await c.get(p) for p in ("/readyz", "/metrics")]
            h = {"Authorization": f"Bearer {key}"}
            auth = [await c.get(p, headers=h) for p in ("/readyz", "/metrics")]
            health = await c.get("/healthz")
            return anon, auth, health

    anon, auth, health = asyncio.run(go())
    assert [r.status_code for r in anon] == [401, 401]
    assert all(b"scripted" not in r.content and b'"s"' not in r.content for r in anon)
    assert auth[0].status_code == 200 and auth[0].json()["tiers"] == {"s": "serving"}
    assert auth[1].status_code == 200 and b"spotctl_gateway_requests_total" in auth[1].content
    assert health.status_code == 200


def test_metrics_have_help_and_type_and_count_refusals(scripted, tmp_path, clock):
    _engine, url = scripted
    cfg = _cfg(tmp_path, url)
    key = gateway_key(cfg.ledger_path)

    async def go():
        async with asgi_gateway(cfg, clock) as (_app, c):
            await c.post("/v1/chat/completions", json=_chat())  # 401
            await c.post("/v1/chat/completions", json={"model": 3},
                         headers={"Authorization": f"Bearer {key}"})  # 400
            ok = await c.post("/v1/chat/completions", json=_chat(),
                              headers={"Authorization": f"Bearer {key}"})
            return ok, (await c.get("/metrics")).text

    ok, text = asyncio.run(go())
    assert float(ok.headers["x-spotctl-overhead-ms"]) >= 0
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    helps = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    assert names == helps and {"spotctl_gateway_requests_total", "spotctl_gateway_overhead_seconds",
                               "spotctl_gateway_time_to_first_token_seconds",
                               "spotctl_gateway_gate_open"} <= names
    assert 'code="invalid_api_key",model="other",status="401"} 1.0' in text
    assert 'code="invalid_request",model="other",status="400"} 1.0' in text
    assert 'code="ok",model="scripted",status="200"} 1.0' in text
    assert "spotctl_gateway_overhead_seconds_count 1.0" in text


def test_non_streaming_body_is_relayed_byte_for_byte(scripted, tmp_path, clock):
    _engine, url = scripted
    cfg = _cfg(tmp_path, url)
    key = gateway_key(cfg.ledger_path)

    async def go():
        async with asgi_gateway(cfg, clock) as (_app, c):
            return await c.post("/v1/chat/completions", json=_chat(),
                                headers={"Authorization": f"Bearer {key}"})

    r = asyncio.run(go())
    body = orjson.loads(r.content)
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    assert r.headers["content-length"] == str(len(r.content))


def test_metrics_parse_and_pass_promtool_when_it_is_installed(scripted, tmp_path, clock):
    import shutil
    import subprocess

    from prometheus_client.parser import text_string_to_metric_families

    _engine, url = scripted
    cfg = _cfg(tmp_path, url)
    key = gateway_key(cfg.ledger_path)

    async def go():
        async with asgi_gateway(cfg, clock) as (_app, c):
            await c.post("/v1/chat/completions", json=_chat(True),
                         headers={"Authorization": f"Bearer {key}"})
            return (await c.get("/metrics")).text

    text = asyncio.run(go())
    families = list(text_string_to_metric_families(text))
    assert len(families) >= 14 and all(f.documentation and f.type for f in families)
    if shutil.which("promtool"):  # Debian's prometheus package; the parser above runs always
        out = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                             capture_output=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
