"""``spotctl up --dry-run``: what would be launched, without launching it."""

from __future__ import annotations

import json

from spotctl.config import TierConfig


def render_dry_run(tier: TierConfig) -> str:
    if tier.backend == "skypilot":
        from spotctl.fleet.skypilot_task import render_task

        return render_task(tier)
    from spotctl.billing.base import TIER_LABEL_PREFIX, resource_name_for
    from spotctl.engine.vllm_cmd import vllm_command

    argv, env = vllm_command(tier)
    body = {"name": resource_name_for(tier.name), "flavor_name": tier.flavor or "n3-H100x1",
            "labels": [f"{TIER_LABEL_PREFIX}{tier.name}"], "count": 1}
    return (f"# {tier.backend}: POST /core/virtual-machines\n{json.dumps(body, indent=2)}\n"
            f"# engine\n{' '.join(argv)}\n# env: {json.dumps(env, sort_keys=True)}")
