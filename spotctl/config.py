"""``spotctl.toml``: pydantic models, discovery and one-line error messages.

Discovery order: ``--config PATH``, ``$SPOTCTL_CONFIG``, ``./spotctl.toml``, the user's config dir.
Secrets are never read from this file: providers and engines name the *environment variable*
that holds their key (``api_key_env``).
"""

from __future__ import annotations

import os
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from spotctl.errors import ConfigError

CONFIG_ENV = "SPOTCTL_CONFIG"
CONFIG_NAME = "spotctl.toml"

ProviderKind = Literal["hyperstack", "runpod", "vast", "lambda", "localcloud"]
Quantization = Literal[
    "awq", "awq_marlin", "gptq", "gptq_marlin", "compressed-tensors", "fp8", "none"
]
Capacity = Literal["spot-first", "spot", "on-demand"]
Exposure = Literal["ssh", "public"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LedgerConfig(_Section):
    path: Path | None = None  # SQLite (the default): spotctl.db beside the config file
    # PostgreSQL instead (a ledger shared by several hosts): postgresql://user@host:port/db.
    # The password comes from PGPASSWORD or ~/.pgpass (libpq), never from this file.
    url: str | None = None
    pool_size: Annotated[int, Field(ge=1, le=200)] = 10  # connections per process (PostgreSQL)
    pool_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0  # wait for a free connection
    query_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0  # a statement's deadline

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from urllib.parse import urlsplit

        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected a postgresql://user@host:port/dbname URL")
        parts = urlsplit(value)
        if parts.password is not None or "password=" in parts.query.lower():
            raise ValueError("the URL holds a password; put it in PGPASSWORD or ~/.pgpass "
                             "instead (secrets never go in spotctl.toml)")
        return value

    @model_validator(mode="after")
    def _one_backend(self) -> LedgerConfig:
        if self.url is not None and self.path is not None:
            raise ValueError("set either path (SQLite) or url (PostgreSQL), not both")
        return self

    @property
    def backend(self) -> str:
        return "postgresql" if self.url else "sqlite"


class BillingConfig(_Section):
    poll_interval_s: Annotated[int, Field(ge=1, le=3600)] = 60
    gap_after_s: Annotated[int, Field(ge=1)] = 150
    stale_after_s: Annotated[int, Field(ge=1)] = 180
    deleted_poll_every_s: Annotated[int, Field(ge=60, le=600)] = 600
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    # price truth: a billed rate further than this from the rate quoted at launch is an anomaly
    rate_tolerance_pct: Annotated[float, Field(ge=0, le=1000)] = 5.0


class ProviderConfig(_Section):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    kind: ProviderKind
    api_key_env: str | None = None
    base_url: str | None = None  # default: the provider's real API
    account: str | None = None  # label for the account when the API gives none


class _TierBase(_Section):
    """What every tier has, whatever runs it."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9-]*$")]
    model: str
    served_model_name: str | None = None  # what clients put in "model"; default: model
    priority: int = 0  # lower serves first
    provider: str | None = None  # the [[providers]] name that bills this tier's machines
    accelerators: str | None = None  # "H100:1": what it runs on (launched, or described)
    api_key_env: str | None = None  # the engine's key, for fixed or public engines
    # (econ) output tokens/s one machine of this tier serves at saturation, when no
    # `spotctl bench` was run: capacity for `cost` utilisation and full-load $/Mtok. Cite the
    # figure's source in a comment.
    rated_output_tokens_per_s: Annotated[float, Field(gt=0)] | None = None

    @property
    def public_model(self) -> str:
        return self.served_model_name or self.model

    @property
    def fleet_managed(self) -> bool:
        return True

    @property
    def hardware(self) -> str | None:
        """A label for what the engine runs on (bench records, reports)."""
        return self.accelerators


class FixedTier(_TierBase):
    """``backend = "fixed"`` (or just ``endpoint = ...``): an engine the user already runs.
    spotctl routes to it and attributes its provider's billing; it manages no machine."""

    backend: Literal["fixed"] = "fixed"
    endpoint: str  # http://host:port, without /v1

    @property
    def fleet_managed(self) -> bool:
        return False


class _ManagedTier(_TierBase):
    """A tier whose machines spotctl launches, hibernates and downs."""

    quantization: Quantization = "none"
    tensor_parallel: Annotated[int, Field(ge=1)] = 1
    max_model_len: Annotated[int, Field(ge=16)] | None = None
    capacity: Capacity = "spot-first"
    spot_retry_minutes: Annotated[int, Field(ge=0, le=24 * 60)] = 30
    idle_minutes: Annotated[int, Field(ge=0)] = 15
    vllm_args: list[str] = Field(default_factory=list)
    vllm_version: str = "0.11.0"
    exposure: Exposure = "ssh"
    engine_port: Annotated[int, Field(ge=1, le=65535)] = 8000
    # exposure = "ssh": how the gateway host reaches the VM (host keys must be in known_hosts)
    ssh_user: str = "ubuntu"
    ssh_port: Annotated[int, Field(ge=1, le=65535)] = 22
    ssh_key_path: Path = Path("~/.ssh/id_ed25519")
    ssh_known_hosts: Path = Path("~/.ssh/known_hosts")

    @property
    def endpoint(self) -> None:
        """A managed tier has no fixed endpoint: the fleet knows where its engine is."""
        return None


class SkyPilotTier(_ManagedTier):
    """``backend = "skypilot"`` (the default): a SkyPilot cluster on the listed clouds."""

    backend: Literal["skypilot"] = "skypilot"
    clouds: list[str] = Field(default_factory=list)
    regions: list[str] = Field(default_factory=list)
    weights_bucket: str | None = None  # e.g. s3://my-weights, mounted MOUNT_CACHED
    # or a SkyPilot volume by name (`sky volumes apply`; RunPod network volumes, Kubernetes
    # PVCs), mounted at the same place; a bucket wins when both are set
    weights_volume: str | None = None


class HyperstackTier(_ManagedTier):
    """``backend = "hyperstack"``: native Hyperstack VMs and a weights volume that outlives them."""

    backend: Literal["hyperstack", "localcloud"] = "hyperstack"
    flavor: str | None = None  # Hyperstack / local cloud flavor name (default: from accelerators)
    # The account's environment, SSH key pair and OS image by name (checked before anything is
    # created), and the tier's weights volume (name and size).
    environment: str = "default"
    keypair: str = "spotctl"
    image: str = "Ubuntu Server 22.04 LTS R535 CUDA 12.2"
    weights_volume: str | None = None  # default: spotctl-<tier>-weights
    volume_gb: Annotated[int, Field(ge=1, le=1_048_576)] = 200

    @property
    def hardware(self) -> str | None:
        return self.accelerators or self.flavor


class LocalCloudTier(HyperstackTier):
    """``backend = "localcloud"``: the embedded local cloud (Hyperstack's API)."""

    backend: Literal["localcloud"] = "localcloud"


def _tier_backend(value: Any) -> str:
    """The union's tag: ``backend``, else ``fixed`` when an ``endpoint`` is given, else the
    default ``skypilot``."""
    if isinstance(value, dict):
        backend = value.get("backend")
        if backend is None:
            return "fixed" if "endpoint" in value else "skypilot"
        return backend if isinstance(backend, str) else "?"
    return getattr(value, "backend", "?")


# A tier is one of these, by its backend: a key that does not belong to the backend is an error
# (``flavor`` on a SkyPilot tier, ``clouds`` on a Hyperstack one), never silently ignored.
TierConfig = Annotated[
    Annotated[SkyPilotTier, Tag("skypilot")]
    | Annotated[HyperstackTier, Tag("hyperstack")]
    | Annotated[LocalCloudTier, Tag("localcloud")]
    | Annotated[FixedTier, Tag("fixed")],
    Discriminator(_tier_backend, custom_error_type="backend",
                  custom_error_message="backend: one of skypilot, hyperstack, localcloud, fixed",
                  custom_error_context={"discriminator": "backend"}),
]


class BudgetConfig(_Section):
    daily_usd: Annotated[Decimal, Field(ge=0)] | None = None
    timezone: str = "UTC"
    # close the gate while a provider bills a rate off its launch quote (a `rate_mismatch`
    # anomaly since the last good poll), as for stale billing
    close_on_rate_mismatch: bool = False

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"an IANA time zone such as 'Europe/Paris', got {value!r}") from exc
        return value


class GatewayConfig(_Section):
    listen: str = "127.0.0.1:8080"
    wake_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    connect_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    first_token_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    total_timeout_s: Annotated[float, Field(gt=0)] = 900.0
    gate_cache_s: Annotated[float, Field(ge=0, le=30)] = 2.0
    # gateway (issue 11 §1): usage rows the ledger cannot take go to this spool directory
    # (default: beside the ledger, "<ledger>.spool"), bounded; past the bound the gate closes.
    spool_dir: Path | None = None
    spool_max_bytes: Annotated[int, Field(ge=4096)] = 256 * 1024 * 1024
    # gateway (issue 11 §7): limits for unauthenticated clients, per worker process.
    max_header_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 32 * 1024
    max_headers: Annotated[int, Field(ge=8, le=1000)] = 100
    header_timeout_s: Annotated[float, Field(gt=0)] = 10.0  # request line + headers
    body_timeout_s: Annotated[float, Field(gt=0)] = 30.0  # the whole request body
    keep_alive_s: Annotated[float, Field(gt=0)] = 5.0  # an idle keep-alive connection
    # on SIGTERM, requests in flight get this long to finish; longer ones are cut and recorded
    # (tokens estimated when the engine's usage did not arrive).
    shutdown_grace_s: Annotated[float, Field(ge=0)] = 20.0
    max_connections: Annotated[int, Field(ge=1)] = 4096
    max_concurrent_requests: Annotated[int, Field(ge=1)] = 1024
    # gateway (issue 11 §9): a billing poll stamped further than this in the future is suspect.
    clock_skew_s: Annotated[float, Field(ge=0)] = 5.0
    # gateway (issue 11 §3/§10): engine probes, concurrent, short; a tier whose engine fails
    # probe_failures probes in a row is routed around until a probe succeeds.
    probe_interval_s: Annotated[float, Field(gt=0)] = 5.0
    probe_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    probe_failures: Annotated[int, Field(ge=1)] = 2
    # a request that failed before any byte reached the client is retried (another tier, or
    # the same after recovery) up to this many times within wake_timeout_s.
    retry_attempts: Annotated[int, Field(ge=0, le=10)] = 3
    # gateway (issue 11 §11): /readyz and /metrics answer only with a gateway key.
    protect_status: bool = False
    # gateway (issue 15): the upstream HTTP client, chosen by measurement (bench/gateway_overhead.py):
    # "h1" (asyncio + httptools, http:// engines only) or "aiohttp" (also https://).
    upstream_client: Literal["h1", "aiohttp"] = "h1"
    # where usage rows are written: a process of their own (no GIL time taken from the event
    # loop; gateway/usageproc.py) or a thread of the gateway's (gateway/recorder.py)
    usage_writer: Literal["process", "thread"] = "process"
    # gateway (issue 15): worker processes sharing the port (SO_REUSEPORT); 0 = one per core
    # this process may run on (the default).
    workers: Annotated[int, Field(ge=0, le=256)] = 0


class FleetConfig(_Section):
    """``[fleet]``: how the fleet drains tiers and watches engines (issue 11 §3, §4)."""

    # the longest an explicit hibernate or down waits for the gateways' open requests, seconds
    drain_timeout_s: Annotated[float, Field(ge=0, le=3600)] = 120.0
    # engine probes (GET /v1/models) by the daemon: failures in a row before it recovers the
    # tier (restart the engine, else replace the machine); 0 never recovers; the probe timeout
    probe_failures: Annotated[int, Field(ge=0, le=100)] = 3
    probe_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    # (lease) the tier lease's period, seconds: one process acts on a tier at a time across
    # hosts (daemons, CLI, gateways' wakes); renewed every third of it; a holder that dies is
    # replaced within one period (spotctl.fleet.lease)
    lease_ttl_s: Annotated[float, Field(ge=1, le=3600)] = 30.0


class FixedCostConfig(_Section):
    """(econ) A cost the providers' invoices do not carry (the gateway's VPS, egress, labour):
    shown pro-rated as a separate "fully loaded" line by `cost` and `compare`, never in spend."""

    name: Annotated[str, Field(min_length=1)]
    usd_per_month: Annotated[Decimal, Field(ge=0)]


class Config(_Section):
    ledger: LedgerConfig = LedgerConfig()
    billing: BillingConfig = BillingConfig()
    providers: list[ProviderConfig] = Field(default_factory=list)
    tiers: list[TierConfig] = Field(default_factory=list)
    budget: BudgetConfig = BudgetConfig()
    gateway: GatewayConfig = GatewayConfig()
    fleet: FleetConfig = FleetConfig()
    fixed_costs: list[FixedCostConfig] = Field(default_factory=list)  # (econ) [[fixed_costs]]
    # Where the file was read from; not a TOML key.
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        names = [p.name for p in self.providers]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"providers: duplicate name {sorted(dup)[0]!r}")
        tiers = [t.name for t in self.tiers]
        dup = {n for n in tiers if tiers.count(n) > 1}
        if dup:
            raise ValueError(f"tiers: duplicate name {sorted(dup)[0]!r}")
        for tier in self.tiers:
            if tier.provider is not None and tier.provider not in names:
                raise ValueError(
                    f"tiers.{tier.name}.provider: expected one of {names}, got {tier.provider!r}"
                )
        return self

    @property
    def ledger_path(self) -> Path:
        base = self.source.parent if self.source else Path.cwd()
        path = self.ledger.path or Path("spotctl.db")
        return path if path.is_absolute() else base / path

    @property
    def ledger_target(self) -> LedgerConfig:
        """What ``Ledger()`` opens: the ``[ledger]`` section with the SQLite path made absolute
        (unused when ``url`` names a PostgreSQL ledger)."""
        if self.ledger.url:
            return self.ledger
        return self.ledger.model_copy(update={"path": self.ledger_path})

    def tier(self, name: str) -> TierConfig:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        known = ", ".join(t.name for t in self.tiers) or "none configured"
        raise ConfigError(f"unknown tier {name!r} (known: {known})")

    def provider(self, name: str) -> ProviderConfig:
        for prov in self.providers:
            if prov.name == name:
                return prov
        known = ", ".join(p.name for p in self.providers) or "none configured"
        raise ConfigError(f"unknown provider {name!r} (known: {known})")


def user_config_path() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("spotctl")) / CONFIG_NAME


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """Where the configuration is, by the documented order; ``None`` when there is none."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found")
        return path
    env = os.environ.get(CONFIG_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found (from ${CONFIG_ENV})")
        return path
    local = Path.cwd() / CONFIG_NAME
    if local.is_file():
        return local
    user = user_config_path()
    return user if user.is_file() else None


TIER_TAGS = ("skypilot", "hyperstack", "localcloud", "fixed")


def _loc(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """Render a pydantic location as ``tiers[0].capacity`` (named ``tiers.big`` when possible).
    The tier union's tag (``tiers[0].skypilot.flavor``) is not a key of the file: left out."""
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, str) and item in TIER_TAGS and isinstance(node, dict) \
                and item not in node and parts and parts[-1].startswith("["):
            continue
        if isinstance(item, int):
            name = None
            if isinstance(node, list) and 0 <= item < len(node) and isinstance(node[item], dict):
                name = node[item].get("name")
            parts.append(f"[{item}]" if not name else f"[{item}:{name}]")
            node = node[item] if isinstance(node, list) and 0 <= item < len(node) else None
        else:
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def format_validation_error(path: Path | str, exc: ValidationError, data: dict[str, Any]) -> str:
    err = exc.errors(include_url=False)[0]
    where = _loc(tuple(err.get("loc", ())), data)
    msg = err.get("msg", "invalid value")
    if err.get("type") == "extra_forbidden":
        loc = tuple(err.get("loc", ()))
        tag = next((x for x in loc if isinstance(x, str) and x in TIER_TAGS), None)
        if tag is not None and len(loc) >= 3 and loc[0] == "tiers":
            return (f"{path}: {where}: unknown key for a tier with backend {tag!r} (check its "
                    "spelling, or the tier's backend)")
        return f"{path}: {where}: unknown key (check its spelling)"
    found = err.get("input")
    if err.get("type") == "backend" and isinstance(found, dict):  # the tier union's tag
        where, found = f"{where}.backend", found.get("backend")
        msg = "one of skypilot, hyperstack, localcloud, fixed"
    found_text = repr(found)
    if err.get("type") == "missing":
        found_text = "missing"
    elif isinstance(found, dict | list):
        found_text = type(found).__name__
    if isinstance(found, str) and "://" in found and "@" in found:  # never echo a password
        found_text = repr(found.split("://", 1)[0] + "://***@" + found.rsplit("@", 1)[1])
    more = len(exc.errors()) - 1
    tail = f" (+{more} more error{'s' if more > 1 else ''})" if more > 0 else ""
    msg = msg.removeprefix("Value error, ")
    return f"{path}: {where}: expected {msg[0].lower() + msg[1:]}, found {found_text}{tail}"


def parse_config(text: str, source: Path | str = CONFIG_NAME) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc, data)) from None
    return cfg.model_copy(update={"source": Path(source).resolve()})


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Find and load the configuration; with none anywhere, the defaults (ledger in cwd)."""
    path = find_config(explicit)
    if path is None:
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse_config(text, path)
