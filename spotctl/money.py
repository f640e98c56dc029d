"""Exact money.

The ledger stores every amount as an integer number of micro-dollars (1e-6 USD). Provider JSON is
parsed with ``parse_float=Decimal`` and converted once, here, with banker's rounding to the
micro-dollar; from then on all arithmetic is integer and exact. Never a float sum.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000


class MoneyError(ValueError):
    """A value that is not an amount of money."""


def to_micros(value: Decimal | int | str) -> int:
    """Convert USD (Decimal, int or decimal string) to integer micro-dollars exactly.

    Floats are refused: a float has already lost the provider's exact figure.
    """
    if isinstance(value, (bool, float)):
        raise MoneyError(f"refusing a float amount {value!r}: parse JSON with parse_float=Decimal")
    try:
        dec = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise MoneyError(f"not an amount: {value!r}") from exc
    if not dec.is_finite():
        raise MoneyError(f"not a finite amount: {value!r}")
    return int((dec * MICROS_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def usd_str(micros: int, places: int = 6) -> str:
    """Decimal string in USD for JSON output (``"12.345678"``), exact to ``places``."""
    q = Decimal(1).scaleb(-places)
    return str((Decimal(micros) / MICROS_PER_USD).quantize(q, rounding=ROUND_HALF_EVEN))


def fmt_usd(micros: int | None, places: int = 2) -> str:
    """For people: ``$1,234.56``; ``—`` when unknown."""
    if micros is None:
        return "—"
    q = Decimal(1).scaleb(-places)
    amount = (Decimal(micros) / MICROS_PER_USD).quantize(q, rounding=ROUND_HALF_EVEN)
    sign = "-" if amount < 0 else ""
    return f"{sign}${abs(amount):,.{places}f}"
