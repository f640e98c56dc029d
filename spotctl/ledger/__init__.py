"""The SQLite ledger: schema, writes and queries."""

from spotctl.ledger.db import Ledger, open_ledger

__all__ = ["Ledger", "open_ledger"]
