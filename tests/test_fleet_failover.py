"""Issue 11's second bar: a spot preemption under load, with a second tier configured for the
same model, fails no non-streaming request. The fleet side: the preempted tier reads as gone
(not serving) at once, the daemon recovers it; the gateway side: a request that failed before
any byte reached the client is retried on the other tier (or on this one after recovery)."""

from __future__ import annotations

import collections
import threading

import openai

from spotctl.fleet.base import TierState
from spotctl.fleet.manager import FleetManager
from spotctl.gateway.upstreams import RoutingRuntime
from spotctl.services.daemon import FleetDaemon
from spotctl.services.fleet import FleetRuntime
from tests.fixtures_engines import gateway_key, start_gateway
from tests.fleet_helpers import lc_config


def _cfg(lc, tmp_path):
    return lc_config(lc, tmp_path / "spotctl.toml", (
        '[[tiers]]\nname = "big"\nmodel = "tiny"\nbackend = "localcloud"\nprovider = "lc"\n'
        'capacity = "spot-first"\nspot_retry_minutes = 3\nidle_minutes = 0\npriority = 0\n'
        'flavor = "n3-A100x1"\n'
        '[[tiers]]\nname = "small"\nmodel = "tiny"\nbackend = "localcloud"\nprovider = "lc"\n'
        'capacity = "on-demand"\nidle_minutes = 0\npriority = 1\nflavor = "n3-L40x1"\n'
        '[gateway]\nwake_timeout_s = 600\n'))


def test_a_preemption_under_load_fails_no_non_streaming_request(localcloud_engines, tmp_path):
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    big, small = cfg.tiers
    manager = FleetManager(cfg, lc.clock)
    vm = manager.up(big)
    manager.up(small)
    logs: list[str] = []
    daemon = FleetDaemon(cfg, lc.clock, logs.append)
    daemon.run_once()  # billing is fresh: the gate opens
    key = gateway_key(cfg.ledger_path)
    gw = start_gateway(cfg, lc.clock, RoutingRuntime(FleetRuntime(cfg, lc.clock)))
    outcomes: collections.Counter = collections.Counter()
    stop = threading.Event()

    def load() -> None:
        client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=120)
        while not stop.is_set():
            try:
                client.chat.completions.create(model="tiny", max_tokens=16, messages=[
                    {"role": "user", "content": "keep going"}])
                outcomes["ok"] += 1
            except openai.APIError as exc:
                outcomes[f"{type(exc).__name__} {getattr(exc, 'code', '')}"] += 1

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        stop.wait(1.0)  # real time: load flows through both tiers' gateway
        lc.control("POST", f"/vms/{vm.resource_id.split(':')[1]}/preempt")
        for _ in range(6):  # the daemon notices, recovers on spot
            stop.wait(0.3)
            lc.clock.advance(60)
            daemon.run_once()
        stop.wait(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        gw.stop()
    assert outcomes["ok"] > 20
    assert set(outcomes) == {"ok"}, (outcomes, logs[-6:])
    st = manager.status(big)
    assert st.state == TierState.READY and st.resource_id != vm.resource_id
