"""The gateway service: building and serving the gateway, its keys, and the budget gate's state.

``cli/gateway.py`` parses options, calls one function here and renders the result.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from spotctl.clock import Clock, get_clock, to_ms
from spotctl.config import Config
from spotctl.errors import UsageError
from spotctl.ledger.db import Ledger
from spotctl.ledger.keys import KeyInfo, create_key, list_keys, revoke_key


def build_gateway(cfg: Config, clock: Clock | None = None,
                  log: Callable[[str], None] | None = None):
    """The gateway app with the right runtime: fixed engines, and the fleet's for the rest."""
    from spotctl.gateway.app import Gateway
    from spotctl.gateway.upstreams import RoutingRuntime

    clock = clock or get_clock()
    fleet = None
    if any(t.fleet_managed for t in cfg.tiers):
        from spotctl.services.fleet import FleetRuntime

        fleet = FleetRuntime(cfg, clock)
    return Gateway(cfg, clock, RoutingRuntime(fleet), log=log)


def _stderr_log(msg: str) -> None:
    """One log line; never raises: a full disk refuses log lines too, and a failed log write
    must not kill the usage writer or the gate thread that called it (issue 11 §1)."""
    with contextlib.suppress(OSError, ValueError):
        print(f"gateway[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def _build_in_worker(cfg: Config):
    return build_gateway(cfg, None, _stderr_log)


def parse_listen(where: str) -> tuple[str, int]:
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"bad listen address {where!r}: expected host:port")
    return host.strip("[]"), int(port)


def resolve_workers(cfg: Config, workers: int | None) -> int:
    n = cfg.gateway.workers if workers is None else workers
    if n < 0:
        raise UsageError(f"--workers must be 0 (one per core) or more, got {n}")
    return n or cores()


def cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def serve_gateway(cfg: Config, listen: str | None, workers: int | None,
                  log: Callable[[str], None]) -> int:
    """Serve until SIGTERM. Returns the process exit status."""
    from spotctl.gateway.server import serve_workers

    host, port = parse_listen(listen or cfg.gateway.listen)
    n = resolve_workers(cfg, workers)
    try:
        return serve_workers(functools.partial(_build_in_worker, cfg), cfg.gateway, host, port,
                             n, log)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def parse_budget(daily_usd: str | None) -> int | None:
    from spotctl.money import to_micros

    if daily_usd is None:
        return None
    try:
        budget = to_micros(Decimal(daily_usd))
    except (InvalidOperation, ValueError):
        raise UsageError(f"bad --daily-usd {daily_usd!r}: expected a number") from None
    if budget < 0:
        raise UsageError("--daily-usd must not be negative")
    return budget


def create(ledger: Ledger, name: str, daily_usd: str | None, clock: Clock | None = None) -> str:
    return create_key(ledger, name, to_ms((clock or get_clock()).now()), parse_budget(daily_usd))


def revoke(ledger: Ledger, name: str, clock: Clock | None = None) -> None:
    revoke_key(ledger, name, to_ms((clock or get_clock()).now()))


def keys(ledger: Ledger) -> list[KeyInfo]:
    return list_keys(ledger)


def budget_status(ledger: Ledger, cfg: Config, clock: Clock | None = None):
    from spotctl.gateway.gate import evaluate_gate

    return evaluate_gate(ledger, cfg, clock or get_clock())
