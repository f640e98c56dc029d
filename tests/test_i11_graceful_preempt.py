"""Issue 11's chaos bar asks for preemptions "graceful and abrupt". Whether Hyperstack gives any
notice before it reclaims a spot machine is unverified (none is documented), so on the local
cloud a graceful preemption is an OS shutdown before the VM goes: the VM's engine gets SIGTERM
and drains (``vllm serve --shutdown-timeout``: the requests in flight finish, new connections
are refused) while the VM is still listed and billing; then it is deleted. An abrupt one (the
default) deletes it at once.
"""

from __future__ import annotations

import threading
import time

import httpx

from spotctl.fleet.base import TierState
from spotctl.fleet.manager import FleetManager
from tests.fleet_helpers import lc_config


def _cfg(lc, tmp_path):
    return lc_config(lc, tmp_path / "spotctl.toml", (
        '[[tiers]]\nname = "big"\nmodel = "tiny"\nbackend = "localcloud"\nprovider = "lc"\n'
        'capacity = "spot"\nflavor = "n3-A100x1"\n'))


def _long_prompt() -> tuple[str, int]:
    """A prompt the built-in engine answers at (nearly) its longest natural length."""
    from spotctl.engine.builtin import EngineConfig, completion_length

    cfg = EngineConfig("tiny", None, 50.0, 200.0, 64, None, False)
    best = max((f"story {i}" for i in range(400)),
               key=lambda p: completion_length({"prompt": p, "max_tokens": 4000}, cfg))
    return best, completion_length({"prompt": best, "max_tokens": 4000}, cfg)


def _stream(endpoint: str, prompt: str, lines: list[tuple[float, str]],
            errors: list[BaseException]) -> None:
    """Stream a long completion, keeping each line with the time it arrived."""
    try:
        with httpx.stream("POST", f"{endpoint}/v1/completions", timeout=30, json={
                "model": "tiny", "prompt": prompt, "max_tokens": 4000, "stream": True,
                "stream_options": {"include_usage": True}}) as r:
            for line in r.iter_lines():
                if line:
                    lines.append((time.monotonic(), line))  # clock-ok
    except httpx.HTTPError as exc:
        errors.append(exc)


def test_a_graceful_preemption_drains_the_engine_before_the_vm_goes(localcloud_engines,
                                                                     tmp_path):
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    tier = cfg.tiers[0]
    st = FleetManager(cfg, lc.clock).up(tier)
    assert st.state == TierState.READY and st.capacity == "spot"
    vm_id = int(st.resource_id.split(":")[1])
    prompt, n_tokens = _long_prompt()
    assert n_tokens > 100  # about half a second of tokens

    lines: list[tuple[float, str]] = []
    errors: list[BaseException] = []

    gone: list[float] = []

    def watch() -> None:
        deadline = time.monotonic() + 60  # clock-ok
        while time.monotonic() < deadline:  # clock-ok
            if all(vm.id != vm_id for vm in lc.handle.cloud.list_vms()):
                gone.append(time.monotonic())  # clock-ok
                return
            time.sleep(0.01)  # clock-ok

    t = threading.Thread(target=_stream, args=(st.endpoint, prompt, lines, errors), daemon=True)
    t.start()
    while len(lines) < 3 and t.is_alive():
        time.sleep(0.005)  # clock-ok: the first tokens arrived
    asked = time.monotonic()  # clock-ok
    answer = lc.control("POST", f"/vms/{vm_id}/preempt", mode="graceful")
    assert answer == {"preempting": vm_id, "mode": "graceful"}
    w = threading.Thread(target=watch, daemon=True)
    w.start()
    t.join(30)
    w.join(60)
    assert not errors, errors
    # the stream went on after the preemption began and ran to its end: every token, the
    # usage chunk, [DONE]
    assert any(at > asked for at, _ in lines[:-1])
    assert lines[-1][1] == "data: [DONE]"
    assert f'"completion_tokens":{n_tokens}' in lines[-2][1].replace(" ", "")
    assert sum('"finish_reason":null' in ln.replace(" ", "") for _, ln in lines) == n_tokens - 1
    # and only then did the VM go (preempted, as the provider lists it)
    assert gone and gone[0] >= lines[-1][0]
    assert any(e.resource == f"vm:{vm_id}" and e.kind == "preempted"
               for e in lc.handle.cloud.events)
    try:  # nothing answers there any more
        httpx.post(f"{st.endpoint}/v1/completions", timeout=2,
                   json={"model": "tiny", "prompt": "x", "max_tokens": 1})
        answered = True
    except httpx.HTTPError:
        answered = False
    assert not answered


def test_preempt_modes_are_checked(localcloud):
    vm = localcloud.handle.cloud.create_vm("x", "n3-A100x1-spot")
    r = httpx.post(f"{localcloud.handle.control_url}/vms/{vm.id}/preempt",
                   json={"mode": "gentle"}, timeout=10)
    assert r.status_code == 400 and "abrupt or graceful" in r.text
    assert localcloud.control("POST", f"/vms/{vm.id}/preempt") == {"preempted": vm.id,
                                                                    "mode": "abrupt"}


def test_an_abrupt_preemption_cuts_the_stream_in_flight(localcloud_engines, tmp_path):
    """No notice: the engine dies with its machine (SIGKILL, no drain), so a stream in flight is
    cut short, as a host that vanishes cuts it. Before, the engine got SIGTERM after the VM was
    deleted and drained every request in flight to its end: kinder than a real preemption."""
    lc = localcloud_engines
    cfg = _cfg(lc, tmp_path)
    st = FleetManager(cfg, lc.clock).up(cfg.tiers[0])
    assert st.state == TierState.READY and st.capacity == "spot"
    vm_id = int(st.resource_id.split(":")[1])
    prompt, n_tokens = _long_prompt()
    lines: list[tuple[float, str]] = []
    errors: list[BaseException] = []
    t = threading.Thread(target=_stream, args=(st.endpoint, prompt, lines, errors), daemon=True)
    t.start()
    while len(lines) < 3 and t.is_alive():
        time.sleep(0.005)  # clock-ok: the first tokens arrived
    assert lc.control("POST", f"/vms/{vm_id}/preempt") == {"preempted": vm_id, "mode": "abrupt"}
    t.join(30)
    assert not t.is_alive()
    # cut: an error on the connection, or at least no [DONE] and fewer tokens than asked
    assert errors or (lines[-1][1] != "data: [DONE]")
    assert sum('"finish_reason":null' in ln.replace(" ", "") for _, ln in lines) < n_tokens - 1
