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
        engine: str = typer.Option("builtin", help="builtin: VMs boot from their user_data "
                                                   "(`vllm` runs the built-in engine); none: "
                                                   "nothing runs on the VMs (billing only)."),
        vllm_version: str = typer.Option("0.11.0", help="The vLLM version the VM image has."),
        dark_hang_s: float = typer.Option(30.0, help="How long billing_dark requests hang."),
    ) -> None:
        """Serve the local cloud until SIGTERM/SIGINT (engine processes are stopped too)."""
        import os

        from spotctl.cli.common import err_console
        from spotctl.clock import parse_iso, real_epoch
        from spotctl.errors import UsageError

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
        from spotctl.services.localcloud import serve_foreground

        def announce(base: str) -> None:
            err_console().print(f"local cloud on {base}/v1 (control {base}/_control); "
                                f"speed {speed}x")
            print(f"READY {base}/v1", flush=True)

        serve_foreground(host, int(port), key, sim_start=sim_start, speed=speed,
                         clock_file=clock_file, boot_vms=engine == "builtin",
                         vllm_version=vllm_version, dark_hang_s=dark_hang_s, announce=announce)
