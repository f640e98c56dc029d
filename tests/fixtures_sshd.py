"""pytest plugin: a real OpenSSH server on loopback with its own host key and config.

Installed by `make test` (Debian's openssh-server). If it is missing the fixture FAILS.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from spotctl.localcloud.engines import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class SSHServer:
    port: int
    host_pub: str
    client_key: Path
    proc: subprocess.Popen
    config: Path

    def restart(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.proc = _start(self.config, self.port)


def _start(config: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    import socket

    deadline = time.monotonic() + 10  # clock-ok
    while time.monotonic() < deadline:  # clock-ok
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.05)  # clock-ok
    proc.kill()
    pytest.fail("sshd did not start")


@pytest.fixture
def sshd(tmp_path) -> SSHServer:
    if not Path(SSHD).exists():
        pytest.fail("sshd is missing: run `make test` (installs Debian's openssh-server)")
    d = tmp_path / "sshd"
    d.mkdir()
    Path("/run/sshd").mkdir(exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")],
                   check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client")],
                   check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    (d / "authorized_keys").chmod(0o600)
    port = free_port()
    config = d / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nPidFile {d / 'pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nAllowTcpForwarding yes\n"
        "PermitRootLogin prohibit-password\nLogLevel ERROR\n")
    proc = _start(config, port)
    server = SSHServer(port, (d / "host.pub").read_text().strip(), d / "client", proc, config)
    yield server
    server.proc.terminate()
    server.proc.wait(10)
