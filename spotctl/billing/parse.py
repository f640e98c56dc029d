"""Tolerant parsing helpers every adapter shares: a required field of the right type, or an
amount as exact micro-dollars, else a classified ``malformed`` poll (never a crash). HTTP itself
is in :mod:`spotctl.clients.http`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from spotctl.billing.base import BillingError


def need(obj: Any, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    """A required field of the right type, or a classified ``malformed`` error (never a crash)."""
    if not isinstance(obj, dict) or key not in obj:
        raise BillingError("malformed", f"{where}: missing field {key!r}")
    value = obj[key]
    if isinstance(value, bool) and bool not in (typ if isinstance(typ, tuple) else (typ,)):
        raise BillingError("malformed", f"{where}: {key!r} has the wrong type")
    if not isinstance(value, typ):
        raise BillingError("malformed", f"{where}: {key!r} has the wrong type")
    return value


def money(value: Any, where: str) -> int:
    """A JSON number or numeric string (USD) as exact micro-dollars, or ``malformed``."""
    from spotctl.money import MoneyError, to_micros

    if isinstance(value, bool) or value is None:
        raise BillingError("malformed", f"{where}: not an amount")
    if isinstance(value, int | Decimal | str):
        try:
            micros = to_micros(value)
        except MoneyError:
            raise BillingError("malformed", f"{where}: not an amount") from None
        if abs(micros) > 10**15:  # a billion dollars: a corrupt number, not a bill
            raise BillingError("malformed", f"{where}: implausible amount")
        return micros
    raise BillingError("malformed", f"{where}: not an amount")
