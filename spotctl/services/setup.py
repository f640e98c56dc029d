"""First contact: a commented starter ``spotctl.toml`` and the effective configuration.

``spotctl init`` writes the starter for one provider (never over an existing file unless asked);
``spotctl config show`` prints what spotctl will actually use: the file's values with every
default filled in. The configuration never holds a secret, only the *name* of the environment
variable that does, and that name is all either command shows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from spotctl.config import Config
from spotctl.errors import UsageError


@dataclass(frozen=True)
class Starter:
    kind: str
    key_env: str
    about: str  # what this provider's billing gives, in one or two comment lines
    tier: str  # the [[tiers]] block, already commented


_HYPERSTACK_TIER = """\
# The VM is named spotctl-<tier>: that is how billing finds it. Clients send served_model_name.
[[tiers]]
name = "llama-70b"
model = "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"
served_model_name = "llama-70b"
quantization = "awq_marlin"
accelerators = "H100:1"
backend = "hyperstack"           # native: Hyperstack is not a SkyPilot cloud
provider = "{name}"
flavor = "n3-H100x1"
capacity = "on-demand"           # no spot market here; hibernation is the saving
idle_minutes = 15                # hibernate after this long without requests
weights_volume = "llama-70b-weights"
"""

_SKYPILOT_TIER = """\
# The VM is named spotctl-<tier>: that is how billing finds it. Clients send served_model_name.
[[tiers]]
name = "{tier}"
model = "{model}"
served_model_name = "{tier}"
quantization = "{quant}"
accelerators = "{acc}"
backend = "skypilot"             # needs the fleet extra: pip install 'spotctl[fleet]'
clouds = ["{cloud}"]
provider = "{name}"
capacity = "{capacity}"
spot_retry_minutes = 30          # spot-first: keep trying spot this long before on-demand
idle_minutes = 15                # hibernate after this long without requests
"""

# kind, key variable, what its billing gives, and a SkyPilot tier: name, model, quantization,
# accelerators, capacity
_SKYPILOT_STARTERS = [
    ("runpod", "RUNPOD_API_KEY",
     "an account-level running total; per-pod rates attribute it to tiers.",
     "qwen-32b", "Qwen/Qwen2.5-32B-Instruct-AWQ", "awq_marlin", "A100-80GB:1", "spot-first"),
    ("vast", "VAST_API_KEY",
     "account level only, from credit deltas and the invoices feed (top-ups).",
     "llama-8b", "neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8", "fp8", "RTX4090:1", "spot-first"),
    ("lambda", "LAMBDA_API_KEY",
     "NO billing API: estimate-only samples (listed rate x time), never mixed into spend.",
     "mixtral", "TheBloke/Mixtral-8x7B-Instruct-v0.1-GPTQ", "gptq_marlin", "A100:1",
     "on-demand"),
]

STARTERS: dict[str, Starter] = {
    "hyperstack": Starter(
        "hyperstack", "HYPERSTACK_API_KEY",
        "per-resource running totals (total_bill) every minute: invoice-true per VM and volume.",
        _HYPERSTACK_TIER),
    **{kind: Starter(kind, key_env, about, _SKYPILOT_TIER.format(
        tier=tier, model=model, quant=quant, acc=acc, cloud=kind, capacity=capacity,
        name="{name}"))
       for kind, key_env, about, tier, model, quant, acc, capacity in _SKYPILOT_STARTERS},
    "localcloud": Starter(
        "localcloud", "SPOTCTL_LOCALCLOUD_KEY",
        "the embedded local cloud (spotctl localcloud serve): Hyperstack's API on loopback.",
        """\
# The VM is named spotctl-<tier>: that is how billing finds it.
[[tiers]]
name = "tiny"
model = "tiny"
backend = "localcloud"
provider = "{name}"
flavor = "n3-H100x1"
capacity = "spot-first"
idle_minutes = 15
"""),
}
PROVIDER_KINDS = tuple(STARTERS)

_HEADER = """\
# spotctl.toml, written by `spotctl init --provider {kind}`. Edit freely; `spotctl config show`
# prints what spotctl will use (defaults filled in), `spotctl doctor` checks it all.
#
# Secrets never go in this file: each provider names the environment variable holding its key.
#   export {key_env}=...
# Billing here: {about}

[ledger]
path = "spotctl.db"              # beside this file; created 0600 on the first write

[billing]
poll_interval_s = 60             # run `spotctl poll-billing` from cron every minute, or the daemon
stale_after_s = 180              # no good poll for this long: billing is dark, the gateway closes
# gap_after_s = 150              # a longer gap between good polls degrades the window
# timeout_s = 10                 # provider API timeout

[[providers]]
name = "{name}"
kind = "{kind}"
api_key_env = "{key_env}"
{base_url}
"""

_FOOTER = """
[budget]
daily_usd = 50                   # the gateway fails closed once the day's spend reaches this
timezone = "UTC"                 # the budget day's time zone

[gateway]
listen = "127.0.0.1:8080"        # OpenAI SDK: base_url=http://127.0.0.1:8080/v1
# wake_timeout_s = 600           # how long a request may wait for a hibernated tier
"""


def starter_config(kind: str) -> str:
    """The commented starter ``spotctl.toml`` for one provider kind."""
    try:
        st = STARTERS[kind]
    except KeyError:
        raise UsageError(f"unknown provider kind {kind!r} (known: {', '.join(PROVIDER_KINDS)})"
                         ) from None
    base_url = ('base_url = "http://127.0.0.1:8790/v1"  # where `spotctl localcloud serve` '
                'listens' if kind == "localcloud" else
                "# base_url = \"https://...\"     # default: the provider's real API")
    head = _HEADER.format(kind=kind, key_env=st.key_env, about=st.about, name=kind,
                          base_url=base_url)
    return head + "\n" + st.tier.format(name=kind) + _FOOTER


def write_starter(path: Path, kind: str, *, force: bool = False) -> Path:
    """Write the starter to ``path`` (0600). An existing file is kept unless ``force``."""
    text = starter_config(kind)
    if path.exists() and not force:
        raise UsageError(f"{path} exists; not overwriting it (--force replaces it)")
    if path.is_dir():
        raise UsageError(f"{path} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)  # all or nothing: never a half-written config
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def effective_config(cfg: Config) -> dict[str, Any]:
    """The configuration spotctl will use, every default filled in, as plain JSON values.

    ``ledger.path`` is the resolved file; ``source`` is the file read (``None``: no file was
    found, all defaults). Keys are only ever named by their environment variable.
    """
    data = cfg.model_dump(mode="json")
    data["ledger"]["path"] = str(cfg.ledger_path)
    return {"source": str(cfg.source) if cfg.source else None, **data}


def effective_toml(cfg: Config) -> str:
    """:func:`effective_config` as TOML, in the file's section order. Unset optional values are
    left out (TOML has no null); amounts are numbers, as in the file."""
    import tomli_w

    data = cfg.model_dump(mode="python")
    data["ledger"]["path"] = cfg.ledger_path
    head = (f"# effective configuration from {cfg.source}" if cfg.source else
            "# effective configuration: no spotctl.toml found, all defaults")
    parts = [head + " (defaults filled in)\n"]
    for section, value in _plain(data).items():
        if isinstance(value, list):  # an array of tables: one [[section]] per entry
            parts += [f"[[{section}]]\n" + tomli_w.dumps(item) for item in value]
        else:
            parts.append(tomli_w.dumps({section: value}))
    return "\n".join(parts)


def _plain(value: Any) -> Any:
    """Python config values as TOML values: no None, paths as text, amounts as numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value
