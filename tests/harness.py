"""The shared test harness: configurations, ports, servers, engines and gateways.

Every server started here is owned by a context manager: leaving the ``with`` block (normally or
through a failing assertion) stops it, so no test leaks a server into the next.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


# -- configuration -----------------------------------------------------------------------------
def toml_text(data: dict[str, Any]) -> str:
    """``data`` as TOML (tables and arrays of tables included), through tomli-w."""
    import tomli_w

    return tomli_w.dumps(_drop_none(data))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_config(directory: Path, data: dict[str, Any], name: str = "spotctl.toml") -> Path:
    """Write ``data`` as ``directory/name`` (mode 0600, like ``spotctl init``) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(toml_text(data), encoding="utf-8")
    path.chmod(0o600)
    return path


# -- ports and HTTP ----------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
