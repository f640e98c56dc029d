"""pytest plugin: engines and a gateway, all real processes/servers on loopback."""

from __future__ import annotations

import contextlib
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


def start_builtin(model: str = "tiny", *extra: str, api_key: str | None = ENGINE_KEY,
                  port: int | None = None) -> tuple[subprocess.Popen, EngineHandle]:
    port = port or free_port()
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
    """The gateway on a real loopback socket, served as ``spotctl gateway`` serves it (our
    server, its limits and timeouts), in a thread of this process."""
    from spotctl.gateway.app import Gateway
    from spotctl.gateway.server import Server, listen_socket
    from spotctl.gateway.upstreams import RoutingRuntime

    app = Gateway(cfg, clock, runtime or RoutingRuntime(None), refresh_s=0.05)
    sock = listen_socket("127.0.0.1", 0, reuse_port=False)
    port = sock.getsockname()[1]
    server = Server(app, cfg.gateway)
    thread = threading.Thread(target=server.run, args=([sock],), daemon=True)
    thread.start()
    deadline = time.monotonic() + 15  # clock-ok
    while not server.started and time.monotonic() < deadline:  # clock-ok
        time.sleep(0.01)  # clock-ok
    assert server.started
    return GatewayHandle(f"http://127.0.0.1:{port}", app, server, thread, cfg.ledger_path)


def gateway_key(ledger_path: Path, name: str = "team", budget_micros: int | None = None) -> str:
    from spotctl.ledger.db import Ledger
    from spotctl.ledger.keys import create_key

    with Ledger(ledger_path) as led:
        return create_key(led, name, 0, budget_micros)


# -- in-process harness -------------------------------------------------------------------------
@contextlib.contextmanager
def serve_asgi(app, port: int | None = None) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on loopback in a thread; yields its base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="critical", ws="none"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15  # clock-ok
    while not server.started and time.monotonic() < deadline:  # clock-ok
        time.sleep(0.01)  # clock-ok
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


@dataclass
class Script:
    """What a :class:`ScriptedEngine` answers."""

    tokens: int = 4
    eol: bytes = b"\n"
    usage: object = "auto"  # "auto": the true counts; None: no usage; or any value to send
    prompt_tokens: int = 7
    delay_s: float = 0.0  # before each event
    die_after: int | None = None  # cut the connection after this many content events
    status: int = 200
    refuse: bool = False  # answer 503 to /v1/models (a failing probe)
    pad: int = 0  # bytes of padding in each event's content
    tail_delay_s: float = 0.0  # after data: [DONE], before the body ends


class ScriptedEngine:
    """A real HTTP engine (raw ASGI on uvicorn) whose answers a test scripts: line ends,
    usage values, pacing and cuts that a real engine produces rarely or never on demand."""

    def __init__(self, script: Script | None = None, model: str = "scripted") -> None:
        self.script = script or Script()
        self.model = model
        self.requests: list[dict] = []
        self.completed = 0
        self.sent = 0  # stream events written

    def usage(self, n: int) -> object:
        s = self.script
        if s.usage == "auto":
            return {"prompt_tokens": s.prompt_tokens, "completion_tokens": n,
                    "total_tokens": s.prompt_tokens + n}
        return s.usage

    async def __call__(self, scope, receive, send) -> None:
        import asyncio

        import orjson

        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        s = self.script
        if scope["path"] == "/v1/models":
            code = 503 if s.refuse else 200
            await _send(send, code, orjson.dumps({"object": "list", "data": [
                {"id": self.model, "object": "model"}]}))
            return
        req = orjson.loads(body)
        self.requests.append(req)
        if s.status != 200:
            await _send(send, s.status, b'{"error":{"message":"scripted","code":500}}')
            return
        if not req.get("stream"):
            if s.delay_s:
                await asyncio.sleep(s.delay_s)  # clock-ok: a real engine's latency
            out = {"id": "x", "object": "chat.completion", "model": self.model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                "finish_reason": "stop"}]}
            if s.usage is not None:
                out["usage"] = self.usage(s.tokens)
            await _send(send, 200, orjson.dumps(out))
            self.completed += 1
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        eol = s.eol
        for i in range(s.tokens):
            if s.die_after is not None and i >= s.die_after:
                raise RuntimeError("scripted engine death")  # uvicorn drops the connection
            if s.delay_s:
                await asyncio.sleep(s.delay_s)  # clock-ok
            ev = {"id": "x", "object": "chat.completion.chunk", "model": self.model,
                  "choices": [{"index": 0, "delta": {"content": f"t{i} " + "p" * s.pad}}]}
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"data: " + orjson.dumps(ev) + eol + eol})
            self.sent += 1
        opts = req.get("stream_options") or {}
        if opts.get("include_usage") and s.usage is not None:
            ev = {"id": "x", "object": "chat.completion.chunk", "model": self.model,
                  "choices": [], "usage": self.usage(s.tokens)}
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"data: " + orjson.dumps(ev) + eol + eol})
        if s.tail_delay_s:
            await send({"type": "http.response.body", "body": b"data: [DONE]" + eol + eol,
                        "more_body": True})
            await asyncio.sleep(s.tail_delay_s)  # clock-ok: an engine slow to end its body
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.body", "body": b"data: [DONE]" + eol + eol})
        self.completed += 1


async def _send(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedEngine, str]]:
    engine = ScriptedEngine()
    with serve_asgi(engine) as url:
        yield engine, url


def tier_toml(name: str, model: str, url: str, **extra) -> str:
    lines = [f'[[tiers]]\nname = "{name}"\nmodel = "{model}"\nendpoint = "{url}"']
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()]
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def lifespan(app):
    """Run an ASGI app's lifespan protocol (httpx.ASGITransport does not)."""
    import asyncio

    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                   inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    msg = await outbox.get()
    assert msg["type"] == "lifespan.startup.complete", msg
    try:
        yield app
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task


@contextlib.asynccontextmanager
async def asgi_gateway(cfg, clock, runtime=None):
    """The gateway app in this process, driven through ``httpx.ASGITransport``."""
    import httpx

    from spotctl.gateway.app import Gateway
    from spotctl.gateway.upstreams import RoutingRuntime

    app = Gateway(cfg, clock, runtime or RoutingRuntime(None), refresh_s=0.05)
    async with lifespan(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                base_url="http://gateway", timeout=30) as c:
        yield app, c


def wait_rows(ledger_path: Path, n: int, timeout: float = 10.0) -> list[dict]:
    """The usage rows, once there are at least ``n`` (or the timeout passed)."""
    from spotctl.ledger.db import Ledger

    deadline = time.monotonic() + timeout  # clock-ok
    while True:
        with Ledger(ledger_path) as led:
            cur = led.conn.execute("SELECT * FROM usage ORDER BY started_ms, id")
            cols = [d[0] for d in cur.description]
            rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        if len(rows) >= n or time.monotonic() > deadline:  # clock-ok
            return rows
        time.sleep(0.05)  # clock-ok


def prlimit_tree(pid: int, limits: tuple[int, int]) -> None:
    """Set RLIMIT_FSIZE on ``pid`` and every process below it (the gateway writes usage rows
    from a child process: a full disk is full for all of them)."""
    import resource

    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(p, resource.RLIMIT_FSIZE, limits)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in task.read_text().split()]


def gateway_process_config(tmp_path: Path, url: str, gateway_toml: str = ""):
    """A workspace for ``spotctl gateway`` run as a process in front of the engine at ``url``
    (model "scripted"): ``(config path, config, gateway key, environment, port)``."""
    import os

    from spotctl.config import parse_config

    port = free_port()
    cfg_path = tmp_path / "spotctl.toml"
    cfg_path.write_text(tier_toml("s", "scripted", url) +
                        f'[gateway]\nlisten = "127.0.0.1:{port}"\n{gateway_toml}')
    cfg = parse_config(cfg_path.read_text(), cfg_path)
    key = gateway_key(cfg.ledger_path)
    env = {**os.environ, "SPOTCTL_CONFIG": str(cfg_path)}
    env.pop("SPOTCTL_CLOCK", None)
    return cfg_path, cfg, key, env, port
