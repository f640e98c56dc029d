"""Run the local cloud: in a background thread (tests, the demo) or in the foreground (CLI)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from spotctl.clock import Clock
from spotctl.localcloud.engines import free_port
from spotctl.localcloud.model import LocalCloud
from spotctl.localcloud.server import ServerState, build_app
from spotctl.localcloud.vm import NoBoot, VmRunner


@dataclass
class LocalCloudHandle:
    state: ServerState
    launcher: VmRunner | NoBoot
    host: str
    port: int
    _server: object = None
    _thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The Hyperstack-style API base (what a provider's ``base_url`` points at)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def control_url(self) -> str:
        return f"http://{self.host}:{self.port}/_control"

    @property
    def cloud(self) -> LocalCloud:
        return self.state.cloud

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True  # type: ignore[attr-defined]
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.launcher.stop_all()


def make_state(clock: Clock, api_key: str, launcher: VmRunner | NoBoot | None = None,
               control: object = None, dark_hang_s: float = 30.0
               ) -> tuple[ServerState, VmRunner | NoBoot]:
    """The local cloud's state. ``launcher``: a :class:`VmRunner` (VMs boot from their
    user_data) or :class:`NoBoot` (billing only: nothing runs on the VMs)."""
    launcher = launcher or NoBoot()
    cloud = LocalCloud(clock, on_vm_active=launcher.on_active,
                       on_vm_inactive=launcher.on_inactive, on_attach=launcher.on_attach,
                       on_detach=launcher.on_detach, on_vm_drain=launcher.drain)
    return ServerState(cloud, api_key, dark_hang_s=dark_hang_s, control=control), launcher


def serve_in_thread(clock: Clock, api_key: str, *, launcher: VmRunner | NoBoot | None = None,
                    control: object = None, host: str = "127.0.0.1", port: int = 0,
                    dark_hang_s: float = 30.0) -> LocalCloudHandle:
    import time

    import uvicorn

    state, launcher = make_state(clock, api_key, launcher, control, dark_hang_s)
    port = port or free_port()
    config = uvicorn.Config(build_app(state), host=host, port=port, log_level="warning",
                            lifespan="off", access_log=False, ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name="localcloud")
    thread.start()
    deadline = time.monotonic() + 10  # clock-ok: real wait for a socket to listen
    while not server.started and time.monotonic() < deadline:  # clock-ok
        time.sleep(0.01)  # clock-ok
    if not server.started:
        raise RuntimeError("the local cloud did not start")
    return LocalCloudHandle(state, launcher, host, port, server, thread)
