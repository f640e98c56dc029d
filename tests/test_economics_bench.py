"""`spotctl bench`: a real gateway in front of an engine that saturates like a GPU does.

The engine (below) serves at most ``SLOTS`` streams at once and shares ``RATE`` output tokens/s
between them (no stream faster than ``PER_STREAM``); a request beyond the slots waits, so its
time to first token grows. So the expected capacity is known without calling spotctl: RATE
tokens/s, reached at SLOTS concurrent streams; the step after that breaks the TTFT SLO.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import orjson
import pytest
import uvicorn

from spotctl.accounting.bench import RequestSample, parse_mix, quantile, summarise_step
from spotctl.config import parse_config
from spotctl.ledger.db import Ledger
from spotctl.localcloud.engines import free_port
from tests.fixtures_engines import gateway_key, start_gateway

RATE = 2000.0  # output tokens/s the "GPU" serves in total
PER_STREAM = 400.0  # no single stream faster than this
SLOTS = 8  # concurrent sequences in the batch
CHUNK = 10  # tokens per SSE chunk
OUTPUT = 200  # tokens per answer (the mix below asks for exactly this)
SLO_MS = 600  # generous: below SLOTS streams TTFT is ~20 ms, above it ~1.4 s


class SaturatingEngine:
    def __init__(self) -> None:
        self.active = 0
        self.sem: asyncio.Semaphore | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if self.sem is None:
            self.sem = asyncio.Semaphore(SLOTS)
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        if scope["path"] == "/v1/models":
            return await self._json(send, {"object": "list", "data": [{"id": "sat"}]})
        req = orjson.loads(body) if body else {}
        n = int(req.get("max_tokens") or OUTPUT)
        async with self.sem:
            self.active += 1
            try:
                await asyncio.sleep(0.01)  # clock-ok: prefill
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"text/event-stream")]})
                sent = 0
                while sent < n:
                    k = min(CHUNK, n - sent)
                    await self._event(send, {"id": "x", "object": "chat.completion.chunk",
                                             "model": "sat", "choices": [{
                                                 "index": 0, "delta": {"content": "w " * k},
                                                 "finish_reason": None}]})
                    sent += k
                    rate = min(PER_STREAM, RATE / max(1, self.active))
                    await asyncio.sleep(k / rate)  # clock-ok: the engine's real pace
                await self._event(send, {"id": "x", "object": "chat.completion.chunk",
                                         "model": "sat", "choices": [], "usage": {
                                             "prompt_tokens": 20, "completion_tokens": n,
                                             "total_tokens": n + 20}})
                await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            finally:
                self.active -= 1

    @staticmethod
    async def _event(send, payload):
        await send({"type": "http.response.body", "more_body": True,
                    "body": b"data: " + orjson.dumps(payload) + b"\n\n"})

    @staticmethod
    async def _json(send, payload):
        body = orjson.dumps(payload)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def saturating_engine():
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(SaturatingEngine(), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on", ws="none"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15  # clock-ok
    while not server.started and time.monotonic() < deadline:  # clock-ok
        time.sleep(0.01)  # clock-ok
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(20)


@pytest.fixture
def bench_gateway(saturating_engine, tmp_path, clock):
    cfg_path = tmp_path / "spotctl.toml"
    cfg_path.write_text(f'[[tiers]]\nname = "sat"\nmodel = "sat"\n'
                        f'endpoint = "{saturating_engine}"\naccelerators = "H100:1"\n')
    cfg = parse_config(cfg_path.read_text(), cfg_path)
    handle = start_gateway(cfg, clock)
    yield cfg, handle
    handle.stop()


def test_bench_finds_the_engines_capacity_and_records_it(bench_gateway):
    from spotctl.services.economics import record_bench, run_bench

    cfg, gw = bench_gateway
    key = gateway_key(cfg.ledger_path)
    out = run_bench(cfg, cfg.tier("sat"), gateway_url=gw.url, api_key=key, duration_s=14,
                    step_s=2.0, slo_ttft_ms=SLO_MS, mix=parse_mix(f"16:{OUTPUT}:1"))
    conc = [s.concurrency for s in out.steps]
    assert conc[:4] == [1, 2, 4, 8]
    # beyond the batch slots half the requests queue for a whole answer (≈ 0.8 s), so TTFT
    # p90 is about 1.4 s: the SLO breaks
    assert out.slo_broken and conc[-1] == 2 * SLOTS and not out.steps[-1].meets(SLO_MS)
    assert out.concurrency == SLOTS
    assert RATE * 0.7 <= out.output_tokens_per_s <= RATE * 1.1
    # the steps below saturation run at PER_STREAM per stream
    four = out.steps[2]
    assert 4 * PER_STREAM * 0.7 <= four.output_tokens_per_s <= 4 * PER_STREAM * 1.1
    with Ledger(cfg.ledger_path) as led:
        bench_id = record_bench(led, out)
        row = led.conn.execute("SELECT tier, model, accelerator, concurrency, slo_broken, "
                               "output_tokens_per_s, ttft_p90_us, steps_json FROM bench_runs "
                               "WHERE id = ?", (bench_id,)).fetchone()
    assert row[:5] == ("sat", "sat", "H100:1", SLOTS, 1)
    assert row[5] == pytest.approx(out.output_tokens_per_s)
    assert row[6] is not None and row[6] < SLO_MS * 1000  # microseconds
    assert row[6] == round(out.best.ttft_ms["p90"] * 1000)
    assert len(json.loads(row[7])) == len(out.steps)


def test_bench_cli_json_with_a_temporary_key(bench_gateway, monkeypatch):
    from typer.testing import CliRunner

    from spotctl.cli.main import app

    cfg, gw = bench_gateway
    result = CliRunner().invoke(app, ["--config", str(cfg.source), "bench", "sat", "--duration",
                                      "4s", "--step", "2s", "--mix", f"16:{OUTPUT}:1",
                                      "--gateway", gw.url, "--json"])
    assert result.exit_code == 0, result.output
    js = json.loads(result.stdout)
    assert js["tier"] == "sat" and [s["concurrency"] for s in js["steps"]] == [1, 2]
    assert js["saturated"] is False  # the ramp ended before the SLO broke: a lower bound
    assert js["output_tokens_per_s"] == pytest.approx(2 * PER_STREAM, rel=0.3)
    with Ledger(cfg.ledger_path) as led:
        keys = led.conn.execute("SELECT name, revoked_ms FROM api_keys").fetchall()
    assert len(keys) == 1 and keys[0][0].startswith("bench-sat-") and keys[0][1] is not None


def test_bench_cli_table_with_its_progress_bar(bench_gateway):
    from typer.testing import CliRunner

    from spotctl.cli.main import app

    cfg, gw = bench_gateway
    result = CliRunner().invoke(app, ["--config", str(cfg.source), "bench", "sat", "--duration",
                                      "2s", "--step", "2s", "--mix", f"16:{OUTPUT}:1",
                                      "--gateway", gw.url])
    assert result.exit_code == 0, result.output
    assert "Capacity: at least" in result.stdout and "Recorded as bench #" in result.stdout
    with Ledger(cfg.ledger_path) as led:
        assert led.conn.execute("SELECT count(*) FROM bench_runs").fetchone()[0] == 1


def test_bench_bad_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    from tests.test_economics_compare import cli

    cfg = tmp_path / "spotctl.toml"
    cfg.write_text('[[tiers]]\nname = "sat"\nmodel = "m"\nendpoint = "http://127.0.0.1:9"\n')
    for args in (["--duration", "soon"], ["--mix", "1:2"], ["--ttft-slo", "-1s"],
                 ["--max-concurrency", "0"]):
        code, _out, err = cli(capsys, monkeypatch, "--config", str(cfg), "bench", "sat", *args)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (args, err)
    code, _out, err = cli(capsys, monkeypatch, "--config", str(cfg), "bench", "nope")
    assert code == 2 and "unknown tier" in err


def test_step_statistics_by_hand():
    # two requests, chunk arrivals at known times; the step runs from 0 to 10 s
    a = RequestSample(0.0, ttft_s=0.1, chunk_times=[0.1 + i for i in range(10)],
                      output_tokens=20, prompt_tokens=5, finished=True)
    b = RequestSample(5.0, ttft_s=0.3, chunk_times=[5.3, 6.3], error=None)
    step = summarise_step(2, 0.0, 10.0, [a, b])
    # measured part [2, 10]: a's chunks at 2.1 … 9.1 (8) and b's 2; 2 tokens per chunk (a's usage)
    assert step.output_tokens_per_s == pytest.approx((8 + 2) * 2 / 8.0)
    assert step.ttft_ms["p50"] == 100.0 and step.ttft_ms["p90"] == 300.0
    assert step.itl_ms["p50"] == 500.0  # 1 s between chunks of 2 tokens
    assert quantile([5, 1, 3, 2, 4], 0.9) == 5 and quantile([], 0.5) is None


def test_migration_keeps_bench_rows_as_integer_microseconds(tmp_path):
    """A ledger with a bench row from the REAL-milliseconds schema (v6) upgrades exactly."""
    import sqlite3

    from spotctl.ledger.db import _statements
    from spotctl.ledger.schema import MIGRATIONS

    path = tmp_path / "v6.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for step in range(6):
        for st in _statements(MIGRATIONS[step]):
            conn.execute(st)
    conn.execute("INSERT INTO meta(key, value) VALUES('schema_version', '6')")
    conn.execute("INSERT INTO bench_runs (tier, started_ms, finished_ms, output_tokens_per_s, "
                 "concurrency, slo_ttft_ms, slo_broken, ttft_p50_ms, ttft_p90_ms, itl_p99_ms, "
                 "requests, errors, prompt_tokens, output_tokens, mix_json, steps_json) VALUES "
                 "('t', 1, 2, 1234.5, 16, 2000, 1, 61.25, 153.4, 7.0004, 10, 0, 5, 6, '[]', '[]')")
    conn.execute("COMMIT")
    conn.close()
    with Ledger(path) as led:
        row = led.conn.execute("SELECT tier, output_tokens_per_s, ttft_p50_us, ttft_p90_us, "
                               "ttft_p99_us, itl_p99_us FROM bench_runs").fetchone()
    assert row == ("t", 1234.5, 61_250, 153_400, None, 7_000)
