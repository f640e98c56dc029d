"""Reaching engines through an SSH tunnel (the default exposure): the engine port is never open
to the internet. paramiko forwards a local loopback port to the engine through ``direct-tcpip``
channels. Host keys are verified against a known_hosts file and never auto-accepted.
"""

from __future__ import annotations

import select
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from spotctl.errors import ExitCode, SpotctlError


@dataclass(frozen=True)
class SSHTarget:
    host: str
    port: int
    user: str
    key_path: Path
    known_hosts: Path
    remote_host: str = "127.0.0.1"
    remote_port: int = 8000


class _UnknownHostKey(Exception):
    """Raised by :func:`_reject_unknown` (paramiko's ``RejectPolicy`` raises a plain
    ``SSHException`` that only its message tells apart)."""


def _reject_unknown_policy():
    """A missing-host-key policy that refuses with a type of our own (paramiko is imported
    only when a tunnel opens)."""
    import paramiko

    class RejectUnknown(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            raise _UnknownHostKey(hostname)

    return RejectUnknown()


class SSHTunnel:
    """A local listener on 127.0.0.1 whose connections are piped to the remote engine port."""

    def __init__(self, target: SSHTarget, local_port: int = 0) -> None:
        self.target = target
        self._local_port = local_port
        self._client = None
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def local_url(self) -> str:
        assert self._listener is not None
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _connect(self):
        import paramiko

        t = self.target
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(t.known_hosts))
        except OSError:
            raise SpotctlError(f"cannot read known_hosts file {t.known_hosts}",
                               ExitCode.USAGE) from None
        client.set_missing_host_key_policy(_reject_unknown_policy())
        try:
            client.connect(t.host, port=t.port, username=t.user, key_filename=str(t.key_path),
                           look_for_keys=False, allow_agent=False, timeout=10,
                           banner_timeout=10, auth_timeout=10)
        except _UnknownHostKey:
            client.close()
            raise SpotctlError(f"ssh {t.host}:{t.port}: host key of {t.host}:{t.port} is not "
                               f"in {t.known_hosts} (never auto-accepted)",
                               ExitCode.ERROR) from None
        except paramiko.BadHostKeyException:
            raise SpotctlError(f"ssh {t.host}:{t.port}: the host key does not match "
                               f"{t.known_hosts}; refusing to connect", ExitCode.ERROR) from None
        except paramiko.SSHException as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SpotctlError(f"ssh {t.host}:{t.port}: {msg}", ExitCode.ERROR) from None
        except OSError as exc:
            raise SpotctlError(f"ssh {t.host}:{t.port}: unreachable ({type(exc).__name__})",
                               ExitCode.ERROR) from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        return client

    def _transport(self):
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if transport is None or not transport.is_active():
                if self._client is not None:
                    self._client.close()
                self._client = self._connect()  # reconnect (e.g. after sshd restarted)
            return self._client.get_transport()

    def start(self) -> str:
        self._client = self._connect()
        self._listener = socket.create_server(("127.0.0.1", self._local_port))
        self._listener.settimeout(0.5)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="ssh-tunnel")
        self._thread.start()
        return self.local_url

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(conn, addr), daemon=True).start()

    def _pipe(self, conn: socket.socket, addr) -> None:
        t = self.target
        try:
            channel = self._transport().open_channel(
                "direct-tcpip", (t.remote_host, t.remote_port), addr)
        except Exception:
            conn.close()
            return
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([conn, channel], [], [], 1.0)
                if conn in ready:
                    data = conn.recv(65536)
                    if not data:
                        break
                    channel.sendall(data)
                if channel in ready:
                    data = channel.recv(65536)
                    if not data:
                        break
                    conn.sendall(data)
        except OSError:
            pass
        finally:
            channel.close()
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> SSHTunnel:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TunnelManager:
    """One tunnel per tier, opened on first use."""

    def __init__(self) -> None:
        self._tunnels: dict[str, SSHTunnel] = {}
        self._lock = threading.Lock()

    def endpoint_for(self, tier: str, target: SSHTarget) -> str:
        with self._lock:
            tunnel = self._tunnels.get(tier)
            if tunnel is None or tunnel.target != target:
                if tunnel is not None:
                    tunnel.stop()
                tunnel = SSHTunnel(target)
                tunnel.start()
                self._tunnels[tier] = tunnel
            return tunnel.local_url

    def close(self) -> None:
        with self._lock:
            for tunnel in self._tunnels.values():
                tunnel.stop()
            self._tunnels.clear()


def needs_tunnel(tier) -> bool:
    """Engines on remote VMs are reached through SSH unless the tier is exposed publicly; the
    local cloud's engines already listen on this machine's loopback."""
    return tier.exposure == "ssh" and tier.backend != "localcloud"


class EngineReach:
    """Engine endpoints as this host reaches them: through the tier's SSH tunnel (opened on
    first use, kept) when its exposure is ``ssh``, else as the backend reports them."""

    def __init__(self) -> None:
        self._tunnels: TunnelManager | None = None

    def endpoint(self, tier, endpoint: str | None) -> str | None:
        if endpoint is None or not needs_tunnel(tier):
            return endpoint
        from urllib.parse import urlsplit

        if self._tunnels is None:
            self._tunnels = TunnelManager()
        parts = urlsplit(endpoint)
        target = SSHTarget(parts.hostname or "", tier.ssh_port, tier.ssh_user,
                           tier.ssh_key_path.expanduser(), tier.ssh_known_hosts.expanduser(),
                           remote_port=parts.port or tier.engine_port)
        return self._tunnels.endpoint_for(tier.name, target)

    def close(self) -> None:
        if self._tunnels is not None:
            self._tunnels.close()
