"""A PostgreSQL server for the benches: the same initdb + pg_ctl set-up as the tests
(tests/fixtures_pg.py: loopback only, an unprivileged user when run as root, a temporary
directory, a PGPASSFILE), as a context manager that always stops it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.fixtures_pg import PG_USER, PgServer, _start_server, start_reaper

__all__ = ["PgServer", "running_postgres"]


@contextmanager
def running_postgres() -> Iterator[PgServer]:
    """Start a server; PGPASSFILE points at its password while the block runs."""
    parent = Path(tempfile.mkdtemp(prefix="spotctl-pg-bench-"))
    os.chmod(parent, 0o755)
    server = _start_server(parent / "pg")
    reaper = start_reaper(server, parent)  # stops it even if this process is killed
    passfile = parent / "pgpass"
    passfile.write_text(f"127.0.0.1:*:*:{PG_USER}:{server.password}\n")
    passfile.chmod(0o600)
    saved = os.environ.get("PGPASSFILE")
    os.environ["PGPASSFILE"] = str(passfile)
    try:
        yield server
    finally:
        from spotctl.ledger.backend import close_pools

        close_pools()
        server.ctl("stop", "-w", "-t", "60", "-m", "fast", check=False)
        reaper.kill()
        reaper.wait(10)
        if saved is None:
            os.environ.pop("PGPASSFILE", None)
        else:
            os.environ["PGPASSFILE"] = saved
        shutil.rmtree(parent, ignore_errors=True)
