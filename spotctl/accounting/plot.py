"""``spotctl cost --plot``: spend, output tokens and $/Mtok per bucket, in the terminal.

The $/Mtok chart's scale is not set by one outlier bucket: its top is 3 × the band's P90
(token-weighted, so a bucket with a handful of tokens cannot move it), and buckets above it are
drawn on the top edge with a different marker and listed below the chart. Buckets without
tokens are gaps (no $/Mtok exists for them), never $0.
"""

from __future__ import annotations

import os
import re
import sys

from spotctl.accounting.html_report import robust_cap
from spotctl.clock import from_ms
from spotctl.money import MICROS_PER_USD


def _label(ms: int, bucket_ms: int) -> str:
    dt = from_ms(ms)
    return dt.strftime("%m-%d") if bucket_ms >= 86_400_000 else dt.strftime("%H:%M")


def _runs(points: list[tuple[int, float | None]]) -> list[list[tuple[int, float]]]:
    """Consecutive buckets that have a value: each run is drawn as its own line."""
    runs: list[list[tuple[int, float]]] = []
    cur: list[tuple[int, float]] = []
    for x, y in points:
        if y is None:
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append((x, y))
    if cur:
        runs.append(cur)
    return runs


def plot_report(report, width: int | None = None) -> str:
    import plotext as plt

    buckets = report.buckets
    if not buckets:
        return ""
    plain = "NO_COLOR" in os.environ or not sys.stdout.isatty()
    xs = list(range(len(buckets)))
    labels = [_label(b.start_ms, report.bucket_ms) for b in buckets]
    spend = [b.spend_micros / MICROS_PER_USD for b in buckets]  # display only, not arithmetic
    tokens = [b.output_tokens for b in buckets]
    per = [(i, float(b.usd_per_mtok_output)
            if b.usd_per_mtok_output is not None and b.output_tokens >= report.min_tokens
            else None) for i, b in enumerate(buckets)]
    band = {k: (None if v is None else float(v)) for k, v in report.total.band.items()}
    cap = robust_cap([y for _, y in per if y is not None], band.get("p90"))
    clipped = [(i, y) for i, y in per if y is not None and cap is not None and y > cap]
    step = max(1, len(xs) // 10)
    w = width or min(110, plt.terminal_width() or 100)
    parts = []

    def figure(height: int) -> None:
        plt.clear_figure()
        if plain:
            plt.theme("clear")
        plt.plotsize(w, height)

    def build() -> str:
        plt.xticks(xs[::step], labels[::step])
        plt.xlim(-0.5, len(xs) - 0.5)
        return plt.build()

    figure(14)
    plt.bar(xs, spend, label="spend")
    dark = [i for i, b in enumerate(buckets) if b.dark]
    if dark:
        plt.scatter(dark, [0] * len(dark), marker="x", label="billing dark or gap")
    plt.title("spend per bucket, USD (x: billing dark)")
    plt.ylabel("USD")
    parts.append(build())
    figure(12)
    plt.bar(xs, tokens, label="output tokens")
    plt.title("output tokens per bucket")
    plt.ylabel("tokens")
    parts.append(build())
    figure(16)
    for run in _runs(per):
        ys = [min(y, cap) if cap is not None else y for _, y in run]
        plt.plot([x for x, _ in run], ys, marker="dot", color="blue")
    if clipped:
        plt.scatter([i for i, _ in clipped], [cap] * len(clipped), marker="^", color="red",
                    label="above the axis")
    for key in ("p10", "p50", "p90"):
        if band.get(key) is not None:
            plt.hline(band[key], "gray")
    top = cap if cap is not None else max([y for _, y in per if y is not None] or [1.0])
    plt.ylim(0, top * 1.05)
    plt.title("$/Mtok output per bucket, P10/P50/P90 lines (gaps: no tokens)")
    plt.ylabel("$/Mtok")
    plt.xlabel("bucket start (UTC)")
    parts.append(build())
    text = "\n".join(parts)
    if plain:
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    if clipped:
        text += "\nabove the axis: " + ", ".join(
            f"{labels[i]} ${y:,.2f}/Mtok" for i, y in clipped) + "\n"
    print(text)
    return text
