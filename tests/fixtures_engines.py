"""pytest plugin: engines and a gateway, all real processes/servers on loopback."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from spotctl.localcloud.engines import free_port
from tests.engines import EngineHandle

ENGINE_KEY = "engine-secret-5d1e"


def start_builtin(model: str = "tiny", *extra: str, api_key: str | None = ENGINE_KEY
                  ) -> tuple[subprocess.Popen, EngineHandle]:
    port = free_port()
    argv = [sys.executable, "-m", "spotctl.engine.builtin", "--port", str(port), "--model",
            model, "--ttft-ms", "5", "--tokens-per-s", "2000", *extra]
    env = None
    if api_key:
        import os

        env = {**os.environ, "SPOTCTL_ENGINE_API_KEY": api_key}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()  # READY http://...
    assert line.startswith("READY"), line
    return proc, EngineHandle(f"http://127.0.0.1:{port}", model, api_key, "builtin")


@pytest.fixture(scope="session")
def builtin_engine() -> Iterator[EngineHandle]:
    proc, handle = start_builtin()
    yield handle
    proc.terminate()
    proc.wait(10)


@dataclass
class GatewayHandle:
    url: str  # http://127.0.0.1:PORT
    app: object
    server: object
    thread: threading.Thread
    ledger_path: Path

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def start_gateway(cfg, clock, runtime=None) -> GatewayHandle:
    import uvicorn

    from spotctl.gateway.app import Gateway
    from spotctl.gateway.upstreams import RoutingRuntime

    app = Gateway(cfg, clock, runtime or RoutingRuntime(None), refresh_s=0.05)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                           log_level="warning", ws="none"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15  # clock-ok
    while not server.started and time.monotonic() < deadline:  # clock-ok
        time.sleep(0.01)  # clock-ok
    assert server.started
    return GatewayHandle(f"http://127.0.0.1:{port}", app, server, thread, cfg.ledger_path)


def gateway_key(ledger_path: Path, name: str = "team", budget_micros: int | None = None) -> str:
    from spotctl.gateway.keys import create_key
    from spotctl.ledger.db import Ledger

    with Ledger(ledger_path) as led:
        return create_key(led, name, 0, budget_micros)
