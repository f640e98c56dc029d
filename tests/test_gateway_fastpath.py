"""Issue 15: the non-streaming fast path (no task per request: `Gateway.fast`, answered from
callbacks of our server and the h1 client). It must answer exactly as the task path does: the
same rows, the same request id sent to the engine on a retry, the same errors. A raw engine on
loopback misbehaves on purpose: it closes kept-alive connections behind the gateway's back,
drops requests without an answer, or never answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections import deque

import httpx
import pytest

from spotctl.config import parse_config
from spotctl.gateway.app import Gateway
from tests.fixtures_engines import gateway_key, start_gateway, tier_toml, wait_rows

ANSWER = {"id": "c1", "object": "chat.completion", "created": 1, "model": "raw",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
CHAT = {"model": "raw", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


class RawEngine:
    """An OpenAI-shaped engine on asyncio streams. ``plan`` says what each completion request
    gets: "ok", "drop" (read, then the connection closed with no answer) or "hang" (never
    answered); "ok" once it is empty.
    ``ids`` collects the x-request-id of every completion request."""

    def __init__(self) -> None:
        self.plan: deque[str] = deque()
        self.ids: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                hdrs = dict(ln.split(": ", 1) for ln in lines[1:] if ": " in ln)
                hdrs = {k.lower(): v for k, v in hdrs.items()}
                await reader.readexactly(int(hdrs.get("content-length", "0")))
                if lines[0].startswith("GET"):
                    body = json.dumps({"object": "list", "data": [{"id": "raw"}]}).encode()
                    what = "ok"
                else:
                    self.ids.append(hdrs.get("x-request-id", ""))
                    what = self.plan.popleft() if self.plan else "ok"
                    body = json.dumps(ANSWER).encode()
                if what == "drop":
                    break
                if what == "hang":
                    await asyncio.sleep(3600)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        writer.close()

    def __enter__(self) -> RawEngine:
        async def start():
            return await asyncio.start_server(self._serve, sock=self.sock)

        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        async def stop():
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def fast_calls(monkeypatch):
    """How many requests the fast path took (and declined)."""
    calls = {"took": 0, "declined": 0}
    real = Gateway.fast

    def spy(self, cycle):
        took = real(self, cycle)
        calls["took" if took else "declined"] += 1
        return took

    monkeypatch.setattr(Gateway, "fast", spy)
    return calls


def _gateway(tmp_path, clock, url, **gw):
    extra = "".join(f"{k} = {v}\n" for k, v in gw.items())
    cfg = parse_config(tier_toml("r", "raw", url) + "[gateway]\n" + extra,
                       tmp_path / "spotctl.toml")
    key = gateway_key(cfg.ledger_path)
    return cfg, key, start_gateway(cfg, clock)


def _post(c: httpx.Client) -> httpx.Response:
    return c.post("/v1/chat/completions", json=CHAT)


def test_plain_requests_take_the_fast_path_and_are_recorded_exactly(tmp_path, clock,
                                                                     fast_calls):
    with RawEngine() as engine:
        cfg, key, gw = _gateway(tmp_path, clock, engine.url)
        try:
            with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"},
                              timeout=10) as c:
                answers = [_post(c) for _ in range(20)]
            # one raw write: headers and body in one segment (wrk, most SDKs)
            raw = json.dumps(CHAT).encode()
            with socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1]))) as s:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                          b"authorization: Bearer " + key.encode() + b"\r\ncontent-type: "
                          b"application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(raw), raw))
                got = b""
                while not got.endswith(b"}}"):
                    got += s.recv(65536)
        finally:
            gw.stop()
    assert all(r.status_code == 200 and r.json() == ANSWER for r in answers)
    assert got.startswith(b"HTTP/1.1 200 OK") and b"x-spotctl-overhead-ms: " in got
    assert fast_calls["took"] >= 20  # every request once the engine's connection is pooled
    rows = wait_rows(cfg.ledger_path, 21)
    assert len(rows) == 21
    assert {(r["status"], r["prompt_tokens"], r["completion_tokens"], r["tokens_estimated"])
            for r in rows} == {("ok", 7, 3, 0)}
    assert [r.headers["x-request-id"] for r in answers] == engine.ids[:20]
    assert {r["id"] for r in rows} == set(engine.ids)


def test_a_request_dropped_on_a_kept_alive_connection_is_sent_again_once(tmp_path, clock,
                                                                        fast_calls):
    """The engine closes a pooled connection as the request arrives (what a kept-alive socket
    the engine closed meanwhile looks like): sent again at once on a new connection, with the
    same id, not a failure of the tier nor a retry (retry_attempts = 0 still succeeds)."""
    with RawEngine() as engine:
        cfg, key, gw = _gateway(tmp_path, clock, engine.url, retry_attempts=0)
        try:
            with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"},
                              timeout=10) as c:
                assert _post(c).status_code == 200  # pools the connection
                engine.plan.append("drop")
                r = _post(c)
            state = gw.app.board.snapshot()
        finally:
            gw.stop()
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    assert engine.ids[-2:] == [rid, rid]
    assert fast_calls["took"] >= 2
    assert set(state.values()) == {"serving"}, state
    rows = wait_rows(cfg.ledger_path, 2)
    assert [x["status"] for x in rows] == ["ok", "ok"]


@pytest.mark.parametrize("retries", [0, 1])
def test_an_engine_that_drops_the_request_again_is_a_failure_retried_with_the_same_id(tmp_path, clock,
                                                                      fast_calls, retries):
    with RawEngine() as engine:
        cfg, key, gw = _gateway(tmp_path, clock, engine.url, retry_attempts=retries)
        try:
            with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"},
                              timeout=10) as c:
                assert _post(c).status_code == 200  # pools the connection
                engine.plan.extend(["drop", "drop"])  # on the pooled one, then on a new one
                r = _post(c)
        finally:
            gw.stop()
    assert fast_calls["took"] >= 2
    rows = wait_rows(cfg.ledger_path, 2)
    rid = r.headers["x-request-id"]
    row = next(x for x in rows if x["id"] == rid)
    if retries:
        assert r.status_code == 200 and row["status"] == "ok"
        assert engine.ids[-3:] == [rid, rid, rid]  # every try sent the same request id
    else:
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"
        assert row["status"] == "upstream_unreachable" and engine.ids[-2:] == [rid, rid]


def test_an_engine_that_never_answers_gets_504_and_a_row(tmp_path, clock, fast_calls):
    with RawEngine() as engine:
        cfg, key, gw = _gateway(tmp_path, clock, engine.url, total_timeout_s=1)
        try:
            with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"},
                              timeout=10) as c:
                assert _post(c).status_code == 200
                engine.plan.append("hang")
                r = _post(c)
                after = _post(c)
        finally:
            gw.stop()
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert after.status_code == 200  # the tier serves on
    assert fast_calls["took"] >= 2
    rows = wait_rows(cfg.ledger_path, 3)
    assert sorted(x["status"] for x in rows) == ["ok", "ok", "upstream_timeout"]
