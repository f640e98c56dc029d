"""Exit codes and the errors that carry them. The same codes for every command."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # unexpected error
    USAGE = 2  # bad usage, input or configuration
    THRESHOLD = 3  # a threshold was crossed (--fail-over, budget closed, drift)
    OBSERVABILITY = 4  # observability not ok (stale/failing billing, --fail-stale)


class SpotctlError(Exception):
    """An error meant for the user: one line, a documented exit code, no traceback."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(SpotctlError):
    exit_code = ExitCode.USAGE


class ConfigError(SpotctlError):
    exit_code = ExitCode.USAGE


class LedgerError(SpotctlError):
    exit_code = ExitCode.ERROR
