"""Local-cloud VMs that boot for real: a VM runs its own ``user_data``, nothing else.

At a VM's first ACTIVE the local cloud runs its user_data (as cloud-init would: once per
instance, ``#!`` scripts only) as a real process in a per-VM folder, with ``SPOTCTL_VM_ROOT``
pointing there and the emulated OS commands of :mod:`spotctl.localcloud.vmshim` first on PATH.
Whatever the script starts (spotctl's starts ``vllm serve`` under systemd, which the shim runs as
the built-in engine with the same arguments) is what serves: the VM is reachable only once that
engine answers, and a VM with no (or a broken) user_data never serves.

Later boots (a restore from hibernation) do what systemd does at boot: mount ``/etc/fstab`` and
start the enabled units, without cloud-init. Leaving ACTIVE (hibernate, delete, preemption) stops
the units (SIGTERM, so ``--shutdown-timeout`` drains) and any still-running user_data.

Volumes attached to a VM appear as disk files in its ``dev/``; their data lives outside any VM,
so a relaunch with the same volume finds the weights, caches and vLLM install it left there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from spotctl.localcloud.model import Resource
from spotctl.localcloud.vmshim import SHIMS, parse_unit, stop_pid

DEFAULT_VLLM_VERSION = "0.11.0"  # what the local cloud's image "has installed"


class VmRunner:
    """Boots local-cloud VMs from their user_data (the local cloud's hooks)."""

    def __init__(self, root: Path | None = None, *, vllm_version: str = DEFAULT_VLLM_VERSION
                 ) -> None:
        self._tmp = None
        if root is None:
            self._tmp = tempfile.mkdtemp(prefix="spotctl-localcloud-")
            root = Path(self._tmp)
        self.root = Path(root)
        self.vllm_version = vllm_version
        self.bin = self.root / "bin"
        self.volumes = self.root / "volumes"
        self._lock = threading.Lock()
        self._boots: dict[int, subprocess.Popen] = {}
        self._vm_locks: dict[int, threading.Lock] = {}  # a VM boots or halts, one at a time
        self._write_shims()

    # -- layout ----------------------------------------------------------------------------
    def _write_shims(self) -> None:
        self.bin.mkdir(parents=True, exist_ok=True)
        self.volumes.mkdir(parents=True, exist_ok=True)
        for name in SHIMS:
            path = self.bin / name
            path.write_text(f"#!/bin/sh\nexec {sys.executable} -m spotctl.localcloud.vmshim "
                            f"{name} \"$@\"\n")
            path.chmod(0o755)

    def vm_dir(self, vm: Resource) -> Path:
        return self.root / "vms" / str(vm.id)

    def fs_root(self, vm: Resource) -> Path:
        return self.vm_dir(vm) / "fs"

    def env(self, vm: Resource) -> dict[str, str]:
        import spotctl

        pkg_root = str(Path(spotctl.__file__).resolve().parent.parent)
        path = f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        env = {"PATH": path, "HOME": str(self.fs_root(vm) / "root"), "LANG": "C.UTF-8",
               "SPOTCTL_VM_ROOT": str(self.fs_root(vm)), "SPOTCTL_VM_DIR": str(self.vm_dir(vm)),
               "SPOTCTL_VM_IP": vm.ip or "127.0.0.1", "SPOTCTL_LC_VOLUMES": str(self.volumes),
               "SPOTCTL_LC_VLLM_VERSION": self.vllm_version, "SPOTCTL_LC_PID": str(os.getpid()),
               "PYTHONPATH": pkg_root + (f":{os.environ['PYTHONPATH']}"
                                         if os.environ.get("PYTHONPATH") else "")}
        return env

    # -- hooks (called under the cloud's lock: never block) -----------------------------------
    def on_attach(self, vm: Resource, vol: Resource) -> None:
        dev = self.vm_dir(vm) / "dev"
        dev.mkdir(parents=True, exist_ok=True)
        (self.volumes / str(vol.id)).mkdir(parents=True, exist_ok=True)
        used = {p.name for p in dev.glob("vd*")}
        name = next(f"vd{c}" for c in "bcdefghijklmnopqrstuvwxyz" if f"vd{c}" not in used)
        (dev / name).write_text(json.dumps({"volume": vol.id, "size": vol.size_gb * 1024 ** 3}))

    def on_detach(self, vm: Resource, vol: Resource) -> None:
        for path in (self.vm_dir(vm) / "dev").glob("vd*"):
            try:
                if json.loads(path.read_text()).get("volume") == vol.id:
                    path.unlink()
            except (OSError, ValueError):
                continue

    def on_active(self, vm: Resource) -> None:
        first = not vm.booted
        vm.booted = True
        self._in_order(vm, self._boot, first)

    def on_inactive(self, vm: Resource) -> None:
        self._in_order(vm, self._halt)

    def drain(self, vm: Resource) -> None:
        """A graceful preemption's OS shutdown: stop the VM's units (SIGTERM: vLLM drains up to
        ``--shutdown-timeout``) and wait until they have exited. Blocks; the VM stays ACTIVE."""
        done = threading.Event()
        self._in_order(vm, lambda v: (self._halt(v), done.set()))
        done.wait(60.0)

    def _in_order(self, vm: Resource, fn, *args) -> None:
        """Run ``fn`` in a thread after the VM's previous boot or halt has finished (a wake
        right after a hibernation must not race the engine's shutdown)."""
        with self._lock:
            lock = self._vm_locks.setdefault(vm.id, threading.Lock())
        started = threading.Event()

        def run() -> None:
            with lock:
                started.set()
                fn(vm, *args)

        threading.Thread(target=run, daemon=True, name=f"{fn.__name__}-vm-{vm.id}").start()
        started.wait(0.5)  # in order: the next call queues behind this one (or times out)

    # -- boot and halt -----------------------------------------------------------------------
    def _boot(self, vm: Resource, first: bool) -> None:
        fs = self.fs_root(vm)
        fs.mkdir(parents=True, exist_ok=True)
        (fs / "root").mkdir(exist_ok=True)
        (self.vm_dir(vm) / "dev").mkdir(exist_ok=True)
        if first:
            self._cloud_init(vm)
        else:
            self._systemd_boot(vm)

    def _cloud_init(self, vm: Resource) -> None:
        """Run user_data once, as cloud-init does (``#!`` scripts; anything else is logged)."""
        log = self.vm_dir(vm) / "cloud-init-output.log"
        data = vm.user_data or ""
        if not data.startswith("#!"):
            log.write_text("no user_data script: nothing runs on this VM\n"
                           if not data else "user_data is not a #! script: not run here\n")
            return
        script = self.vm_dir(vm) / "user-data"
        script.write_text(data)
        script.chmod(0o700)
        with open(log, "ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - the VM's own user_data, in its folder
                [str(script)], cwd=self.vm_dir(vm), env=self.env(vm), stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        with self._lock:
            self._boots[vm.id] = proc
        proc.wait()
        with open(log, "a") as out:
            out.write(f"user_data exited with {proc.returncode}\n")
        with self._lock:
            self._boots.pop(vm.id, None)

    def _systemd_boot(self, vm: Resource) -> None:
        """A reboot: mount /etc/fstab's volumes, start the enabled units."""
        fs = self.fs_root(vm)
        env = self.env(vm)
        fstab = fs / "etc" / "fstab"
        if fstab.is_file():
            for line in fstab.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2 and not line.startswith("#"):
                    target = Path(parts[1])
                    if target.is_symlink():
                        target.unlink()  # the mount of the previous boot is gone
                    target.mkdir(parents=True, exist_ok=True)
                    subprocess.run([str(self.bin / "mount"), parts[0], str(target)],  # noqa: S603
                                   env=env, check=False, capture_output=True)
        wants = fs / "etc/systemd/system/multi-user.target.wants"
        for unit in sorted(wants.glob("*.service")) if wants.is_dir() else []:
            subprocess.run([str(self.bin / "systemctl"), "start", unit.name],  # noqa: S603
                           env=env, check=False, capture_output=True)

    def _halt(self, vm: Resource) -> None:
        with self._lock:
            boot = self._boots.pop(vm.id, None)
        if boot is not None and boot.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(boot.pid, signal.SIGKILL)
        run = self.vm_dir(vm) / "run"
        threads = []
        for pidfile in sorted(run.glob("*.pid")) if run.is_dir() else []:
            try:
                pid = int(pidfile.read_text())
            except (OSError, ValueError):
                continue
            if vm.power_lost:  # an abrupt preemption: the host is gone, nothing drains
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                pidfile.unlink(missing_ok=True)
                continue
            timeout = self._stop_timeout(vm, pidfile.name.removesuffix(".pid"))
            t = threading.Thread(target=stop_pid, args=(pid, timeout), daemon=True)
            t.start()
            threads.append((t, pidfile))
        for t, pidfile in threads:
            t.join()
            pidfile.unlink(missing_ok=True)

    def _stop_timeout(self, vm: Resource, unit: str) -> float:
        path = self.fs_root(vm) / "etc/systemd/system" / unit
        try:
            return min(float(parse_unit(path.read_text()).get(
                "Service.TimeoutStopSec", ["90"])[-1]), 30.0)
        except (OSError, ValueError):
            return 10.0

    def stop_all(self) -> None:
        """Stop every VM's processes (the local cloud is stopping)."""
        vms = self.root / "vms"
        threads = []
        with self._lock:
            boots = list(self._boots.values())
            self._boots.clear()
        for proc in boots:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for pidfile in vms.glob("*/run/*.pid") if vms.is_dir() else []:
            try:
                pid = int(pidfile.read_text())
            except (OSError, ValueError):
                continue
            t = threading.Thread(target=stop_pid, args=(pid, 10.0), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


class NoBoot:
    """Billing-only local cloud: VMs never run their user_data (nothing serves)."""

    def on_attach(self, vm: Resource, vol: Resource) -> None:
        return None

    def on_detach(self, vm: Resource, vol: Resource) -> None:
        return None

    def on_active(self, vm: Resource) -> None:
        vm.booted = True

    def on_inactive(self, vm: Resource) -> None:
        return None

    def drain(self, vm: Resource) -> None:
        return None

    def stop_all(self) -> None:
        return None
