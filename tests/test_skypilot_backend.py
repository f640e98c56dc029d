"""The SkyPilot backend: tasks validated by real SkyPilot (offline), behaviour against a fake of
our thin SDK wrapper that raises SkyPilot's real exception classes. No API server starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from spotctl.clock import ManualClock
from spotctl.config import parse_config
from spotctl.fleet.manager import FleetManager
from spotctl.fleet.skypilot import SkyPilotBackend
from spotctl.fleet.skypilot_task import task_config


@pytest.fixture(autouse=True)
def no_api_server(tmp_path, monkeypatch):
    monkeypatch.setenv("SKYPILOT_DISABLE_LOCAL_API_SERVER", "1")
    monkeypatch.setenv("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    yield
    assert not (tmp_path / "home" / ".sky" / "api_server").exists()


def sky_exceptions():
    import sky

    return sky.exceptions


def tier_cfg(tmp_path, **over):
    fields = {"name": "big", "model": "org/model-AWQ", "quantization": "awq_marlin",
              "accelerators": "H100:1", "capacity": "spot-first", "backend": "skypilot",
              "weights_bucket": "s3://w", "api_key_env": "ENGINE_KEY", "spot_retry_minutes": 5,
              **over}
    body = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in fields.items())
    return parse_config(f"[[tiers]]\n{body}\n", tmp_path / "spotctl.toml")


@pytest.mark.parametrize("capacity", ["spot-first", "spot", "on-demand"])
@pytest.mark.parametrize("quant", ["awq", "awq_marlin", "gptq", "gptq_marlin",
                                   "compressed-tensors", "fp8", "none"])
def test_every_task_passes_skypilots_own_validation(tmp_path, capacity, quant, monkeypatch):
    import sky

    monkeypatch.setenv("ENGINE_KEY", "engine-secret-value-123")
    cfg = tier_cfg(tmp_path, capacity=capacity, quantization=quant)
    conf = task_config(cfg.tiers[0])
    import copy

    task = sky.Task.from_yaml_config(copy.deepcopy(conf))  # it consumes its argument
    resources = list(task.resources)
    spots = [r.use_spot for r in resources]
    assert spots == {"spot-first": [True, False], "spot": [True], "on-demand": [False]}[capacity]
    assert conf["resources"]["autostop"]["down"] is True
    assert conf["file_mounts"]["/weights"]["mode"] == "MOUNT_CACHED"
    assert conf["envs"]["HF_HOME"].startswith("/weights") and "VLLM_CACHE_ROOT" in conf["envs"]
    assert ("--quantization" in conf["run"]) == (quant != "none")
    assert "engine-secret-value-123" not in str(conf)


class FakeSDK:
    """Our wrapper's surface; raises SkyPilot's real exceptions."""

    def __init__(self, spot_failures: int = 0):
        self.spot_failures = spot_failures
        self.launched: list[bool] = []
        self.clusters: dict[str, str] = {}
        self.stop_supported = False

    def launch(self, conf, cluster):
        exc = sky_exceptions()
        use_spot = conf["resources"].get("use_spot")
        if use_spot and self.spot_failures > 0:
            self.spot_failures -= 1
            raise exc.ResourcesUnavailableError("Failed to provision all possible launchable "
                                                "resources.")
        self.launched.append(bool(use_spot))
        self.clusters[cluster] = "UP"

    def status(self, cluster, refresh=True):
        if cluster not in self.clusters:
            return []
        return [type("R", (), {"status": f"ClusterStatus.{self.clusters[cluster]}",
                               "cloud": "aws", "region": "us-east-1"})()]

    def stop(self, cluster):
        if not self.stop_supported:
            raise sky_exceptions().NotSupportedError(
                "Stopping spot instances is currently not supported on AWS.")
        self.clusters[cluster] = "STOPPED"

    def start(self, cluster):
        if cluster not in self.clusters:
            raise sky_exceptions().ClusterDoesNotExist(f"Cluster {cluster!r} does not exist.")
        self.clusters[cluster] = "UP"

    def down(self, cluster):
        if cluster not in self.clusters:
            raise sky_exceptions().ClusterDoesNotExist(f"Cluster {cluster!r} does not exist.")
        del self.clusters[cluster]

    def endpoints(self, cluster, port):
        return {port: "1.2.3.4:8000"}


def _manager(tmp_path, sdk, clock, **over):
    cfg = tier_cfg(tmp_path, **over)
    backend = SkyPilotBackend(cfg, clock, sdk)
    return FleetManager(cfg, clock, {"skypilot": backend}), cfg.tiers[0]


def test_spot_is_retried_until_the_bound_then_on_demand(tmp_path):
    clock = ManualClock()
    sdk = FakeSDK(spot_failures=100)
    m, tier = _manager(tmp_path, sdk, clock)
    status = m.up(tier)
    assert status.capacity == "on-demand" and sdk.launched == [False]
    assert clock.monotonic() >= 5 * 60  # spot was retried for spot_retry_minutes
    events = [e for (e,) in __import__("spotctl.ledger.db", fromlist=["Ledger"]).Ledger(
        m.ledger_path).conn.execute("SELECT event FROM fleet_events ORDER BY id")]
    assert events == ["launching", "fell_back", "ready"]


def test_spot_succeeds_after_a_transient_shortage(tmp_path):
    clock = ManualClock()
    sdk = FakeSDK(spot_failures=2)
    m, tier = _manager(tmp_path, sdk, clock)
    assert m.up(tier).capacity == "spot" and sdk.launched == [True]


def test_hibernate_downs_spot_that_cannot_stop_and_wake_relaunches(tmp_path):
    clock = ManualClock()
    sdk = FakeSDK()
    m, tier = _manager(tmp_path, sdk, clock)
    m.up(tier)
    m.hibernate(tier)
    assert sdk.clusters == {}  # downed instead of stopped; weights stay in the bucket
    status = m.wake(tier)  # nothing to start: relaunch
    assert status.capacity == "spot" and len(sdk.launched) == 2


def test_errors_map_to_one_line_messages():
    from spotctl.fleet.skypilot import map_sky_error

    exc = sky_exceptions()
    err = map_sky_error(exc.ClusterNotUpError("Cluster 'x' not found.", cluster_status=None),
                        "big")
    assert "not up" in err.message and "\n" not in err.message
    assert map_sky_error(exc.NoCloudAccessError("none"), "big").exit_code == 2
    assert map_sky_error(exc.ClusterDoesNotExist("x"), "big").exit_code == 2
    # mapped by type, not by a word in the text
    assert "API server unreachable" in map_sky_error(
        exc.ApiServerConnectionError("http://127.0.0.1:46580"), "big").message
    assert "unreachable" not in map_sky_error(
        RuntimeError("Failed to upload files to API server."), "big").message


def test_importing_the_cli_and_backend_does_not_import_sky():
    code = ("import sys; import spotctl.cli.main, spotctl.fleet.skypilot, spotctl.fleet.manager;"
            " sys.exit(1 if 'sky' in sys.modules else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ})
    assert out.returncode == 0, out.stderr


def test_dry_run_shows_task_and_command_without_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_KEY", "engine-secret-value-123")
    cfg_path = tmp_path / "spotctl.toml"
    cfg_path.write_text(
        '[[tiers]]\nname = "big"\nmodel = "org/m"\nquantization = "fp8"\naccelerators = '
        '"L4:1"\nweights_bucket = "s3://b"\napi_key_env = "ENGINE_KEY"\n')
    out = subprocess.run([sys.executable, "-m", "spotctl", "--config", str(cfg_path), "up",
                          "big", "--dry-run"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ordered" in out.stdout and "down: true" in out.stdout
    assert "--quantization fp8" in out.stdout
    assert "engine-secret-value-123" not in out.stdout + out.stderr
