"""Issue 11 §4, the fleet side: a tier with open requests is never hibernated; idle time counts
from the later of the last request's start and completion; an explicit hibernate or down
drains first (journal ``draining``, wait for the open requests up to ``[fleet]
drain_timeout_s``, then stop); an idle drain gives way to a request that arrives meanwhile.

The gateways' side is the agreed ledger interface: each gateway publishes its in-flight count
per tier with a heartbeat (:func:`spotctl.ledger.usage.publish_tiers`); these tests publish as a
gateway would."""

from __future__ import annotations

import threading

from spotctl.clock import to_ms
from spotctl.fleet.base import TierState
from spotctl.fleet.manager import FleetManager
from spotctl.ledger.db import Ledger
from spotctl.ledger.usage import publish_tiers
from spotctl.services.daemon import FleetDaemon
from tests.fleet_helpers import lc_config, live_vms


def _cfg(lc, tmp_path, drain_s: int = 120):
    return lc_config(lc, tmp_path / "spotctl.toml", (
        '[[tiers]]\nname = "big"\nmodel = "tiny"\nbackend = "localcloud"\nprovider = "lc"\n'
        'capacity = "spot-first"\nspot_retry_minutes = 3\nidle_minutes = 10\n'
        f'flavor = "n3-A100x1"\n[fleet]\ndrain_timeout_s = {drain_s}\n'))


def _publish(cfg, clock, in_flight: int, last_ms: int | None, gateway: str = "gw-1") -> None:
    with Ledger(cfg.ledger_path) as led:
        publish_tiers(led, gateway, to_ms(clock.now()), {"big": (in_flight, last_ms)})


def _events(cfg) -> list[tuple[str, str | None]]:
    with Ledger(cfg.ledger_path) as led:
        return list(led.conn.execute("SELECT event, detail FROM fleet_events ORDER BY id"))


def test_a_long_stream_is_never_hibernated_and_idle_counts_from_its_end(localcloud_engines,
                                                                         tmp_path):
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    tier = cfg.tiers[0]
    manager = FleetManager(cfg, lc.clock)
    manager.up(tier)
    logs: list[str] = []
    daemon = FleetDaemon(cfg, lc.clock, logs.append)
    started = to_ms(lc.clock.now())
    for _ in range(15):  # a 15-minute stream: the gateway heart-beats its in-flight count
        _publish(cfg, lc.clock, 1, started)
        lc.clock.advance(60)
        logs.append(daemon.check_tier(tier))
    assert manager.status(tier).state == TierState.READY, logs[-3:]
    assert "1 request(s) in flight" in logs[-1]
    _publish(cfg, lc.clock, 0, to_ms(lc.clock.now()))  # the stream completes now
    for _ in range(9):
        lc.clock.advance(60)
        logs.append(daemon.check_tier(tier))
    assert manager.status(tier).state == TierState.READY, logs[-3:]  # idle 9 min < 10
    for _ in range(2):
        lc.clock.advance(60)
        logs.append(daemon.check_tier(tier))
    assert manager.status(tier).state == TierState.HIBERNATED, logs[-3:]
    assert [e for e, _ in _events(cfg)][-3:] == ["draining", "hibernating", "hibernated"]


def test_explicit_hibernate_waits_for_open_requests(localcloud_engines, tmp_path):
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path, drain_s=600)
    tier = cfg.tiers[0]
    manager = FleetManager(cfg, lc.clock)
    manager.up(tier)
    _publish(cfg, lc.clock, 2, to_ms(lc.clock.now()))
    done = threading.Event()
    t = threading.Thread(target=lambda: (manager.hibernate(tier), done.set()), daemon=True)
    t.start()
    assert not done.wait(1.0)  # real time: still draining
    assert _events(cfg)[-1][0] == "draining"
    assert manager.backend(tier).status(tier).state == TierState.READY
    _publish(cfg, lc.clock, 0, to_ms(lc.clock.now()))
    assert done.wait(60)
    t.join(timeout=10)
    assert manager.status(tier).state == TierState.HIBERNATED
    assert [e for e, _ in _events(cfg)][-3:] == ["draining", "hibernating", "hibernated"]


def test_the_drain_cap_bounds_the_wait(localcloud_engines, tmp_path):
    """A gateway that stopped heart-beating with a request in flight (dead, or hung): its
    count is kept (unknown is not zero) until the drain cap; then down goes ahead."""
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path, drain_s=30)
    tier = cfg.tiers[0]
    manager = FleetManager(cfg, lc.clock)
    manager.up(tier)
    _publish(cfg, lc.clock, 1, to_ms(lc.clock.now()))
    before = lc.clock.monotonic()
    manager.down(tier)
    assert 30 <= lc.clock.monotonic() - before < 60
    assert live_vms(lc) == []
    event, detail = _events(cfg)[-1]
    assert event == "down" and "drain cap of 30 s reached with 1 request(s) in flight" in detail


def test_an_idle_drain_gives_way_to_a_request(localcloud_engines, tmp_path):
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    tier = cfg.tiers[0]
    arrivals = {"n": 0}

    def open_requests(t) -> int:
        # a request arrives while the daemon drains the idle tier (the gateway records it)
        if arrivals["n"] == 0:
            arrivals["n"] += 1
            _publish(cfg, lc.clock, 0, to_ms(lc.clock.now()) + 1)
        return 0

    manager = FleetManager(cfg, lc.clock, open_requests=open_requests)
    manager.up(tier)
    daemon = FleetDaemon(cfg, lc.clock, lambda line: None, manager=manager)
    lc.clock.advance(11 * 60)
    what = daemon.check_tier(tier)
    assert "serving on" in what
    assert manager.status(tier).state == TierState.READY
    assert [e for e, _ in _events(cfg)][-2:] == ["draining", "drain_aborted"]


def test_a_down_whose_process_died_is_finished_by_the_daemon(localcloud_engines, tmp_path):
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    tier = cfg.tiers[0]
    manager = FleetManager(cfg, lc.clock)
    st = manager.up(tier)
    manager.journal(tier.name, "draining", "op-down", st, operation="down")  # then kill -9
    daemon = FleetDaemon(cfg, lc.clock, lambda line: None)
    lc.clock.advance(60)
    daemon.check_tier(tier)
    assert live_vms(lc) == []
    assert _events(cfg)[-1][0] == "down"


def test_an_idle_drain_waits_for_the_gateways_to_see_it(localcloud_engines, tmp_path):
    """A gateway that has not refreshed yet admits one more request just after `draining` is
    journaled: an empty count is trusted only after the gateways' refresh period."""
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    tier = cfg.tiers[0]
    first: list[float] = []

    def open_requests(t) -> int:  # the gateway admits one a second after the drain began
        first.append(lc.clock.monotonic())
        return int(first[-1] - first[0] >= 1.0)

    manager = FleetManager(cfg, lc.clock, open_requests=open_requests)
    manager.up(tier)
    daemon = FleetDaemon(cfg, lc.clock, lambda line: None, manager=manager)
    lc.clock.advance(11 * 60)
    first.clear()
    assert "serving on" in daemon.check_tier(tier)
    assert manager.status(tier).state == TierState.READY
    assert _events(cfg)[-1] == ("drain_aborted", "1 request(s) in flight")
