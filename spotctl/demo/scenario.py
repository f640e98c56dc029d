"""The demo's simulated day: a traffic curve and the scripted events. Pure, no I/O.

Offsets are from the start of the simulated day. The curve has a day-night shape with quiet
hours (no traffic at all), so that the idle policy hibernates the tier and the first request of
the morning wakes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

DAY = timedelta(hours=24)


@dataclass(frozen=True)
class ScriptedEvent:
    at: timedelta  # offset into the day
    kind: str  # preempt | billing_dark | return_to_spot_check
    minutes: int = 0  # duration, for faults
    label: str = ""


@dataclass(frozen=True)
class DayScenario:
    peak_requests_per_min: float = 2.0
    quiet_start_h: float = 1.0  # no traffic from 01:00 ...
    quiet_end_h: float = 6.5  # ... to 06:30 (simulated day offset hours)
    peak_h: float = 14.0
    max_tokens: tuple[int, int] = (16, 96)
    events: tuple[ScriptedEvent, ...] = (
        ScriptedEvent(timedelta(hours=10), "preempt", label="spot preemption"),
        ScriptedEvent(timedelta(hours=16), "billing_dark", minutes=20, label="billing dark"),
    )

    def rate_per_min(self, offset: timedelta) -> float:
        """Requests per simulated minute at ``offset`` into the day."""
        hour = (offset.total_seconds() / 3600.0) % 24.0
        if self.quiet_start_h <= hour < self.quiet_end_h:
            return 0.0
        # cosine day curve peaking at peak_h, floor at 10 % of peak outside the quiet hours
        phase = 2 * math.pi * (hour - self.peak_h) / 24.0
        shape = 0.5 + 0.5 * math.cos(phase)
        return self.peak_requests_per_min * max(0.1, shape)
