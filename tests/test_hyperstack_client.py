"""The Hyperstack client against httpx.MockTransport: paging to the last page, the error tree,
retries that honour Retry-After with jitter on the one clock, and writes never retried."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime

import httpx
import pytest

from spotctl.clients.hyperstack import PAGE_SIZE, HyperstackClient
from spotctl.clock import ManualClock
from spotctl.errors import (
    AmbiguousWrite,
    NoSpotCapacity,
    ProviderAuthError,
    ProviderBadState,
    ProviderMalformed,
    ProviderNotFound,
    ProviderRateLimited,
    ProviderUnavailable,
)

KEY = "hs-secret-key-9d2"


def vm(i: int, name: str = "x") -> dict:
    return {"id": i, "name": name, "status": "ACTIVE", "labels": [], "flavor": {"name": "n3"},
            "volume_attachments": [{"volume": {"id": 7}}]}


def client(handler, clock=None, **kw) -> HyperstackClient:
    return HyperstackClient("https://hs.test/v1", KEY, clock or ManualClock(),
                            transport=httpx.MockTransport(handler), **kw)


def test_lists_page_with_page_and_pagesize_to_the_last_page():
    """Defect D3: spotctl sent `page_size` and read page 1 only; the list is oldest first, so
    the tier's (newest) VM was never seen. Now every page is read with `page`/`pageSize`."""
    total = 2 * PAGE_SIZE + 3
    seen = []

    def handler(req: httpx.Request) -> httpx.Response:
        assert req.headers["api_key"] == KEY
        q = req.url.params
        assert "page_size" not in q
        page, size = int(q["page"]), int(q["pageSize"])
        seen.append(page)
        lo = (page - 1) * size
        items = [vm(i, "spotctl-big" if i == total - 1 else f"old-{i}")
                 for i in range(lo, min(lo + size, total))]
        return httpx.Response(200, json={"status": True, "count": total, "page": page,
                                         "page_size": size, "instances": items})

    with client(handler) as c:
        vms = c.list_vms()
    assert seen == [1, 2, 3]
    assert len(vms) == total and vms[-1].name == "spotctl-big" and vms[0].volume_ids == (7,)


def test_a_server_ignoring_page_does_not_loop_forever():
    def handler(req):
        return httpx.Response(200, json={"instances": [vm(i) for i in range(PAGE_SIZE)]})

    with client(handler) as c:
        assert len(c.list_vms()) == PAGE_SIZE


@pytest.mark.parametrize("status,exc", [(401, ProviderAuthError), (403, ProviderAuthError),
                                        (404, ProviderNotFound), (409, ProviderBadState)])
def test_errors_map_to_the_tree_without_the_key(status, exc):
    def handler(req):
        return httpx.Response(status, json={"status": False, "message": f"no {KEY}",
                                            "error_reason": "x"})

    with client(handler) as c, pytest.raises(exc) as info:
        c.get_vm(3)
    assert KEY not in info.value.message and info.value.status == status
    assert not isinstance(info.value, NoSpotCapacity)


def test_reads_retry_honouring_retry_after_then_give_up():
    clock = ManualClock(datetime(2026, 11, 1, tzinfo=UTC))
    calls = []

    def handler(req):
        calls.append(clock.monotonic())
        return httpx.Response(429, headers={"Retry-After": "7"}, json={"message": "slow"})

    with client(handler, clock, attempts=3) as c, pytest.raises(ProviderRateLimited):
        c.credit()
    assert len(calls) == 3
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert all(7 <= g <= 30 for g in gaps)  # at least Retry-After, at most the cap


def test_reads_recover_after_a_5xx_with_jittered_backoff():
    clock = ManualClock()
    answers = [httpx.Response(503), httpx.Response(200, json={"data": {"credit": 5}})]

    def handler(req):
        return answers.pop(0)

    with client(handler, clock) as c:
        assert c.credit().data["data"]["credit"] == 5
    assert 0 <= clock.monotonic() <= 1.0  # first backoff: full jitter within 1 s


def test_writes_are_never_retried_and_say_the_outcome_is_unknown():
    calls = []

    def handler(req):
        calls.append(req.method)
        raise httpx.ReadTimeout("slow", request=req)

    with client(handler) as c, pytest.raises(AmbiguousWrite) as info:
        c.hibernate_vm(5)
    assert calls == ["GET"] and isinstance(info.value, ProviderUnavailable)


def test_create_returns_the_instance_and_record_mode_sends_nothing():
    bodies = []

    def handler(req):
        if req.method == "POST":
            bodies.append(json.loads(req.content))
            return httpx.Response(200, json={"status": True, "instances": [vm(41)]})
        return httpx.Response(404)

    with client(handler) as c:
        made = c.create_vm({"name": "a", "count": 1})
    assert made.id == 41 and bodies == [{"name": "a", "count": 1}]
    rec: list = []
    with client(handler, record=rec) as c:
        assert c.create_vm({"name": "b"}) is None
        c.attach_volumes(41, [7])
    assert [(s.method, s.path, s.body) for s in rec] == [
        ("POST", "/core/virtual-machines", {"name": "b"}),
        ("POST", "/core/virtual-machines/41/attach-volumes", {"volume_ids": [7]})]
    assert len(bodies) == 1


def test_a_non_json_answer_is_malformed():
    with client(lambda req: httpx.Response(200, text="<html>")) as c, \
            pytest.raises(ProviderMalformed):
        c.credit()


def test_pricebook_reads_numbers_and_strings():
    def handler(req):
        return httpx.Response(200, json=[{"name": "H100-80G-PCIe", "value": "1.90"},
                                         {"name": "A100", "value": 1.35}, {"name": "bad"}])

    with client(handler) as c:
        book = {p.name: str(p.usd_per_hour) for p in c.pricebook()}
    assert book == {"H100-80G-PCIe": "1.90", "A100": "1.35"}
