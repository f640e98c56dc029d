"""Window strings (``90m``, ``24h``, ``7d``, ``2w``) and bucket sizes."""

from __future__ import annotations

import re
from datetime import timedelta

from spotctl.errors import UsageError

_FORMS = "a number followed by m, h, d or w, such as 90m, 24h, 7d, 30d or 2w"
_PATTERN = re.compile(r"^\s*(\d{1,6})\s*([mhdw])\s*$")
_UNIT = {"m": 60, "h": 3600, "d": 86_400, "w": 604_800}
MAX_WINDOW = timedelta(days=3660)


def parse_window(text: str, *, what: str = "window") -> timedelta:
    """Parse a duration; a bad one raises UsageError naming the accepted forms."""
    match = _PATTERN.match(text or "")
    if not match:
        raise UsageError(f"bad {what} {text!r}: expected {_FORMS}")
    value = int(match.group(1)) * _UNIT[match.group(2)]
    if value <= 0:
        raise UsageError(f"bad {what} {text!r}: it must be longer than zero; expected {_FORMS}")
    if value > MAX_WINDOW.total_seconds():
        raise UsageError(f"bad {what} {text!r}: at most 3660d")
    return timedelta(seconds=value)
