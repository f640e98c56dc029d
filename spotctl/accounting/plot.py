"""``spotctl cost --plot``: spend, output tokens and $/Mtok per bucket, in the terminal."""

from __future__ import annotations

import os
import sys

from spotctl.money import MICROS_PER_USD


def plot_report(report, width: int | None = None) -> None:
    import plotext as plt

    buckets = report.buckets
    if not buckets:
        return
    xs = list(range(len(buckets)))
    labels = [f"{b.index}" for b in buckets]
    spend = [b.spend_micros / MICROS_PER_USD for b in buckets]  # display only, not arithmetic
    tokens = [b.output_tokens for b in buckets]
    per = [float(b.usd_per_mtok_output) if b.usd_per_mtok_output is not None else 0.0
           for b in buckets]
    band = report.total.band
    plt.clear_figure()
    if "NO_COLOR" in os.environ or not sys.stdout.isatty():
        plt.theme("clear")
    plt.subplots(3, 1)
    plt.plotsize(width or min(110, plt.terminal_width() or 100), 30)
    plt.subplot(1, 1)
    plt.bar(xs, spend, label="spend $/bucket")
    dark = [i for i, b in enumerate(buckets) if b.dark]
    if dark:
        plt.scatter(dark, [0] * len(dark), marker="x", label="billing dark/gap")
    plt.title("spend per bucket (x: billing dark)")
    plt.subplot(2, 1)
    plt.bar(xs, tokens, label="output tokens")
    plt.title("output tokens per bucket")
    plt.subplot(3, 1)
    plt.scatter(xs, per, label="$/Mtok output")
    for key in ("p10", "p50", "p90"):
        if band.get(key) is not None:
            plt.hline(float(band[key]))
    plt.title("$/Mtok output per bucket, with the P10/P50/P90 band")
    plt.xticks(xs[:: max(1, len(xs) // 12)], labels[:: max(1, len(xs) // 12)])
    text = plt.build()
    if "NO_COLOR" in os.environ or not sys.stdout.isatty():
        import re

        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    print(text)
