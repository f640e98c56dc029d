"""``spotctl demo``: the whole tool on the embedded local cloud, a simulated day in ~a minute."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        directory: Path = typer.Option(Path("spotctl-demo"), "--dir",
                                       help="Workspace to create (replaced if it exists)."),
        seconds: float = typer.Option(60.0, help="Real seconds for the simulated day."),
        engine: str = typer.Option("builtin", help="builtin (fast) or vllm (not yet in the "
                                                   "demo; see README)."),
    ) -> None:
        """Up a spot-first tier on the local cloud and drive a simulated day through it."""
        import contextlib
        import importlib.util
        import json
        import time

        from rich.live import Live
        from rich.table import Table

        from spotctl.cli.common import console, err_console
        from spotctl.clock import to_ms
        from spotctl.demo.run import TIER, Demo, format_sim, spend_so_far
        from spotctl.errors import UsageError
        from spotctl.money import fmt_usd

        if importlib.util.find_spec("openai") is None:
            raise UsageError("spotctl demo drives its traffic with the OpenAI SDK: "
                             "pip install 'spotctl[demo]' (make demo installs it)")
        if engine != "builtin":
            raise UsageError("--engine vllm is not wired into the demo yet; the real vLLM "
                             "engine runs in `make test` (tests/test_vllm_real.py)")
        if not 20 <= seconds <= 3600:
            raise UsageError("--seconds must be between 20 and 3600")
        c, e = console(), err_console()
        d = Demo(directory, seconds=seconds, engine=engine)
        t0 = time.monotonic()  # clock-ok: the demo's own real duration, for people
        try:
            d.prepare()
            e.print(f"[bold]spotctl demo[/bold]: workspace {d.dir} — local cloud, gateway and "
                    f"daemon from the real code; one simulated day at {d.speed:.0f}x")
            d.start_cloud()
            out = d.spotctl("keys", "create", "demo", "--json")
            if out.returncode != 0:
                raise RuntimeError(out.stderr)
            d.key = json.loads(out.stdout)["key"]
            e.print(f"up {TIER} (spot first)…")
            out = d.spotctl("up", TIER)
            if out.returncode != 0:
                raise RuntimeError(f"spotctl up failed: {out.stderr.strip()}")
            d.start("daemon", "daemon")
            d.start("gateway", "gateway")
            d._wait_http(f"http://127.0.0.1:{d.gateway_port}/healthz")

            state = {"spend": (0, "ok"), "next": 0.0, "gate": "?", "tier": "?"}

            def view() -> Table:
                t = Table(title="simulated day", title_justify="left", show_header=False)
                now_ms = to_ms(d.clock.now())
                codes = dict(d.stats.codes)
                ok = codes.pop("ok", 0)
                t.add_row("simulated time", format_sim(now_ms))
                t.add_row("requests", f"{ok} ok" + "".join(f", {n} {k}" for k, n in
                                                            sorted(codes.items())))
                t.add_row("spend (ledger)", f"{fmt_usd(state['spend'][0])} "
                                            f"(observability {state['spend'][1]})")
                t.add_row("gate", state["gate"])
                t.add_row("tier", state["tier"])
                return t

            def tick(demo_: Demo) -> None:
                now = time.monotonic()  # clock-ok: display refresh cadence
                if now < state["next"]:
                    return
                state["next"] = now + 0.5
                with contextlib.suppress(Exception):  # the display only, never the demo
                    state["spend"] = spend_so_far(d.config_path, to_ms(d.clock.now()))
                with contextlib.suppress(Exception):
                    import httpx

                    r = httpx.get(f"http://127.0.0.1:{d.gateway_port}/readyz", timeout=1).json()
                    state["gate"] = r.get("gate", "?")
                    state["tier"] = ", ".join(f"{k}: {v}" for k, v in r.get("tiers", {}).items())
                live.update(view())

            with Live(view(), console=e, refresh_per_second=4, transient=False) as live:
                d.run_day(on_tick=tick)
            e.print("the simulated day reached the present: releasing the tier…")
            d.finish()
        except KeyboardInterrupt:
            d.stop_all()
            raise
        except Exception as exc:
            d.stop_all()
            raise UsageError(f"demo failed: {exc} (logs in {d.dir})") from None
        d.stop_all()
        took = time.monotonic() - t0  # clock-ok
        e.print(f"done in {took:.0f} s. Everything below is read back from the ledger.\n")
        cfg = str(d.config_path)
        for args in (["cost", "--window", "24h"], ["events", "--since", "24h"]):
            c.print(f"$ spotctl --config {cfg} {' '.join(args)}", style="dim")
            c.print(_run_plain(cfg, args, c.width), end="", markup=False, highlight=False)
        c.print("\nExplore the workspace next:")
        for cmd in ("cost --window 6h", "cost --window 24h --plot", "events", "status",
                    "billing status", "report --window 24h --out report.html"):
            c.print(f"  spotctl --config {cfg} {cmd}")
        c.print("(The local cloud stopped with the demo: from 15 simulated minutes after its "
                "end, billing for this workspace reads 'unknown since' the end of the day, "
                "never $0.)")


def _run_plain(cfg: str, args: list[str], width: int) -> str:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("SPOTCTL_CLOCK",)}
    env["COLUMNS"] = str(width)  # the tables fit the console they are printed into
    out = subprocess.run([sys.executable, "-m", "spotctl", "--config", cfg, *args],  # noqa: S603
                         capture_output=True, text=True, env=env, check=False, timeout=120)
    return out.stdout + out.stderr
