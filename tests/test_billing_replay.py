"""RunPod, Vast.ai and Lambda adapters through the real poller and ledger, with the providers'
recorded shapes (tests/fixtures/providers) replayed by httpx.MockTransport: no server.
Every test that writes through the ledger runs on SQLite and on PostgreSQL (``ledger_toml``)."""

from __future__ import annotations

import json
from copy import deepcopy
from datetime import UTC, datetime
from pathlib import Path

import httpx

from spotctl.billing.poller import poll_once
from spotctl.clock import ManualClock, to_ms
from spotctl.config import parse_config
from spotctl.ledger.db import Ledger
from spotctl.services.cost import spend_between

FIX = Path(__file__).parent / "fixtures" / "providers"
KEY = "replay-key-1c9d"


def load(rel: str):
    return json.loads((FIX / rel).read_text())


class Replay:
    """A MockTransport answering by route; records every request it saw."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.seen: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, req: httpx.Request) -> httpx.Response:
        self.seen.append(req)
        assert req.headers["Authorization"] == f"Bearer {KEY}"
        assert req.headers["User-Agent"].startswith("spotctl/")  # Cloudflare refuses urllib's
        got = self.answer(req)
        return got if isinstance(got, httpx.Response) else httpx.Response(200, json=got)


def _cfg(tmp_path, monkeypatch, kind: str, ledger_toml: str = ""):
    monkeypatch.setenv("P_KEY", KEY)
    return parse_config(f'{ledger_toml}[[providers]]\nname = "p"\nkind = "{kind}"\n'
                        'api_key_env = "P_KEY"\n'
                        'base_url = "https://replay.test"\n[[tiers]]\nname = "4090-spot"\n'
                        'model = "m"\n', tmp_path / "spotctl.toml")


def _polls(cfg, clock, led, replay, n=3, step=60.0):
    out = []
    for _ in range(n):
        out += poll_once(cfg, led, clock, {"p": replay.transport})
        clock.advance(step)
    return out


def _polled_spend(cfg, clock, led, replay, n=3, step=60.0):
    """``n`` polls, then the spend over all of them (from just before the first)."""
    start = to_ms(clock.now()) - 1
    outcomes = _polls(cfg, clock, led, replay, n, step)
    return outcomes, spend_between(led, start, to_ms(clock.now()), cfg)


def _runpod(lifetime: bool):
    """RunPod by GraphQL document: account, pods, and the unverified extras (rejected as a
    whole, as GraphQL does, when the field does not exist)."""
    state = {"t": 0}
    docs = [load(f"runpod/graphql_myself_{t}.json") for t in ("t0", "t1_plus60s",
                                                              "t2_after_topup")]
    pods = load("runpod/graphql_pods.json")

    def answer(req):
        query = json.loads(req.content)["query"]
        if "clientBalance" in query:  # the account query opens each poll
            state["t"] += 1
        me = docs[min(state["t"] - 1, 2)]["data"]["myself"]
        if "clientLifetimeSpend" in query:
            if not lifetime:
                return {"errors": [{"message": 'Cannot query field "clientLifetimeSpend"'}]}
            return {"data": {"myself": {"clientLifetimeSpend": me["clientLifetimeSpend"],
                                        "pods": pods["data"]["myself"]["pods"]}}}
        if "pods" in query:
            assert "adjustedCostPerHr" not in query  # unverified: only in the extras query
            return pods
        assert "clientLifetimeSpend" not in query
        return {"data": {"myself": {k: me[k] for k in ("id", "clientBalance",
                                                       "currentSpendPerHr", "spendLimit")}}}
    return answer


def test_runpod_lifetime_spend_is_the_account_running_total(tmp_path, monkeypatch, ledger_toml):
    replay = Replay(_runpod(lifetime=True))
    cfg = _cfg(tmp_path, monkeypatch, "runpod", ledger_toml)
    clock = ManualClock(datetime(2026, 10, 5, tzinfo=UTC))
    with Ledger(cfg.ledger_target) as led:
        outcomes, spend = _polled_spend(cfg, clock, led, replay)
        assert all(o.ok for o in outcomes)
        tiers = {t for (t,) in led.conn.execute("SELECT DISTINCT tier FROM billing_samples")}
        spot = led.conn.execute("SELECT spot FROM billing_samples WHERE resource_id = "
                                "'pod:xedezhzb9la3ye' LIMIT 1").fetchone()[0]
    # 3187.5529 -> 3187.6441: the top-up between t1 and t2 does not disturb the total
    assert spend.micros == 91_200 and spend.complete
    assert "4090-spot" in tiers and spot == 1


def test_runpod_without_lifetime_spend_still_polls_from_the_balance(tmp_path, monkeypatch,
                                                                   ledger_toml):
    """Defect D5: the unverified field sat in the one query, so a RunPod without it failed
    every poll (GraphQL rejects the whole document). Now only the extras query is lost."""
    replay = Replay(_runpod(lifetime=False))
    cfg = _cfg(tmp_path, monkeypatch, "runpod", ledger_toml)
    clock = ManualClock(datetime(2026, 10, 5, tzinfo=UTC))
    with Ledger(cfg.ledger_target) as led:
        outcomes, spend = _polled_spend(cfg, clock, led, replay)
        assert all(o.ok for o in outcomes)
        credits = led.conn.execute("SELECT amount_micros, confirmed FROM credit_events"
                                   ).fetchall()
    # t0 -> t1: balance fell 0.0456 (spend); t1 -> t2: a top-up with no credit feed: the rise
    # is an unconfirmed credit and that interval's spend is uncertain, not a point
    assert spend.micros == 45_600
    assert credits and credits[0][1] == 0 and spend.uncertain_micros == credits[0][0]


def test_runpod_reconcile_uses_the_daily_billing_endpoint(tmp_path, monkeypatch):
    from datetime import date

    from spotctl.billing import reconcile
    from spotctl.clients import bearer

    seen = []

    def answer(req):
        seen.append((req.url.path, dict(req.url.params)))
        if req.url.path == "/v1/billing/pods":
            return [{"time": "2026-10-05T00:00:00Z", "amount": 1.25, "podId": "a"}]
        return load("runpod/rest_v1_billing_networkvolumes_daily.json")[1:]

    real = bearer.RunPodClient.__init__

    def with_transport(self, *a, **kw):
        kw["transport"] = httpx.MockTransport(lambda r: httpx.Response(200, json=answer(r)))
        real(self, *a, **kw)

    monkeypatch.setattr(bearer.RunPodClient, "__init__", with_transport)
    cfg = _cfg(tmp_path, monkeypatch, "runpod")
    total = reconcile.provider_day_total(cfg, "p", date(2026, 10, 5), date(2026, 10, 6))
    assert total == 1_250_000 + 97_200
    assert seen[0] == ("/v1/billing/pods", {"bucketSize": "day", "startTime":
                                           "2026-10-05T00:00:00Z", "endTime":
                                           "2026-10-06T00:00:00Z"})


def _vast(users, invoices_pages):
    pages = {"": load("vast/instances_v1_page1.json"),
             load("vast/instances_v1_page1.json")["next_token"]:
                 load("vast/instances_v1_page2.json")}
    state = {"u": 0, "i": 0}

    def answer(req):
        path, q = req.url.path, req.url.params
        if path == "/api/v0/users/current":
            doc = users[min(state["u"], len(users) - 1)]
            state["u"] += 1
            return doc
        if path == "/api/v1/instances/":
            return pages[q.get("after_token", "")]
        if path == "/api/v1/invoices/":
            assert json.loads(q["select_filters"])["when"]["gte"] >= 0 and q["limit"] == "100"
            poll = state["u"] - 1
            book = invoices_pages[min(poll, len(invoices_pages) - 1)]
            return book[q.get("after_token", "")]
        return httpx.Response(404)
    return answer


def test_vast_pages_instances_and_invoices_and_uses_the_credit_feed(tmp_path, monkeypatch,
                                                                   ledger_toml):
    """D6/D7: the invoices feed is read to its last page (a credit on page 2 is confirmed, not
    inferred) and instances come from the paged v1 listing, not the deprecated v0 list."""
    user0 = load("vast/users_current.json")
    user1 = deepcopy(user0)
    user1["credit"] = 187.34 + 100 - 0.25  # a $100 credit arrived and $0.25 was spent
    credit = load("vast/invoices_v1.json")["results"][0]
    empty = {"": {"success": True, "results": [], "next_token": None}}
    two_pages = {"": {"results": [{"type": "transfer", "amount": 1, "start": 1791219500}],
                      "next_token": "p2"},
                 "p2": {"results": [credit], "next_token": None}}
    replay = Replay(_vast([user0, user1], [empty, two_pages]))
    cfg = _cfg(tmp_path, monkeypatch, "vast", ledger_toml)
    clock = ManualClock(datetime.fromtimestamp(1791219000, UTC))
    start = to_ms(clock.now()) - 1
    with Ledger(cfg.ledger_target) as led:
        assert poll_once(cfg, led, clock, {"p": replay.transport})[0].ok
        clock.set(datetime.fromtimestamp(1791220100, UTC))
        [o] = poll_once(cfg, led, clock, {"p": replay.transport})
        assert o.ok, o.message
        spend = spend_between(led, start, to_ms(clock.now()), cfg)
        credits = led.conn.execute("SELECT amount_micros, confirmed FROM credit_events"
                                   ).fetchall()
        instances = {r for (r,) in led.conn.execute(
            "SELECT DISTINCT resource_id FROM billing_samples WHERE resource_id != 'account'")}
    assert credits == [(100_000_000, 1)]
    assert spend.micros == 250_000 and spend.uncertain_micros == 0
    assert instances == {"instance:14455621", "instance:14455900"}  # both pages
    assert not any(r.url.path == "/api/v0/instances/" for r in replay.seen)


def test_vast_account_not_credit_only_is_unknown_not_zero(tmp_path, monkeypatch, ledger_toml):
    """D8: a card-billed account's spend does not move `credit`: not $0 but unknown."""
    user = load("vast/users_current.json")
    user["billing_creditonly"] = False
    replay = Replay(_vast([user], [{"": {"results": [], "next_token": None}}]))
    cfg = _cfg(tmp_path, monkeypatch, "vast", ledger_toml)
    clock = ManualClock(datetime.fromtimestamp(1791219000, UTC))
    with Ledger(cfg.ledger_target) as led:
        outcomes, spend = _polled_spend(cfg, clock, led, replay, n=3)
    assert {(o.ok, o.kind) for o in outcomes} == {(False, "unsupported")}
    assert not spend.complete and spend.status != "ok"


def test_lambda_estimate_covers_every_billed_state_and_the_last_interval(tmp_path, monkeypatch,
                                                                          ledger_toml):
    """D11: unhealthy and terminating bill (from launch until terminate), booting does not,
    and an instance gone between two polls accrues up to the poll that finds it gone."""
    doc = load("lambda/instances.json")
    inst = doc["data"][0]
    rate = inst["instance_type"]["price_cents_per_hour"] * 10_000  # micro-$/h
    statuses = ["booting", "active", "unhealthy", "terminating", None, None]
    state = {"i": 0}

    def answer(req):
        status = statuses[min(state["i"], len(statuses) - 1)]
        state["i"] += 1
        return {"data": [] if status is None else [{**inst, "status": status}]}

    replay = Replay(answer)
    cfg = _cfg(tmp_path, monkeypatch, "lambda", ledger_toml)
    clock = ManualClock(datetime(2026, 10, 5, tzinfo=UTC))
    with Ledger(cfg.ledger_target) as led:
        _, spend = _polled_spend(cfg, clock, led, replay, n=6, step=600)
        rows = led.conn.execute("SELECT state, cumulative_micros FROM billing_samples "
                                "ORDER BY observed_ms").fetchall()
    assert spend.micros == 0  # nothing invoice-true is known
    # booting→active: not billed; active, unhealthy, terminating: 3 × 10 min billed; then gone
    assert rows[-1] == ("deleted", 3 * (rate * 10 // 60))
    assert spend.estimate_micros == 3 * (rate * 10 // 60)
    assert len(rows) == 5  # the closed series gets no further samples


def test_malformed_payload_is_a_classified_poll_failure(tmp_path, monkeypatch, ledger_toml):
    replay = Replay(lambda req: {"data": {"myself": {"clientBalance": "lots"}}})
    cfg = _cfg(tmp_path, monkeypatch, "runpod", ledger_toml)
    with Ledger(cfg.ledger_target) as led:
        [o] = poll_once(cfg, led, ManualClock(), {"p": replay.transport})
        assert (o.ok, o.kind) == (False, "malformed")
        assert KEY not in (o.message or "")
