"""`spotctl report`: a self-contained HTML file, rendered by a real headless browser with the
network blocked (so the charts prove they need nothing from outside)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.test_cost_cli import example  # noqa: F401 - the example-ledger fixture

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHARTS = ("spend-chart", "usage-chart", "band-chart")


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.fail("chromium is missing: run `make test` (installs Debian's chromium)")
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-quic", "--no-first-run", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync",
                           "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing can be fetched
                           f"--user-data-dir={tmp_path / 'chrome'}",
                           "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=180)


def test_report_is_self_contained_and_renders(example, tmp_path):  # noqa: F811
    out = tmp_path / "report.html"
    r = subprocess.run([sys.executable, "-m", "spotctl", "--config", str(example), "report",
                        "--window", "24h", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    for title in ("Spend over time, by capacity", "Tokens and utilisation over time",
                  "Cost per million output tokens, and the band", "Per tier", "Wakes",
                  "Preemptions and what spot saved", "Hosted APIs", "Idle policy",
                  "Fleet events", "Observability timeline"):
        assert title in page, title
    # nothing is loaded from elsewhere: no external script, style, image or font
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(http" not in page
    assert "degraded" in page or "lost" in page  # the scenario's dark minutes are shown
    dom = _chromium(tmp_path, "--dump-dom", out.as_uri()).stdout
    for chart in CHARTS:  # ECharts drew each chart (SVG renderer) with the network blocked
        block = dom.split(f'id="{chart}"', 1)[1][:200_000]
        svg = block.split("</svg>", 1)[0]
        assert "<svg" in svg[:5000] and svg.count("<text") > 5, chart  # axes were labelled
    assert "USD per bucket" in dom and "time (UTC)" in dom and "P10–P90 band" in dom
    shot = tmp_path / "report.png"
    _chromium(tmp_path, "--window-size=1100,2400", f"--screenshot={shot}", out.as_uri())
    assert shot.exists() and shot.stat().st_size > 50_000  # a real page, not a blank one
