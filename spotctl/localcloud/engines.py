"""Ports on this machine's loopback (engines in local-cloud VMs are started by the VMs
themselves: see ``vm.py``)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
