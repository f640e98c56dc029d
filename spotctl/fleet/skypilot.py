"""The SkyPilot fleet backend. ``sky`` is imported only inside the SDK wrapper's methods.

Spot first with a bounded fallback is driven by :class:`~spotctl.fleet.manager.FleetManager`:
this backend launches one capacity at a time (a task whose resources are spot-only or
on-demand-only), so spotctl — not SkyPilot's optimizer — decides when to give up on spot.
Hibernate stops the cluster where the cloud can stop this capacity; most clouds cannot stop
spot (``NotSupportedError``), so then it downs it: weights stay in the bucket.
"""

from __future__ import annotations

from spotctl.clock import Clock
from spotctl.config import Config, TierConfig
from spotctl.errors import ExitCode, NoSpotCapacity, SpotctlError, scrub
from spotctl.fleet.base import CapacityKind, PhaseTimings, Progress, TierState, TierStatus, no_progress
from spotctl.fleet.skypilot_task import cluster_name, task_config


def _exc_name(exc: BaseException) -> str:
    return type(exc).__name__


def map_sky_error(exc: BaseException, tier: str, secrets: tuple[str, ...] = ()) -> SpotctlError:
    """SkyPilot's exceptions as one-line messages with documented exit codes. SkyPilot's text
    (it may quote a cloud's answer, a key included) is scrubbed here, where it enters spotctl:
    ``secrets`` (the configured keys' values) and anything that looks like a credential."""
    name = _exc_name(exc)
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else name
    first = scrub(first, secrets)
    if name == "ResourcesUnavailableError":
        return SpotctlError(f"tier {tier!r}: no capacity: {first}", ExitCode.ERROR)
    if name == "ClusterDoesNotExist":
        return SpotctlError(f"tier {tier!r}: no such cluster (never launched, downed, or "
                            "preempted)", ExitCode.USAGE)
    if name == "ClusterNotUpError":
        return SpotctlError(f"tier {tier!r}: the cluster is not up", ExitCode.ERROR)
    if name == "NotSupportedError":
        return SpotctlError(f"tier {tier!r}: not supported by this cloud: {first}",
                            ExitCode.ERROR)
    if name == "NoCloudAccessError":
        return SpotctlError("SkyPilot has no cloud enabled: run `sky check`", ExitCode.USAGE)
    if name == "ApiServerConnectionError":  # by type: a RuntimeError naming the API server
        # ("Failed to upload files to API server") is not a connection failure
        return SpotctlError(f"SkyPilot API server unreachable: {first}", ExitCode.ERROR)
    return SpotctlError(f"tier {tier!r}: SkyPilot error {name}: {first}", ExitCode.ERROR)


class SkyPilotBackend:
    name = "skypilot"

    def __init__(self, cfg: Config, clock: Clock, sdk=None) -> None:
        self.cfg = cfg
        self.clock = clock
        if sdk is None:
            from spotctl.fleet.sky_sdk import SkySDK

            sdk = SkySDK()
        self.sdk = sdk

    def _secrets(self) -> tuple[str, ...]:
        from spotctl.fleet.manager import fleet_secrets

        return fleet_secrets(self.cfg)

    def _single_capacity(self, tier: TierConfig, capacity: CapacityKind) -> dict:
        only = tier.model_copy(update={"capacity": "spot" if capacity == "spot" else
                                       "on-demand"})
        return task_config(only)

    def up(self, tier: TierConfig, capacity: CapacityKind, progress: Progress = no_progress
           ) -> tuple[TierStatus, PhaseTimings]:
        timings = PhaseTimings()
        t0 = self.clock.monotonic()
        progress("provisioning", None, f"sky launch {cluster_name(tier)} ({capacity})")
        try:
            self.sdk.launch(self._single_capacity(tier, capacity), cluster_name(tier))
        except Exception as exc:
            err = map_sky_error(exc, tier.name, self._secrets())
            if _exc_name(exc) == "ResourcesUnavailableError" and capacity == "spot":
                err = NoSpotCapacity(f"tier {tier.name!r}: no spot capacity: {err.message}")
            raise err from None
        timings.phases["provisioning"] = self.clock.monotonic() - t0
        status = self.status(tier)
        return TierStatus(tier.name, status.state, capacity, status.cloud, status.region,
                          status.endpoint, status.resource_id), timings

    def hibernate(self, tier: TierConfig) -> tuple[TierStatus, PhaseTimings]:
        timings = PhaseTimings()
        t0 = self.clock.monotonic()
        try:
            self.sdk.stop(cluster_name(tier))
            state = TierState.HIBERNATED
        except Exception as exc:
            if _exc_name(exc) != "NotSupportedError":
                raise map_sky_error(exc, tier.name, self._secrets()) from None
            # spot on most clouds cannot be stopped: down it, the weights stay in the bucket
            self.down(tier)
            state = TierState.HIBERNATED
            timings.phases["downed_instead_of_stop"] = 1.0
        timings.phases["hibernating"] = self.clock.monotonic() - t0
        return TierStatus(tier.name, state, detail="weights kept in the bucket"), timings

    def wake(self, tier: TierConfig, progress: Progress = no_progress
             ) -> tuple[TierStatus, PhaseTimings]:
        timings = PhaseTimings()
        t0 = self.clock.monotonic()
        try:
            self.sdk.start(cluster_name(tier))
        except Exception as exc:
            if _exc_name(exc) != "ClusterDoesNotExist":
                raise map_sky_error(exc, tier.name, self._secrets()) from None
            raise SpotctlError(f"tier {tier.name!r}: nothing to restart (it was downed); "
                               "relaunching") from None
        timings.phases["restoring"] = self.clock.monotonic() - t0
        return self.status(tier), timings

    def down(self, tier: TierConfig, *, delete_storage: bool = False) -> TierStatus:
        try:
            self.sdk.down(cluster_name(tier))
        except Exception as exc:
            if _exc_name(exc) != "ClusterDoesNotExist":
                raise map_sky_error(exc, tier.name, self._secrets()) from None
        return TierStatus(tier.name, TierState.ABSENT)

    def status(self, tier: TierConfig) -> TierStatus:
        try:
            records = self.sdk.status(cluster_name(tier), refresh=True)
        except Exception as exc:
            if _exc_name(exc) == "ClusterDoesNotExist":
                return TierStatus(tier.name, TierState.ABSENT)
            raise map_sky_error(exc, tier.name, self._secrets()) from None
        if not records:
            return TierStatus(tier.name, TierState.ABSENT)
        rec = records[0]
        raw = str(getattr(rec, "status", "")).rsplit(".", 1)[-1]
        state = {"UP": TierState.READY, "INIT": TierState.PROVISIONING,
                 "STOPPED": TierState.HIBERNATED, "AUTOSTOPPING": TierState.HIBERNATING
                 }.get(raw, TierState.FAILED)
        endpoint = None
        if state == TierState.READY:
            try:
                eps = self.sdk.endpoints(cluster_name(tier), tier.engine_port)
                host = eps.get(tier.engine_port)
                endpoint = f"http://{host}" if host else None
            except Exception:
                endpoint = None
        return TierStatus(tier.name, state, None, str(getattr(rec, "cloud", "") or "") or None,
                          getattr(rec, "region", None), endpoint, f"cluster:{cluster_name(tier)}")
