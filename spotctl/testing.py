"""The one harness for tests, benchmarks and the demo: ports, servers, engines, gateways, configs.

Every server started here is owned by a context manager: leaving the ``with`` block, normally or
through a failing assertion, stops it, so nothing leaks into the next test. ::

    with running_engine() as engine, running_gateway(cfg) as gw:
        wait_http(f"{gw.url}/healthz")
        ...

Heavy parts (uvicorn, the gateway, httpx) are imported inside the functions: importing this
module costs nothing at ``spotctl`` start-up.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

READY_TIMEOUT_S = 30.0


# -- ports and HTTP ----------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_http(url: str, *, timeout_s: float = READY_TIMEOUT_S, headers: dict | None = None,
              ready: Callable[[int], bool] = lambda status: status < 500) -> int:
    """Poll ``url`` until it answers with a status ``ready`` accepts; return that status.
    Raises ``TimeoutError`` naming the URL and the last answer."""
    import httpx

    deadline = time.monotonic() + timeout_s  # clock-ok: real waiting for a real server
    last = "no answer"
    while True:
        try:
            status = httpx.get(url, headers=headers, timeout=1.0).status_code
            if ready(status):
                return status
            last = f"HTTP {status}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        if time.monotonic() > deadline:  # clock-ok
            raise TimeoutError(f"{url} not ready within {timeout_s:.0f} s ({last})")
        time.sleep(0.02)  # clock-ok


# -- servers -----------------------------------------------------------------------------------
@dataclass
class Served:
    """An ASGI app served by uvicorn in a thread of this process."""

    url: str  # http://127.0.0.1:PORT
    port: int
    server: Any  # uvicorn.Server
    thread: threading.Thread


@contextmanager
def serve_asgi(app: Any, *, host: str = "127.0.0.1", port: int | None = None,
               lifespan: str = "off", stop_timeout_s: float = 20.0) -> Iterator[Served]:
    """Serve ``app`` on a real loopback port for the ``with`` block, then stop it."""
    import uvicorn

    port = port or free_port(host)
    config = uvicorn.Config(app, host=host, port=port, lifespan=lifespan, log_level="warning",
                            access_log=False, ws="none")
    with serve_uvicorn(config, f"http://{host}:{port}", port,
                       stop_timeout_s=stop_timeout_s) as served:
        yield served


@contextmanager
def serve_uvicorn(config: Any, url: str, port: int, *, sockets: list | None = None,
                  stop_timeout_s: float = 20.0) -> Iterator[Served]:
    """Run a ``uvicorn.Config`` in a thread of this process for the ``with`` block (on
    ``sockets`` when given, as ``spotctl gateway`` does); stopped when the block ends."""
    import uvicorn

    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=sockets)
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + READY_TIMEOUT_S  # clock-ok
    while not server.started:
        if failure or not thread.is_alive():
            raise RuntimeError(f"server on port {port} did not start: {failure or 'exited'}")
        if time.monotonic() > deadline:  # clock-ok
            server.should_exit = True
            raise TimeoutError(f"server on port {port} did not start in {READY_TIMEOUT_S} s")
        time.sleep(0.01)  # clock-ok
    try:
        yield Served(url, port, server, thread)
    finally:
        server.should_exit = True
        thread.join(stop_timeout_s)


@dataclass
class Engine:
    """A built-in engine process (the fast OpenAI-compatible test engine)."""

    url: str  # http://127.0.0.1:PORT
    model: str
    api_key: str | None
    proc: subprocess.Popen

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@contextmanager
def running_engine(model: str = "tiny", *extra: str, api_key: str | None = None,
                   ttft_ms: int = 5, tokens_per_s: int = 2000) -> Iterator[Engine]:
    """The built-in engine in its own process for the ``with`` block (``extra``: more of its
    command-line flags)."""
    port = free_port()
    argv = [sys.executable, "-m", "spotctl.engine.builtin", "--port", str(port), "--model",
            model, "--ttft-ms", str(ttft_ms), "--tokens-per-s", str(tokens_per_s), *extra]
    env = dict(os.environ)
    if api_key:
        env["SPOTCTL_ENGINE_API_KEY"] = api_key
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)  # noqa: S603
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("READY"):
            raise RuntimeError(f"engine did not start: {line!r} (exit {proc.poll()})")
        yield Engine(f"http://127.0.0.1:{port}", model, api_key, proc)
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
    if proc.stdout:
        proc.stdout.close()


@dataclass
class RunningGateway:
    url: str  # http://127.0.0.1:PORT
    app: Any  # spotctl.gateway.app.Gateway
    served: Served
    ledger_path: Path

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@contextmanager
def running_gateway(cfg: Any, clock: Any = None, runtime: Any = None, *,
                    refresh_s: float = 0.05) -> Iterator[RunningGateway]:
    """The gateway for ``cfg`` on a loopback port, served as ``spotctl gateway`` serves it (its
    guarded protocol, limits and timeouts; lifespan on, so pending usage rows are flushed when
    the block ends). ``runtime`` defaults to fixed engines only (no fleet)."""
    from spotctl.clock import get_clock
    from spotctl.gateway.app import Gateway
    from spotctl.gateway.server import listen_socket, serving
    from spotctl.gateway.upstreams import RoutingRuntime

    app = Gateway(cfg, clock or get_clock(), runtime or RoutingRuntime(None), refresh_s=refresh_s)
    sock = listen_socket("127.0.0.1", 0, reuse_port=False)
    port = sock.getsockname()[1]
    try:
        with serving(app, cfg.gateway, sock) as server:
            url = f"http://127.0.0.1:{port}"
            yield RunningGateway(url, app, Served(url, port, server, server.thread),
                                 cfg.ledger_path)
    finally:
        sock.close()


# -- time ------------------------------------------------------------------------------------
@contextmanager
def installed_clock(start: Any) -> Iterator[Any]:
    """A ManualClock at ``start`` installed as the process clock for the block, then removed."""
    from spotctl.clock import ManualClock, set_clock

    clock = ManualClock(start)
    set_clock(clock)
    try:
        yield clock
    finally:
        set_clock(None)


# -- configuration -----------------------------------------------------------------------------
def toml_text(data: dict[str, Any]) -> str:
    """``data`` as TOML (``[[providers]]``/``[[tiers]]`` included); ``None`` values and empty
    sections are left out, paths written as text."""
    import tomli_w

    return tomli_w.dumps(_plain(data))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_config(directory: Path, data: dict[str, Any], name: str = "spotctl.toml") -> Path:
    """Write ``data`` as ``directory/name`` (mode 0600, as ``spotctl init`` does); return it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(toml_text(data), encoding="utf-8")
    path.chmod(0o600)
    return path
