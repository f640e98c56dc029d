"""`spotctl report`: a self-contained HTML file, rendered by a real headless browser."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.test_cost_cli import example  # noqa: F401 - the example-ledger fixture

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_is_self_contained_and_renders(example, tmp_path):  # noqa: F811
    out = tmp_path / "report.html"
    r = subprocess.run([sys.executable, "-m", "spotctl", "--config", str(example), "report",
                        "--window", "24h", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert "<svg" in page and "Observability timeline" in page and "Per tier" in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert "degraded" in page  # the example scenario's dark minutes are shown, not hidden
    if CHROMIUM is None:
        pytest.fail("chromium is missing: run `make test` (installs Debian's chromium)")
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1000,1800",
                    f"--screenshot={shot}", out.as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000  # a real page, not a blank one
