"""`spotctl cost`, `price`, `ledger check` and `example` as whole processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spotctl.ledger.db import Ledger


def spotctl(*args: str, cwd: Path | None = None, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "spotctl", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ex") / "ws"
    out = spotctl("example", "--dir", str(d))
    assert out.returncode == 0, out.stderr
    assert "EXAMPLE DATA" in out.stdout
    return d / "spotctl.toml"


def test_cost_json_has_the_documented_fields(example):
    out = spotctl("--config", str(example), "cost", "--window", "24h", "--json")
    assert out.returncode == 0, out.stderr
    js = json.loads(out.stdout)
    for key in ("window", "spend_usd", "spend_complete", "prompt_tokens", "output_tokens",
                "usd_per_mtok_output", "usd_per_mtok_total", "band", "idle_spend_usd",
                "observability", "tiers"):
        assert key in js
    assert set(js["band"]) == {"p10", "p50", "p90"}
    assert set(js["observability"]) >= {"status", "dark_seconds", "last_sample_at"}
    assert js["window"]["start"].endswith("Z") and js["window"]["end"].endswith("Z")
    # the scenario's dark 25 minutes show as a degraded window, its spend still exact
    assert js["observability"]["status"] == "degraded"
    assert js["spend_complete"] is True
    tier = js["tiers"][0]
    assert tier["name"] == "llama-70b" and float(tier["spend_usd"]) > 0


def test_cost_bad_window_is_one_line_exit_2(example):
    out = spotctl("--config", str(example), "cost", "--window", "24x")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "24h" in out.stderr


def test_fail_over_and_fail_stale_exit_codes(example):
    assert spotctl("--config", str(example), "cost", "--fail-over", "0.01",
                   "--json").returncode == 3
    assert spotctl("--config", str(example), "cost", "--fail-over", "100000",
                   "--json").returncode == 0
    # degraded observability (gaps) is not ok
    assert spotctl("--config", str(example), "cost", "--fail-stale", "--json").returncode == 4


def test_price_shows_cost_and_price_bands(example):
    out = spotctl("--config", str(example), "price", "--margin", "0.5", "--json")
    assert out.returncode == 0, out.stderr
    js = json.loads(out.stdout)
    total = next(t for t in js["tiers"] if t["name"] == "total")
    from decimal import Decimal

    assert Decimal(total["price_band"]["p50"]) == (Decimal(total["cost_band"]["p50"]) * 2
                                                   ).quantize(Decimal("0.0001"))
    assert spotctl("--config", str(example), "price", "--margin", "1.5").returncode == 2


def test_ledger_check_passes_then_fails_on_a_broken_invariant(example, tmp_path):
    assert spotctl("--config", str(example), "ledger", "check").returncode == 0
    broken = tmp_path / "b"
    broken.mkdir()
    import shutil

    shutil.copy(example.parent / "spotctl.db", broken / "spotctl.db")
    (broken / "spotctl.toml").write_text(example.read_text())
    led = Ledger(broken / "spotctl.db")
    led.conn.execute("UPDATE usage_minutes SET completion_tokens = completion_tokens + 1 "
                     "WHERE minute_ms = (SELECT min(minute_ms) FROM usage_minutes)")
    led.close()
    out = spotctl("--config", str(broken / "spotctl.toml"), "ledger", "check", "--json")
    assert out.returncode == 1
    js = json.loads(out.stdout)
    failed = [c["name"] for c in js["checks"] if not c["ok"]]
    # the minute rollup no longer matches its rows, nor the hourly rollup built from it
    assert failed == ["usage rollup agrees with usage rows",
                      "hourly usage rollup agrees with the minute rollup"]


def test_missing_ledger_and_bad_config_are_exit_2(tmp_path):
    cfg = tmp_path / "spotctl.toml"
    cfg.write_text("[billing]\n")
    out = spotctl("--config", str(cfg), "cost")
    assert out.returncode == 2 and "no ledger" in out.stderr
    cfg.write_text("[billing]\npoll_interval_s = 'soon'\n")
    out = spotctl("--config", str(cfg), "cost")
    assert out.returncode == 2 and "billing.poll_interval_s" in out.stderr
    assert "Traceback" not in out.stderr


def test_cost_plot_draws_the_buckets_without_colour_codes(example):
    out = spotctl("--config", str(example), "cost", "--window", "24h", "--plot")
    assert out.returncode == 0, out.stderr
    assert "spend per bucket" in out.stdout and "P10/P50/P90 lines" in out.stdout
    assert "bucket start (UTC)" in out.stdout
    assert "\x1b[" not in out.stdout  # not a terminal: plain text
