"""The cloud-init ``user_data`` that makes a bare Hyperstack VM serve a tier.

Hyperstack documents ``user_data`` (cloud-init) as the way to configure a VM at launch
(``CreateInstancesPayload.user_data``, create_instances_payload.py:48 in the official SDK); a
script starting with ``#!`` runs once, as root, at the VM's first boot. This one:

1. waits for the tier's weights volume (spotctl attaches it right after the VM is ACTIVE:
   ``POST /core/virtual-machines/{id}/attach-volumes``), finds it by its filesystem label, or,
   on first use, as the unformatted disk of the volume's size, and formats it (ext4, labelled);
2. mounts it at ``/weights`` (and in ``/etc/fstab``, so a restore from hibernation, which boots
   the saved root disk again without cloud-init, mounts it too; this relies on the volume
   staying attached through hibernate/restore, which Hyperstack's docs say and no account has
   confirmed, see docs/providers.md; the backend re-attaches it on wake if not);
3. points ``HF_HOME``, ``VLLM_CACHE_ROOT`` and the torch compile caches at the volume, so a
   relaunch or a wake neither downloads nor compiles again;
4. installs the tier's pinned vLLM (into a venv on the volume) if the image has no ``vllm`` of
   that version;
5. runs the tier's ``vllm serve`` command under systemd: ``Restart=on-failure``,
   ``--shutdown-timeout`` so a stop (hibernate, down) drains in-flight requests first, and
   ``TimeoutStopSec`` above that.

Secrets: the only one in ``user_data`` is the engine's API key (``VLLM_API_KEY``), because
Hyperstack offers no other channel to a VM at launch (no secret store, no instance metadata
secrets: the SDK has neither); it is written to a root-only (0600) ``EnvironmentFile``, never into
the unit or a command line. The provider API key, the gateway keys and anything else never leave
this machine.

``SPOTCTL_VM_ROOT`` is empty on a real VM. The local cloud runs this very script as a process in a
per-VM folder and sets it to that folder, with ``lsblk``, ``blkid``, ``mkfs.ext4``, ``mount``,
``mountpoint``, ``systemctl`` and ``vllm`` on its PATH resolving to its emulations.
"""

from __future__ import annotations

import hashlib
import shlex

from spotctl.config import TierConfig
from spotctl.engine.vllm_cmd import SHUTDOWN_TIMEOUT_S, WEIGHTS_MOUNT, serve_argv, vllm_command

UNIT = "spotctl-vllm.service"
DEVICE_WAIT_S = 600  # how long the script waits for the weights volume to be attached
# Hyperstack documents no size limit for user_data (unverified, docs/providers.md). Its API is
# OpenStack-shaped, and OpenStack Nova caps user_data at 65535 bytes (base64-encoded, so about
# 48 KiB of script); the script is about 3 KB, far below. A tier whose script grew past that
# would be refused at create.


def volume_label(tier: TierConfig) -> str:
    """The weights filesystem's label: stable per tier, at most 16 characters (ext4)."""
    return "spw-" + hashlib.sha256(tier.name.encode()).hexdigest()[:12]


def render_user_data(tier: TierConfig, *, volume_size_gb: int,
                     engine_key: str | None = None) -> str:
    """The ``#!/bin/bash`` user_data for ``tier`` (deterministic: same tier, same script)."""
    if engine_key is not None and ("\n" in engine_key or "\r" in engine_key):
        raise ValueError("the engine key must be one line")
    argv = serve_argv(tier, vllm="@VLLM@", cache_root="@ROOT@" + WEIGHTS_MOUNT)
    _argv, env = vllm_command(tier, cache_root="@ROOT@" + WEIGHTS_MOUNT)
    env.pop("VLLM_API_KEY", None)  # from the EnvironmentFile, never in the unit
    environment = "\n".join(f'Environment="{k}={v}"' for k, v in sorted(env.items()))
    exec_start = " ".join(shlex.quote(a) if "@" not in a else a for a in argv)
    size_bytes = volume_size_gb * 1024 ** 3  # Hyperstack sizes are GB of 2^30 bytes (Cinder)
    key_lines = ""
    if engine_key:
        key_lines = ("umask 077\nmkdir -p \"$R/etc/spotctl\"\n"
                     f"printf 'VLLM_API_KEY=%s\\n' {shlex.quote(engine_key)} "
                     "> \"$R/etc/spotctl/engine.env\"\numask 022\n")
    else:
        key_lines = "mkdir -p \"$R/etc/spotctl\"\n: > \"$R/etc/spotctl/engine.env\"\n"
    caches = " ".join(f'"$MNT/{d}"' for d in ("hf", "vllm-cache", "torch-compile",
                                              "triton-cache"))
    return f"""#!/bin/bash
# spotctl: tier {tier.name} (model {tier.model}); cloud-init user_data, runs once at first boot.
set -euo pipefail
R="${{SPOTCTL_VM_ROOT:-}}"
LABEL={volume_label(tier)}
SIZE={size_bytes}
MNT="$R{WEIGHTS_MOUNT}"
V={shlex.quote(tier.vllm_version)}

# 1. the weights volume: by label, or (first use) the blank disk of its size, formatted once
DEV=""
for _ in $(seq 1 {DEVICE_WAIT_S // 2}); do
  DEV="$(blkid -L "$LABEL" 2>/dev/null || true)"
  [ -n "$DEV" ] && break
  DEV="$(lsblk -dpnbo NAME,SIZE,TYPE,FSTYPE | awk -v s="$SIZE" \\
    '$2 == s && $3 == "disk" && $4 == "" {{print $1; exit}}')"
  if [ -n "$DEV" ]; then mkfs.ext4 -q -L "$LABEL" "$DEV"; break; fi
  sleep 2
done
[ -n "$DEV" ] || {{ echo "spotctl: the weights volume was not attached" >&2; exit 1; }}

# 2. mounted now and at every boot (a restore from hibernation boots without cloud-init)
mkdir -p "$MNT" "$R/etc"
mountpoint -q "$MNT" || mount "LABEL=$LABEL" "$MNT"
grep -q "LABEL=$LABEL " "$R/etc/fstab" 2>/dev/null || \\
  echo "LABEL=$LABEL $MNT ext4 defaults,nofail 0 2" >> "$R/etc/fstab"
mkdir -p {caches}

# 3. the pinned vLLM: the image's if it is that version, else a venv on the volume
VLLM="$(command -v vllm || true)"
if [ -z "$VLLM" ] || [ "$("$VLLM" --version 2>/dev/null | tail -n1)" != "$V" ]; then
  VENV="$MNT/vllm-venv"
  if [ ! -x "$VENV/bin/vllm" ] || [ "$("$VENV/bin/vllm" --version 2>/dev/null | tail -n1)" != "$V" ]; then
    python3 -m venv "$VENV" 2>/dev/null || {{
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; python3 -m venv "$VENV"; }}
    "$VENV/bin/pip" install --quiet "vllm==$V" hf_transfer
  fi
  VLLM="$VENV/bin/vllm"
fi

# 4. the engine key (root-only file), then the engine under systemd
{key_lines}mkdir -p "$R/etc/systemd/system"
cat > "$R/etc/systemd/system/{UNIT}" <<'UNIT_EOF'
[Unit]
Description=spotctl vLLM engine (tier {tier.name})
After=network-online.target
RequiresMountsFor=@ROOT@{WEIGHTS_MOUNT}

[Service]
EnvironmentFile=@ROOT@/etc/spotctl/engine.env
{environment}
ExecStart={exec_start}
Restart=on-failure
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec={SHUTDOWN_TIMEOUT_S + 30}

[Install]
WantedBy=multi-user.target
UNIT_EOF
sed -i "s|@ROOT@|$R|g; s|@VLLM@|$VLLM|g" "$R/etc/systemd/system/{UNIT}"
systemctl daemon-reload
systemctl enable --now {UNIT}
"""
