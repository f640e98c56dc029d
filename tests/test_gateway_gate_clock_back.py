"""Issue 11 §9 on the gateway's other path: when the gate cannot read the ledger it serves from
its last good state for at most ``[billing] stale_after_s``. That age was measured on the wall
clock, so a clock stepped back one hour let a gateway with an unreachable ledger serve from its
last state for an hour and more. It is measured on the monotonic clock now."""

from __future__ import annotations

from datetime import timedelta

import openai
import pytest

from spotctl.clock import ManualClock
from spotctl.config import parse_config
from tests.fixtures_engines import gateway_key, start_gateway, tier_toml


class SteppedClock:
    """Wall time stepped by ``offset_s`` (back when negative); the monotonic clock goes on."""

    def __init__(self, base: ManualClock) -> None:
        self.base = base
        self.offset_s = 0.0

    def now(self):
        return self.base.now() + timedelta(seconds=self.offset_s)

    def monotonic(self) -> float:
        return self.base.monotonic()

    def sleep(self, seconds: float) -> None:
        self.base.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await self.base.asleep(seconds)


def test_a_clock_stepped_back_does_not_stretch_serving_from_the_last_gate_state(
        pg_server, pg_url, pg_proxy, builtin_engine, tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_KEY", builtin_engine.api_key)
    via_proxy = pg_url.replace(f":{pg_server.port}/", f":{pg_proxy.port}/")
    cfg = parse_config(
        f'[ledger]\nurl = "{via_proxy}"\nquery_timeout_s = 2\npool_timeout_s = 2\n'
        "[billing]\nstale_after_s = 60\n"
        f'[gateway]\nspool_dir = "{tmp_path / "spool"}"\n'
        + tier_toml("f", builtin_engine.model, builtin_engine.base_url,
                    api_key_env="ENGINE_KEY"), tmp_path / "spotctl.toml")
    key = gateway_key(cfg.ledger_target)
    base = ManualClock()
    base.advance(12 * 3600)
    clock = SteppedClock(base)
    handle = start_gateway(cfg, clock)
    client = openai.OpenAI(base_url=handle.base_url, api_key=key, max_retries=0)
    msg = [{"role": "user", "content": "hi"}]
    try:
        handle.app.refresh()
        assert handle.app.gate.status == "open"
        pg_proxy.cut()  # the ledger is unreachable from here on
        clock.offset_s = -3600  # and the wall clock steps back one hour
        handle.app.refresh()
        assert handle.app.gate.status == "open"  # the last state, 0 s old
        base.advance(61)  # past stale_after_s of monotonic time (the wall clock says -59 min)
        handle.app.refresh()
        assert handle.app.gate.status == "ledger_unreachable"
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model=builtin_engine.model, max_tokens=2,
                                           messages=msg)
        assert err.value.status_code == 503 and err.value.code == "ledger_unreachable"
    finally:
        pg_proxy.restore()
        handle.stop()
