"""Engines inside local-cloud VMs: a VM that becomes ACTIVE runs a real engine process on
loopback; hibernate, delete and preemption stop it; restore starts it again.

The default launcher runs the built-in fast engine (``python -m spotctl.engine.builtin``). Processes
start in a background thread so the server's event loop is never blocked; the VM's
``engine_port`` is set as soon as the port is chosen, and the engine answers once it is up.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from typing import Protocol

from spotctl.localcloud.model import Resource


class EngineLauncher(Protocol):
    def start(self, vm: Resource) -> None: ...

    def stop(self, vm: Resource) -> None: ...

    def stop_all(self) -> None: ...


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NullLauncher:
    """Billing-only local cloud: VMs have no engine."""

    def start(self, vm: Resource) -> None:
        return None

    def stop(self, vm: Resource) -> None:
        return None

    def stop_all(self) -> None:
        return None


class ProcessLauncher:
    """Runs one engine process per ACTIVE VM."""

    def __init__(self, command: list[str] | None = None, *, model: str = "tiny",
                 api_key: str | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.command = command or [sys.executable, "-m", "spotctl.engine.builtin"]
        self.model = model
        self.api_key = api_key
        self.extra_env = extra_env or {}
        self._procs: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def _argv(self, port: int, vm: Resource) -> list[str]:
        argv = [*self.command, "--host", "127.0.0.1", "--port", str(port), "--model",
                self.model]
        return argv

    def start(self, vm: Resource) -> None:
        port = free_port()
        vm.engine_port = port
        env = {**os.environ, **self.extra_env}
        if self.api_key:
            env["SPOTCTL_ENGINE_API_KEY"] = self.api_key

        def run() -> None:
            proc = subprocess.Popen(  # noqa: S603 - our own engine command
                self._argv(port, vm), env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
            with self._lock:
                old = self._procs.pop(vm.id, None)
                stopped_meanwhile = vm.engine_port != port
                if not stopped_meanwhile:
                    self._procs[vm.id] = proc
            if old is not None:
                _terminate(old)
            if stopped_meanwhile:
                _terminate(proc)

        threading.Thread(target=run, daemon=True, name=f"engine-vm-{vm.id}").start()

    def stop(self, vm: Resource) -> None:
        with self._lock:
            proc = self._procs.pop(vm.id, None)
        vm.engine_port = None
        if proc is not None:
            threading.Thread(target=_terminate, args=(proc,), daemon=True).start()

    def stop_all(self) -> None:
        with self._lock:
            procs = list(self._procs.values())
            self._procs.clear()
        for proc in procs:
            _terminate(proc)


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
