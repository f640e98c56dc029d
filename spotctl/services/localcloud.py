"""Serving the embedded local cloud in the foreground (``spotctl localcloud serve``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path


def serve_foreground(host: str, port: int, api_key: str, *, sim_start: datetime, speed: float,
                     clock_file: Path | None, boot_vms: bool, vllm_version: str,
                     dark_hang_s: float, announce: Callable[[str], None]) -> None:
    """Serve until SIGTERM/SIGINT; every engine process the local cloud started is stopped.

    ``boot_vms``: VMs boot from their user_data (``vllm`` runs the built-in engine); otherwise
    nothing runs on them (billing only). ``announce(base_url)`` is called once it listens."""
    import signal
    import threading

    import uvicorn

    from spotctl.localcloud.runner import make_state
    from spotctl.localcloud.server import build_app
    from spotctl.localcloud.simclock import SteerableClock
    from spotctl.localcloud.vm import NoBoot, VmRunner

    clock = SteerableClock(sim_start, speed, clock_file)
    launcher = VmRunner(vllm_version=vllm_version) if boot_vms else NoBoot()
    state, launcher = make_state(clock, api_key, launcher, clock, dark_hang_s)
    server = uvicorn.Server(uvicorn.Config(
        build_app(state), host=host, port=port, log_level="warning", lifespan="off",
        access_log=False, ws="none"))

    def wait_then_announce() -> None:
        while not server.started and not server.should_exit:
            threading.Event().wait(0.02)
        if server.started:
            announce(f"http://{host}:{port}")

    threading.Thread(target=wait_then_announce, daemon=True).start()
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; with these handlers that
    # re-raise is harmless, so the engines below are always stopped
    signal.signal(signal.SIGTERM, lambda *a: None)
    signal.signal(signal.SIGINT, lambda *a: None)
    try:
        server.run()  # in the main thread: uvicorn handles SIGTERM/SIGINT itself
    finally:
        launcher.stop_all()
