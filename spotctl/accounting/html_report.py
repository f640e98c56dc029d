"""``spotctl report``: one self-contained HTML file that opens offline.

Charts are drawn by Apache ECharts, vendored in ``accounting/vendor`` and inlined into the page
(nothing is fetched at view time). Every chart has a labelled UTC time axis and values
formatted for people; billing-dark periods are shaded and fleet events marked on each timeline.

Charts: spend per bucket stacked by capacity; output tokens and utilisation over time; $/Mtok
per bucket with the P10–P90 band (its scale is not set by one outlier: points above the cap
are drawn on it, marked, with their value in the tooltip). Tables: per tier, wakes,
interruptions and spot savings, hosted APIs (compare), idle policies (advise), fleet events,
gate closures, dark periods.
"""

from __future__ import annotations

import html
import json
from decimal import Decimal
from pathlib import Path

from spotctl.accounting.report import CostReport
from spotctl.clock import from_ms, iso
from spotctl.money import MICROS_PER_USD, fmt_usd

VENDOR = Path(__file__).with_name("vendor") / "echarts.common.min.js"
CATEGORY_LABELS = {"spot": "spot", "on_demand": "on-demand", "hibernated": "hibernated",
                   "storage": "storage (volumes)", "other": "other"}
CATEGORY_COLOURS = {"spot": "#2f7ed8", "on_demand": "#d9822b", "hibernated": "#8e6bbf",
                    "storage": "#7a9a52", "other": "#9aa0a6"}
# what a marker on the timeline says (the journal's names are for scripts)
EVENT_LABELS = {"preempted": "preempted", "fell_back": "fell back", "returned_to_spot":
                "back on spot", "hibernated": "hibernated", "woke": "woke", "down": "down",
                "failed": "failed"}
MARKED_EVENTS = ("preempted", "fell_back", "returned_to_spot", "hibernated", "woke", "down",
                 "failed")


def when(text: str | None) -> str | None:
    """An ISO timestamp for people (UTC said in the column's header): 2026-11-25 14:03, with
    seconds only when they are not zero."""
    if not text:
        return text
    from spotctl.clock import parse_iso

    d = parse_iso(text)
    return d.strftime("%Y-%m-%d %H:%M:%S" if d.second or d.microsecond else "%Y-%m-%d %H:%M")


def event_marks(events, start_ms: int, end_ms: int) -> list[dict]:
    """One dashed line per fleet event on the timelines; events closer than 1/60 of the window
    share one line and one label ("preempted, fell back"), so labels never overprint."""
    near = max(1, (end_ms - start_ms) // 60)
    out: list[dict] = []
    for e in sorted(events, key=lambda e: e.ts_ms):
        if e.event not in MARKED_EVENTS:
            continue
        label = EVENT_LABELS[e.event]
        if out and e.ts_ms - out[-1]["xAxis"] < near:
            if label not in out[-1]["labels"]:
                out[-1]["labels"].append(label)
            continue
        out.append({"xAxis": e.ts_ms, "labels": [label], "tier": e.tier})
    return [{"xAxis": m["xAxis"], "label": ", ".join(m["labels"]), "tier": m["tier"]}
            for m in out]


def pct(value) -> str:
    if value is None:
        return "—"
    p = Decimal(str(value)) * 100
    if p == 0:
        return "0 %"
    if p < Decimal("0.1"):
        return f"{p:.3f} %"
    return f"{p:.1f} %"


def money(value) -> str:
    if value is None:
        return "—"
    d = Decimal(str(value))
    return f"-${abs(d):,.2f}" if d < 0 else f"${d:,.2f}"


def mtok(value) -> str:
    return "—" if value is None else f"${Decimal(str(value)):,.2f}"


def rate_mismatch_text(rm: dict | None) -> str:
    """“2; worst vm:7 billed $3.1000/h vs quoted $2.5000/h (+24.00 %) at T” or “none”."""
    if not rm or not rm.get("count"):
        return "none"
    w = rm["worst"]
    off = "" if w["off_pct"] is None else f" ({Decimal(w['off_pct']):+.2f} %)"
    return (f"{rm['count']}; worst {w['resource_id']} billed "
            f"${Decimal(w['billed_usd_per_hour']):,.4f}/h vs quoted "
            f"${Decimal(w['quoted_usd_per_hour']):,.4f}/h{off} at {w['at']}")


def robust_cap(values: list[float], p90: float | None) -> float | None:
    """The top of the $/Mtok axis: 3 × the band's P90 (token-weighted, so a bucket with a
    handful of tokens cannot move it), else 3 × the median; None when no value is above it."""
    if not values:
        return None
    ordered = sorted(values)
    ref = p90 if p90 else ordered[(len(ordered) - 1) // 2]
    cap = 3 * ref
    return cap if cap > 0 and ordered[-1] > cap else None


def _series_data(report: CostReport) -> dict:
    buckets = report.buckets
    js = report.to_json()
    spend = {cat: [[b.start_ms, round(b.by_capacity[cat] / MICROS_PER_USD, 6)] for b in buckets]
             for cat in CATEGORY_LABELS}
    tokens = [[b.start_ms, b.output_tokens] for b in buckets]
    util = [[b.start_ms, None if b.utilisation is None else float(b.utilisation) * 100]
            for b in buckets]
    per = [[b.start_ms, float(b.usd_per_mtok_output)] if b.usd_per_mtok_output is not None
           and b.output_tokens >= report.min_tokens else [b.start_ms, None] for b in buckets]
    band = {k: (None if v is None else float(v)) for k, v in report.total.band.items()}
    cap = robust_cap([p[1] for p in per if p[1] is not None], band.get("p90"))
    clipped = []
    if cap is not None:
        for p in per:
            if p[1] is not None and p[1] > cap:
                clipped.append({"coord": [p[0], cap], "value": round(p[1], 2)})
                p[1] = cap
    dark = [[{"xAxis": i.start_ms}, {"xAxis": i.end_ms}] for i in report.spend.coverage.intervals]
    events = event_marks(report.data.events, report.start_ms, report.end_ms)
    return {"spend": spend, "labels": CATEGORY_LABELS, "colours": CATEGORY_COLOURS,
            "tokens": tokens, "util": util, "per": per, "band": band, "cap": cap,
            "clipped": clipped, "dark": dark, "events": events,
            "start": report.start_ms, "end": report.end_ms,
            "has_capacity": js.get("utilisation") is not None or any(
                u[1] is not None for u in util)}


_SCRIPT = r"""
const D = JSON.parse(document.getElementById('report-data').textContent);
const usd = v => v == null ? '—' : '$' + Number(v).toLocaleString('en-US',
  {minimumFractionDigits: 2, maximumFractionDigits: 2});
const num = v => v == null ? '—' : Number(v).toLocaleString('en-US');
const pct = v => v == null ? '—' : (v < 0.1 && v > 0 ? v.toFixed(3) : v.toFixed(1)) + ' %';
const time = {type: 'time', min: D.start, max: D.end, name: 'time (UTC)', nameLocation: 'middle',
  nameGap: 28, axisLabel: {hideOverlap: true, formatter: {year: '{yyyy}', month: '{MMM} {d}',
    day: '{MMM} {d}', hour: '{HH}:{mm}', minute: '{HH}:{mm}', second: '{HH}:{mm}:{ss}'}}};
const grid = {left: 78, right: 64, top: 74, bottom: 58};
function marks() {
  return {
    markArea: {silent: true, itemStyle: {color: 'rgba(220, 60, 50, 0.13)'},
      label: {show: false}, data: D.dark},
    markLine: {silent: true, symbol: 'none', animation: false,
      lineStyle: {color: '#555', type: 'dashed', width: 1},
      label: {formatter: p => p.data.label, fontSize: 10, position: 'insideEndTop',
        backgroundColor: 'rgba(255, 255, 255, 0.85)', padding: [1, 2]},
      data: D.events.map(e => ({xAxis: e.xAxis, label: e.label}))}
  };
}
function chart(id, option) {
  const c = echarts.init(document.getElementById(id), null, {renderer: 'svg'});
  if (option.title) Object.assign(option.title, {left: 8, top: 4});
  if (option.legend) Object.assign(option.legend, {left: 8, top: 30});
  c.setOption(Object.assign({animation: false, useUTC: true, grid: grid,
    tooltip: {trigger: 'axis'}}, option));
  return c;
}
const cats = Object.keys(D.labels);
chart('spend-chart', {
  title: {text: 'Spend per bucket, by capacity (shaded: billing dark; dashed: fleet events)',
          textStyle: {fontSize: 13}},
  legend: {top: 22, data: cats.map(k => D.labels[k])},
  tooltip: {trigger: 'axis', valueFormatter: usd},
  xAxis: time,
  yAxis: {type: 'value', name: 'USD per bucket', axisLabel: {formatter: usd}},
  series: cats.map((k, i) => Object.assign({name: D.labels[k], type: 'bar', stack: 'spend',
    color: D.colours[k], barCategoryGap: '10%', data: D.spend[k]}, i === 0 ? marks() : {}))
});
chart('usage-chart', {
  title: {text: D.has_capacity ? 'Output tokens and utilisation per bucket'
                               : 'Output tokens per bucket (no capacity known: no utilisation)',
          textStyle: {fontSize: 13}},
  legend: {top: 22},
  xAxis: time,
  yAxis: [{type: 'value', name: 'output tokens per bucket', axisLabel: {formatter: num}},
          {type: 'value', name: 'utilisation', axisLabel: {formatter: v => pct(v)},
           splitLine: {show: false}}],
  series: [Object.assign({name: 'output tokens', type: 'bar', color: '#3a9d5d',
                          data: D.tokens, tooltip: {valueFormatter: num}}, marks()),
           {name: 'utilisation', type: 'line', yAxisIndex: 1, color: '#b03a8e', connectNulls: false,
            showSymbol: true, symbolSize: 4, data: D.util, tooltip: {valueFormatter: pct}}]
});
const band = D.band;
const bandMarks = marks();
if (band.p10 != null && band.p90 != null) {
  bandMarks.markArea.data = bandMarks.markArea.data.concat([[
    {yAxis: band.p10, itemStyle: {color: 'rgba(47, 126, 216, 0.14)'},
     name: 'P10–P90 band'}, {yAxis: band.p90}]]);
  bandMarks.markLine.data = bandMarks.markLine.data.concat([{yAxis: band.p50,
    label: 'P50 ' + usd(band.p50), lineStyle: {color: '#2f7ed8', type: 'solid'}}]);
}
chart('band-chart', {
  title: {text: '$ per million output tokens per bucket, with the P10–P90 band (blue)' +
          (D.cap != null ? ' — axis capped at ' + usd(D.cap) + ', ▲ = above it' : ''),
          textStyle: {fontSize: 13}},
  tooltip: {trigger: 'axis', valueFormatter: v => usd(v) + '/Mtok'},
  xAxis: time,
  yAxis: {type: 'value', name: '$/Mtok output', max: D.cap == null ? null : D.cap,
          axisLabel: {formatter: usd}},
  series: [Object.assign({name: '$/Mtok', type: 'line', color: '#1f5fa8', connectNulls: false,
    showSymbol: true, symbolSize: 5, data: D.per,
    markPoint: {symbol: 'triangle', symbolSize: 10, itemStyle: {color: '#c0392b'},
      label: {show: true, position: 'top', fontSize: 10, formatter: p => usd(p.data.value)},
      data: D.clipped}}, bandMarks)]
});
"""


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    if not rows:
        body = f'<tr><td colspan="{len(headers)}" class="none">none in this window</td></tr>'
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def render_html(report: CostReport, *, compare: dict | None = None, advise: dict | None = None,
                summary: list[str] | None = None) -> str:
    data = report.data
    js = report.to_json()
    obs = js["observability"]
    closures = data.gate_closures
    spend_text = fmt_usd(report.total.spend_micros)
    if not report.spend.complete:
        spend_text = f"≥ {spend_text} (known up to {js['spend_known_until']})"
    kpis = [("spend (invoice-true)", spend_text),
            ("output tokens", f"{report.total.output_tokens:,}"),
            ("$/Mtok output", mtok(js["usd_per_mtok_output"])),
            ("band P10–P90", f"{mtok(js['band']['p10'])} – {mtok(js['band']['p90'])}"),
            ("utilisation", pct(js["utilisation"])),
            ("$/Mtok at full load", mtok(js["usd_per_mtok_at_full_load"])),
            ("idle (time)", pct(js["idle_share"])),
            ("observability", obs["status"])]
    tier_rows = [[t["name"], money(t["spend_usd"]), f"{t['output_tokens']:,}",
                  mtok(t["usd_per_mtok_output"]),
                  f"{mtok(t['band']['p10'])} – {mtok(t['band']['p90'])}",
                  pct(t["utilisation"]), mtok(t["usd_per_mtok_at_full_load"]),
                  ("—" if t["capacity_output_tokens_per_s"] is None else
                   f"{Decimal(t['capacity_output_tokens_per_s']):,.0f} tok/s "
                   f"({t['capacity_source']})"),
                  pct(t["idle_share"]),
                  ", ".join(f"{CATEGORY_LABELS[k]} {money(v)}"
                            for k, v in t["spend_by_capacity"].items() if Decimal(v)),
                  rate_mismatch_text(t.get("rate_mismatches"))]
                 for t in js["tiers"]]
    rate_rows = [[p["name"], rate_mismatch_text(p.get("rate_mismatches"))]
                 for p in js["providers"]]
    wake_rows = [[when(w["waking"]), t["name"], f"{w['seconds']:,.0f} s",
                  ", ".join(f"{k} {v:,.0f} s" for k, v in w["phases"].items()) or "—",
                  money(w["spend_usd"]), str(w["requests_held"]),
                  "—" if w["max_wait_s"] is None else f"{w['max_wait_s']:,.1f} s"]
                 for t in js["tiers"] for w in t.get("wakes", [])]
    tax = js.get("interruption_tax", {"events": []})
    int_rows = [[when(e["preempted"]), e["tier"],
                 when(e["serving_again"]) or "not by the window's end",
                 f"{Decimal(e['minutes']):,.1f} min", money(e["spend_usd"]),
                 str(e["requests_refused"])] for e in tax["events"]]
    sv = js.get("spot_savings_estimate") or {}
    sv_text = ("unknown (" + "; ".join(sv.get("unknown_rates") or ["no on-demand rate"]) + ")"
               if sv.get("net_savings_usd") is None else
               f"{money(sv['net_savings_usd'])} net (on-demand equivalent "
               f"{money(sv['on_demand_equivalent_usd'])} − spot billed "
               f"{money(sv['spot_spend_usd'])} − interruption tax "
               f"{money(sv['interruption_tax_usd'])}, over "
               f"{Decimal(sv['spot_hours']):,.1f} spot hours)")
    fleet_rows = [[when(iso(from_ms(e.ts_ms))), e.tier, e.event, e.capacity or "", e.detail or ""]
                  for e in data.events if e.event in MARKED_EVENTS]
    dark_rows = [[when(d["start"]), when(d["end"]), d["provider"], d["kind"], d["reason"]]
                 for d in obs["dark_intervals"]]
    compare_html = ""
    if compare is not None:
        from spotctl.accounting.compare import saved_text

        compare_html = _table(
            ["offer", "as of", "API would cost", "self-hosted", "saved", "API $/Mtok out",
             "break-even utilisation", "source"],
            [[o["name"], o["as_of"], money(o["usd"]), money(o["self_hosted_usd"]),
              saved_text(o),
              mtok(o["usd_per_mtok_output_equivalent"]),
              ("—" if o["break_even_utilisation"] is None else
               pct(o["break_even_utilisation"]) if Decimal(o["break_even_utilisation"]) <= 1
               else "never (> 100 %)"), _no_scheme(o["source"])]
             for o in compare["offers"]])
    advise_html = ""
    if advise is not None:
        for t in advise["tiers"]:
            bt = t["backtest"]
            err = "—" if bt["error"] is None else f"{Decimal(bt['error']) * 100:+.1f} %"
            advise_html += (f"<h3>{html.escape(t['tier'])}</h3><p>{html.escape(t['sentence'])} "
                            f"Backtest of the current policy: predicted "
                            f"{money(bt['predicted_spend_usd'])}, billed "
                            f"{money(bt['actual_spend_usd'])}, error {err}.</p>")
            advise_html += _table(
                ["idle timeout", "capacity", "predicted spend", "$/Mtok", "wakes",
                 "held > 10 s"],
                [[("never" if p["idle_minutes"] is None else f"{p['idle_minutes']} min")
                  + (" (current)" if p["current"] else ""), p["capacity"],
                  money(p["predicted_spend_usd"]), mtok(p["usd_per_mtok_output"]),
                  str(p["wakes"]), str(p["requests_held_over_10s"])] for p in t["policies"]])
    payload = json.dumps(_series_data(report)).replace("</", "<\\/")
    script = VENDOR.read_text(encoding="utf-8").replace("</script", "<\\/script")
    css = ("body{font:14px system-ui,sans-serif;margin:24px auto;color:#222;max-width:1040px;"
           "padding:0 16px}h1{font-size:21px}h2{font-size:16px;margin-top:30px}h3{font-size:14px}"
           ".chart{width:100%;height:330px;border:1px solid #e5e5e5;margin:10px 0}"
           "table{border-collapse:collapse;margin:8px 0;font-size:13px}td,th{border:1px solid "
           "#ddd;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f6f6f6}"
           "td.none{color:#888}.kpi{display:inline-block;margin:0 22px 12px 0}.kpi b{display:"
           "block;font-size:19px}.sum li{margin:3px 0}.note{color:#555;font-size:12.5px}")
    kpi_html = "".join(f'<span class="kpi">{html.escape(k)}<b>{html.escape(v)}</b></span>'
                       for k, v in kpis)
    from spotctl.accounting.compare import fully_loaded_text

    loaded = fully_loaded_text(js.get("fully_loaded") or {}, js["spend_usd"],
                               report.spend.complete)
    loaded_html = (f'<p class="loaded">{html.escape(loaded)}.</p>' if loaded else
                   '<p class="note">Fully loaded: no <code>[[fixed_costs]]</code> in the '
                   'configuration (the gateway VPS, egress, labour: costs no invoice here '
                   'carries).</p>')
    summary_html = "".join(f"<li>{html.escape(s)}</li>" for s in (summary or [report.sentence()]))
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>spotctl cost report</title><style>{css}</style></head><body>
<h1>spotctl cost report</h1>
<p>{html.escape(when(js['window']['start']))} → {html.escape(when(js['window']['end']))} UTC ·
buckets of {js['window']['bucket_seconds'] // 60} min · invoice-true: spend is the growth of
the providers' own running totals, never rate × time.</p>
<div>{kpi_html}</div>
<ul class="sum">{summary_html}</ul>
{loaded_html}
<h2>Spend over time, by capacity</h2>
<div id="spend-chart" class="chart"></div>
<h2>Tokens and utilisation over time</h2>
<div id="usage-chart" class="chart"></div>
<p class="note">Utilisation = output tokens ÷ (capacity × seconds billed as serving);
capacity from <code>spotctl bench</code> or the tier's <code>rated_output_tokens_per_s</code>.</p>
<h2>Cost per million output tokens, and the band</h2>
<div id="band-chart" class="chart"></div>
<p class="note">The band: each bucket's spend ÷ its output tokens is one value, weighted by its
tokens; P10–P90 is where the middle 80 % of the tokens' cost fell (buckets under
{report.min_tokens:,} tokens are left out). One number would hide how much the cost per token
moves with load; the band shows it.</p>
<h2>Per tier</h2>
{_table(["tier", "spend", "output tokens", "$/Mtok", "P10–P90", "utilisation",
         "$/Mtok at full load", "capacity", "idle (time)", "spend by capacity",
         "billed rate ≠ quote"], tier_rows)}
<h2>Billed rates vs launch quotes, per provider</h2>
{_table(["provider", "billed rate ≠ quote (samples; the worst)"], rate_rows)}
<p class="note">A sample whose billed rate is more than <code>[billing] rate_tolerance_pct</code>
off the rate quoted at launch: a price to check with the provider. Spend above is still the
providers' running totals, whatever the rate.</p>
<h2>Wakes</h2>
{_table(["waking at (UTC)", "tier", "took", "phases", "billed meanwhile", "requests held",
         "longest wait"], wake_rows)}
<h2>Preemptions and what spot saved</h2>
{_table(["preempted at (UTC)", "tier", "serving again (UTC)", "down for", "billed meanwhile",
         "requests refused"], int_rows)}
<p>Net spot savings (estimate, not spend): {html.escape(sv_text)}.</p>
<h2>Hosted APIs (estimates at list prices)</h2>
{compare_html or '<p class="none">not computed</p>'}
<h2>Idle policy (advise, estimates)</h2>
{advise_html or '<p class="none">not computed</p>'}
<h2>Fleet events</h2>
{_table(["at (UTC)", "tier", "event", "capacity", "detail"], fleet_rows)}
<h2>Gate closures (requests refused)</h2>
{_table(["reason", "requests"], [[k, str(v)] for k, v in sorted(closures.items())])}
<h2>Observability timeline</h2>
<p>status {html.escape(obs['status'])}, {obs['dark_seconds'] // 60} minutes without billing
data; last sample {html.escape(str(when(obs['last_sample_at'])))} UTC.</p>
{_table(["from (UTC)", "to (UTC)", "provider", "kind", "reason"], dark_rows)}
<script type="application/json" id="report-data">{payload}</script>
<script>{script}</script>
<script>{_SCRIPT}</script>
</body></html>"""


def _no_scheme(text: str) -> str:
    return text.replace("https://", "").replace("http://", "")
