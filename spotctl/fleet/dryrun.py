"""``spotctl up --dry-run``: what would be launched, without launching it.

SkyPilot: the task YAML and the vLLM command. Hyperstack and the local cloud: discovery runs for
real (the environment, key pair, image, flavor and the weights volume are looked up, and a
missing one exits 2 naming it), then the exact requests ``up`` would send, in order, paths
relative to the API base: ``{"tier", "backend", "capacity", "flavor", "requests": [{"method",
"path", "body", "refs"?}...]}``. The engine's API key is shown as ``***``. Every body is valid
for the SDK's payload model as printed: an id the provider has not assigned yet is ``0`` in a
body and ``{vm_id}`` in a path, and that request's ``refs`` says what each stands for
(:meth:`HyperstackBackend.plan_up`).
"""

from __future__ import annotations

import json

from spotctl.config import Config, TierConfig
from spotctl.errors import NoSpotCapacity


def dry_run_plan(tier: TierConfig, cfg: Config, clock=None) -> dict:
    """The requests ``up`` would send for a Hyperstack / local-cloud tier."""
    from spotctl.clock import get_clock
    from spotctl.fleet.registry import build_backend

    backend = build_backend(tier.backend, cfg, clock or get_clock())
    capacity = "on-demand" if tier.capacity == "on-demand" else "spot"
    try:
        return backend.plan_up(tier, capacity)  # type: ignore[attr-defined]
    except NoSpotCapacity as exc:
        if tier.capacity != "spot-first":
            raise
        plan = backend.plan_up(tier, "on-demand")  # type: ignore[attr-defined]
        plan["note"] = f"no spot now ({exc.message}): up would retry spot, then fall back"
        return plan


def dry_run_json(tier: TierConfig, cfg: Config) -> dict:
    """``up --dry-run --json``: the plan (Hyperstack) or the task text (SkyPilot)."""
    if tier.backend == "skypilot":
        from spotctl.fleet.skypilot_task import render_task

        return {"tier": tier.name, "backend": "skypilot", "task": render_task(tier)}
    return dry_run_plan(tier, cfg)


def render_dry_run(tier: TierConfig, cfg: Config | None = None) -> str:
    if tier.backend == "skypilot":
        from spotctl.fleet.skypilot_task import render_task

        return render_task(tier)
    if cfg is None:
        raise ValueError("a Hyperstack dry run needs the configuration (discovery is real)")
    plan = dry_run_plan(tier, cfg)
    lines = [f"# {plan['backend']}: tier {plan['tier']} on {plan['flavor']} "
             f"({plan['capacity']}); requests in order:"]
    for r in plan["requests"]:
        body = dict(r["body"] or {})
        if "user_data" in body:
            body["user_data"] = f"<cloud-init script, {len(body['user_data'])} bytes>"
        lines.append(f"{r['method']} {r['path']}\n{json.dumps(body, indent=2)}")
        lines += [f"#   {where} = {what}" for where, what in (r.get("refs") or {}).items()]
    if plan.get("note"):
        lines.append(f"# {plan['note']}")
    return "\n".join(lines)
