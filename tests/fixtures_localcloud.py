"""pytest plugin: the local cloud on a real loopback port, driven by a ManualClock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest

from spotctl.clock import ManualClock, set_clock
from spotctl.localcloud.runner import LocalCloudHandle, serve_in_thread
from spotctl.localcloud.simclock import ManualControl

LOCALCLOUD_KEY = "lc-test-key-7f3a9c"


@dataclass
class LocalCloudFixture:
    handle: LocalCloudHandle
    clock: ManualClock
    api_key: str
    ledger_section: str | None = None  # [ledger] of the test's backend (tests/fixtures_pg.py)

    @property
    def base_url(self) -> str:
        return self.handle.base_url

    def control(self, method: str, path: str, **body) -> dict:
        r = httpx.request(method, f"{self.handle.control_url}{path}", json=body or None,
                          timeout=10)
        r.raise_for_status()
        return r.json()

    def config_toml(self, ledger: str | None = None, extra: str = "") -> str:
        section = (f'[ledger]\npath = "{ledger}"\n' if ledger is not None else
                   self.ledger_section or '[ledger]\npath = "spotctl.db"\n')
        return (f'{section}[billing]\ntimeout_s = 2\n'
                f'[[providers]]\nname = "lc"\nkind = "localcloud"\n'
                f'api_key_env = "LC_KEY"\nbase_url = "{self.base_url}"\n{extra}')


def _serve(monkeypatch, launcher=None):
    clock = ManualClock(datetime(2026, 11, 1, tzinfo=UTC))
    set_clock(clock)
    monkeypatch.setenv("LC_KEY", LOCALCLOUD_KEY)
    handle = serve_in_thread(clock, LOCALCLOUD_KEY, control=ManualControl(clock),
                             dark_hang_s=3.0, launcher=launcher)
    return LocalCloudFixture(handle, clock, LOCALCLOUD_KEY)


@pytest.fixture
def localcloud(monkeypatch, request):
    """Billing-only: VMs run no engine. A test that also uses ``ledger_backend`` runs on SQLite
    and on PostgreSQL: ``config_toml()`` then names that backend's ledger."""
    lc = _serve(monkeypatch)
    if "ledger_backend" in request.fixturenames:
        lc.ledger_section = request.getfixturevalue("ledger_toml")
    yield lc
    lc.handle.stop()
    set_clock(None)


@pytest.fixture
def localcloud_engines(monkeypatch, tmp_path):
    """VMs boot from their user_data as real processes (spotctl's starts `vllm serve`, which
    the VM's shim runs as the built-in engine with the same arguments)."""
    from spotctl.localcloud.vm import VmRunner

    lc = _serve(monkeypatch, VmRunner(tmp_path / "localcloud"))
    yield lc
    lc.handle.stop()
    set_clock(None)
