"""``spotctl bench TIER``: measure a tier's saturated output tokens/s through the gateway."""

from __future__ import annotations

from contextlib import contextmanager

import typer

from spotctl.cli.common import console, emit_json, err_console, get_config, json_option


def register(app: typer.Typer) -> None:
    @app.command()
    @json_option
    def bench(
        ctx: typer.Context,
        tier: str = typer.Argument(..., help="The tier to load (through the gateway)."),
        duration: str = typer.Option("60s", help="Total time: 60s, 2m. Each step takes --step."),
        step: str = typer.Option("10s", help="Time per concurrency step (1, 2, 4, 8, …)."),
        ttft_slo: str = typer.Option("2s", "--ttft-slo",
                                     help="The ramp stops when TTFT p90 exceeds this."),
        mix: str = typer.Option(None, help="Prompt/output mix IN:OUT:WEIGHT,… in tokens "
                                           "(default 256:128:6,1024:128:2,512:512:2)."),
        max_concurrency: int = typer.Option(512, help="Never more concurrent streams."),
        gateway: str = typer.Option(
            None, help="Gateway URL (default: http:// and the [gateway] listen address)."),
        api_key_env: str = typer.Option(
            None, help="Env var holding a gateway key (default: a temporary key is created in "
                       "the ledger and revoked afterwards)."),
        engine_version: str = typer.Option(None, help="Recorded with the result (default: "
                                                      "vllm <vllm_version> when spotctl "
                                                      "launches vLLM, else unknown)."),
        json_out: bool = False,
    ) -> None:
        """Load-test a tier through the gateway, ramping concurrency until time to first token
        breaks the SLO; record the saturated output tokens/s in the ledger (its capacity for
        `cost` utilisation)."""
        from spotctl.accounting.bench import DEFAULT_MIX_TEXT, parse_mix, parse_seconds
        from spotctl.errors import UsageError
        from spotctl.services.economics import bench as run

        cfg = get_config(ctx)
        cfg.tier(tier)  # an unknown tier is exit 2 before the progress bar shows
        if max_concurrency < 1:
            raise UsageError("--max-concurrency must be at least 1")
        total_s = parse_seconds(duration, "--duration")
        step_s = parse_seconds(step, "--step")
        slo_ms = int(parse_seconds(ttft_slo, "--ttft-slo") * 1000)
        items = parse_mix(mix or DEFAULT_MIX_TEXT)
        if engine_version is not None:
            engine_version = engine_version.strip() or None
        args = dict(gateway_url=gateway, api_key_env=api_key_env, duration_s=total_s,
                    step_s=step_s, slo_ttft_ms=slo_ms, mix=items,
                    max_concurrency=max_concurrency, engine_version=engine_version)
        if json_out:
            emit_json(run(cfg, tier, **args).to_json())
            return
        with _progress(tier) as progress:
            out = run(cfg, tier, progress=progress, **args)
        _print(out)


@contextmanager
def _progress(tier: str):
    """A progress bar on stderr, and the callback that moves it."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]bench[/bold] {task.description}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn(),
                  console=err_console(), transient=False) as bar:
        task = bar.add_task(f"{tier}: starting", total=1.0)

        def progress(fraction, conc, last) -> None:
            seen = ""
            if last is not None:
                p90 = last.ttft_ms.get("p90")
                seen = (f" · last: {last.concurrency} streams, "
                        f"{last.output_tokens_per_s:,.0f} tok/s, TTFT p90 "
                        f"{'—' if p90 is None else f'{p90:,.0f} ms'}")
            bar.update(task, completed=fraction,
                       description=f"{tier}: {conc} concurrent stream(s){seen}")

        yield progress


def _print(out) -> None:
    from rich.table import Table

    c = console()
    table = Table(title=f"bench {out.tier} ({out.model}) — TTFT SLO p90 ≤ "
                        f"{out.slo_ttft_ms / 1000:g} s", title_justify="left")
    for col in ("streams", "requests", "errors", "output tok/s", "TTFT p50", "TTFT p90",
                "ITL p50", "ITL p99"):
        table.add_column(col, justify="right")

    def ms(v) -> str:
        return "—" if v is None else f"{v:,.0f} ms"

    for s in out.steps:
        style = "bold" if s is out.best else None
        table.add_row(str(s.concurrency), str(s.requests), str(s.errors),
                      f"{s.output_tokens_per_s:,.0f}", ms(s.ttft_ms.get("p50")),
                      ms(s.ttft_ms.get("p90")), ms(s.itl_ms.get("p50")),
                      ms(s.itl_ms.get("p99")), style=style)
    c.print(table)
    if out.slo_broken:
        c.print(f"Capacity: {out.output_tokens_per_s:,.0f} output tokens/s at "
                f"{out.concurrency} concurrent streams (the next step broke the TTFT SLO). "
                f"Recorded as bench #{out.bench_id}; `spotctl cost` uses it for utilisation.")
    else:
        c.print(f"Capacity: at least {out.output_tokens_per_s:,.0f} output tokens/s at "
                f"{out.concurrency} streams: the SLO never broke before --duration ran out "
                f"(run longer to find saturation). Recorded as bench #{out.bench_id}.")
