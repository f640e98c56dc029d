"""RunPod, Vast.ai and Lambda adapters against a small server replaying the providers' shapes
(the fixtures in tests/fixtures/providers), over real HTTP on loopback."""

from __future__ import annotations

import json
import threading
from copy import deepcopy
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from spotctl.accounting.spend import spend_between
from spotctl.billing.poller import poll_once
from spotctl.clock import ManualClock, to_ms
from spotctl.config import parse_config
from spotctl.ledger.db import Ledger

FIX = Path(__file__).parent / "fixtures" / "providers"
KEY = "replay-key-1c9d"


def load(rel: str) -> dict:
    return json.loads((FIX / rel).read_text())


class Replay:
    """Serves queued responses per route; records the auth header it saw."""

    def __init__(self) -> None:
        self.routes: dict[str, list[dict]] = {}
        self.auth: list[str] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                replay.auth.append(self.headers.get("Authorization", ""))
                path = self.path.split("?")[0]
                queue = replay.routes.get(path)
                if not queue:
                    self.send_response(404)
                    self.end_headers()
                    return
                body = json.dumps(queue[0] if len(queue) == 1 else queue.pop(0)).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _serve

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self._serve()

            def log_message(self, *args) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def replay(monkeypatch):
    monkeypatch.setenv("P_KEY", KEY)
    r = Replay()
    yield r
    r.close()


def _cfg(tmp_path, kind: str, url: str):
    return parse_config(f'[[providers]]\nname = "p"\nkind = "{kind}"\napi_key_env = "P_KEY"\n'
                        f'base_url = "{url}"\n[[tiers]]\nname = "4090-spot"\nmodel = "m"\n',
                        tmp_path / "spotctl.toml")


def _three_polls(cfg, clock, led):
    out = []
    for _ in range(3):
        out += poll_once(cfg, led, clock)
        clock.advance(60)
    return out


def _myself(rel: str, pods: dict | None, lifetime: bool = True) -> dict:
    doc = load(rel)
    me = doc["data"]["myself"]
    if not lifetime:
        me.pop("clientLifetimeSpend")
    if pods:
        me["pods"] = pods["data"]["myself"]["pods"]
    return doc


def test_runpod_lifetime_spend_is_the_account_running_total(replay, tmp_path):
    pods = load("runpod/graphql_pods.json")
    replay.routes["/graphql"] = [_myself(f"runpod/graphql_myself_{t}.json", pods)
                                 for t in ("t0", "t1_plus60s", "t2_after_topup")]
    cfg = _cfg(tmp_path, "runpod", replay.url)
    clock = ManualClock(datetime(2026, 10, 5, tzinfo=UTC))
    start = to_ms(clock.now()) - 1
    with Ledger(cfg.ledger_path) as led:
        outcomes = _three_polls(cfg, clock, led)
        assert all(o.ok for o in outcomes)
        spend = spend_between(led, start, to_ms(clock.now()), cfg)
        tiers = {t for (t,) in led.conn.execute("SELECT DISTINCT tier FROM billing_samples")}
        spot = led.conn.execute("SELECT spot FROM billing_samples WHERE resource_id = "
                                "'pod:xedezhzb9la3ye' LIMIT 1").fetchone()[0]
    # 3187.5529 -> 3187.6441: the top-up between t1 and t2 does not disturb the total
    assert spend.micros == 91_200 and spend.complete
    assert "4090-spot" in tiers and spot == 1
    assert all(a == f"Bearer {KEY}" for a in replay.auth)


def test_runpod_without_lifetime_spend_derives_it_from_the_balance(replay, tmp_path):
    replay.routes["/graphql"] = [_myself(f"runpod/graphql_myself_{t}.json", None,
                                         lifetime=False)
                                 for t in ("t0", "t1_plus60s", "t2_after_topup")]
    cfg = _cfg(tmp_path, "runpod", replay.url)
    clock = ManualClock(datetime(2026, 10, 5, tzinfo=UTC))
    start = to_ms(clock.now()) - 1
    with Ledger(cfg.ledger_path) as led:
        _three_polls(cfg, clock, led)
        spend = spend_between(led, start, to_ms(clock.now()), cfg)
        credits = led.conn.execute("SELECT amount_micros, confirmed FROM credit_events"
                                   ).fetchall()
    # t0 -> t1: balance fell 0.0456 (spend); t1 -> t2: a top-up with no credit feed: the rise
    # is an unconfirmed credit and that interval's spend is uncertain, not a point
    assert spend.micros == 45_600
    assert credits and credits[0][1] == 0 and spend.uncertain_micros == credits[0][0]


def test_vast_balance_deltas_with_the_invoice_feed(replay, tmp_path):
    user0 = load("vast/users_current.json")
    user1 = deepcopy(user0)
    user1["credit"] = 187.34 + 100 - 0.25  # a $100 credit arrived and $0.25 was spent
    invoices = load("vast/invoices_v1.json")
    replay.routes["/api/v0/users/current"] = [user0, user1]
    replay.routes["/api/v0/instances/"] = [load("vast/instances_v0.json")]
    no_invoices = {"success": True, "count": 0, "results": []}
    replay.routes["/api/v1/invoices/"] = [no_invoices, invoices]
    cfg = _cfg(tmp_path, "vast", replay.url)
    clock = ManualClock(datetime.fromtimestamp(1791219000, UTC))
    start = to_ms(clock.now()) - 1
    with Ledger(cfg.ledger_path) as led:
        poll_once(cfg, led, clock)
        clock.set(datetime.fromtimestamp(1791220100, UTC))
        [o] = poll_once(cfg, led, clock)
        assert o.ok
        spend = spend_between(led, start, to_ms(clock.now()), cfg)
        credits = led.conn.execute("SELECT amount_micros, confirmed FROM credit_events"
                                   ).fetchall()
    assert credits == [(100_000_000, 1)]
    assert spend.micros == 250_000 and spend.uncertain_micros == 0


def test_lambda_is_estimate_only_and_never_invoice_true(replay, tmp_path):
    replay.routes["/instances"] = [load("lambda/instances.json")]
    cfg = _cfg(tmp_path, "lambda", replay.url)
    clock = ManualClock(datetime(2026, 10, 5, tzinfo=UTC))
    start = to_ms(clock.now()) - 1
    with Ledger(cfg.ledger_path) as led:
        for _ in range(61):
            poll_once(cfg, led, clock)
            clock.advance(60)
        spend = spend_between(led, start, to_ms(clock.now()), cfg)
    assert spend.micros == 0  # nothing invoice-true is known
    assert spend.estimate_micros > 0  # shown apart, as an estimate


def test_malformed_payload_is_a_classified_poll_failure(replay, tmp_path):
    replay.routes["/graphql"] = [{"data": {"myself": {"clientBalance": "lots"}}}]
    cfg = _cfg(tmp_path, "runpod", replay.url)
    with Ledger(cfg.ledger_path) as led:
        [o] = poll_once(cfg, led, ManualClock())
        assert (o.ok, o.kind) == (False, "malformed")
        assert KEY not in (o.message or "")
