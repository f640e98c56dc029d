"""``spotctl localcloud serve``: the embedded local cloud (a Hyperstack-API emulator)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="The embedded local cloud: a GPU provider on loopback.",
                        no_args_is_help=True)
    app.add_typer(group, name="localcloud")

    @group.command("serve")
    def serve(
        listen: str = typer.Option("127.0.0.1:8790", help="host:port to listen on."),
        api_key_env: str = typer.Option("SPOTCTL_LOCALCLOUD_KEY",
                                        help="Environment variable holding the API key the "
                                             "local cloud accepts (header api_key)."),
        speed: float = typer.Option(1.0, help="Simulated seconds per real second."),
        start: str = typer.Option(None, help="Simulated start time, ISO 8601 (default: now)."),
        clock_file: Path = typer.Option(None, help="Publish the simulated timeline here, for "
                                                   "processes run with SPOTCTL_CLOCK=file:PATH."),
        engine: str = typer.Option("builtin", help="Engine in each VM: builtin | none."),
        engine_model: str = typer.Option("tiny", help="Model name the VM engines serve."),
        dark_hang_s: float = typer.Option(30.0, help="How long billing_dark requests hang."),
    ) -> None:
        """Serve the local cloud until SIGTERM/SIGINT (engine processes are stopped too)."""
        import os
        import signal

        from spotctl.cli.common import err_console
        from spotctl.clock import parse_iso, real_epoch
        from spotctl.errors import UsageError
        from spotctl.localcloud.engines import NullLauncher, ProcessLauncher
        from spotctl.localcloud.runner import serve_in_thread
        from spotctl.localcloud.simclock import SteerableClock

        key = os.environ.get(api_key_env)
        if not key:
            raise UsageError(f"set ${api_key_env} to the API key the local cloud should accept")
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"bad --listen {listen!r}: expected host:port")
        if engine not in ("builtin", "none"):
            raise UsageError(f"bad --engine {engine!r}: expected builtin or none")
        from datetime import UTC, datetime

        try:
            sim_start = parse_iso(start) if start else datetime.fromtimestamp(real_epoch(), UTC)
        except ValueError:
            raise UsageError(f"bad --start {start!r}: expected ISO 8601") from None
        clock = SteerableClock(sim_start, speed, clock_file)
        launcher = (ProcessLauncher(model=engine_model) if engine == "builtin"
                    else NullLauncher())
        handle = serve_in_thread(clock, key, launcher=launcher, control=clock, host=host,
                                 port=int(port), dark_hang_s=dark_hang_s)
        err_console().print(f"local cloud on {handle.base_url} (control {handle.control_url}); "
                            f"speed {speed}x")
        print(f"READY {handle.base_url}", flush=True)
        stop = {"now": False}

        def on_signal(signum, frame):
            stop["now"] = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not stop["now"]:
            signal.sigtimedwait([signal.SIGTERM, signal.SIGINT], 0.5)
            if handle._thread is not None and not handle._thread.is_alive():
                break
        handle.stop()
