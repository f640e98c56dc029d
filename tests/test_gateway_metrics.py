"""The gateway's metrics: counted in plain Python on the request path, flushed into
prometheus-client before a render; the rendering equals prometheus-client's own."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from spotctl.gateway.metrics import FAST, LATENCY, GatewayMetrics, _Hist


def test_a_flushed_histogram_renders_as_one_that_observed_each_value():
    rnd = random.Random(15)
    values = [rnd.choice([0.0, 1e-5, *FAST, 0.3, 7.0]) for _ in range(300)]
    values += [rnd.uniform(0, 0.5) for _ in range(300)]
    ours, ref = CollectorRegistry(), CollectorRegistry()
    h_ours = Histogram("x_seconds", "x", buckets=FAST, registry=ours)
    h_ref = Histogram("x_seconds", "x", buckets=FAST, registry=ref)
    local = _Hist(h_ours)
    for i, v in enumerate(values):
        local.observe(v)
        h_ref.observe(v)
        if i % 97 == 0:
            local.flush()  # flushing in the middle changes nothing
    local.flush()
    got, want = _samples(ours), _samples(ref)
    assert set(got) == set(want) and len(got) == len(FAST) + 3  # buckets, +Inf, count, sum
    for k, v in want.items():  # buckets and count exact; the sum up to float rounding
        assert got[k] == v if not k[0].endswith("_sum") else math.isclose(got[k], v)


def _samples(registry) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_requests_and_tokens_are_exact_after_a_render():
    m = GatewayMetrics(["tiny"], ["t1"])
    for _ in range(5):
        m.request("tiny", "ok", 200)
        m.finished("t1", 7, 3, False, 0.01, 0.02, 0.0001)
    m.request("nope", "model_not_found", 404)
    m.finished("t1", 1, 2, True, None, 2.0)
    text = m.render().decode()
    assert 'spotctl_gateway_requests_total{code="ok",model="tiny",status="200"} 5.0' in text
    assert 'spotctl_gateway_requests_total{code="model_not_found",model="other",status="404"} 1.0' \
        in text
    assert 'spotctl_gateway_tokens_total{kind="prompt",tier="t1"} 36.0' in text
    assert 'spotctl_gateway_tokens_total{kind="completion",tier="t1"} 17.0' in text
    assert 'spotctl_gateway_estimated_rows_total{tier="t1"} 1.0' in text
    assert 'spotctl_gateway_time_to_first_token_seconds_count{tier="t1"} 5.0' in text
    assert 'spotctl_gateway_request_duration_seconds_count{tier="t1"} 6.0' in text
    assert 'spotctl_gateway_overhead_seconds_count 5.0' in text
    assert 'spotctl_gateway_request_duration_seconds_bucket{le="2.5",tier="t1"} 6.0' in text
    assert 'spotctl_gateway_request_duration_seconds_bucket{le="1.0",tier="t1"} 5.0' in text
    assert LATENCY[-1] == 300
    # a second render adds nothing twice
    assert m.render().decode() == text


def test_a_revoked_key_stops_working_at_the_next_reload_even_when_it_was_seen():
    from spotctl.gateway.auth import KeyTable
    from spotctl.ledger.keys import KeyInfo, hash_key

    info = KeyInfo("team", hash_key("sk-one"), 0, None, None)
    table = KeyTable()
    table.load([info])
    assert table.lookup("sk-one") == info and table.lookup("sk-one") == info  # cached
    assert table.lookup("sk-two") is None
    table.load([KeyInfo("team", hash_key("sk-one"), 0, 5, None)])  # revoked
    assert table.lookup("sk-one") is None
