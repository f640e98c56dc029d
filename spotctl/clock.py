"""The one clock.

Every module takes the time from a :class:`Clock`; this file is the only place in spotctl that
reads the machine's wall clock or monotonic clock. Tests inject a :class:`ManualClock`; the local
cloud and the demo run several processes on one simulated timeline through a :class:`FileClock`
(or an environment spec such as ``scaled:2026-11-21T10:00:00Z@1763800000.0x1440``), so that a
simulated day passes in seconds and every process agrees on what time it is.

All times are timezone-aware UTC ``datetime`` objects. ``monotonic()`` is in simulated seconds.
"""

from __future__ import annotations

import json
import os
import threading
import time as _time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable

CLOCK_ENV = "SPOTCTL_CLOCK"


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""

    def monotonic(self) -> float:
        """Seconds on this clock's timeline, never going backwards (for durations)."""

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds`` of this clock's time."""

    async def asleep(self, seconds: float) -> None:
        """Await ``seconds`` of this clock's time."""


def to_utc(value: datetime) -> datetime:
    """Return ``value`` as aware UTC; naive datetimes are taken to be UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def to_ms(value: datetime) -> int:
    """Epoch milliseconds of an aware datetime (the ledger's time unit)."""
    delta = to_utc(value) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def iso(value: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` suffix, to the second (or millisecond when needed)."""
    value = to_utc(value)
    if value.microsecond:
        text = value.isoformat(timespec="milliseconds")
    else:
        text = value.isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    """Parse ISO 8601 (``Z`` or offset; naive means UTC). Raises ValueError."""
    return to_utc(datetime.fromisoformat(text.strip().replace("Z", "+00:00")))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SystemClock:
    """Real time."""

    def now(self) -> datetime:
        return datetime.fromtimestamp(_time.time(), UTC)

    def monotonic(self) -> float:
        return _time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            _time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to; ``sleep`` advances it instantly. For tests."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = to_utc(start or datetime(2026, 1, 1, tzinfo=UTC))
        self._mono = 0.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._mono += seconds

    def set(self, when: datetime) -> None:
        when = to_utc(when)
        with self._lock:
            delta = (when - self._now).total_seconds()
            if delta < 0:
                raise ValueError("a clock does not go backwards")
            self._now = when
            self._mono += delta

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        import asyncio

        self.sleep(seconds)
        await asyncio.sleep(0)


@dataclass(frozen=True)
class Timeline:
    """Simulated time = ``sim_anchor + (real - real_anchor) * speed``."""

    sim_anchor: datetime
    real_anchor: float  # epoch seconds of the real clock
    speed: float = 1.0

    def sim_at(self, real_epoch: float) -> datetime:
        return self.sim_anchor + timedelta(seconds=(real_epoch - self.real_anchor) * self.speed)

    def to_json(self) -> str:
        return json.dumps(
            {"sim_anchor": iso(self.sim_anchor), "real_anchor": self.real_anchor,
             "speed": self.speed}
        )

    @classmethod
    def from_json(cls, text: str) -> Timeline:
        data = json.loads(text)
        return cls(parse_iso(data["sim_anchor"]), float(data["real_anchor"]), float(data["speed"]))


class ScaledClock:
    """Simulated time running ``speed`` times faster than real time from an anchor."""

    def __init__(self, timeline: Timeline) -> None:
        if timeline.speed <= 0:
            raise ValueError("clock speed must be positive")
        self.timeline = timeline

    def now(self) -> datetime:
        return self.timeline.sim_at(_time.time())

    def monotonic(self) -> float:
        return _time.monotonic() * self.timeline.speed

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            _time.sleep(seconds / self.timeline.speed)

    async def asleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(max(0.0, seconds) / self.timeline.speed)


class FileClock:
    """A :class:`ScaledClock` whose timeline lives in a JSON file shared by several processes.

    Whoever owns the simulation (the local cloud's control API) rewrites the file atomically to
    change speed or jump ahead; readers pick the change up on their next call. Jumps only go
    forward, so ``now()`` never decreases within a process.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._mtime_ns = -1
        self._timeline: Timeline | None = None
        self._last = datetime.min.replace(tzinfo=UTC)
        self._lock = threading.Lock()

    def _current(self) -> Timeline:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            if self._timeline is None:
                raise
            return self._timeline
        if mtime != self._mtime_ns or self._timeline is None:
            self._timeline = Timeline.from_json(self.path.read_text())
            self._mtime_ns = mtime
        return self._timeline

    def now(self) -> datetime:
        with self._lock:
            value = self._current().sim_at(_time.time())
            if value < self._last:
                value = self._last
            self._last = value
            return value

    def monotonic(self) -> float:
        return (self.now() - _EPOCH).total_seconds()

    def speed(self) -> float:
        with self._lock:
            return self._current().speed

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            _time.sleep(seconds / self.speed())

    async def asleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(max(0.0, seconds) / self.speed())

    @staticmethod
    def write(path: str | os.PathLike[str], timeline: Timeline) -> None:
        """Atomically replace the timeline file."""
        target = Path(path)
        tmp = target.with_suffix(target.suffix + f".{os.getpid()}.tmp")
        tmp.write_text(timeline.to_json())
        os.replace(tmp, target)


def real_epoch() -> float:
    """The machine's real wall clock in epoch seconds.

    Only for anchoring a simulated timeline to the real present (the demo's day ends "now").
    Everything else asks a :class:`Clock`.
    """
    return _time.time()


def clock_from_spec(spec: str) -> Clock:
    """Build a clock from a spec string.

    ``system`` | ``fixed:ISO`` | ``scaled:ISO@REAL_EPOCHxSPEED`` | ``file:PATH``.
    """
    spec = spec.strip()
    if spec in ("", "system"):
        return SystemClock()
    kind, _, arg = spec.partition(":")
    if kind == "fixed":
        return ManualClock(parse_iso(arg))
    if kind == "file":
        return FileClock(arg)
    if kind == "scaled":
        sim, _, rest = arg.rpartition("@")
        real, _, speed = rest.partition("x")
        return ScaledClock(Timeline(parse_iso(sim), float(real), float(speed or 1)))
    raise ValueError(
        f"unknown clock spec {spec!r}: expected system, fixed:ISO, scaled:ISO@EPOCHxSPEED or file:PATH"
    )


_default: Clock | None = None


def get_clock() -> Clock:
    """The process-wide clock: ``$SPOTCTL_CLOCK`` if set, else the system clock."""
    global _default
    if _default is None:
        _default = clock_from_spec(os.environ.get(CLOCK_ENV, "system"))
    return _default


def set_clock(clock: Clock | None) -> None:
    """Install ``clock`` as the process-wide clock (``None`` resets to the environment's)."""
    global _default
    _default = clock
