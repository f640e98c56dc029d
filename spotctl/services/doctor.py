"""``spotctl doctor``: is this installation ready? One line per check, in the order a new user
meets them: the configuration, the providers' keys, the ledger, billing freshness, the gateway.

Each check is ``ok``, ``warn`` (worth knowing, not broken: no ledger yet, no gateway running
here) or ``fail``. A failed check carries the exit code the command that would hit it uses:
configuration and keys 2, an unusable ledger 1, billing not fresh or the gateway not ready 4.
The command exits with the code of the first failed check, 0 when none failed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spotctl.errors import ExitCode, SpotctlError

if TYPE_CHECKING:
    from spotctl.clock import Clock
    from spotctl.config import Config

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    exit_code: int = 0  # for a failed check: the documented code of that failure

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail}


def exit_code(checks: list[Check]) -> int:
    return next((c.exit_code for c in checks if c.status == FAIL), int(ExitCode.OK))


def run_checks(config_path: str | None, clock: Clock, *, gateway_timeout_s: float = 2.0
               ) -> list[Check]:
    from spotctl.config import find_config, load_config

    try:
        found = find_config(config_path)
        cfg = load_config(config_path)
    except SpotctlError as exc:
        return [Check("config", FAIL, exc.message, int(exc.exit_code))]
    checks = [Check("config", OK, str(found)) if found else
              Check("config", WARN, "no spotctl.toml found: all defaults (spotctl init writes "
                                    "one)")]
    checks += _provider_keys(cfg)
    ledger_check = _ledger(cfg)
    checks.append(ledger_check)
    if ledger_check.status == OK:  # billing health reads the ledger at the current schema
        checks += _billing(cfg, clock)
    checks.append(_gateway(cfg, gateway_timeout_s))
    return checks


def _provider_keys(cfg: Config) -> list[Check]:
    if not cfg.providers:
        return [Check("providers", WARN, "no [[providers]]: nothing is billed (spotctl init "
                                         "--provider KIND writes one)")]
    out = []
    for prov in cfg.providers:
        name = f"provider {prov.name}"
        if not prov.api_key_env:
            out.append(Check(name, FAIL, "api_key_env is not set in the configuration",
                             int(ExitCode.USAGE)))
        elif not os.environ.get(prov.api_key_env):
            out.append(Check(name, FAIL, f"${prov.api_key_env} is not set in the environment",
                             int(ExitCode.USAGE)))
        else:
            out.append(Check(name, OK, f"key in ${prov.api_key_env}"))
    return out


def _ledger(cfg: Config) -> Check:
    from spotctl.ledger.db import Ledger
    from spotctl.ledger.schema import SCHEMA_VERSION

    if cfg.ledger.url:  # PostgreSQL: opening it is the check
        try:
            with Ledger(cfg.ledger_target, readonly=True) as ledger:
                version = ledger.schema_version()
                where = ledger.where
        except SpotctlError as exc:
            return Check("ledger", FAIL, exc.message, int(exc.exit_code))
        return Check("ledger", OK, f"{where} (PostgreSQL, schema v{version})")
    path = cfg.ledger_path
    if not path.exists():
        return Check("ledger", WARN, f"{path}: none yet (the first spotctl poll-billing creates "
                                     "it)")
    from spotctl.ledger.check import stored_schema_version

    try:
        version = stored_schema_version(path)
        if version is not None and version < SCHEMA_VERSION:
            return Check("ledger", WARN, f"{path}: schema v{version}; the next spotctl command "
                                         f"migrates it to v{SCHEMA_VERSION}")
        with Ledger(path, readonly=True) as ledger:
            version = ledger.schema_version()
    except SpotctlError as exc:
        return Check("ledger", FAIL, exc.message, int(exc.exit_code))
    return Check("ledger", OK, f"{path} (schema v{version})")


def _billing(cfg: Config, clock: Clock) -> list[Check]:
    from spotctl.billing.health import FRESH, provider_health
    from spotctl.clock import from_ms, iso, to_ms
    from spotctl.ledger.db import Ledger

    with Ledger(cfg.ledger_target, readonly=True) as ledger:
        rows = provider_health(ledger, cfg, to_ms(clock.now()))
    out = []
    for r in rows:
        name = f"billing {r.provider}"
        last = f"last good sample {iso(from_ms(r.last_good_ms))}" if r.last_good_ms else \
            "never polled successfully"
        if r.status == FRESH:
            out.append(Check(name, OK, f"fresh, {last}"))
        else:
            detail = f"{r.status}, {last}" + (f"; last error {r.last_error}" if r.last_error
                                               else "")
            out.append(Check(name, FAIL, detail, int(ExitCode.OBSERVABILITY)))
    return out


def _gateway(cfg: Config, timeout_s: float) -> Check:
    import httpx

    host, _, port = cfg.gateway.listen.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - we connect, not bind
    url = f"http://{host}:{port}/readyz"
    try:
        resp = httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError:
        return Check("gateway", WARN, f"nothing answers on {url} (not running on this host?)")
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if resp.status_code == 200:
        return Check("gateway", OK, f"{url}: ready, gate {body.get('gate', '?')}")
    reason = body.get("reason") or body.get("gate") or f"HTTP {resp.status_code}"
    return Check("gateway", FAIL, f"{url}: not ready ({reason})", int(ExitCode.OBSERVABILITY))
