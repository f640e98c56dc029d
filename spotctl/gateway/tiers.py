"""What the gateway knows about each tier, and how a request finds one.

Three sources, each refreshed on its own so that none waits behind another:
- the runtime's state (serving at an endpoint, hibernated, waking, failed...): asked in a small
  thread pool, one call per tier at a time, with a short timeout; a call that hangs (a provider
  API that does not answer) keeps the last known state instead of blocking anything;
- engine probes: ``GET /v1/models`` on every serving engine, concurrently, with a short timeout.
  An engine that fails ``probe_failures`` probes in a row (or refuses a connection) is *down*:
  requests go to another tier of the model, or wait for it to recover;
- the fleet journal (read by the gate thread): a tier that is ``draining`` admits nothing new.

The board also counts the requests in flight per tier, which the gateway publishes in the ledger
(``gateway_tiers``) so that the fleet never hibernates a tier with open requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from spotctl.clock import Clock, to_ms
from spotctl.config import Config, TierConfig
from spotctl.gateway.client import UpstreamClient, UpstreamError
from spotctl.gateway.errors import GatewayError, scrub
from spotctl.gateway.upstreams import DRAINING, FAILED, SERVING, WAKING, TierRuntime, Upstream

DRAIN_RETRY_AFTER = [(b"retry-after", b"5")]


class TierBoard:
    def __init__(self, cfg: Config, clock: Clock, runtime: TierRuntime, *,
                 lock_dir: Path, log: Callable[[str], None], secrets: tuple[str, ...] = (),
                 on_wake: Callable[[str, float], None] | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.runtime = runtime
        self.lock_dir = lock_dir
        self.log = log
        self.secrets = secrets
        self.on_wake = on_wake or (lambda tier, seconds: None)
        self.tiers = {t.name: t for t in cfg.tiers}
        self.models: dict[str, list[TierConfig]] = {}
        for tier in sorted(cfg.tiers, key=lambda t: (t.priority, t.name)):
            self.models.setdefault(tier.public_model, []).append(tier)
        self.state: dict[str, Upstream] = {t: Upstream("unknown") for t in self.tiers}
        self.down: dict[str, int] = dict.fromkeys(self.tiers, 0)  # failed probes in a row
        self.draining: frozenset[str] = frozenset()
        self.in_flight: dict[str, int] = dict.fromkeys(self.tiers, 0)
        self.last_request_ms: dict[str, int | None] = dict.fromkeys(self.tiers)
        self.wakes = 0
        self._pool = ThreadPoolExecutor(max(2, len(self.tiers)), thread_name_prefix="tier-state")
        self._wake_pool = ThreadPoolExecutor(max(2, len(self.tiers)),
                                             thread_name_prefix="tier-wake")
        self._current: dict[str, asyncio.Future] = {}
        self._wakes: dict[str, asyncio.Future] = {}
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._kick: asyncio.Event | None = None
        self.became_busy = threading.Event()  # a tier went from 0 to 1 request in flight

    # -- state ------------------------------------------------------------------------------
    def refresh_blocking(self) -> None:
        """Ask the runtime for every tier's state now (tests and start-up)."""
        for name, tier in self.tiers.items():
            self._set_state(name, self._current_blocking(tier))

    def _current_blocking(self, tier: TierConfig) -> Upstream:
        try:
            return self.runtime.current(tier)
        except Exception as exc:
            self.log(f"tier {tier.name}: state unknown ({type(exc).__name__}: "
                     f"{scrub(str(exc), self.secrets)})")
            return Upstream(FAILED)

    def _set_state(self, name: str, up: Upstream) -> None:
        old = self.state.get(name)
        self.state = {**self.state, name: up}
        if old is None or old.endpoint != up.endpoint:
            self.down[name] = 0  # a new engine: judge it afresh
        if self._changed is not None and old != up:
            self._changed.set()

    def effective(self, name: str) -> str:
        """The state routing uses: the runtime's, corrected by probes and the journal."""
        if name in self.draining:
            return DRAINING
        up = self.state.get(name)
        if up is None:
            return "unknown"
        if up.state == SERVING and self.down.get(name, 0) >= self.cfg.gateway.probe_failures:
            return "down"
        return up.state

    def snapshot(self) -> dict[str, str]:
        return {name: self.effective(name) for name in self.tiers}

    def ready(self) -> bool:
        return any(self.effective(n) == SERVING or self.state[n].wakeable
                   for n in self.tiers if n not in self.draining)

    # -- in-flight accounting -----------------------------------------------------------------
    def begin(self, name: str, now_ms: int) -> None:
        n = self.in_flight.get(name, 0)
        self.in_flight[name] = n + 1
        self.last_request_ms[name] = now_ms
        if n == 0 and not self.became_busy.is_set():  # set() takes a lock and notifies
            self.became_busy.set()

    def end(self, name: str, now_ms: int) -> None:
        self.in_flight[name] = max(0, self.in_flight.get(name, 0) - 1)
        if now_ms > (self.last_request_ms.get(name) or 0):
            self.last_request_ms[name] = now_ms

    def touch(self, name: str) -> None:
        """A request asked for this tier (even one refused because it drains)."""
        self.last_request_ms[name] = to_ms(self.clock.now())

    # -- the probe loop ---------------------------------------------------------------------
    async def start(self, client: UpstreamClient) -> None:
        self._changed = asyncio.Event()
        self._kick = asyncio.Event()
        self._task = asyncio.create_task(self._loop(client), name="tier-probes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._wake_pool.shutdown(wait=False, cancel_futures=True)

    def kick(self) -> None:
        """Probe now (a request just failed to reach an engine)."""
        if self._kick is not None:
            self._kick.set()

    async def _loop(self, client: UpstreamClient) -> None:
        g = self.cfg.gateway
        while True:
            try:
                await self.probe_once(client)
            except Exception as exc:  # never let the loop die
                self.log(f"tier probes failed ({type(exc).__name__})")
            busy = any(self.effective(n) == "down" or self.down[n] > 0 for n in self.tiers)
            assert self._kick is not None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(0.5, g.probe_interval_s) if busy
                                           else g.probe_interval_s):
                    await self._kick.wait()
            self._kick.clear()

    async def probe_once(self, client: UpstreamClient) -> None:
        g = self.cfg.gateway
        loop = asyncio.get_running_loop()
        for name, tier in self.tiers.items():
            fut = self._current.get(name)
            if fut is None or fut.done():
                self._current[name] = loop.run_in_executor(self._pool, self._current_blocking,
                                                           tier)
        pending = [f for f in self._current.values() if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=g.probe_timeout_s)
        for name, fut in self._current.items():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._set_state(name, fut.result())
        # a hung call keeps the last known state; the next round does not start another
        probes = {name: up for name, up in self.state.items()
                  if up.state == SERVING and up.endpoint}
        results = await asyncio.gather(*(self._probe(client, up) for up in probes.values()))
        for name, ok in zip(probes, results, strict=True):
            if probes[name] != self.state.get(name):
                continue  # the engine changed meanwhile
            before = self.effective(name)
            self.down[name] = 0 if ok else self.down[name] + 1
            after = self.effective(name)
            if before != after:
                self.log(f"tier {name}: engine {'recovered' if ok else 'is not answering'}")
                if self._changed is not None:
                    self._changed.set()

    async def _probe(self, client: UpstreamClient, up: Upstream) -> bool:
        headers = {"Authorization": f"Bearer {up.api_key}"} if up.api_key else {}
        try:
            status = await client.probe(f"{up.endpoint}/v1/models", headers,
                                        self.cfg.gateway.probe_timeout_s)
        except UpstreamError:
            return False
        return status < 500

    def report_failure(self, name: str, err: UpstreamError) -> None:
        """A real request could not reach the engine: a refused connection means it is down."""
        if err.kind == "connect":
            self.down[name] = max(self.down[name], self.cfg.gateway.probe_failures)
            if self._changed is not None:
                self._changed.set()
        self.kick()

    # -- picking a tier ---------------------------------------------------------------------
    def serving(self, tiers: list[TierConfig]) -> tuple[TierConfig, Upstream] | None:
        """The first serving tier of the model with an endpoint, now (no await: the request
        path's common case); ``None`` when :meth:`pick` has to wake or wait."""
        for tier in tiers:
            if self.effective(tier.name) == SERVING:
                up = self.state[tier.name]
                if up.endpoint:
                    return tier, up
        return None

    async def pick(self, tiers: list[TierConfig], *, deadline: float) -> tuple[TierConfig,
                                                                                 Upstream]:
        """A serving tier of the model; else wake one; else wait (until ``deadline``, the event
        loop's time: real seconds, like every network timeout) for one that is down to
        recover."""
        while True:
            waiting = False
            for tier in tiers:
                if self.effective(tier.name) == SERVING:
                    up = self.state[tier.name]
                    if up.endpoint:
                        return tier, up
            for tier in tiers:
                eff = self.effective(tier.name)
                up = self.state.get(tier.name) or Upstream("absent")
                if eff != DRAINING and (up.wakeable or up.state == WAKING):
                    return tier, await self.wake(tier)
                if eff == "down":
                    waiting = True
            if all(t.name in self.draining for t in tiers):
                for t in tiers:
                    self.touch(t.name)
                raise GatewayError(503, "no_upstream", "the tier serving this model is draining "
                                   "(being hibernated or stopped); retry shortly",
                                   DRAIN_RETRY_AFTER)
            left = deadline - asyncio.get_running_loop().time()
            if not waiting or left <= 0 or self._changed is None:
                raise GatewayError(503, "no_upstream",
                                   "no tier for this model is serving or wakeable",
                                   DRAIN_RETRY_AFTER)
            self._changed.clear()
            self.kick()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 1.0)):
                    await self._changed.wait()

    async def wake(self, tier: TierConfig) -> Upstream:
        fut = self._wakes.get(tier.name)
        if fut is None or fut.done():
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(self._wake_pool, self._wake_blocking, tier)
            self._wakes[tier.name] = fut
        try:
            up = await asyncio.wait_for(asyncio.shield(fut), self.cfg.gateway.wake_timeout_s)
        except TimeoutError:
            raise GatewayError(504, "wake_timeout", f"tier {tier.name!r} did not wake within "
                               f"{self.cfg.gateway.wake_timeout_s:g} s") from None
        except Exception as exc:
            self.log(f"tier {tier.name}: wake failed ({type(exc).__name__}: "
                     f"{scrub(str(exc), self.secrets)})")
            raise GatewayError(503, "no_upstream", f"waking tier {tier.name!r} failed; the "
                               "operator can see why in the gateway log and `spotctl events`",
                               DRAIN_RETRY_AFTER) from None
        if up.state != SERVING or not up.endpoint:
            raise GatewayError(503, "no_upstream", f"tier {tier.name!r} is {up.state}",
                               DRAIN_RETRY_AFTER)
        return up

    def _wake_blocking(self, tier: TierConfig) -> Upstream:
        """One wake per tier across every gateway process: a file lock beside the ledger; who
        gets it second finds the tier serving and does not wake it again."""
        from filelock import FileLock

        t0 = self.clock.monotonic()
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.lock_dir / f"wake-{tier.name}.lock")):
            up = self.runtime.current(tier)
            if up.state != SERVING or not up.endpoint:
                up = self.runtime.wake(tier)
                self.wakes += 1
                self.on_wake(tier.name, self.clock.monotonic() - t0)
        self._set_state_threadsafe(tier.name, up)
        return up

    def _set_state_threadsafe(self, name: str, up: Upstream) -> None:
        self.state = {**self.state, name: up}
        self.down[name] = 0
