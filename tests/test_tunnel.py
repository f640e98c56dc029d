"""The SSH tunnel against a real sshd on loopback, forwarding to a real engine."""

from __future__ import annotations

import getpass

import httpx
import pytest

from spotctl.errors import SpotctlError
from spotctl.fleet.tunnel import SSHTarget, SSHTunnel

pytestmark = pytest.mark.sshd


def _target(sshd, engine, known_hosts):
    port = int(engine.base_url.rsplit(":", 1)[1])
    return SSHTarget("127.0.0.1", sshd.port, getpass.getuser(), sshd.client_key, known_hosts,
                     remote_port=port)


def _known(tmp_path, sshd, key=None):
    path = tmp_path / "known_hosts"
    path.write_text(f"[127.0.0.1]:{sshd.port} {key or sshd.host_pub}\n")
    return path


def test_requests_and_streams_reach_the_engine_through_the_tunnel(sshd, builtin_engine,
                                                                   tmp_path):
    target = _target(sshd, builtin_engine, _known(tmp_path, sshd))
    headers = {"Authorization": f"Bearer {builtin_engine.api_key}"}
    with SSHTunnel(target) as tunnel:
        r = httpx.post(f"{tunnel.local_url}/v1/chat/completions", headers=headers, timeout=10,
                       json={"model": "tiny", "max_tokens": 5,
                             "messages": [{"role": "user", "content": "via ssh"}]})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
        with httpx.stream("POST", f"{tunnel.local_url}/v1/completions", headers=headers,
                          timeout=10, json={"model": "tiny", "prompt": "x", "max_tokens": 6,
                                            "stream": True}) as s:
            events = [line for line in s.iter_lines() if line.startswith("data: {")]
        assert len(events) == 6
        # sshd restarts: the tunnel reconnects on the next connection
        sshd.restart()
        r = httpx.get(f"{tunnel.local_url}/health", timeout=10)
        assert r.status_code == 200


def test_unknown_host_key_is_refused(sshd, builtin_engine, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(SpotctlError) as err:
        SSHTunnel(_target(sshd, builtin_engine, empty)).start()
    assert "never auto-accepted" in err.value.message
    assert "BEGIN" not in err.value.message


def test_wrong_host_key_is_refused(sshd, builtin_engine, tmp_path):
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().strip()
    with pytest.raises(SpotctlError) as err:
        SSHTunnel(_target(sshd, builtin_engine, _known(tmp_path, sshd, other))).start()
    assert "does not match" in err.value.message


def test_fleet_runtime_reaches_a_remote_engine_through_the_tunnel(sshd, builtin_engine,
                                                                   tmp_path):
    """A fleet tier with exposure = "ssh": the gateway's runtime turns the VM's endpoint into
    the local end of a verified tunnel."""
    from spotctl.clock import ManualClock
    from spotctl.config import parse_config
    from spotctl.fleet.base import TierState, TierStatus
    from spotctl.fleet.manager import FleetManager
    from spotctl.services.fleet import FleetRuntime

    known = _known(tmp_path, sshd)
    port = int(builtin_engine.base_url.rsplit(":", 1)[1])
    cfg = parse_config(
        f'[[tiers]]\nname = "remote"\nmodel = "tiny"\nbackend = "hyperstack"\n'
        f'ssh_user = "{getpass.getuser()}"\nssh_port = {sshd.port}\n'
        f'ssh_key_path = "{sshd.client_key}"\nssh_known_hosts = "{known}"\n',
        tmp_path / "spotctl.toml")
    class RemoteVM:  # the VM as the backend reports it
        name = "hyperstack"

        def status(self, tier):
            return TierStatus(tier.name, TierState.READY, "spot",
                              endpoint=f"http://127.0.0.1:{port}")

    clock = ManualClock()
    runtime = FleetRuntime(cfg, clock, FleetManager(cfg, clock, {"hyperstack": RemoteVM()}))
    try:
        up = runtime.current(cfg.tiers[0])
        assert up.state == "serving" and up.endpoint != f"http://127.0.0.1:{port}"
        r = httpx.get(f"{up.endpoint}/health", timeout=10)
        assert r.status_code == 200
    finally:
        runtime.manager.reach.close()
