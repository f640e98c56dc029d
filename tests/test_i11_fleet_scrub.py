"""Issue 11, item 8: a provider's error text that carries a key never reaches the journal.

A real FleetManager wakes a tier whose machine is hibernated on the local cloud; the provider
refuses the restore with a message that echoes secrets (the provider's own key, and the engine's
key from the VM's user_data, which the provider client does not know). The journal entry
(``spotctl events --json``), the ledger file's bytes and the error raised to the caller carry
neither key. SkyPilot's exceptions are mapped to one line the same way.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from spotctl.cli.main import app
from spotctl.errors import ProviderError, SpotctlError
from spotctl.fleet.base import TierState
from spotctl.fleet.localcloud import LocalCloudBackend
from spotctl.fleet.manager import FleetManager
from tests.fixtures_localcloud import LOCALCLOUD_KEY
from tests.fleet_helpers import lc_config

ENGINE_KEY = "eng-key-Zq81vX0pLm"  # short: no generic pattern would catch it, only its value


class RefusingWake:
    """The real local-cloud backend, whose restore the provider refuses with a chatty error."""

    def __init__(self, real) -> None:
        self.real = real
        self.name = real.name

    def __getattr__(self, name):
        return getattr(self.real, name)

    def wake(self, tier, progress=None):
        raise ProviderError(f"restore refused: bad user_data (SPOTCTL_ENGINE_KEY={ENGINE_KEY}); "
                            f"request was authorized with api_key {LOCALCLOUD_KEY}",
                            provider="lc")


def test_a_wake_failure_journals_no_key(localcloud, tmp_path, monkeypatch):
    lc = localcloud
    monkeypatch.setenv("I11_ENGINE_KEY", ENGINE_KEY)
    cfg = lc_config(lc, tmp_path / "spotctl.toml", extra=(
        '[[tiers]]\nname = "big"\nmodel = "tiny"\nbackend = "localcloud"\nprovider = "lc"\n'
        'capacity = "on-demand"\nflavor = "n3-A100x1"\napi_key_env = "I11_ENGINE_KEY"\n'))
    tier = cfg.tiers[0]
    cloud = lc.handle.cloud
    vm = cloud.create_vm("spotctl-big", "n3-A100x1", labels=["spotctl-tier=big"])
    lc.clock.advance(120)
    cloud.hibernate(vm.id)
    lc.clock.advance(60)
    manager = FleetManager(cfg, lc.clock,
                           {"localcloud": RefusingWake(LocalCloudBackend(cfg, lc.clock))})
    assert manager.status(tier).state == TierState.HIBERNATED

    with pytest.raises(SpotctlError) as raised:
        manager.wake(tier)
    for key in (ENGINE_KEY, LOCALCLOUD_KEY):
        assert key not in raised.value.message and key not in str(raised.value)
    assert "restore refused" in raised.value.message  # the rest of the message stays

    result = CliRunner().invoke(app, ["-c", str(tmp_path / "spotctl.toml"), "events", "--json"])
    assert result.exit_code == 0, result.output
    failed = [e for e in json.loads(result.stdout)["events"] if e["event"] == "failed"]
    assert failed and "restore refused" in failed[-1]["detail"]
    for key in (ENGINE_KEY, LOCALCLOUD_KEY):
        assert key not in result.stdout
        for f in tmp_path.glob("spotctl.db*"):  # the ledger and its WAL
            assert key.encode() not in f.read_bytes(), f


def test_skypilot_errors_are_scrubbed(monkeypatch):
    from spotctl.fleet.skypilot import map_sky_error

    class ResourcesUnavailableError(Exception):
        pass

    monkeypatch.setenv("I11_SKY_KEY", "rp_Q9x7Lk2")
    exc = ResourcesUnavailableError("RunPod refused: Authorization: Bearer rp_Q9x7Lk2 "
                                    "(api_key=rp_Q9x7Lk2)")
    out = map_sky_error(exc, "big", secrets=("rp_Q9x7Lk2",))
    assert "rp_Q9x7Lk2" not in out.message and "no capacity: RunPod refused" in out.message
    generic = map_sky_error(RuntimeError("token=abcdEFGH1234 leaked"), "big")
    assert "abcdEFGH1234" not in generic.message
