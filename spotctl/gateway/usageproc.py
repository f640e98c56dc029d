"""The usage writer in its own process: writing rows costs the event loop no GIL time.

Why (issue 15): the writer thread held the GIL while SQLite bound a transaction's parameters and
the rows were turned into them (~5 µs a row, in stretches of a millisecond or more that no
switch interval can cut: one C call). At one request in flight that was most of the gateway's
p99 (+1.7 ms added p99 with the thread, +0.3 ms with no writer at all; bench/gateway_overhead.py).

The gateway's side (:class:`ProcessRecorder`, the same surface as
:class:`~spotctl.gateway.recorder.UsageRecorder`):

- ``record(row)`` appends the row to a list (the request path: nothing else);
- a shipper thread takes the list every ``SHIP_S``, encodes it with ``marshal`` (C, ~0.4 µs a
  row) as one numbered frame, keeps the frame until it is acknowledged and writes it to a socket
  pair (the GIL released while it writes);
- a reader thread takes the writer's status frames: "every frame up to N is durable", the
  spool's rows, whether rows are held in memory, log lines (logged here, through the gateway's
  log).

The writer process (``python -m spotctl.gateway.usageproc FD``) runs the same
:class:`~spotctl.gateway.recorder.UsageRecorder` steps as the thread does (the ledger, else
the spool, else held and ``durable`` False; spool replay and adoption), on its own GIL.

Guarantees, as with the thread:

- rows are durable within a second: shipped within ``SHIP_S``, written at once;
- no row is dropped: a frame stays in the gateway's memory until the writer says it is durable.
  A writer that dies is started again and gets every frame not acknowledged (rows carry their
  request id; the ledger skips ids it has: exactly once). While it is down, or when a frame
  waits past ``STUCK_S`` for its acknowledgement, ``durable`` is False: the gate closes
  (``usage_unrecordable``);
- ``close()`` ships what is left, closes the socket and waits for the writer to make every row
  durable and exit; a gateway killed with SIGKILL leaves the writer the rows it had shipped
  (it writes them, sees the socket's end and exits). It ignores SIGTERM and SIGINT (a service
  manager signals the whole group): it ends when the gateway's side of the socket closes.
"""

from __future__ import annotations

import contextlib
import marshal
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from spotctl.ledger.records import UsageRecord

SHIP_S = 0.05  # rows wait at most this long in the gateway before they are shipped
# a frame unacknowledged this long: rows are not durable (the gate closes). Not 1 s: with the
# ledger down, one turn of the writer is a failed write (up to WRITE_BUSY_MS waiting for a lock
# or a connection), the spool, and a failed replay (as long again), so a frame that arrives
# during a turn waits for the next one; at 2 s a PostgreSQL restart closed the gate (CI)
STUCK_S = 5.0
RESTART_PAUSE_S = 0.5  # between starts of a writer that keeps dying
_LEN = struct.Struct(">I")
_SEQ = struct.Struct(">Q")


def _frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


class _Frames:
    """Length-prefixed frames from a byte stream."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out = []
        while len(self.buf) >= 4:
            (n,) = _LEN.unpack_from(self.buf)
            if len(self.buf) < 4 + n:
                break
            out.append(bytes(self.buf[4:4 + n]))
            del self.buf[:4 + n]
        return out


# -- the gateway's side -----------------------------------------------------------------------------
class ProcessRecorder:
    def __init__(self, ledger_target: Path | Any, spool_dir: Path, owner: str, spool_max_bytes: int,
                 log: Callable[[str], None] | None = None) -> None:
        if isinstance(ledger_target, str | Path):  # the writer's working directory is ours,
            ledger_target = Path(ledger_target).absolute()  # but say it whole anyway
        spool_dir = Path(spool_dir).absolute()
        self._init = pickle.dumps({"ledger": ledger_target, "spool_dir": str(spool_dir),
                                   "owner": owner, "spool_max_bytes": spool_max_bytes})
        self.spool_path = Path(spool_dir) / f"usage-{owner}.jsonl"
        self._log = log or (lambda msg: None)
        self._rows: list[UsageRecord] = []
        self._seq = 0
        self._unacked: dict[int, tuple[bytes, int, float]] = {}  # seq → (frame, rows, shipped)
        self._lock = threading.Lock()  # _unacked
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._alive = False
        self._closing = False
        self._stop = threading.Event()
        self._shipper = threading.Thread(target=self._ship_loop, name="usage-shipper",
                                         daemon=True)
        self._reader: threading.Thread | None = None
        self._writer_durable = True
        self._send_lock = threading.Lock()  # frames whole on the socket; the socket swapped
        self.durable = True
        self._own_reason: str | None = None
        self._spawn_error: str | None = None
        self.spool_rows = 0
        self._held = 0  # rows the writer holds in memory: neither the ledger nor the spool took
        self.written = 0  # rows the writer put in the ledger (its current process)
        self.last_error: str | None = None
        self.restarts = 0

    # -- the request path ---------------------------------------------------------------------
    def record(self, row: UsageRecord) -> None:
        self._rows.append(row)

    # -- what the gate reads ----------------------------------------------------------------------
    def _update(self) -> None:
        """``durable``: a plain attribute for the request path, recomputed by the shipper every
        ``SHIP_S`` and by the reader on every status."""
        stuck = False
        with self._lock:
            if self._unacked and (self._writer_durable or not self._alive):  # else it says why
                oldest = self._unacked[next(iter(self._unacked))][2]
                stuck = time.monotonic() - oldest >= STUCK_S  # clock-ok: real waiting
        # a writer that died and is being started again is not a reason: its rows wait in this
        # process's memory as they did in the queue, and past STUCK_S they are one
        ours = self._spawn_error or (
            f"the usage writer has confirmed no row for {STUCK_S:g} s" if stuck else None)
        if ours != self._own_reason:  # the writer says its own reasons (ledger, spool)
            if ours:
                self.last_error = ours
                self._log(f"usage rows are not durable ({ours}); closing the gate")
            else:
                self._log("the usage writer confirms rows again")
            self._own_reason = ours
        self.durable = ours is None and self._writer_durable

    @property
    def writer_pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    @property
    def pending(self) -> int:
        """Rows not durable (the metric ``_usage_rows_not_durable``): what the writer holds
        because neither the ledger nor the spool took it, and, while the writer is not
        confirming at all, every row it has not confirmed."""
        return self._held + (self.unconfirmed if self._own_reason else 0)

    @property
    def unconfirmed(self) -> int:
        """Rows shipped to the writer and not yet confirmed durable, plus rows not shipped yet
        (normal in flight: the metric ``_usage_rows_not_durable`` is ``pending``)."""
        with self._lock:
            shipped = sum(n for _, n, _ in self._unacked.values())
        return shipped + len(self._rows)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._spawn()
        self._shipper.start()

    def close(self, timeout: float = 30.0) -> bool:
        """Ship every row, let the writer make them durable and exit. False when some rows are
        not durable."""
        self._stop.set()
        self._shipper.join(timeout)
        self._closing = True
        with self._lock:
            sock, proc = self._sock, self._proc
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        if self._reader is not None:
            self._reader.join(timeout)
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if sock is not None:
            sock.close()
        left = self.unconfirmed
        if left:
            self._log(f"{left} usage row(s) could not be made durable before exit")
        return not left

    def _spawn(self) -> None:
        """Start a writer process and send it every unacknowledged frame."""
        ours, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "spotctl.gateway.usageproc", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True)
        except OSError as exc:
            ours.close()
            self._spawn_error = f"cannot start the usage writer: {type(exc).__name__}: {exc}"
            self._alive = False
            return
        finally:
            theirs.close()
        self._spawn_error = None
        with self._send_lock:  # no frame is shipped between the copy and the swap
            with self._lock:
                frames = [f for f, _, _ in self._unacked.values()]
            old, self._sock, self._proc, self._alive = self._sock, ours, proc, True
            self._reader = threading.Thread(target=self._read_loop, args=(ours, proc),
                                            name="usage-acks", daemon=True)
            self._reader.start()
            try:
                ours.sendall(_frame(self._init))
                for frame in frames:
                    ours.sendall(frame)
            except OSError:
                pass  # it died at once: its reader starts another
        if old is not None:
            old.close()

    # -- the shipper thread -------------------------------------------------------------------------
    def _ship_loop(self) -> None:
        while True:
            stopping = self._stop.wait(SHIP_S)
            if self._rows:
                rows, self._rows = self._rows, []  # one swap: record() appends to the new list
                self._ship(rows)
            self._update()
            if stopping:
                return

    def _ship(self, rows: list[UsageRecord]) -> None:
        payload = marshal.dumps([tuple(r) for r in rows])
        with self._send_lock:
            with self._lock:
                self._seq += 1
                frame = _frame(_SEQ.pack(self._seq) + payload)
                self._unacked[self._seq] = (frame, len(rows), time.monotonic())  # clock-ok
            if self._sock is None or not self._alive:
                return  # the next writer gets every unacknowledged frame
            # the GIL is released while the kernel takes the frame; a writer that died: its
            # reader starts another, which gets this frame
            with contextlib.suppress(OSError):
                self._sock.sendall(frame)

    # -- the reader thread --------------------------------------------------------------------------
    def _read_loop(self, sock: socket.socket, proc: subprocess.Popen) -> None:
        frames = _Frames()
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            for f in frames.feed(data):
                self._status(orjson.loads(f))
        code = proc.wait()
        if self._sock is not sock:
            return  # already replaced
        self._alive = False
        if self._closing:
            return
        self._update()
        self._log(f"the usage writer process exited ({code}); starting another, "
                  f"{self.unconfirmed} row(s) to resend")
        while not self._closing:
            self.restarts += 1
            self._spawn()
            if self._alive:
                return
            self._update()
            self._stop.wait(RESTART_PAUSE_S)

    def _status(self, st: dict) -> None:
        for line in st.get("log", ()):
            self._log(line)
        acked = st.get("acked", 0)
        with self._lock:
            for seq in [s for s in self._unacked if s <= acked]:
                del self._unacked[seq]
        self._writer_durable = st.get("durable", True)
        self.spool_rows = st.get("spool_rows", 0)
        self._held = st.get("pending", 0)
        self.written = st.get("written", 0)
        if st.get("error") or self._writer_durable:
            self.last_error = st.get("error")
        self._update()


# -- the writer process -----------------------------------------------------------------------------
def child_main(fd: int) -> int:
    """Write the rows the gateway ships until its side of the socket closes."""
    from spotctl.gateway.recorder import REPLAY_EVERY_S, UsageRecorder
    from spotctl.gateway.spool import Spool

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    frames = _Frames()
    logs: list[str] = []
    rec: UsageRecorder | None = None
    received = 0  # the highest frame number received
    last_sent: tuple | None = None
    eof = False
    while not eof:
        wait = REPLAY_EVERY_S if rec is None or not rec.pending else 0.2
        sock.settimeout(wait)
        rows: list[UsageRecord] = []
        try:
            data = sock.recv(1 << 20)
            if not data:
                eof = True
            sock.setblocking(False)
            while data:  # whatever else is there already: one batch
                for f in frames.feed(data):
                    if rec is None:
                        init = pickle.loads(f)  # noqa: S301 - our own parent, over a socketpair
                        rec = UsageRecorder(init["ledger"], Spool(
                            Path(init["spool_dir"]), init["owner"], init["spool_max_bytes"]),
                            logs.append)
                        rec._adopt_orphans()
                        continue
                    (received,) = _SEQ.unpack_from(f)
                    rows += map(UsageRecord._make, marshal.loads(memoryview(f)[8:]))  # noqa: S302
                try:
                    data = sock.recv(1 << 20)
                except BlockingIOError:
                    break
                if not data:
                    eof = True
        except TimeoutError:
            pass
        except OSError:
            eof = True
        if rec is None:
            continue
        rec.write_batch(rows, final=eof)
        rec.housekeeping(stopping=eof)
        status = (received if not rec.pending else None, rec.pending, rec.durable, rec.spool.rows,
                  rec.written, rec.last_error)
        if logs or status != last_sent:
            last_sent = status
            msg: dict[str, Any] = {"durable": rec.durable, "spool_rows": rec.spool.rows,
                                   "pending": rec.pending,
                                   "written": rec.written, "error": rec.last_error,
                                   "log": logs}
            if not rec.pending:
                msg["acked"] = received
            sock.setblocking(True)
            with contextlib.suppress(OSError):  # the gateway is gone: finish the rows, end
                sock.sendall(_frame(orjson.dumps(msg)))
            logs = []
    if rec is not None:
        rec.close_ledger()
        with contextlib.suppress(Exception):
            rec.spool.close()
        return 0 if not rec.pending else 1
    return 0


if __name__ == "__main__":
    sys.exit(child_main(int(sys.argv[1])))
