"""A tier as a SkyPilot task (a YAML-shaped dict). Pure: no import of ``sky`` here.

- resources ``ordered``: spot then on-demand for ``spot-first``; accelerators inside each item;
- ``autostop: {idle_minutes, down: true}``: a safety net, so a dead spotctl cannot burn money;
- the weights bucket mounted ``MOUNT_CACHED`` at ``/weights``, used as ``HF_HOME`` and
  ``VLLM_CACHE_ROOT``, so a relaunch reads weights from the bucket's cache, not the hub;
- ``setup`` installs a pinned vLLM; ``run`` is the vLLM command line from ``engine.vllm_cmd``;
- no secret value: the engine key is a SkyPilot secret filled from the environment at launch.
"""

from __future__ import annotations

from spotctl.config import TierConfig
from spotctl.engine.vllm_cmd import WEIGHTS_MOUNT, shell_command
from spotctl.naming import resource_name_for

SAFETY_AUTODOWN_MIN_IDLE = 60


def cluster_name(tier: TierConfig) -> str:
    return resource_name_for(tier.name)


def task_config(tier: TierConfig) -> dict:
    base: dict = {}
    if tier.accelerators:
        base["accelerators"] = tier.accelerators
    uses = {"spot-first": [True, False], "spot": [True], "on-demand": [False]}[tier.capacity]
    items = []
    clouds = tier.clouds or [None]
    for use_spot in uses:
        for cloud in clouds:
            item = {**base, "use_spot": use_spot}
            if cloud:
                item["cloud"] = cloud
            items.append(item)
    resources: dict = {
        "ports": [tier.engine_port] if tier.exposure == "public" else [],
        "autostop": {"idle_minutes": max(tier.idle_minutes * 4, SAFETY_AUTODOWN_MIN_IDLE),
                     "down": True},
    }
    if len(items) == 1:
        resources.update(items[0])
    else:
        resources["ordered"] = items
    if not resources["ports"]:
        resources.pop("ports")
    if len(tier.regions) == 1:
        resources["region"] = tier.regions[0]
    envs = {"HF_HOME": f"{WEIGHTS_MOUNT}/hf", "VLLM_CACHE_ROOT": f"{WEIGHTS_MOUNT}/vllm-cache"}
    task: dict = {
        "name": cluster_name(tier),
        "resources": resources,
        "envs": envs,
        "setup": (f"pip install --quiet 'vllm=={tier.vllm_version}' hf_transfer"),
        "run": shell_command(tier),
    }
    if tier.api_key_env:
        task["secrets"] = {tier.api_key_env: None}  # filled from the environment at launch
    if tier.weights_bucket:
        task["file_mounts"] = {WEIGHTS_MOUNT: {"source": tier.weights_bucket,
                                               "mode": "MOUNT_CACHED"}}
    elif tier.weights_volume:
        # a SkyPilot volume (0.14.1: runpod-network-volume or Kubernetes PVCs only, created
        # with `sky volumes apply`): the weights outlive the cluster where buckets cannot mount
        task["volumes"] = {WEIGHTS_MOUNT: tier.weights_volume}
    return task


def render_task(tier: TierConfig) -> str:
    import yaml

    from spotctl.engine.vllm_cmd import vllm_command

    argv, _env = vllm_command(tier)
    return (f"# SkyPilot task for tier {tier.name} (not launched: --dry-run)\n"
            + yaml.safe_dump(task_config(tier), sort_keys=False)
            + "# vLLM command\n" + " ".join(argv) + "\n")
