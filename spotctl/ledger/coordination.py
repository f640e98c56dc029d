"""Many writers, one ledger: poll slots for pollers, leases with fencing for daemons.

**Poll slots** (``poll_slot``). Several ``poll-billing`` runs (cron on several hosts, daemons)
share one PostgreSQL ledger; each provider is polled by one of them per interval:

- a session advisory lock per provider (``pg_try_advisory_lock``): a run that finds it taken
  skips that provider at once (another host is polling it now);
- with the lock, a run that finds a *successful* poll of the provider already recorded in the
  current interval (``started_ms`` at or after ``now - now % interval``) skips it too. A failed
  poll does not count, so another host retries a provider the first could not reach.

Hosts' clocks must agree to well within the interval (NTP). A skewed host skips more, it never
doubles a sample: samples are also unique per (provider, account, resource, observed time).
On SQLite (one host) the slot is the file lock beside the ledger that ``poll-billing`` always
took: a second run waits for the first, then polls (no interval check unless asked).

**Leases** (``acquire_lease`` ...). One daemon acts on a tier at a time. A lease has a holder, an
expiry and a **fencing token** that grows by one with every new holder. A holder renews well
before expiry (every ttl/3); when it stops renewing (killed, hung, partitioned from the ledger)
another process takes the lease once it has expired, so within one lease period. Fencing:

- ``check_lease`` refuses (``LeaseLost``) unless the caller's token is still current and at
  least ``min_left_ms`` of the lease remains. The fleet calls it right before each launch or
  delete: a daemon that lost its lease cannot act, and one whose lease is about to lapse does not
  start an action that could outlive it;
- ``fenced()`` is a write transaction that first checks the lease, so a journal event written
  inside it is refused if the lease moved on: the ledger never records an action of a stale
  holder after the new holder's.

The bound: a provider API call cannot carry our token, so the guarantee for the cloud side is
"no holder starts a launch/delete with less than ``min_left_ms`` of its lease left"; with
``min_left_ms`` above the longest launch/delete call, two holders never act on a tier at once.
Lease times are the caller's; the fleet passes real time (:mod:`spotctl.fleet.lease`: a lease
measures whether a process is alive), so hosts' clocks must agree to well within the lease.

The fleet (:mod:`spotctl.fleet.lease`) renews instead of checking the time left: right before a
provider call and inside every journal write it runs :func:`hold_lease`, which keeps a lease its
holder still has (even one that lapsed but that nobody took) and raises :class:`LeaseLost` once
another holder has taken it.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotctl.errors import LeaseLost
from spotctl.ledger.db import POSTGRESQL, Ledger

LOCK_WAIT_S = 30.0


# -- poll slots ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PollSlot:
    acquired: bool
    reason: str | None = None  # why this run skips the provider (said to the user, exit 0)


def poll_lock_key(provider: str) -> int:
    from spotctl.ledger.backend import lock_key

    return lock_key(f"spotctl:poll:{provider}")


@contextmanager
def poll_slot(ledger: Ledger, provider: str, now_ms: int, interval_ms: int, *,
              dedupe: bool | None = None, wait_s: float = LOCK_WAIT_S) -> Iterator[PollSlot]:
    """The right to poll ``provider`` now, held for the ``with`` block.

    ``dedupe`` (default: on PostgreSQL) also skips when a successful poll of the provider is
    already recorded in this interval. Yields a :class:`PollSlot`; when it is not acquired the
    caller records nothing for that provider and says ``slot.reason``.
    """
    if dedupe is None:
        dedupe = ledger.backend == POSTGRESQL
    if ledger.backend == POSTGRESQL:
        key = poll_lock_key(provider)
        got = ledger.conn.execute("SELECT pg_try_advisory_lock(?)", (key,)).fetchone()[0]
        if not got:
            yield PollSlot(False, f"{provider}: another poll-billing run is polling it now; "
                                  "skipped")
            return
        try:
            yield _interval_check(ledger, provider, now_ms, interval_ms, dedupe)
        finally:
            if not ledger.conn.in_transaction:
                ledger.conn.execute("SELECT pg_advisory_unlock(?)", (key,))
        return
    with file_lock(poll_lock_path(ledger.path), wait_s) as got:
        if not got:
            yield PollSlot(False, f"{provider}: another poll-billing run held the lock for "
                                  f"{wait_s:.0f} s; skipped")
            return
        yield _interval_check(ledger, provider, now_ms, interval_ms, dedupe)


def _interval_check(ledger: Ledger, provider: str, now_ms: int, interval_ms: int,
                    dedupe: bool) -> PollSlot:
    if not dedupe or interval_ms <= 0:
        return PollSlot(True)
    start = now_ms - now_ms % interval_ms
    row = ledger.conn.execute(
        "SELECT max(started_ms) FROM billing_polls WHERE provider = ? AND outcome = 'ok' AND "
        "started_ms >= ?", (provider, start)).fetchone()
    if row and row[0] is not None:
        from spotctl.clock import from_ms, iso

        return PollSlot(False, f"{provider}: already polled at {iso(from_ms(row[0]))} this "
                               "interval (by another run); skipped")
    return PollSlot(True)


def poll_lock_path(ledger_path: Path | str) -> Path:
    """The advisory lock file beside a SQLite ledger that ``poll-billing`` runs take turns on."""
    return Path(f"{ledger_path}.poll.lock")


@contextmanager
def file_lock(path: Path, wait_s: float) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` for the ``with`` block: yields True once held, or
    False after ``wait_s`` seconds (real time) of finding it taken by another process."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        waited = 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waited >= wait_s:
                    yield False
                    return
                threading.Event().wait(0.1)  # real time: the other process runs in real time
                waited += 0.1
        yield True
    finally:
        os.close(fd)


# -- leases ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    token: int  # fencing token: larger for every new holder
    expires_ms: int


def new_holder_id() -> str:
    """``host:pid:random``: unique per process, readable in ``ledger`` queries."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def tier_lease_name(tier: str) -> str:
    """The lease of an operation on a tier (held by whoever acts on it: a daemon's step, the
    CLI's ``up/hibernate/wake/down``, a gateway's wake)."""
    return f"fleet:{tier}"


def daemon_lease_name(tier: str) -> str:
    """The lease naming the one daemon that looks after a tier (its passes, probes, recoveries)
    while several daemons run on one ledger; the others stand by."""
    return f"daemon:{tier}"


def acquire_lease(ledger: Ledger, name: str, holder: str, now_ms: int, ttl_ms: int
                  ) -> Lease | None:
    """Take (or renew, for the same holder) the lease ``name`` until ``now_ms + ttl_ms``.
    None when another holder's lease has not expired."""
    expires = now_ms + ttl_ms
    with ledger.transaction() as conn:
        row = conn.execute("SELECT holder, token, expires_ms FROM leases WHERE name = ?",
                           (name,)).fetchone()
        if row is None:
            conn.execute("INSERT INTO leases (name, holder, token, acquired_ms, expires_ms) "
                         "VALUES (?, ?, 1, ?, ?)", (name, holder, now_ms, expires))
            return Lease(name, holder, 1, expires)
        cur_holder, token, cur_expires = row
        if cur_holder == holder and cur_expires > now_ms:
            conn.execute("UPDATE leases SET expires_ms = ? WHERE name = ?", (expires, name))
            return Lease(name, holder, int(token), expires)
        if cur_expires > now_ms:
            return None
        token = int(token) + 1  # a new holding, even by the same holder after a lapse
        conn.execute("UPDATE leases SET holder = ?, token = ?, acquired_ms = ?, expires_ms = ? "
                     "WHERE name = ?", (holder, token, now_ms, expires, name))
        return Lease(name, holder, token, expires)


def renew_lease(ledger: Ledger, lease: Lease, now_ms: int, ttl_ms: int) -> Lease | None:
    """Extend a lease still held (same token, not expired). None: it was lost."""
    expires = now_ms + ttl_ms
    with ledger.transaction() as conn:
        cur = conn.execute("UPDATE leases SET expires_ms = ? WHERE name = ? AND holder = ? AND "
                           "token = ? AND expires_ms > ?",
                           (expires, lease.name, lease.holder, lease.token, now_ms))
        if cur.rowcount != 1:
            return None
    return Lease(lease.name, lease.holder, lease.token, expires)


def release_lease(ledger: Ledger, lease: Lease, now_ms: int) -> bool:
    """Give the lease up now (a clean shutdown), so another process need not wait it out."""
    with ledger.transaction() as conn:
        cur = conn.execute("UPDATE leases SET expires_ms = ? WHERE name = ? AND token = ? AND "
                           "holder = ? AND expires_ms > ?",
                           (now_ms, lease.name, lease.token, lease.holder, now_ms))
        return cur.rowcount == 1


def hold_lease(conn: Any, lease: Lease, now_ms: int, ttl_ms: int) -> Lease:
    """Keep ``lease`` for ``ttl_ms`` more, inside the caller's write transaction ``conn``, or
    raise :class:`LeaseLost` when another holder has taken it since.

    A lease is its holder's until someone else *takes* it: one that lapsed (the holder was slow
    to renew: a clock jump, a long pause) but that nobody took is renewed under the same token,
    since no other holder can have acted in between (taking it changes the holder and the
    token). This is the fence the fleet runs right before every provider call and inside every
    journal write."""
    cur = conn.execute(
        "UPDATE leases SET expires_ms = CASE WHEN expires_ms > ? THEN expires_ms ELSE ? END "
        "WHERE name = ? AND holder = ? AND token = ?",
        (now_ms + ttl_ms, now_ms + ttl_ms, lease.name, lease.holder, lease.token))
    if cur.rowcount != 1:
        row = conn.execute("SELECT holder, token FROM leases WHERE name = ?",
                           (lease.name,)).fetchone()
        who = "nobody" if row is None else f"{row[0]} (token {row[1]})"
        raise LeaseLost(f"lease {lease.name} lost: now held by {who}; not acting")
    return Lease(lease.name, lease.holder, lease.token, max(lease.expires_ms, now_ms + ttl_ms))


def keep_lease(ledger: Ledger, lease: Lease, now_ms: int, ttl_ms: int) -> Lease:
    """:func:`hold_lease` in a transaction of its own (a renewal, a fence before a call)."""
    with ledger.transaction() as conn:
        return hold_lease(conn, lease, now_ms, ttl_ms)


def current_lease(ledger: Ledger, name: str, now_ms: int) -> Lease | None:
    """The lease's holder now, or None when nobody holds it."""
    row = ledger.conn.execute("SELECT holder, token, expires_ms FROM leases WHERE name = ? AND "
                              "expires_ms > ?", (name, now_ms)).fetchone()
    return None if row is None else Lease(name, row[0], int(row[1]), int(row[2]))


def check_lease(conn: Any, lease: Lease, now_ms: int, min_left_ms: int = 0) -> None:
    """Raise :class:`LeaseLost` unless ``lease`` is current with ``min_left_ms`` to go.
    ``conn`` is ``ledger.conn`` (or the one a :meth:`Ledger.transaction` yields)."""
    row = conn.execute("SELECT holder, token, expires_ms FROM leases WHERE name = ?",
                       (lease.name,)).fetchone()
    if row is None or row[1] != lease.token or row[0] != lease.holder:
        who = "nobody" if row is None else f"{row[0]} (token {row[1]})"
        raise LeaseLost(f"lease {lease.name} lost: now held by {who}; not acting")
    if row[2] - now_ms < min_left_ms:
        raise LeaseLost(f"lease {lease.name} has {max(0, row[2] - now_ms)} ms left, under the "
                        f"{min_left_ms} ms an action needs; not acting")


def assert_lease(ledger: Ledger, lease: Lease, now_ms: int, min_left_ms: int = 0) -> None:
    """:func:`check_lease` on its own (right before a launch or a delete)."""
    check_lease(ledger.conn, lease, now_ms, min_left_ms)


@contextmanager
def fenced(ledger: Ledger, lease: Lease, now_ms: int, min_left_ms: int = 0) -> Iterator[Any]:
    """A write transaction that holds only while ``lease`` is current: writes inside it (a
    journal event) are refused with :class:`LeaseLost` otherwise."""
    with ledger.transaction() as conn:
        check_lease(conn, lease, now_ms, min_left_ms)
        yield conn
