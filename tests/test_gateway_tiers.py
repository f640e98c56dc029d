"""Issue 11 §4 (gateway side), §3/§10: open requests per tier for the fleet, draining tiers,
dead-engine probes, and tier state that never waits behind a hung provider call."""

from __future__ import annotations

import asyncio
import threading
import time

from spotctl.clock import to_ms
from spotctl.config import parse_config
from spotctl.gateway.upstreams import HIBERNATED, SERVING, Upstream
from spotctl.ledger.db import Ledger
from spotctl.ledger.journal import FleetEntry, append_fleet_event
from spotctl.ledger.usage import last_request_ms, open_requests
from tests.fixtures_engines import (
    Script,
    ScriptedEngine,
    asgi_gateway,
    gateway_key,
    serve_asgi,
    tier_toml,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _open(ledger_path, tier, clock):
    with Ledger(ledger_path) as led:
        return open_requests(led, tier, to_ms(clock.now()), 10_000)


def test_open_requests_are_published_while_a_stream_runs(tmp_path, clock):
    engine = ScriptedEngine(Script(tokens=30, delay_s=0.05), model="m")
    with serve_asgi(engine) as url:
        cfg = parse_config(tier_toml("a", "m", url), tmp_path / "spotctl.toml")
        key = gateway_key(cfg.ledger_path)
        seen = []

        async def go():
            async with asgi_gateway(cfg, clock) as (_app, c):
                h = {"Authorization": f"Bearer {key}"}
                task = asyncio.create_task(c.post("/v1/chat/completions",
                                                  json={**CHAT, "stream": True}, headers=h))
                for _ in range(40):
                    await asyncio.sleep(0.05)
                    seen.append(await asyncio.to_thread(_open, cfg.ledger_path, "a", clock))
                    if seen[-1]:
                        break
                r = await task
                await asyncio.sleep(0.3)
                after = await asyncio.to_thread(_open, cfg.ledger_path, "a", clock)
                return r, after

        r, after = asyncio.run(go())
        assert r.status_code == 200
        assert max(seen) == 1 and after == 0
        with Ledger(cfg.ledger_path) as led:
            assert last_request_ms(led, "a") == to_ms(clock.now())
            # on shutdown the gateway reports nothing in flight
            rows = led.conn.execute("SELECT in_flight FROM gateway_tiers").fetchall()
        assert rows == [(0,)]


def _drain(ledger_path, tier, clock):
    with Ledger(ledger_path) as led:
        append_fleet_event(led, FleetEntry(ts_ms=to_ms(clock.now()), tier=tier,
                                           event="draining", operation_id="op-1"))


def test_a_draining_tier_admits_nothing_new(tmp_path, clock):
    a, b = ScriptedEngine(model="m"), ScriptedEngine(model="m")
    with serve_asgi(a) as url_a, serve_asgi(b) as url_b:
        cfg = parse_config(tier_toml("a", "m", url_a, priority=0) +
                           tier_toml("b", "m", url_b, priority=1), tmp_path / "spotctl.toml")
        key = gateway_key(cfg.ledger_path)

        async def go():
            async with asgi_gateway(cfg, clock) as (app, c):
                h = {"Authorization": f"Bearer {key}"}
                first = await c.post("/v1/chat/completions", json=CHAT, headers=h)
                _drain(cfg.ledger_path, "a", clock)
                await asyncio.to_thread(app.refresh)
                second = await c.post("/v1/chat/completions", json=CHAT, headers=h)
                _drain(cfg.ledger_path, "b", clock)
                clock.advance(5)
                await asyncio.to_thread(app.refresh)
                third = await c.post("/v1/chat/completions", json=CHAT, headers=h)
                ready = await c.get("/readyz")
                await asyncio.to_thread(app.refresh)  # publishes the refused request's time
                return first, second, third, ready

        first, second, third, ready = asyncio.run(go())
        assert first.status_code == second.status_code == 200
        assert len(a.requests) == 1 and len(b.requests) == 1  # the second went to b
        assert third.status_code == 503 and third.json()["error"]["code"] == "no_upstream"
        assert "draining" in third.json()["error"]["message"] and third.headers["retry-after"]
        assert ready.json()["tiers"] == {"a": "draining", "b": "draining"}
        with Ledger(cfg.ledger_path) as led:  # the daemon sees a request after the drain began
            assert last_request_ms(led, "b") == to_ms(clock.now())


def test_a_dead_engine_is_routed_around_and_a_refusing_probe_marks_it_down(tmp_path, clock):
    a, b = ScriptedEngine(model="m"), ScriptedEngine(model="m")
    with serve_asgi(a) as url_a, serve_asgi(b) as url_b:
        cfg = parse_config(tier_toml("a", "m", url_a, priority=0) +
                           tier_toml("b", "m", url_b, priority=1) +
                           "[gateway]\nprobe_interval_s = 0.1\nprobe_timeout_s = 1\n",
                           tmp_path / "spotctl.toml")
        key = gateway_key(cfg.ledger_path)

        async def go():
            async with asgi_gateway(cfg, clock) as (app, c):
                h = {"Authorization": f"Bearer {key}"}
                a.script.refuse = True  # a's engine answers probes with 503
                for _ in range(100):
                    if app.board.effective("a") == "down":
                        break
                    await asyncio.sleep(0.05)
                r = await c.post("/v1/chat/completions", json=CHAT, headers=h)
                served = (len(a.requests), len(b.requests))
                ready = (await c.get("/readyz")).json()
                a.script.refuse = False
                for _ in range(100):
                    if app.board.effective("a") == SERVING:
                        break
                    await asyncio.sleep(0.05)
                back = await c.post("/v1/chat/completions", json=CHAT, headers=h)
                return r, served, ready, back

        r, served, ready, back = asyncio.run(go())
        assert r.status_code == 200 and served == (0, 1)
        assert ready["tiers"] == {"a": "down", "b": "serving"} and ready["ready"]
        assert back.status_code == 200 and len(a.requests) == 1  # recovered: a serves again


class HangingRuntime:
    """A fleet runtime whose provider API hangs for one tier (a call that never returns)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.release = threading.Event()
        self.calls = 0

    def current(self, tier):
        if tier.name == "hung":
            self.calls += 1
            if self.calls > 1:  # the first answer is quick; then the provider hangs
                self.release.wait(30)
            return Upstream(HIBERNATED)
        return Upstream(SERVING, self.url)

    def wake(self, tier):
        return self.current(tier)


def test_a_hung_provider_call_delays_neither_revocation_nor_healthy_tiers(tmp_path, clock):
    engine = ScriptedEngine(model="m")
    with serve_asgi(engine) as url:
        cfg = parse_config('[[tiers]]\nname = "hung"\nmodel = "other"\nbackend = "localcloud"\n'
                           + tier_toml("ok", "m", url) +
                           "[gateway]\nprobe_interval_s = 0.1\nprobe_timeout_s = 0.3\n",
                           tmp_path / "spotctl.toml")
        key = gateway_key(cfg.ledger_path)
        runtime = HangingRuntime(url)

        async def go():
            async with asgi_gateway(cfg, clock, runtime) as (app, c):
                h = {"Authorization": f"Bearer {key}"}
                await asyncio.sleep(0.5)  # the provider now hangs for "hung"
                assert (await c.post("/v1/chat/completions", json=CHAT, headers=h)
                        ).status_code == 200
                from spotctl.ledger.keys import revoke_key

                with Ledger(cfg.ledger_path) as led:
                    revoke_key(led, "team", to_ms(clock.now()))
                t0 = time.monotonic()  # clock-ok
                while (await c.post("/v1/chat/completions", json=CHAT, headers=h)
                       ).status_code != 401:
                    await asyncio.sleep(0.02)
                revoked_after = time.monotonic() - t0  # clock-ok
                states = app.board.snapshot()
                runtime.release.set()
                return revoked_after, states

        revoked_after, states = asyncio.run(go())
        assert revoked_after < 1.0  # the key table refreshes on its own (every 0.05 s here)
        assert states == {"hung": HIBERNATED, "ok": SERVING}  # last known state kept


class FailingWake:
    """A provider that refuses the wake with its own message, which holds the account key."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def current(self, tier):
        return Upstream(HIBERNATED)

    def wake(self, tier):
        raise RuntimeError(f"403 from https://api.example/v1/vms?api_key={self.secret}: "
                           f"account acct-991 over quota (Authorization: Bearer {self.secret})")


def test_a_wake_failure_reaches_clients_as_a_generic_message(tmp_path, clock, monkeypatch):
    from spotctl.gateway.app import Gateway

    secret = "prov-key-5b7e0c1d2a9f4e3b8c6d"
    monkeypatch.setenv("PROV_KEY", secret)
    cfg = parse_config('[[providers]]\nname = "p"\nkind = "hyperstack"\napi_key_env = "PROV_KEY"\n'
                       '[[tiers]]\nname = "t"\nmodel = "m"\nbackend = "localcloud"\n',
                       tmp_path / "spotctl.toml")
    key = gateway_key(cfg.ledger_path)
    logs: list[str] = []

    import spotctl.gateway.app as app_module
    from spotctl.gateway.gate import GateState

    # no billing in this test: the gate is open, the rest of the gateway is real
    monkeypatch.setattr(app_module, "evaluate_gate",
                        lambda *a, **k: GateState("open", "test", None, None, 0, 60, 0))

    async def go():
        app = Gateway(cfg, clock, FailingWake(secret), refresh_s=0.05, log=logs.append)
        import httpx

        from tests.fixtures_engines import lifespan

        async with lifespan(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
            return await c.post("/v1/chat/completions", json=CHAT,
                                headers={"Authorization": f"Bearer {key}"})

    r = asyncio.run(go())
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_upstream"
    message = r.json()["error"]["message"]
    assert "acct-991" not in message and "403" not in message and secret not in r.text
    assert "waking tier 't' failed" in message
    wake_logs = [line for line in logs if "wake failed" in line]
    assert wake_logs and not any(secret in line for line in logs)
    assert "RuntimeError" in wake_logs[0]
