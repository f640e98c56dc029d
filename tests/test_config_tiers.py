"""Tiers are a union by backend: a key that does not belong to the tier's backend is an error
(one line naming the key and the backend), never silently ignored (issue 12 §1)."""

from __future__ import annotations

import pytest

from spotctl.config import FixedTier, HyperstackTier, LocalCloudTier, SkyPilotTier, parse_config
from spotctl.errors import ConfigError, ExitCode


def tier(body: str):
    return parse_config(f'[[tiers]]\nname = "t"\nmodel = "m"\n{body}\n', "x.toml").tiers[0]


@pytest.mark.parametrize("body,cls", [
    ("", SkyPilotTier),
    ('backend = "skypilot"\nclouds = ["aws"]', SkyPilotTier),
    ('backend = "hyperstack"\nflavor = "n3-H100x1"', HyperstackTier),
    ('backend = "localcloud"\nkeypair = "k"', LocalCloudTier),
    ('endpoint = "http://10.0.0.5:8000"', FixedTier),
    ('backend = "fixed"\nendpoint = "http://10.0.0.5:8000"', FixedTier),
])
def test_each_backend_parses_to_its_own_type(body, cls):
    t = tier(body)
    assert type(t) is cls
    assert t.fleet_managed is (cls is not FixedTier)


@pytest.mark.parametrize("body,key,backend", [
    ('flavor = "n3-H100x1"', "flavor", "skypilot"),  # was silently ignored before
    ('backend = "hyperstack"\nclouds = ["aws"]', "clouds", "hyperstack"),
    ('backend = "hyperstack"\nweights_bucket = "s3://w"', "weights_bucket", "hyperstack"),
    ('endpoint = "http://h:1"\nidle_minutes = 5', "idle_minutes", "fixed"),
    ('endpoint = "http://h:1"\ncapacity = "spot"', "capacity", "fixed"),
])
def test_a_key_of_another_backend_is_an_error_naming_it(body, key, backend):
    with pytest.raises(ConfigError) as err:
        tier(body)
    assert err.value.exit_code == ExitCode.USAGE
    msg = err.value.message
    assert "\n" not in msg and f"tiers[0:t].{key}: unknown key" in msg and repr(backend) in msg


def test_an_unknown_backend_and_a_fixed_tier_without_endpoint_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"tiers\[0:t\]\.backend: expected one of skypilot, "
                                          r"hyperstack, localcloud, fixed, found 'gcp'"):
        tier('backend = "gcp"')
    with pytest.raises(ConfigError, match=r"tiers\[0:t\]\.endpoint: expected field required, "
                                          r"found missing"):
        tier('backend = "fixed"')


def test_a_skypilot_weights_volume_is_mounted_and_passes_skypilots_validation():
    from spotctl.fleet.skypilot_task import task_config

    t = tier('backend = "skypilot"\nclouds = ["runpod"]\nweights_volume = "qwen-weights"')
    import copy

    import sky

    from spotctl.engine.vllm_cmd import WEIGHTS_MOUNT

    task = task_config(t)
    assert task["volumes"] == {WEIGHTS_MOUNT: "qwen-weights"}
    assert "file_mounts" not in task
    # SkyPilot's own parser accepts it (it consumes the dict: give it a copy)
    assert sky.Task.from_yaml_config(copy.deepcopy(task)).volumes == {WEIGHTS_MOUNT: "qwen-weights"}
