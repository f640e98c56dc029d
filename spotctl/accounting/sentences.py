"""One plain sentence per question a team asks of a window. Pure.

How busy was it; what would full load cost; what did spot save; what would the API have cost.
Every figure comes from the cost report (invoice-true spend, counted tokens) or is named an
estimate; an unknown is said, never guessed.
"""

from __future__ import annotations

from decimal import Decimal

from spotctl.money import fmt_usd, to_micros


def _pct(value: Decimal) -> str:
    p = value * 100
    if p == 0:
        return "0 %"
    if p < Decimal("0.1"):
        return f"{p:.3f} %"
    return f"{p:.1f} %"


def busy_sentence(report) -> str:
    t = report.total
    if t.serving_ms <= 0:
        return "How busy: no machine billed as serving in this window."
    hours = Decimal(t.serving_ms) / 3_600_000
    if t.utilisation is None:
        missing = [r.name for r in report.tiers if r.capacity is None and r.serving_ms > 0]
        return (f"How busy: unknown — no capacity for {', '.join(missing)} (run `spotctl bench "
                f"{missing[0]}` or set rated_output_tokens_per_s); the machines billed "
                f"{hours:,.1f} h as serving for {t.output_tokens:,} output tokens.")
    caps = "; ".join(f"{r.name} {r.capacity.tokens_per_s:,.0f} tok/s ({r.capacity.source})"
                     for r in report.tiers if r.capacity is not None and r.serving_ms > 0)
    return (f"How busy: the paid serving time was {_pct(t.utilisation)} busy — "
            f"{t.output_tokens:,} output tokens in {hours:,.1f} h billed as serving, at a "
            f"capacity of {caps}.")


def full_load_sentence(report) -> str:
    t = report.total
    full = t.usd_per_mtok_at_full_load
    if full is None:
        return "At full load: unknown without a capacity for every serving tier."
    now = t.usd_per_mtok_output
    realised = f", against ${now:,.2f} realised" if now is not None else ""
    return (f"At full load the same machines would serve a million output tokens for "
            f"${full:,.2f} (estimate, at the rate they billed while serving){realised}.")


def spot_sentence(report) -> str:
    sv = report.extras.get("spot_savings_estimate") or {}
    tax = report.extras.get("interruption_tax") or {}
    if Decimal(sv.get("spot_hours") or 0) == 0:
        return "Spot: no spot time was billed in this window."
    if sv.get("net_savings_usd") is None:
        why = "; ".join(sv.get("unknown_rates") or []) or "no on-demand rate"
        return f"What spot saved is unknown: {why}."
    net = to_micros(Decimal(sv["net_savings_usd"]))
    hours = Decimal(sv["spot_hours"])
    n = tax.get("preemptions", 0)
    tax_txt = (f" after an interruption tax of {fmt_usd(to_micros(Decimal(tax['spend_usd'])))} "
               f"({n} preemption{'s' if n != 1 else ''}, {tax['minutes']} min down, "
               f"{tax['requests_refused']} requests refused)") if n else ""
    if net >= 0:
        return (f"Spot saved an estimated {fmt_usd(net)} against on-demand for the same "
                f"{hours:,.1f} h{tax_txt}.")
    return (f"Spot lost money in this window: an estimated {fmt_usd(-net)} more than on-demand "
            f"for the same {hours:,.1f} h{tax_txt}.")


def api_sentence(compare: dict | None) -> str | None:
    if compare is None:
        return None
    offers = [o for o in compare["offers"] if o["output_tokens"] > 0]
    if not offers:
        return None
    cheapest = min(offers, key=lambda o: Decimal(o["usd"]))
    api = to_micros(Decimal(cheapest["usd"]))
    own = to_micros(Decimal(cheapest["self_hosted_usd"]))
    verdict = "self-hosting saved" if own < api else "self-hosting cost"
    be = cheapest["break_even_utilisation"]
    tail = ""
    if be is not None:
        b = Decimal(be)
        tail = (f"; it breaks even at {_pct(b)} utilisation" if b <= 1 else
                "; even saturated, these machines cost more per token than it")
    return (f"The cheapest API offer, {cheapest['name']} (list price as of {cheapest['as_of']}, "
            f"an estimate), would have charged {fmt_usd(api)} for the same tokens: {verdict} "
            f"{fmt_usd(abs(api - own))}{tail}.")


def summary(report, compare: dict | None) -> list[str]:
    out = [report.sentence(), busy_sentence(report), full_load_sentence(report),
           spot_sentence(report)]
    api = api_sentence(compare)
    if api:
        out.append(api)
    return out
