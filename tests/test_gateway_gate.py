"""The fail-closed budget gate and wake-on-request, through the real OpenAI SDK."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import openai
import pytest

from spotctl.billing.poller import poll_once
from spotctl.clock import ManualClock, to_ms
from spotctl.config import parse_config
from spotctl.gateway.gate import budget_day, evaluate_gate
from spotctl.gateway.upstreams import HIBERNATED, SERVING, Upstream
from spotctl.ledger.db import Ledger
from tests.fixtures_engines import gateway_key, start_builtin, start_gateway


def _cfg(tmp_path, lc, engine, budget="1000", tz="UTC"):
    return parse_config(
        lc.config_toml(extra=(
            f'[[tiers]]\nname = "fixed"\nmodel = "{engine.model}"\nendpoint = '
            f'"{engine.base_url}"\napi_key_env = "ENGINE_KEY"\nprovider = "lc"\n'
            f'[budget]\ndaily_usd = {budget}\ntimezone = "{tz}"\n')),
        tmp_path / "spotctl.toml")


def _wait_gate(handle, status, timeout=5.0):
    """The gate as of now: recompute it (the background refresh may have run mid-change)."""
    deadline = time.monotonic() + timeout  # clock-ok
    handle.app.refresh()
    while handle.app.gate.status != status and time.monotonic() < deadline:  # clock-ok
        time.sleep(0.02)  # clock-ok
        handle.app.refresh()
    assert handle.app.gate.status == status, handle.app.gate


@pytest.mark.usefixtures("ledger_backend")
def test_gate_closes_when_billing_goes_stale_and_reopens(localcloud, builtin_engine, tmp_path,
                                                         monkeypatch):
    monkeypatch.setenv("ENGINE_KEY", builtin_engine.api_key)
    lc = localcloud
    cfg = _cfg(tmp_path, lc, builtin_engine)
    lc.handle.cloud.create_vm("spotctl-fixed", "n3-H100x1")
    led = Ledger(cfg.ledger_target)
    for _ in range(3):
        lc.clock.advance(60)
        poll_once(cfg, led, lc.clock)
    key = gateway_key(cfg.ledger_target)
    handle = start_gateway(cfg, lc.clock)
    client = openai.OpenAI(base_url=handle.base_url, api_key=key, max_retries=0)
    msg = [{"role": "user", "content": "hello"}]
    _wait_gate(handle, "open")
    client.chat.completions.create(model=builtin_engine.model, messages=msg, max_tokens=3)
    # billing goes dark: no successful poll for longer than stale_after_s
    lc.control("POST", "/faults", kind="http_500", minutes=10)
    for _ in range(4):
        lc.clock.advance(60)
        poll_once(cfg, led, lc.clock)
    _wait_gate(handle, "billing_stale")
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model=builtin_engine.model, messages=msg, max_tokens=3)
    assert err.value.status_code == 503 and err.value.code == "billing_stale"
    # fresh samples again: the gate reopens by itself
    lc.control("DELETE", "/faults")
    lc.clock.advance(60)
    poll_once(cfg, led, lc.clock)
    _wait_gate(handle, "open")
    client.chat.completions.create(model=builtin_engine.model, messages=msg, max_tokens=3)
    handle.stop()
    led.close()


@pytest.mark.usefixtures("ledger_backend")
def test_budget_exhausted_with_retry_after_until_day_rolls_over(localcloud, builtin_engine,
                                                                tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_KEY", builtin_engine.api_key)
    lc = localcloud
    # the budget day is Pacific: it rolls over at 08:00 UTC (PST, UTC-8, in November)
    cfg = _cfg(tmp_path, lc, builtin_engine, budget="1.00", tz="America/Los_Angeles")
    lc.clock.set(datetime(2026, 11, 2, 6, 0, tzinfo=UTC))  # 22:00 the day before, local
    lc.handle.cloud.create_vm("spotctl-fixed", "n3-H100x1")
    led = Ledger(cfg.ledger_target)
    for _ in range(60):  # an hour of H100 at $2.40/h: over the $1 budget
        lc.clock.advance(60)
        poll_once(cfg, led, lc.clock)
    key = gateway_key(cfg.ledger_target)
    handle = start_gateway(cfg, lc.clock)
    _wait_gate(handle, "budget_exhausted")
    client = openai.OpenAI(base_url=handle.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model=builtin_engine.model, max_tokens=3,
                                       messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "budget_exhausted"
    retry_after = int(err.value.response.headers["retry-after"])
    assert retry_after == 3600  # 07:00 UTC now; the Pacific day ends at 08:00 UTC
    # the day rolls over at local midnight: spend restarts from zero and the gate reopens
    for _ in range(retry_after // 60 + 1):
        lc.clock.advance(60)
        poll_once(cfg, led, lc.clock)
    _wait_gate(handle, "open")
    assert evaluate_gate(led, cfg, lc.clock).spend_micros == 40_000  # the new day's 1st minute
    handle.stop()
    led.close()


def test_budget_day_in_a_non_utc_zone():
    now = datetime(2026, 3, 8, 12, 0, tzinfo=UTC)  # a DST change day in the US
    start, end = budget_day(now, "America/New_York")
    assert start.isoformat() == "2026-03-08T00:00:00-05:00"
    assert end.isoformat() == "2026-03-09T00:00:00-04:00"
    assert (end.astimezone(UTC) - start.astimezone(UTC)).total_seconds() == 23 * 3600


class EngineOnWakeRuntime:
    """A runtime whose tier is hibernated until woken; waking starts a real engine process."""

    def __init__(self, delay_s: float = 0.5) -> None:
        self.wakes = 0
        self.delay_s = delay_s
        self.proc = None
        self.engine = None
        self.lock = threading.Lock()

    def current(self, tier):
        if self.engine is None:
            return Upstream(HIBERNATED)
        return Upstream(SERVING, self.engine.base_url, self.engine.api_key)

    def wake(self, tier):
        with self.lock:
            self.wakes += 1
            time.sleep(self.delay_s)  # clock-ok: a real, bounded wake
            self.proc, self.engine = start_builtin("sleepy")
        return self.current(tier)


def test_concurrent_requests_share_one_wake(tmp_path):
    cfg = parse_config('[[tiers]]\nname = "sleepy"\nmodel = "sleepy"\nbackend = "localcloud"\n'
                       '[gateway]\nwake_timeout_s = 30\n', tmp_path / "spotctl.toml")
    runtime = EngineOnWakeRuntime()
    key = gateway_key(cfg.ledger_target)
    clock = ManualClock(datetime(2026, 11, 1, tzinfo=UTC))
    handle = start_gateway(cfg, clock, runtime)
    client = openai.OpenAI(base_url=handle.base_url, api_key=key, max_retries=0)

    def call(i):
        return client.chat.completions.create(
            model="sleepy", max_tokens=2, messages=[{"role": "user", "content": f"n{i}"}])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    assert len(results) == 8 and runtime.wakes == 1
    assert handle.app.board.wakes == 1
    assert ('spotctl_gateway_wake_duration_seconds_count{tier="sleepy"} 1.0'
            in handle.app.metrics.render().decode())
    handle.stop()
    runtime.proc.terminate()
    runtime.proc.wait(10)


def test_wake_past_the_cap_is_504(tmp_path):
    cfg = parse_config('[[tiers]]\nname = "sleepy"\nmodel = "sleepy"\nbackend = "localcloud"\n'
                       '[gateway]\nwake_timeout_s = 0.3\n', tmp_path / "spotctl.toml")
    runtime = EngineOnWakeRuntime(delay_s=2.0)
    key = gateway_key(cfg.ledger_target)
    handle = start_gateway(cfg, ManualClock(), runtime)
    client = openai.OpenAI(base_url=handle.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="sleepy", max_tokens=2,
                                       messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 504 and err.value.code == "wake_timeout"
    time.sleep(2.2)  # clock-ok: let the wake finish before stopping
    handle.stop()
    if runtime.proc:
        runtime.proc.terminate()
        runtime.proc.wait(10)


def test_gate_with_budget_but_no_provider_fails_closed(tmp_path):
    cfg = parse_config("[budget]\ndaily_usd = 5\n", tmp_path / "spotctl.toml")
    with Ledger(cfg.ledger_target) as led:
        state = evaluate_gate(led, cfg, ManualClock())
    assert state.status == "billing_stale"
    assert to_ms(ManualClock().now()) >= 0


class SteppedClock:
    """The machine's clock as NTP may leave it: wall time stepped by ``offset_s`` (back when
    negative), while the monotonic clock goes on."""

    def __init__(self, base: ManualClock) -> None:
        self.base = base
        self.offset_s = 0.0

    def now(self):
        from datetime import timedelta

        return self.base.now() + timedelta(seconds=self.offset_s)

    def monotonic(self) -> float:
        return self.base.monotonic()

    def sleep(self, seconds: float) -> None:
        self.base.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await self.base.asleep(seconds)


def test_a_clock_stepped_back_does_not_make_old_billing_fresh(localcloud, builtin_engine,
                                                              tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_KEY", builtin_engine.api_key)
    lc = localcloud
    cfg = _cfg(tmp_path, lc, builtin_engine)
    lc.clock.advance(11 * 3600)  # 11:00: the step back stays within the budget day
    lc.handle.cloud.create_vm("spotctl-fixed", "n3-H100x1")
    led = Ledger(cfg.ledger_path)
    for _ in range(64):  # polled every minute until 12:04
        lc.clock.advance(60)
        poll_once(cfg, led, lc.clock)
    gw_clock = SteppedClock(lc.clock)
    handle = start_gateway(cfg, gw_clock)
    try:
        _wait_gate(handle, "open")
        # the clock steps back one hour; the poller is dead from now on
        gw_clock.offset_s = -3600
        handle.app.refresh()
        assert handle.app.gate.status == "billing_stale"
        assert "future" in handle.app.gate.reason
        # back on time, 150 s after the last poll: fresh
        gw_clock.offset_s = 0
        lc.clock.advance(cfg.billing.stale_after_s - 30)
        handle.app.refresh()
        assert handle.app.gate.status == "open"
        # 210 s of monotonic time without a new poll, while a clock stepped back 100 s says
        # 110 s: the wall clock alone would call it fresh; the gate does not
        lc.clock.advance(60)
        gw_clock.offset_s = -100
        handle.app.refresh()
        assert handle.app.gate.status == "billing_stale"
        assert "no new successful poll for 210 s" in handle.app.gate.reason
    finally:
        handle.stop()
        led.close()


def test_poll_watch_follows_insertion_order_not_timestamps(tmp_path):
    from spotctl.gateway.gate import PollWatch
    from spotctl.ledger.records import PollRecord
    from spotctl.ledger.writes import record_poll

    with Ledger(tmp_path / "l.db") as led:
        record_poll(led, PollRecord("p", 9_000_000, 9_000_000, "ok"))
        w = PollWatch()
        w.update(led, now_ms=9_060_000, mono=100.0)
        assert w.age_s("p", 100.0) == 60.0  # first sight: as old as its stamp says
        record_poll(led, PollRecord("p", 5_000_000, 5_000_000, "ok"))  # stamped "earlier"
        w.update(led, now_ms=5_000_500, mono=130.0)
        assert w.age_s("p", 131.0) == 1.0  # a new poll arrived: fresh, whatever its stamp
        record_poll(led, PollRecord("p", 5_010_000, 5_010_000, "http_500", "x"))
        w.update(led, now_ms=5_010_000, mono=140.0)
        assert w.age_s("p", 300.0) == 170.0  # failures do not refresh it
        assert w.latest_stamp_ms() == 9_000_000


@pytest.mark.usefixtures("ledger_backend")
def test_a_serving_resource_billed_off_its_quote_closes_the_gate_when_asked(
        localcloud, builtin_engine, tmp_path, monkeypatch):
    """[budget] close_on_rate_mismatch: 503 rate_mismatch while the provider's newest poll bills
    a running resource off its launch quote; open again once it is billed right; the gauge
    spotctl_rate_mismatch counts such resources whatever the setting."""
    monkeypatch.setenv("ENGINE_KEY", builtin_engine.api_key)
    lc = localcloud
    cfg = _cfg(tmp_path, lc, builtin_engine)
    strict = cfg.model_copy(update={"budget": cfg.budget.model_copy(
        update={"close_on_rate_mismatch": True})})
    vm = lc.handle.cloud.create_vm("spotctl-fixed", "n3-L40x1")
    led = Ledger(cfg.ledger_target)
    lc.clock.advance(60)
    led.conn.execute("INSERT INTO fleet_events (ts_ms, tier, event, resource_id, "
                     "quoted_rate_micros_per_h) VALUES (?, 'fixed', 'ready', ?, ?)",
                     (to_ms(lc.clock.now()), f"vm:{vm.id}", 990_000))  # quoted $0.99/h
    led.conn.commit()

    def poll(n: int = 2) -> None:
        for _ in range(n):
            lc.clock.advance(60)
            poll_once(cfg, led, lc.clock)

    poll()
    key = gateway_key(cfg.ledger_target)
    handle = start_gateway(strict, lc.clock)
    client = openai.OpenAI(base_url=handle.base_url, api_key=key, max_retries=0)
    msg = [{"role": "user", "content": "hello"}]
    try:
        _wait_gate(handle, "open")
        assert evaluate_gate(led, strict, lc.clock).rate_mismatches == {}
        lc.control("POST", "/rate", resource=f"vm:{vm.id}", percent=112)  # overbilled
        poll()
        _wait_gate(handle, "rate_mismatch")
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model=builtin_engine.model, messages=msg,
                                           max_tokens=3)
        assert err.value.status_code == 503 and err.value.code == "rate_mismatch"
        assert f"vm:{vm.id}" in err.value.message and "+12.0 %" in err.value.message
        text = handle.app.metrics.render().decode()
        assert 'spotctl_rate_mismatch{provider="lc"} 1.0' in text
        assert 'spotctl_gateway_gate_state{state="rate_mismatch"} 1.0' in text
        # without the setting the gate stays open; the gauge still counts the resource
        lenient = evaluate_gate(led, cfg, lc.clock)
        assert lenient.status == "open" and len(lenient.rate_mismatches["lc"]) == 1
        # billed as quoted again: the newest poll has no mismatch, the gate reopens
        lc.control("POST", "/rate", resource=f"vm:{vm.id}", percent=100)
        poll()
        _wait_gate(handle, "open")
        client.chat.completions.create(model=builtin_engine.model, messages=msg, max_tokens=3)
        assert 'spotctl_rate_mismatch{provider="lc"} 0.0' in handle.app.metrics.render().decode()
        # overbilled again, then deleted: a mismatch of today on a resource gone is not serving
        lc.control("POST", "/rate", resource=f"vm:{vm.id}", percent=112)
        poll()
        _wait_gate(handle, "rate_mismatch")
        lc.handle.cloud.delete_vm(vm.id)
        poll(3)
        _wait_gate(handle, "open")
    finally:
        handle.stop()
        led.close()
