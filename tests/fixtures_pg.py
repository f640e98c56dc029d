"""pytest plugin: a real PostgreSQL server (Debian's ``postgresql``, installed by ``make test``).

The session starts ONE server with ``initdb`` + ``pg_ctl`` in a temporary directory, listening on
127.0.0.1 only (no Unix socket), on a free port, with password authentication (the password
reaches clients through a ``PGPASSFILE``, never a URL). Tests run as root here, and PostgreSQL
refuses to run as root, so the server runs as an unprivileged user (Debian's ``postgres``, else
a ``spotctl-pg`` system user created for it) through ``setpriv``.

Each test that wants a ledger on it gets a fresh database (``pg_url``), dropped afterwards.
``pg_proxy`` puts a TCP proxy between a test and the server, so a test can cut the network
(connections stall, like a pulled cable) without touching the machine's firewall.
If the binaries are missing the fixture FAILS: run ``make test``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from spotctl.localcloud.engines import free_port

PG_USER = "spotctl"


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def _service_user() -> tuple[int, int] | None:
    """The unprivileged (uid, gid) to run the server as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "spotctl-pg"):
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "spotctl-pg"], check=True)
    pw = pwd.getpwnam("spotctl-pg")
    return pw.pw_uid, pw.pw_gid


@dataclass
class PgServer:
    bindir: Path
    root: Path  # owned by the service user
    port: int
    password: str
    ids: tuple[int, int] | None
    databases: list[str] = field(default_factory=list)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    def _as_user(self, argv: list[str]) -> list[str]:
        if self.ids is None:
            return argv
        uid, gid = self.ids
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self._as_user([str(self.bindir / "pg_ctl"), "-D", str(self.datadir),
                                             *args]),
                              capture_output=True, text=True, check=check, timeout=120,
                              env={**os.environ, "LC_ALL": "C.UTF-8"})

    def start(self) -> None:
        self.ctl("start", "-w", "-t", "60", "-l", str(self.logfile))

    def stop(self, mode: str = "fast") -> None:
        self.ctl("stop", "-w", "-t", "60", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def url(self, database: str = "postgres", host: str = "127.0.0.1",
            port: int | None = None) -> str:
        return f"postgresql://{PG_USER}@{host}:{port or self.port}/{database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self.admin(f"CREATE DATABASE {name}")
        self.databases.append(name)
        return name

    def drop_database(self, name: str) -> None:
        from spotctl.ledger.backend import close_pools

        close_pools()  # this process's pooled connections to it
        with contextlib.suppress(Exception):
            self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _start_server(tmp_root: Path) -> PgServer:
    bindir = pg_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL is missing: run `make test` (installs Debian's postgresql)")
    ids = _service_user()
    tmp_root.mkdir(mode=0o700)
    password = secrets.token_urlsafe(18)
    pwfile = tmp_root / "pw"
    pwfile.write_text(password + "\n")
    if ids is not None:
        os.chown(tmp_root, *ids)
        os.chown(pwfile, *ids)
    server = PgServer(bindir, tmp_root, free_port(), password, ids)
    subprocess.run(server._as_user([
        str(bindir / "initdb"), "-D", str(server.datadir), "-U", PG_USER, "--pwfile", str(pwfile),
        "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"]),
        check=True, capture_output=True, timeout=300, env={**os.environ, "LC_ALL": "C.UTF-8"})
    pwfile.unlink()
    with (server.datadir / "postgresql.conf").open("a") as conf:
        conf.write(
            "\n# spotctl tests: loopback only, no Unix socket; fsync off (the OS does not crash\n"
            "# under a test; a server crash still loses only what it had not written)\n"
            f"listen_addresses = '127.0.0.1'\nport = {server.port}\n"
            "unix_socket_directories = ''\nfsync = off\nfull_page_writes = off\n"
            "max_connections = 300\nshared_buffers = 64MB\nlog_min_messages = warning\n")
    server.start()
    return server


# Stops the server and removes its directory once the test process is gone, however it ended
# (a `timeout` or kill -9 skips every fixture teardown and would leave the server running).
_REAPER = """
import os, shutil, subprocess, sys, time
pid, parent, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
while True:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        break
    time.sleep(1)
subprocess.run(argv, capture_output=True, timeout=120)
shutil.rmtree(parent, ignore_errors=True)
"""


def start_reaper(server: PgServer, parent: Path) -> subprocess.Popen:
    stop = server._as_user([str(server.bindir / "pg_ctl"), "-D", str(server.datadir), "stop",
                            "-m", "immediate", "-w", "-t", "60"])
    return subprocess.Popen([sys.executable, "-c", _REAPER, str(os.getpid()), str(parent),
                             *stop], start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def running_postgres(prefix: str = "spotctl-pg-") -> Iterator[PgServer]:
    """A server for the ``with`` block (the session fixture below; the benches through
    bench/pg_common.py): its password reaches clients via PGPASSFILE (PGPASSWORD is unset
    meanwhile, both restored after); always stopped, by a reaper even if this process dies."""
    parent = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(parent, 0o755)  # the service user walks into its own directory below
    server = _start_server(parent / "pg")
    reaper = start_reaper(server, parent)
    passfile = parent / "pgpass"
    passfile.write_text(f"127.0.0.1:*:*:{PG_USER}:{server.password}\n")
    passfile.chmod(0o600)
    saved = {k: os.environ.get(k) for k in ("PGPASSFILE", "PGPASSWORD")}
    os.environ["PGPASSFILE"] = str(passfile)
    os.environ.pop("PGPASSWORD", None)
    try:
        yield server
    finally:
        from spotctl.ledger.backend import close_pools

        close_pools()
        server.ctl("stop", "-w", "-t", "60", "-m", "fast", check=False)
        reaper.kill()
        reaper.wait(10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the session; its password reaches clients via PGPASSFILE."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)


class TcpProxy:
    """A loopback TCP proxy in front of the server. ``cut()`` stalls every connection, open or
    new, without closing it (what a pulled cable or a dropping firewall does); ``restore()``
    lets traffic flow again (stalled connections are closed then, as TCP would time them out)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="pg-proxy")
        self._thread.start()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():  # accepted by the kernel, then nothing: a stall
                with self._lock:
                    self._conns.append(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.2)
        try:
            while not self._stop.is_set():
                if self._cut.is_set():
                    time.sleep(0.05)  # clock-ok: bytes stay in flight while cut
                    continue
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data or self._cut.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        self._cut.set()

    def restore(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        self._cut.clear()
        for s in conns:
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self.restore()
        self._thread.join(5)


@pytest.fixture
def pg_proxy(pg_server: PgServer) -> Iterator[TcpProxy]:
    proxy = TcpProxy(pg_server.port)
    yield proxy
    proxy.close()


# -- the ledger on either backend ------------------------------------------------------------
# Both by default; SPOTCTL_TEST_BACKENDS=sqlite (or postgresql) narrows a local run.
BACKENDS = [b.strip() for b in os.environ.get("SPOTCTL_TEST_BACKENDS",
                                              "sqlite,postgresql").split(",") if b.strip()]


@pytest.fixture(params=BACKENDS)
def ledger_backend(request) -> str:
    return request.param


@pytest.fixture
def ledger_target(request, ledger_backend: str, tmp_path: Path) -> str | Path:
    """Where a test's ledger lives: a SQLite file in tmp_path, or a fresh PostgreSQL database."""
    if ledger_backend == "sqlite":
        return tmp_path / "ledger.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def ledger_toml(ledger_target: str | Path) -> str:
    """The ``[ledger]`` section of a spotctl.toml for the parametrised backend."""
    key = "url" if isinstance(ledger_target, str) else "path"
    return f'[ledger]\n{key} = "{ledger_target}"\n'
