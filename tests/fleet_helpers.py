"""Test helpers for the fleet: a local-cloud config on disk, and a backend wrapper that dies at
a chosen step (as a process killed with -9 would: nothing after that point runs, the provider
keeps what it was asked for)."""

from __future__ import annotations

from pathlib import Path

from spotctl.config import Config, parse_config
from spotctl.fleet.base import Machine, PhaseTimings, Progress, TierStatus, no_progress


def lc_config(lc, path: Path, extra: str = "") -> Config:
    """The local cloud ``lc``'s config plus ``extra`` TOML (tiers, sections), written to
    ``path`` (commands and daemons read the file) and parsed."""
    text = lc.config_toml(extra=extra)
    path.write_text(text)
    return parse_config(text, path)


class Killed(BaseException):
    """The process died here (not an Exception: nothing may catch and carry on)."""


class CrashingBackend:
    """Delegates to a real backend; with ``crash_on_create`` its next ``up`` dies as soon as
    the provider lists the new machine (the VM is CREATING and nobody will wait for it)."""

    def __init__(self, real, *, crash_on_create: bool = False) -> None:
        self.real = real
        self.name = real.name
        self.crash_on_create = crash_on_create

    def up(self, tier, capacity, progress: Progress = no_progress
           ) -> tuple[TierStatus, PhaseTimings]:
        if not self.crash_on_create:
            return self.real.up(tier, capacity, progress)
        before = {m.resource_id for m in self.real.machines(tier)}

        def watch(phase: str, fraction: float | None, message: str) -> None:
            if {m.resource_id for m in self.real.machines(tier)} - before:
                self.crash_on_create = False
                raise Killed(f"killed while creating a {capacity} machine")
            progress(phase, fraction, message)

        return self.real.up(tier, capacity, watch)

    def down(self, tier, *, delete_storage: bool = False) -> TierStatus:
        return self.real.down(tier, delete_storage=delete_storage)

    def hibernate(self, tier):
        return self.real.hibernate(tier)

    def wake(self, tier, progress: Progress = no_progress):
        return self.real.wake(tier, progress)

    def status(self, tier) -> TierStatus:
        return self.real.status(tier)

    def machines(self, tier) -> list[Machine]:
        return self.real.machines(tier)

    def delete_machine(self, tier, resource_id: str) -> None:
        self.real.delete_machine(tier, resource_id)


def live_vms(lc) -> list:
    """The local cloud's VMs that are not deleted (whatever their name)."""
    return [vm for vm in lc.handle.cloud.list_vms() if vm.state != "DELETED"]


def pid_listening_on(port: int, host: str | None = None) -> int | None:
    """The process with a listening TCP socket on ``host:port`` (any address when ``host`` is
    None; a socket bound to 0.0.0.0 matches every host), from Linux /proc, or None."""
    import os
    import socket

    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]  # noqa: SIM115 - tiny /proc file
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            addr_hex, port_hex = local.rsplit(":", 1)
            if state != "0A" or int(port_hex, 16) != port:
                continue
            if host is not None and len(addr_hex) == 8:
                addr = socket.inet_ntoa(bytes.fromhex(addr_hex)[::-1])
                if addr not in (host, "0.0.0.0"):
                    continue
            inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
            except OSError:
                continue
    return None


def signal_engine(endpoint: str, sig: int) -> int:
    """Send ``sig`` to the engine process serving ``endpoint`` (http://host:port); its pid."""
    import os
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    pid = pid_listening_on(parts.port or 80, parts.hostname)
    assert pid is not None, f"no process listens for {endpoint}"
    os.kill(pid, sig)
    return pid
