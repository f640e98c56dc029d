"""`spotctl report` on a ledger that exercises every chart and table: rated capacity, spot and
on-demand VMs, a hibernation and a wake, a preemption and its on-demand fallback, a billing-dark
period, hosted prices and fixed costs. Rendered in headless Chromium (network blocked); the
page's content is checked, and a screenshot kept in bench/out/report.png for a person to look
at."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from spotctl.clock import from_ms, iso
from spotctl.ledger.db import Ledger
from spotctl.ledger.journal import FleetEntry, append_fleet_event
from spotctl.ledger.records import BillingSample, CumulativeKind, PollRecord, UsageRecord
from spotctl.ledger.writes import record_poll, record_usage
from tests.test_report import _chromium

MIN = 60_000
H0 = 1_700_002_800_000  # a clock hour
END = 360  # minutes: a six-hour window
DARK = range(240, 261)  # no poll at all: billing dark for 20 minutes
SHOT = Path(__file__).resolve().parents[1] / "bench" / "out" / "report.png"

PRICES = """
[[offers]]
name = "cheap 8B API"
model = "m"
input_usd_per_mtok = 0.03
output_usd_per_mtok = 0.05
source = "https://example.com/cheap"
as_of = "2026-11"

[[offers]]
name = "frontier API"
model = "*"
input_usd_per_mtok = 2.5
output_usd_per_mtok = 10
source = "https://example.com/frontier"
as_of = "2026-11"
"""


def _vm1(m: int) -> tuple[str, int] | None:
    """The spot VM: serving 0–60, hibernated 60–120, restoring 120–121, serving 121–180:10
    (preempted), gone from 181. (state, µ$ per minute from this sample on)"""
    if m < 60 or 121 <= m <= 180:
        return "ACTIVE", 24_000  # $1.44/h
    if m < 120:
        return "HIBERNATED", 2_000  # $0.12/h
    if m == 120:
        return "RESTORING", 10_000
    return None


def _vm2(m: int) -> tuple[str, int] | None:
    """The on-demand fallback: created at 182, ACTIVE from 184 ($2.40/h)."""
    if m < 182:
        return None
    return ("CREATING", 0) if m < 184 else ("ACTIVE", 40_000)


def build_day(led: Ledger) -> None:
    cum = {"vm:1": 0, "vm:2": 0, "volume:1": 0}
    last = {"vm:1": None, "vm:2": None}
    for m in range(0, END + 1):
        for rid, fn in (("vm:1", _vm1), ("vm:2", _vm2)):
            if m and last[rid] is not None:
                cum[rid] += last[rid][1]
            last[rid] = fn(m)
        if m:
            cum["volume:1"] += 100
        if m in DARK:
            continue
        samples = [BillingSample("hs", "a", "volume:1", "volume", H0 + m * MIN, cum["volume:1"],
                                 CumulativeKind.RESOURCE_TOTAL, "h", tier="big", created_ms=H0,
                                 state="available")]
        if last["vm:1"] is not None or m == 181:
            state = last["vm:1"][0] if last["vm:1"] is not None else "deleted"
            samples.append(BillingSample(
                "hs", "a", "vm:1", "vm", H0 + m * MIN, cum["vm:1"], CumulativeKind.RESOURCE_TOTAL,
                "h", rate_micros_per_h=(last["vm:1"] or (0, 0))[1] * 60 or None, tier="big",
                created_ms=H0, state=state, spot=True))
        if last["vm:2"] is not None:
            samples.append(BillingSample(
                "hs", "a", "vm:2", "vm", H0 + m * MIN, cum["vm:2"], CumulativeKind.RESOURCE_TOTAL,
                "h", rate_micros_per_h=2_400_000, tier="big", created_ms=H0 + 182 * MIN,
                state=last["vm:2"][0], spot=False))
        record_poll(led, PollRecord("hs", H0 + m * MIN - 50, H0 + m * MIN, "ok"), samples)
    for t, ev, cap, rid in ((-5 * MIN, "ready", "spot", "vm:1"),
                            (60 * MIN, "hibernated", "spot", "vm:1"),
                            (120 * MIN, "waking", "spot", "vm:1"),
                            (121 * MIN, "woke", "spot", "vm:1"),
                            (180 * MIN + 10_000, "preempted", "spot", "vm:1"),
                            (182 * MIN, "fell_back", "on-demand", "vm:2"),
                            (185 * MIN, "ready", "on-demand", "vm:2")):
        append_fleet_event(led, FleetEntry(H0 + t, "big", ev, capacity=cap, resource_id=rid,
                                           phases={"restore": 40.0, "engine": 20.0}
                                           if ev == "woke" else {}))
    rows = []
    # busy mornings, a quiet spell: requests every 20 s, 10 s or 40 s, 1,000 tokens each
    for lo, hi, every_s in ((0, 50, 20), (120, 178, 10), (186, 240, 40), (261, 350, 15)):
        for i, ms in enumerate(range(H0 + lo * MIN, H0 + hi * MIN, every_s * 1000)):
            done = ms + 4_000 if lo != 120 else max(ms, H0 + 121 * MIN) + 4_000
            rows.append(UsageRecord(f"r{lo}-{i}", ms, done, "ok", tier="big",
                                    prompt_tokens=300, completion_tokens=1000))
    rows += [UsageRecord(f"x{i}", H0 + (181 + i) * MIN, H0 + (181 + i) * MIN + 5, "no_upstream",
                         tier="big") for i in range(3)]
    record_usage(led, rows)


def workspace(tmp_path: Path) -> Path:
    cfg = tmp_path / "spotctl.toml"
    cfg.write_text('[[providers]]\nname = "hs"\nkind = "hyperstack"\napi_key_env = "K"\n'
                   '[[tiers]]\nname = "big"\nmodel = "m"\nprovider = "hs"\n'
                   'rated_output_tokens_per_s = 500\nidle_minutes = 60\n'
                   'capacity = "spot-first"\n'
                   '[[fixed_costs]]\nname = "gateway VPS"\nusd_per_month = 730.5\n')
    (tmp_path / "hosted-prices.toml").write_text(PRICES)
    with Ledger(tmp_path / "spotctl.db") as led:
        build_day(led)
    return cfg


def _svg(dom: str, chart: str) -> str:
    return dom.split(f'id="{chart}"', 1)[1].split("</svg>", 1)[0]


def test_report_shows_every_chart_and_table(tmp_path):
    cfg = workspace(tmp_path)
    out = tmp_path / "report.html"
    r = subprocess.run([sys.executable, "-m", "spotctl", "--config", str(cfg), "report",
                        "--since", iso(from_ms(H0)), "--until", iso(from_ms(H0 + END * MIN)),
                        "--bucket", "15m", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1)
                      .replace("<\\/", "</"))
    # the page's data: utilisation known per serving bucket, every capacity billed, the dark
    # period and the fleet events
    assert data["has_capacity"] and sum(1 for _, u in data["util"] if u) >= 16
    for cat in ("spot", "on_demand", "hibernated", "storage"):
        assert any(v for _, v in data["spend"][cat]), cat
    assert len(data["dark"]) == 1
    # the preemption and the fallback 2 min later share one marker (labels never overprint)
    assert [e["label"] for e in data["events"]] == ["hibernated", "woke",
                                                    "preempted, fell back"]
    # tables: a wake, a preemption, hosted offers, idle policies, the fully loaded line
    wakes = page.split("<h2>Wakes</h2>", 1)[1].split("<h2>", 1)[0]
    assert "none in this window" not in wakes and "restore 40 s" in wakes
    pre = page.split("<h2>Preemptions", 1)[1].split("<h2>", 1)[0]
    assert "none in this window" not in pre and "Net spot savings (estimate, not spend): $" in pre
    hosted = page.split("<h2>Hosted APIs", 1)[1].split("<h2>", 1)[0]
    assert "cheap 8B API" in hosted and "frontier API" in hosted
    # $10.09 self-hosted against $0.06: a multiple, not "-18,183.3 %"; -0.4 % stays a percentage
    assert "none: 183× the API&#x27;s price" in hosted and "-0.4 %" in hosted
    advise = page.split("<h2>Idle policy", 1)[1].split("<h2>", 1)[0]
    assert "60 min (current)" in advise and "error" in advise and "never" in advise
    assert advise.count("<tr>") >= 12
    assert "Fully loaded" in page and "gateway VPS" in page

    dom = _chromium(tmp_path, "--dump-dom", out.as_uri()).stdout
    spend = _svg(dom, "spend-chart")
    # stacked by capacity: a legend entry and bars in each capacity's colour
    for label in ("spot", "on-demand", "hibernated", "storage (volumes)"):
        assert f">{label}</text>" in spend, label
    for colour in ("#2f7ed8", "#d9822b", "#8e6bbf", "#7a9a52"):
        assert colour in spend.lower(), colour
    # dark period shaded, events marked
    assert "rgb(220,60,50)" in spend.replace(" ", "") or "rgba(220,60,50" in spend.replace(" ", "")
    for ev in ("hibernated", "woke", "preempted, fell back"):
        assert f">{ev}</text>" in spend, ev
    usage = _svg(dom, "usage-chart")
    assert ">utilisation</text>" in usage and "#b03a8e" in usage.lower()
    assert re.search(r">\d+(\.\d+)? %</text>", usage)  # the utilisation axis, in percent
    band = _svg(dom, "band-chart")
    assert "P50 $" in band and "$/Mtok output" in band

    SHOT.parent.mkdir(parents=True, exist_ok=True)
    shot = tmp_path / "report.png"
    _chromium(tmp_path, "--window-size=1100,4200", f"--screenshot={shot}", out.as_uri())
    assert shot.stat().st_size > 50_000
    shutil.copy(shot, SHOT)


def test_report_reads_one_snapshot_and_takes_the_shared_window_options(tmp_path, monkeypatch):
    """cost, compare and advise in the page come from one read of the ledger (they describe the
    same moment); the window is --window/--since/--until as for cost and compare."""
    from typer.testing import CliRunner

    from spotctl.cli.main import app
    from spotctl.ledger import queries
    from tests.test_cli_shared_options import _options

    assert {"window", "since", "until"} <= set(_options("report"))
    assert _options("report")["window"].opts == ["--window", "-w"]
    cfg = workspace(tmp_path)
    reads = []
    real = queries.read_window
    monkeypatch.setattr(queries, "read_window", lambda *a, **k: reads.append(k) or real(*a, **k))
    out = tmp_path / "r.html"
    until = iso(from_ms(H0 + END * MIN))
    r = CliRunner().invoke(app, ["--config", str(cfg), "report", "--window", "6h", "--until",
                                 until, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert len(reads) == 1 and reads[0]["arrivals"] and reads[0]["closures"]
    page = out.read_text()
    assert "2023-11-14 23:00 → 2023-11-15 05:00 UTC" in page
    # the page's advise is what `advise` says for the same window
    r = CliRunner().invoke(app, ["--config", str(cfg), "advise", "--window", "6h", "--until",
                                 until, "--json"])
    advised = json.loads(r.stdout)["tiers"][0]
    bt = advised["backtest"]
    assert f"predicted ${float(bt['predicted_spend_usd']):,.2f}" in page
    # --window and --since together: a usage error, as for cost
    r = CliRunner().invoke(app, ["--config", str(cfg), "report", "--window", "6h", "--since",
                                 iso(from_ms(H0)), "--out", str(out)])
    assert r.exit_code == 2
