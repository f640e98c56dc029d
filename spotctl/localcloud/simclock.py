"""A simulated clock the local cloud can steer: speed it up, jump ahead, or follow real time.

With a file path, every change is written to a :class:`~spotctl.clock.FileClock` timeline file,
so other processes (gateway, poller, daemon) started with ``SPOTCTL_CLOCK=file:PATH`` follow.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

from spotctl.clock import FileClock, ManualClock, Timeline, real_epoch


class SteerableClock:
    def __init__(self, start: datetime, speed: float = 1.0, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._timeline = Timeline(start, real_epoch(), speed)
        self._publish()

    def _publish(self) -> None:
        if self.path is not None:
            FileClock.write(self.path, self._timeline)

    def now(self) -> datetime:
        return self._timeline.sim_at(real_epoch())

    def monotonic(self) -> float:
        return self.now().timestamp()

    def speed(self) -> float:
        return self._timeline.speed

    def sleep(self, seconds: float) -> None:
        threading.Event().wait(max(0.0, seconds) / self._timeline.speed)

    async def asleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(max(0.0, seconds) / self._timeline.speed)

    def set_speed(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        with self._lock:
            self._timeline = Timeline(self.now(), real_epoch(), speed)
            self._publish()

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._timeline = Timeline(self.now() + timedelta(seconds=seconds), real_epoch(),
                                      self._timeline.speed)
            self._publish()

    def set_real(self) -> None:
        """Follow real time from here on (only forward: if simulated time is ahead, it waits)."""
        from datetime import UTC

        real = datetime.fromtimestamp(real_epoch(), UTC)
        with self._lock:
            self._timeline = Timeline(max(self.now(), real), real_epoch(), 1.0)
            self._publish()


class ManualControl:
    """Control API adapter for a ManualClock (tests): advance only."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def set_speed(self, speed: float) -> None:
        raise ValueError("a manual clock has no speed")

    def set_real(self) -> None:
        raise ValueError("a manual clock cannot follow real time")

    def speed(self) -> float:
        return 0.0
