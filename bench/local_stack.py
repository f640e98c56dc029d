"""The local stack the crash and soak benches start: the local cloud in its own process (one VM
``spotctl-t`` billing), a built-in engine as tier ``t`` (model ``m``), a config with a gateway
port in a temporary directory, and a gateway API key. Servers come from the one harness
(:mod:`spotctl.testing`) and are stopped when the block ends, also on a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from spotctl.testing import free_port, running_engine, stop_process, wait_http

PY = [sys.executable, "-m", "spotctl"]


@dataclass(frozen=True)
class LocalStack:
    work: Path  # holds spotctl.toml and the ledger spotctl.db
    env: dict[str, str]  # for `spotctl ...` processes: SPOTCTL_CONFIG, the provider key
    gateway_port: int  # the port `spotctl gateway` listens on (started by the bench)
    key: str  # a gateway API key


@contextmanager
def local_stack(secret: str, *, speed: int, billing_toml: str, tokens_per_s: int,
                ttft_ms: int = 5) -> Iterator[LocalStack]:
    """``secret``: the local cloud's API key; ``speed``: its clock speed-up; ``billing_toml``:
    the lines of the config's ``[billing]`` section."""
    work = Path(tempfile.mkdtemp())
    gport, cport = free_port(), free_port()
    env = {**os.environ, "SPOTCTL_CONFIG": str(work / "spotctl.toml"), "LC_KEY": secret,
           "SPOTCTL_LOCALCLOUD_KEY": secret}
    env.pop("SPOTCTL_CLOCK", None)
    cloud = subprocess.Popen([*PY, "localcloud", "serve", "--listen", f"127.0.0.1:{cport}",
                              "--speed", str(speed), "--engine", "none"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with running_engine("m", ttft_ms=ttft_ms, tokens_per_s=tokens_per_s) as engine:
            (work / "spotctl.toml").write_text(
                f'[billing]\n{billing_toml}[[providers]]\nname = "lc"\nkind = "localcloud"\n'
                f'api_key_env = "LC_KEY"\nbase_url = "http://127.0.0.1:{cport}/v1"\n'
                f'[[tiers]]\nname = "t"\nmodel = "m"\nendpoint = "{engine.url}"\n'
                f'[gateway]\nlisten = "127.0.0.1:{gport}"\n')
            wait_http(f"http://127.0.0.1:{cport}/_control/health")
            httpx.post(f"http://127.0.0.1:{cport}/_control/vms", json={"name": "spotctl-t"},
                       timeout=5)
            key = json.loads(subprocess.run([*PY, "keys", "create", "k", "--json"], env=env,
                                            capture_output=True, text=True).stdout)["key"]
            yield LocalStack(work, env, gport, key)
    finally:
        stop_process(cloud)
