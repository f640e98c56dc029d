"""A PostgreSQL server for the benches: the tests' own set-up (tests/fixtures_pg.py: initdb +
pg_ctl, loopback only, an unprivileged user when run as root, a temporary directory, a
PGPASSFILE), as a context manager that always stops it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.fixtures_pg import PgServer
from tests.fixtures_pg import running_postgres as _running_postgres

__all__ = ["PgServer", "running_postgres"]


@contextmanager
def running_postgres() -> Iterator[PgServer]:
    """Start a server; PGPASSFILE points at its password while the block runs."""
    with _running_postgres("spotctl-pg-bench-") as server:
        yield server
