"""The local cloud over real HTTP, the real Hyperstack adapter against it, and the poller."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from spotctl.billing.health import provider_health
from spotctl.billing.poller import poll_once
from spotctl.clock import to_ms
from spotctl.config import parse_config
from spotctl.ledger.db import Ledger
from spotctl.services.cost import spend_between

FIX = Path(__file__).parent / "fixtures" / "providers" / "hyperstack"


def get(lc, path, **params):
    return httpx.get(f"{lc.base_url}{path}", params=params, headers={"api_key": lc.api_key},
                     timeout=10)


def test_usage_shape_matches_hyperstack_fixture(localcloud):
    localcloud.control("POST", "/vms", name="spotctl-big", spot=True)
    localcloud.clock.advance(600)
    got = get(localcloud, "/billing/billing/usage").json()
    fixture = json.loads((FIX / "billing_usage_t0.json").read_text())
    assert set(fixture) <= set(got)
    assert set(fixture["data"][0]) <= set(got["data"][0])
    vms = get(localcloud, "/core/virtual-machines").json()
    assert set(json.loads((FIX / "list_vms.json").read_text())["instances"][0]) - set(
        vms["instances"][0]) <= {"security_rules", "fixed_ip", "os", "callback_url",
                                 "requires_public_ip", "port_randomization", "features",
                                 "port_randomization_status", "bh_status"}
    assert get(localcloud, "/billing/user-credit/credit").json()["data"]["credit"] > 0


def test_auth_required_and_restore_on_wrong_state(localcloud):
    r = httpx.get(f"{localcloud.base_url}/billing/billing/usage", timeout=5)
    assert r.status_code == 401 and r.json()["status"] is False
    vm = localcloud.control("POST", "/vms", name="spotctl-big")
    localcloud.clock.advance(120)
    r = get(localcloud, f"/core/virtual-machines/{vm['id']}/hibernate-restore")
    assert r.status_code == 400 and "error_reason" in r.json()


def test_accrual_is_exact_across_states_and_ids_collide(localcloud):
    lc = localcloud
    cloud = lc.handle.cloud
    vm = cloud.create_vm("spotctl-big", "n3-H100x1")
    vol = cloud.create_volume("spotctl-big-weights", 100)
    assert vm.id == vol.id  # separate sequences collide, as on Hyperstack
    lc.clock.advance(90 + 60 * 60)  # create, then one hour active
    assert cloud.get_vm(vm.id).total_micros == 60 * 40_000
    cloud.hibernate(vm.id)
    lc.clock.advance(30 + 60 * 60)  # hibernating (not billed) then an hour hibernated
    assert cloud.get_vm(vm.id).state == "HIBERNATED"
    assert vm.total_micros == 60 * 40_000 + 60 * 2_000
    cloud.delete_vm(vm.id)
    deleted = get(lc, "/billing/billing/usage", deleted="true").json()["data"]
    assert [(r["resource_type"], r["bill_per_minute"]) for r in deleted] == [("vm", None)]
    assert Decimal(str(deleted[0]["total_bill"])) == Decimal("2.52")
    inv = lc.control("GET", "/invoice")
    assert inv["total_micros"] == sum(inv["resources"].values())


@pytest.mark.parametrize("kind,outcome", [
    ("http_500", "http_5xx"), ("http_429", "http_429"), ("malformed_json", "malformed"),
    ("http_401", "auth"), ("billing_dark", "timeout"),
])
@pytest.mark.usefixtures("ledger_backend")
def test_each_fault_is_classified_and_recorded(localcloud, tmp_path, kind, outcome):
    cfg = parse_config(localcloud.config_toml(), tmp_path / "spotctl.toml")
    localcloud.control("POST", "/faults", kind=kind, minutes=5)
    with Ledger(cfg.ledger_target) as led:
        [o] = poll_once(cfg, led, localcloud.clock)
        assert (o.ok, o.kind) == (False, outcome)
        assert led.conn.execute("SELECT outcome FROM billing_polls").fetchall() == [(outcome,)]
        assert led.conn.execute("SELECT count(*) FROM billing_samples").fetchone()[0] == 0
        assert localcloud.api_key not in (o.message or "")


def _minute(lc, led, cfg, n=1):
    for _ in range(n):
        lc.clock.advance(60)
        poll_once(cfg, led, lc.clock)


@pytest.mark.usefixtures("ledger_backend")
def test_simulated_days_ledger_equals_invoice_with_every_fault(localcloud, tmp_path):
    """Two simulated days polled every minute by the real poller and adapter, with spot
    preemption, hibernation, deletion, a top-up and every fault kind: the ledger's spend equals
    the local cloud's invoice exactly; fault windows are degraded or lost, never $0; a falling
    cumulative is recorded and not counted as a refund."""
    lc = localcloud
    cloud = lc.handle.cloud
    cfg = parse_config(lc.config_toml(extra='[[tiers]]\nname = "big"\nmodel = "m"\n'
                                      'backend = "localcloud"\nprovider = "lc"\n'),
                       tmp_path / "spotctl.toml")
    led = Ledger(cfg.ledger_target)
    start = to_ms(lc.clock.now())
    _minute(lc, led, cfg)
    spot = cloud.create_vm("spotctl-big", "n3-H100x1-spot")
    cloud.create_volume("spotctl-big-weights", 200)
    _minute(lc, led, cfg, 6 * 60)
    lc.control("POST", f"/vms/{spot.id}/preempt")
    od = cloud.create_vm("spotctl-big", "n3-H100x1")  # fallback to on-demand
    _minute(lc, led, cfg, 3 * 60)
    for kind in ("http_500", "http_429", "malformed_json", "http_401"):
        lc.control("POST", "/faults", kind=kind, minutes=5)
        _minute(lc, led, cfg, 10)
    lc.control("POST", "/faults", kind="cumulative_down", minutes=3, resource=f"vm:{od.id}")
    _minute(lc, led, cfg, 10)
    cloud.hibernate(od.id)
    _minute(lc, led, cfg, 8 * 60)
    cloud.restore(od.id)
    lc.control("POST", "/topup", usd="500")
    _minute(lc, led, cfg, 6 * 60)
    # billing dark: the requests hang past the client timeout (real seconds), so the poll fails
    lc.control("POST", "/faults", kind="billing_dark", minutes=4)
    _minute(lc, led, cfg, 2)
    dark_from = to_ms(lc.clock.now())
    lc.clock.advance(4 * 60)  # the dark minutes: polls would all time out
    mid = spend_between(led, start, to_ms(lc.clock.now()), cfg)
    assert mid.status == "lost" and not mid.complete and mid.micros > 0
    assert mid.known_until_ms is not None and mid.known_until_ms <= dark_from
    _minute(lc, led, cfg, 20 * 60)
    spot2 = cloud.create_vm("spotctl-big", "n3-H100x1-spot")  # back to spot
    cloud.delete_vm(od.id)
    _minute(lc, led, cfg, 5)
    lc.control("POST", "/faults", kind="vanish", minutes=30, resource=f"vm:{spot2.id}")
    _minute(lc, led, cfg, 20)
    hidden = spend_between(led, start, to_ms(lc.clock.now()), cfg)
    assert not hidden.complete and any("vanished" in r for r in hidden.reasons)
    _minute(lc, led, cfg, 40)
    lc.control("DELETE", "/faults")
    cloud.delete_vm(spot2.id)
    _minute(lc, led, cfg, 11)  # past deleted_poll_every_s: final totals are fetched
    end = to_ms(lc.clock.now())
    total = spend_between(led, start, end, cfg)
    invoice = lc.control("GET", "/invoice")["total_micros"]
    assert total.micros == invoice and total.complete
    assert total.anomalies >= 1  # the falling cumulative, not counted as a refund
    assert total.status == "degraded"  # gaps from the faults, fresh at the end
    kinds = {k for (k,) in led.conn.execute("SELECT DISTINCT kind FROM billing_anomalies")}
    assert {"cumulative_decreased", "vanished"} <= kinds
    outcomes = {k for (k,) in led.conn.execute("SELECT DISTINCT outcome FROM billing_polls")}
    assert {"ok", "http_5xx", "http_429", "malformed", "auth"} <= outcomes
    per_tier = spend_between(led, start, end, cfg, tiers={"big"})
    assert 0 < per_tier.micros == invoice  # every resource was named for the tier
    [health] = provider_health(led, cfg, end)
    assert health.status == "fresh"
    led.close()


def test_daily_books_add_up_for_unaligned_times_across_midnight():
    """Creation at an odd millisecond, billing across several midnights: the per-day books
    (for last-day-cost) sum exactly to the running totals, and nothing loops forever."""
    from datetime import UTC, datetime

    from spotctl.clock import ManualClock
    from spotctl.localcloud.model import LocalCloud

    clock = ManualClock(datetime(2026, 11, 1, 23, 58, 29, 123000, tzinfo=UTC))
    cloud = LocalCloud(clock)
    cloud.create_vm("spotctl-a", "n3-H100x1")
    cloud.create_volume("w", 50)
    for step in (37.3, 3600 * 25 + 13.7, 59.9, 86_400 * 2 + 1):
        clock.advance(step)
        cloud.billed_micros()
    books = sum(sum(day.values()) for day in cloud.daily.values())
    assert books == cloud.invoice()["total_micros"] > 0
    assert len(cloud.daily) == 5
