"""One id per request across the client, the ledger and the engine (issue 11's chaos bar:
"0 usage rows lost" is checked request by request).

The gateway answers every request that has a usage row with ``x-request-id`` (the row's id, as
OpenAI's API names its header), and sends the same id to the engine as ``X-Request-Id`` (vLLM
takes it as its request id). The built-in engine with ``--enable-log-requests`` prints one line
per request with that id and the tokens it produced.
"""

from __future__ import annotations

import json
import time

import openai

from spotctl.config import parse_config
from spotctl.gateway.gate import GateState
from spotctl.ledger.db import Ledger
from tests.fixtures_engines import gateway_key, start_builtin, start_gateway


def _engine_lines(proc, n: int) -> list[dict]:
    out = []
    while len(out) < n:
        line = proc.stdout.readline()
        assert line, "the engine's log ended"
        if line.startswith("request "):
            out.append(json.loads(line.removeprefix("request ")))
    return out


def _rows(ledger_path) -> dict[str, tuple]:
    with Ledger(ledger_path) as led:
        return {r[0]: tuple(r[1:]) for r in led.conn.execute(
            "SELECT id, status, prompt_tokens, completion_tokens, tokens_estimated FROM usage")}


def test_one_request_id_for_the_client_the_ledger_and_the_engine(tmp_path, clock, monkeypatch):
    proc, engine = start_builtin("tiny", "--enable-log-requests")
    try:
        monkeypatch.setenv("ENGINE_KEY", engine.api_key or "")
        cfg = parse_config(
            f'[[tiers]]\nname = "fixed"\nmodel = "tiny"\nendpoint = "{engine.base_url}"\n'
            'api_key_env = "ENGINE_KEY"\n', tmp_path / "spotctl.toml")
        key = gateway_key(cfg.ledger_path)
        handle = start_gateway(cfg, clock)
        try:
            client = openai.OpenAI(base_url=handle.base_url, api_key=key, max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="tiny", max_tokens=7, messages=[{"role": "user", "content": "one two"}])
            plain = raw.parse()
            with client.chat.completions.with_streaming_response.create(
                    model="tiny", max_tokens=5, stream=True,
                    messages=[{"role": "user", "content": "three"}]) as resp:
                stream_rid = resp.headers["x-request-id"]
                chunks = [c for c in resp.parse() if c.choices and c.choices[0].delta.content]
            ids = [raw.headers["x-request-id"], stream_rid]
            assert ids[0] != ids[1] and all(i.startswith("gw-") for i in ids)
            lines = {e["request_id"]: e for e in _engine_lines(proc, 2)}
            assert set(lines) == set(ids)  # the engine saw the gateway's ids
            assert lines[ids[0]] == {"request_id": ids[0], "finished": True,
                                     "prompt_tokens": plain.usage.prompt_tokens,
                                     "generation_tokens": plain.usage.completion_tokens}
            assert lines[ids[1]]["generation_tokens"] == len(chunks) == 5
            assert lines[ids[1]]["finished"] is True
            # a refusal after authentication has a row, and its id travels with the error
            handle.app.refresh_s = 3600  # the gate thread stops recomputing the gate ...
            time.sleep(0.3)  # clock-ok: ... after its current wait
            handle.app.gate = GateState("billing_stale", "test: closed", None, None, 0, 60, 0)
            try:
                client.chat.completions.create(
                    model="tiny", max_tokens=3, messages=[{"role": "user", "content": "x"}])
                raise AssertionError("the closed gate served")
            except openai.APIStatusError as exc:
                assert exc.status_code == 503
                refused = exc.response.headers["x-request-id"]
            deadline = time.monotonic() + 10  # clock-ok
            while len(rows := _rows(handle.ledger_path)) < 3:
                assert time.monotonic() < deadline, rows  # clock-ok
                time.sleep(0.05)  # clock-ok: the writer's batch
            assert rows[ids[0]] == ("ok", plain.usage.prompt_tokens,
                                    plain.usage.completion_tokens, 0)
            assert rows[ids[1]][0] == "ok" and rows[ids[1]][2:] == (5, 0)
            assert rows[ids[1]][1] == lines[ids[1]]["prompt_tokens"]
            assert rows[refused][0] == "billing_stale"
        finally:
            handle.stop()
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_local_clouds_vllm_passes_enable_log_requests_to_the_engine(monkeypatch):
    from spotctl.localcloud import vmshim

    seen = []
    monkeypatch.setattr(vmshim.os, "execve", lambda exe, argv, env: seen.append(argv))
    vmshim.vllm(["serve", "tiny", "--port", "8001", "--enable-log-requests"])
    vmshim.vllm(["serve", "tiny", "--port", "8001"])
    assert seen[0][-1] == "--enable-log-requests"
    assert "--enable-log-requests" not in seen[1]
