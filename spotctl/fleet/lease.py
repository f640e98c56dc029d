"""One actor per tier across processes and hosts: the tier's lease in the ledger, with fencing.

Every fleet operation on a tier (a daemon's step, ``spotctl up/hibernate/wake/down``, a gateway's
wake) runs under the tier's lease (:func:`spotctl.ledger.coordination.tier_lease_name`), taken
from the ledger every process shares, so it holds across hosts on a PostgreSQL ledger as on one
host's SQLite file. Whoever comes second waits (the CLI, a gateway's wake) or skips the tier for
now (a daemon's pass), then re-reads the state under the lease and finds the work done.

- **Renewal**: while held, a thread renews the lease every ttl/3 (``[fleet] lease_ttl_s``, 30 s
  by default); a holder that dies (``kill -9``) or hangs stops renewing and another process takes
  the lease once it has expired, so within one lease period.
- **Fencing**: :meth:`TierLease.fence` runs right before every launch, wake, hibernate or delete
  the fleet asks of a provider, and inside every journal write
  (:func:`spotctl.ledger.coordination.hold_lease`): when another process has taken the lease,
  it raises :class:`~spotctl.errors.LeaseLost` and nothing is asked or written.

Within a process the lease is re-entrant per thread (an ``RLock``): an operation that calls
another (``up`` finishing a dead process's launch) holds it once. Each :class:`TierLease` has its
own holder id, so two fleet managers in one process exclude each other like two hosts.

**Lease times are real time** (a :class:`~spotctl.clock.SystemClock`, injectable for tests),
whatever clock the fleet runs on: a lease measures whether a *process* is alive, and processes
live in real time. A simulated clock running 720 times faster (the demo) would otherwise make
a 30 s lease last 40 ms, and a manual clock stepped forward by an operation's own waits (a test)
would expire the lease under the thread that holds it. Hosts' wall clocks must agree to well
within the lease period (NTP), as for every shared-ledger time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from spotctl.clock import Clock, to_ms
from spotctl.errors import LeaseLost, SpotctlError
from spotctl.ledger.coordination import (
    Lease,
    acquire_lease,
    current_lease,
    hold_lease,
    keep_lease,
    release_lease,
)
from spotctl.ledger.db import Ledger

WAIT_STEP_S = 0.1  # real seconds between two tries to take a lease someone holds
TICK_S = 0.1  # real seconds between two checks whether a renewal is due

Waiting = Callable[[Lease], None]  # told once who holds the lease we wait for


class TierLease:
    """The lease of one tier for one actor (a :class:`~spotctl.fleet.manager.FleetManager`)."""

    def __init__(self, target: Any, name: str, holder: str, clock: Clock, ttl_ms: int) -> None:
        self.target = target  # what Ledger() opens
        self.name = name
        self.holder = holder
        self.clock = clock
        self.ttl_ms = ttl_ms
        self._rlock = threading.RLock()
        self._depth = 0
        self._owner: int | None = None
        self.lease: Lease | None = None
        self._renewed_ms = 0
        self._lost: str | None = None
        self._stop: threading.Event | None = None
        self._renewer: threading.Thread | None = None
        self._guard = threading.Lock()  # the lease record between the renewer and the owner

    def _now(self) -> int:
        return to_ms(self.clock.now())

    # -- holding ----------------------------------------------------------------------------
    def acquire(self, blocking: bool = True, on_wait: Waiting | None = None) -> bool:
        """Take the lease (re-entrant in the owning thread). ``blocking``: wait for the holder
        to finish (or its lease to expire); else return False at once when someone holds it."""
        if not self._rlock.acquire(blocking=blocking):
            return False
        if self._depth > 0:
            self._depth += 1
            return True
        told = False
        try:
            while True:
                now = self._now()
                with Ledger(self.target) as led:
                    lease = acquire_lease(led, self.name, self.holder, now, self.ttl_ms)
                    other = None if lease is not None else current_lease(led, self.name, now)
                if lease is not None:
                    break
                if not blocking:
                    self._rlock.release()
                    return False
                if other is not None and not told and on_wait is not None:
                    on_wait(other)
                    told = True
                threading.Event().wait(WAIT_STEP_S)
        except BaseException:
            self._rlock.release()
            raise
        with self._guard:
            self.lease, self._renewed_ms, self._lost = lease, now, None
        self._depth, self._owner = 1, threading.get_ident()
        self._start_renewer()
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth > 0:
            self._rlock.release()
            return
        try:
            self._stop_renewer()
            with self._guard:
                lease, self.lease = self.lease, None
            self._owner = None
            if lease is not None:
                try:
                    with Ledger(self.target) as led:
                        release_lease(led, lease, self._now())
                except SpotctlError:
                    pass  # unreachable ledger: the lease expires on its own
        finally:
            self._rlock.release()

    def held(self) -> bool:
        """Whether the calling thread holds the lease now (as far as this process knows)."""
        return self._depth > 0 and self._owner == threading.get_ident()

    # -- fencing ----------------------------------------------------------------------------
    def fence(self) -> None:
        """Right before a provider call: still ours (renewed for a full period), or
        :class:`LeaseLost`. A thread that does not hold the lease may not act at all."""
        if not self.held():
            raise LeaseLost(f"lease {self.name} is not held by this operation; not acting")
        with Ledger(self.target) as led:
            self._kept(keep_lease(led, self._current(), self._now(), self.ttl_ms))

    def journal_fence(self) -> Callable[[Any], None] | None:
        """The check a journal write runs inside its transaction, when this thread holds the
        lease (None otherwise: a write outside any operation is not fenced)."""
        if not self.held():
            return None

        def check(conn: Any) -> None:
            self._kept(hold_lease(conn, self._current(), self._now(), self.ttl_ms))

        return check

    def keepalive(self) -> None:
        """Renew now if due (a long wait on the clock in the owning thread: a drain, a spot
        retry). Raises :class:`LeaseLost` if it was taken."""
        if self.held() and self._now() - self._renewed_ms >= self.ttl_ms // 3:
            self.fence()

    def _current(self) -> Lease:
        with self._guard:
            if self._lost is not None:
                raise LeaseLost(self._lost)
            assert self.lease is not None
            return self.lease

    def _kept(self, lease: Lease) -> None:
        with self._guard:
            if self.lease is not None:
                self.lease, self._renewed_ms = lease, self._now()

    # -- the renewer ------------------------------------------------------------------------
    def _start_renewer(self) -> None:
        stop = threading.Event()
        self._stop = stop
        self._renewer = threading.Thread(target=self._renew_loop, args=(stop,), daemon=True,
                                         name=f"lease-{self.name}")
        self._renewer.start()

    def _stop_renewer(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=30)
        self._stop = self._renewer = None

    def _renew_loop(self, stop: threading.Event) -> None:
        """Renew every ttl/3 of clock time while held. A lease taken by another holder is
        remembered: the owner's next fence raises :class:`LeaseLost`. An unreachable ledger
        is retried at the next tick (the lease may lapse meanwhile; nobody can take it while
        the ledger is unreachable to everyone, and whoever takes it fences us)."""
        while not stop.wait(TICK_S):
            with self._guard:
                lease, renewed = self.lease, self._renewed_ms
            if lease is None or self._lost is not None:
                return
            if self._now() - renewed < self.ttl_ms // 3:
                continue
            try:
                with Ledger(self.target) as led:
                    kept = keep_lease(led, lease, self._now(), self.ttl_ms)
            except LeaseLost as exc:
                with self._guard:
                    self._lost = exc.message
                return
            except Exception:  # noqa: S112 - an unreachable or busy ledger: try at the next tick
                continue
            if not stop.is_set():
                self._kept(kept)
