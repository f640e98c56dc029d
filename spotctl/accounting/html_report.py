"""``spotctl report``: one self-contained HTML file (inline SVG, no network) with spend and
tokens over time, the $/Mtok band, the per-tier table, idle share, wake durations by phase,
preemptions and fallbacks, gate closures, and the observability timeline."""

from __future__ import annotations

import html
from collections import Counter

from spotctl.accounting.report import CostReport
from spotctl.clock import from_ms, iso
from spotctl.ledger.queries import refusal_counts
from spotctl.money import MICROS_PER_USD, fmt_usd

W, H, PAD = 900, 180, 40


def _bars(values: list[float], colour: str, dark: list[bool], title: str, unit: str) -> str:
    top = max(values) if values and max(values) > 0 else 1.0
    n = max(1, len(values))
    bw = (W - 2 * PAD) / n
    parts = [f'<svg viewBox="0 0 {W} {H + 30}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{PAD}" y="16" class="t">{html.escape(title)}</text>']
    for i, v in enumerate(values):
        x = PAD + i * bw
        if dark[i]:
            parts.append(f'<rect x="{x:.1f}" y="24" width="{bw:.1f}" height="{H - 24}" '
                         'class="dark"><title>billing dark or gap</title></rect>')
        h = (H - 30) * v / top
        parts.append(f'<rect x="{x + 1:.1f}" y="{H - h:.1f}" width="{max(1, bw - 2):.1f}" '
                     f'height="{h:.1f}" fill="{colour}"><title>{v:,.4g} {unit}</title></rect>')
    parts.append(f'<text x="{W - PAD}" y="16" text-anchor="end" class="s">max {top:,.4g} '
                 f'{unit}</text></svg>')
    return "".join(parts)


def _band_chart(report: CostReport) -> str:
    pts = [(i, float(b.usd_per_mtok_output)) for i, b in enumerate(report.buckets)
           if b.usd_per_mtok_output is not None and b.output_tokens >= report.min_tokens]
    band = report.total.band
    top = max([p[1] for p in pts] + [float(band["p90"] or 0), 1.0])
    n = max(1, len(report.buckets))
    bw = (W - 2 * PAD) / n
    out = [f'<svg viewBox="0 0 {W} {H + 30}" role="img" aria-label="cost per Mtok band">',
           '<text x="40" y="16" class="t">$/Mtok output per bucket, with the P10–P90 band</text>']
    if band["p10"] is not None and band["p90"] is not None:
        y90 = H - (H - 30) * float(band["p90"]) / top
        y10 = H - (H - 30) * float(band["p10"]) / top
        out.append(f'<rect x="{PAD}" y="{y90:.1f}" width="{W - 2 * PAD}" '
                   f'height="{max(1, y10 - y90):.1f}" class="band"/>')
        y50 = H - (H - 30) * float(band["p50"]) / top
        out.append(f'<line x1="{PAD}" x2="{W - PAD}" y1="{y50:.1f}" y2="{y50:.1f}" '
                   'class="p50"/>')
    for i, v in pts:
        out.append(f'<circle cx="{PAD + (i + 0.5) * bw:.1f}" cy="{H - (H - 30) * v / top:.1f}" '
                   f'r="3" fill="#1f5fa8"><title>${v:,.2f}/Mtok</title></circle>')
    out.append("</svg>")
    return "".join(out)


def render_html(report: CostReport) -> str:
    data = report.data
    events = [(e.ts_ms, e.tier, e.event, e.capacity, e.phases, e.detail) for e in data.events]
    closures = Counter(refusal_counts(data.refusals))
    js = report.to_json()
    buckets = report.buckets
    dark = [b.dark for b in buckets]
    spend = [b.spend_micros / MICROS_PER_USD for b in buckets]  # display only
    tokens = [float(b.output_tokens) for b in buckets]
    wake_rows = []
    for ts, tier, ev, _cap, phases, _detail in events:
        if ev in ("woke", "ready", "returned_to_spot") and phases:
            p = phases
            wake_rows.append(f"<tr><td>{iso(from_ms(ts))}</td><td>{html.escape(tier)}</td>"
                             f"<td>{ev}</td><td>" + ", ".join(
                                 f"{html.escape(k)} {v:.0f} s" for k, v in p.items()) +
                             "</td></tr>")
    fleet_rows = [f"<tr><td>{iso(from_ms(ts))}</td><td>{html.escape(tier)}</td><td>{ev}</td>"
                  f"<td>{html.escape(cap or '')}</td><td>{html.escape(detail or '')}</td></tr>"
                  for ts, tier, ev, cap, _p, detail in events
                  if ev in ("preempted", "fell_back", "returned_to_spot", "hibernated", "woke",
                            "down", "failed")]
    tier_rows = "".join(
        f"<tr><td>{html.escape(t['name'])}</td><td>${t['spend_usd']}</td>"
        f"<td>{t['output_tokens']:,}</td><td>{t['usd_per_mtok_output'] or '—'}</td>"
        f"<td>{t['band']['p10'] or '—'} – {t['band']['p90'] or '—'}</td>"
        f"<td>{t['idle_share'] or '—'}</td></tr>" for t in js["tiers"])
    obs = js["observability"]
    dark_rows = "".join(
        f"<tr><td>{d['start']}</td><td>{d['end']}</td><td>{html.escape(d['provider'])}</td>"
        f"<td>{d['kind']}</td><td>{html.escape(d['reason'])}</td></tr>"
        for d in obs["dark_intervals"])
    spend_text = fmt_usd(report.total.spend_micros)
    if not report.spend.complete:
        spend_text = f"≥ {spend_text} (known up to {js['spend_known_until']})"
    css = ("body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:960px}"
           "h1{font-size:20px}h2{font-size:16px;margin-top:28px}svg{width:100%;height:auto;"
           "background:#fafafa;border:1px solid #eee}.t{font-size:13px;font-weight:600}"
           ".s{font-size:11px;fill:#666}.dark{fill:#f4c7c3;opacity:.6}.band{fill:#cfe0f5}"
           ".p50{stroke:#1f5fa8;stroke-dasharray:4 3}table{border-collapse:collapse;"
           "margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}"
           ".kpi{display:inline-block;margin-right:24px}.kpi b{display:block;font-size:20px}")
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>spotctl report</title><style>{css}</style></head><body>
<h1>spotctl cost report</h1>
<p>{js['window']['start']} → {js['window']['end']} · invoice-true: spend is the growth of the
providers' own running totals, never rate × time.</p>
<div><span class="kpi">spend<b>{html.escape(spend_text)}</b></span>
<span class="kpi">output tokens<b>{report.total.output_tokens:,}</b></span>
<span class="kpi">$/Mtok output<b>{js['usd_per_mtok_output'] or '—'}</b></span>
<span class="kpi">band P10–P90<b>{js['band']['p10'] or '—'} – {js['band']['p90'] or '—'}</b></span>
<span class="kpi">idle share<b>{js['idle_share'] or '—'}</b></span>
<span class="kpi">observability<b>{obs['status']}</b></span></div>
<p>{html.escape(report.sentence())}</p>
<h2>Spend and tokens over time</h2>
{_bars(spend, "#d9822b", dark, "spend per bucket (red: billing dark or gap)", "USD")}
{_bars(tokens, "#3a9d5d", dark, "output tokens per bucket", "tokens")}
{_band_chart(report)}
<h2>Per tier</h2>
<table><tr><th>tier</th><th>spend</th><th>output tokens</th><th>$/Mtok</th><th>P10–P90</th>
<th>idle share</th></tr>{tier_rows}</table>
<h2>Wake and launch durations by phase</h2>
<table><tr><th>at</th><th>tier</th><th>event</th><th>phases</th></tr>{''.join(wake_rows)}</table>
<h2>Preemptions, fallbacks, hibernations</h2>
<table><tr><th>at</th><th>tier</th><th>event</th><th>capacity</th><th>detail</th></tr>
{''.join(fleet_rows)}</table>
<h2>Gate closures (requests refused)</h2>
<table><tr><th>reason</th><th>requests</th></tr>{''.join(
        f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in sorted(closures.items()))}</table>
<h2>Observability timeline</h2>
<p>status {obs['status']}, {obs['dark_seconds'] // 60} minutes without billing data; last sample
{obs['last_sample_at']}.</p>
<table><tr><th>from</th><th>to</th><th>provider</th><th>kind</th><th>reason</th></tr>
{dark_rows}</table>
</body></html>"""
