"""Break-even against hosted APIs, and the fully loaded line. Pure.

What the window's tokens would have cost on hosted offers (list prices from a TOML file the
user keeps; never fetched at run time):

    usd = prompt tokens × input price + output tokens × output price      (exact decimals)

``savings_pct`` is what self-hosting saved against the offer, as a percentage of the offer's
price: (offer − self-hosted) ÷ offer × 100; negative when self-hosting cost more.

``break_even_utilisation`` is the utilisation at which this fleet's $ per million output tokens
equals the offer's, for the window's prompt/output mix: the fleet at utilisation u costs
(full-load $/Mtok) ÷ u per million output tokens, and the offer costs ``usd`` ÷ output tokens.
Above 1 the offer is cheaper even with the machines saturated.

Cached input tokens are not recorded by the gateway, so every prompt token is priced at the
uncached input price (the comparison favours the API by at most the cached discount).

Fixed costs (``[[fixed_costs]]`` in spotctl.toml: the gateway's VPS, egress, labour) are
pro-rated to the window per second of a mean month (365.25 ÷ 12 days) and shown as a separate
"fully loaded" line, never inside the invoice-true spend or band.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from spotctl.errors import ConfigError
from spotctl.money import MICROS_PER_USD, usd_str

MONTH_MS = Decimal("365.25") / 12 * 86_400_000
_PCT = Decimal("0.01")
_RATIO = Decimal("0.0001")


@dataclass(frozen=True)
class Offer:
    name: str
    models: tuple[str, ...]  # ("*",) applies to every tier
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    cached_input_usd_per_mtok: Decimal | None
    source: str
    as_of: str

    def applies_to(self, tier) -> bool:
        return "*" in self.models or tier.model in self.models or (
            tier.public_model in self.models)


_FIELDS = {"name", "model", "input_usd_per_mtok", "output_usd_per_mtok",
           "cached_input_usd_per_mtok", "source", "as_of"}


def parse_offers(data: dict, where: str) -> list[Offer]:
    """Offers from parsed TOML (floats parsed as Decimal). A bad entry is a one-line error."""
    offers = []
    unknown_top = set(data) - {"offers"}
    if unknown_top:
        raise ConfigError(f"{where}: unknown key {sorted(unknown_top)[0]!r} (expected [[offers]])")
    items = data.get("offers")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}: no [[offers]] entries")
    for i, item in enumerate(items):
        at = f"{where}: offers[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{at}: expected a table")
        extra = set(item) - _FIELDS
        if extra:
            raise ConfigError(f"{at}: unknown key {sorted(extra)[0]!r}")
        for key in ("name", "model", "input_usd_per_mtok", "output_usd_per_mtok", "source",
                    "as_of"):
            if key not in item:
                raise ConfigError(f"{at}: missing {key}")

        def price(key: str, item: dict = item, at: str = at) -> Decimal | None:
            value = item.get(key)
            if value is None:
                return None
            try:
                dec = Decimal(str(value))
            except InvalidOperation:
                dec = Decimal(-1)
            if not dec.is_finite() or dec < 0:
                raise ConfigError(f"{at}.{key}: expected a price ≥ 0 in USD, found {value!r}")
            return dec

        models = item["model"]
        if isinstance(models, str):
            models = [models]
        if not isinstance(models, list) or not models or not all(
                isinstance(m, str) and m for m in models):
            raise ConfigError(f"{at}.model: expected a model name, a list of them, or \"*\"")
        offers.append(Offer(str(item["name"]), tuple(models), price("input_usd_per_mtok"),
                            price("output_usd_per_mtok"), price("cached_input_usd_per_mtok"),
                            str(item["source"]), str(item["as_of"])))
    return offers


def offer_usd(offer: Offer, prompt_tokens: int, output_tokens: int) -> Decimal:
    return (Decimal(prompt_tokens) * offer.input_usd_per_mtok
            + Decimal(output_tokens) * offer.output_usd_per_mtok) / Decimal(1_000_000)


def _money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.000001"), ROUND_HALF_EVEN))


@dataclass
class OfferRow:
    offer: Offer
    tiers: list[str]
    prompt_tokens: int
    output_tokens: int
    self_hosted_micros: int
    full_load_usd_per_mtok: Decimal | None

    @property
    def usd(self) -> Decimal:
        return offer_usd(self.offer, self.prompt_tokens, self.output_tokens)

    @property
    def savings_pct(self) -> Decimal | None:
        api = self.usd
        if api <= 0:
            return None
        own = Decimal(self.self_hosted_micros) / MICROS_PER_USD
        return ((api - own) / api * 100).quantize(_PCT, ROUND_HALF_EVEN)

    @property
    def offer_usd_per_mtok_output(self) -> Decimal | None:
        if self.output_tokens <= 0:
            return None
        return self.usd * 1_000_000 / self.output_tokens

    @property
    def break_even_utilisation(self) -> Decimal | None:
        per = self.offer_usd_per_mtok_output
        if self.full_load_usd_per_mtok is None or not per:
            return None
        return (self.full_load_usd_per_mtok / per).quantize(_RATIO, ROUND_HALF_EVEN)

    def to_json(self) -> dict:
        per = self.offer_usd_per_mtok_output
        be = self.break_even_utilisation
        return {
            "name": self.offer.name, "models": list(self.offer.models), "tiers": self.tiers,
            "source": self.offer.source, "as_of": self.offer.as_of, "estimate": True,
            "input_usd_per_mtok": str(self.offer.input_usd_per_mtok),
            "output_usd_per_mtok": str(self.offer.output_usd_per_mtok),
            "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
            "usd": _money(self.usd),
            "self_hosted_usd": usd_str(self.self_hosted_micros),
            "savings_pct": None if self.savings_pct is None else str(self.savings_pct),
            "usd_per_mtok_output_equivalent": None if per is None else str(
                per.quantize(_RATIO, ROUND_HALF_EVEN)),
            "break_even_utilisation": None if be is None else str(be),
        }


def compare_offers(offers: Sequence[Offer], report, tier_cfgs: Sequence) -> list[OfferRow]:
    """Each offer against the tiers it applies to (their tokens and invoice-true spend)."""
    by_name = {t.name: t for t in report.tiers}
    rows = []
    for offer in offers:
        names = [t.name for t in tier_cfgs if offer.applies_to(t) and t.name in by_name]
        covered = [by_name[n] for n in names]
        prompt = sum(t.prompt_tokens for t in covered)
        output = sum(t.output_tokens for t in covered)
        spend = sum(t.spend_micros for t in covered)
        full = _full_load(covered)
        rows.append(OfferRow(offer, names, prompt, output, spend, full))
    return rows


def _full_load(rows) -> Decimal | None:
    """$/Mtok at full load over several tiers: Σ serving spend ÷ Σ capacity tokens."""
    if not rows or any(r.capacity_tokens is None and r.serving_ms > 0 for r in rows):
        return None
    cap = sum((r.capacity_tokens for r in rows if r.capacity_tokens), Decimal(0))
    if cap <= 0:
        return None
    micros = sum(r.serving_micros for r in rows)
    return Decimal(micros) / cap  # µ$ per token = $ per Mtok


@dataclass(frozen=True)
class FixedCost:
    name: str
    usd_per_month: Decimal


def fully_loaded(spend_micros: int, fixed: Sequence[FixedCost], window_ms: int) -> dict:
    """The invoice-true spend plus fixed costs pro-rated to the window (an estimate)."""
    items = [(f.name, (f.usd_per_month * window_ms / MONTH_MS)) for f in fixed]
    fixed_usd = sum((v for _, v in items), Decimal(0))
    total = Decimal(spend_micros) / MICROS_PER_USD + fixed_usd
    return {
        "estimate": True,
        "fixed_costs_usd": _money(fixed_usd),
        "fully_loaded_usd": _money(total),
        "items": [{"name": n, "usd": _money(v)} for n, v in items],
    }


def fully_loaded_text(fl: dict, spend_usd: str, complete: bool = True) -> str | None:
    """One line for people: the fully loaded figure, labelled as an estimate kept out of the
    invoice-true spend and band; None when no fixed cost is configured."""
    if not fl.get("items"):
        return None
    at_least = "" if complete else "≥ "

    def usd(v: str) -> str:
        return f"${Decimal(v):,.2f}"

    items = ", ".join(f"{i['name']} {usd(i['usd'])}" for i in fl["items"])
    return (f"Fully loaded (estimate, not invoice-true; outside the spend and the band): "
            f"{at_least}{usd(fl['fully_loaded_usd'])} = {at_least}{usd(spend_usd)} billed + "
            f"{usd(fl['fixed_costs_usd'])} of [[fixed_costs]] pro-rated to the window "
            f"({items})")


def saved_text(offer_json: dict) -> str:
    """What self-hosting saved against an offer, for people: "62.5 %"; past -100 % a
    percentage stops meaning anything to a reader, so "none: 183× the API's price"."""
    pct = offer_json.get("savings_pct")
    if pct is None:
        return "—"
    if Decimal(pct) >= -100:
        return f"{Decimal(pct):,.1f} %"
    times = Decimal(offer_json["self_hosted_usd"]) / Decimal(offer_json["usd"])
    return f"none: {times:,.0f}× the API's price"
