"""The egress proxy's byte relay for an allowed, non-intercepted connection: zero-copy, both ways.

After the decision (proxy.py) the proxy has the sandbox's socket and a connected upstream socket,
and has already sent upstream the bytes it read to decide (the ClientHello, a request head).
`Relay.start` hands both to two pump threads, one per direction; a pump moves bytes with
`os.splice` socket -> pipe -> socket, so they go from one socket's receive queue to the other's
send queue by page reference and never through Python (nor a copy in user space).

Per connection:
* **half-close**: a side that ends (EOF) is passed on as `shutdown(SHUT_WR)` of the other; the
  other direction keeps flowing (a client that half-closes still gets the whole reply); the
  sockets are closed when both directions have ended;
* **bounded**: one pipe per direction, at most its size in flight in it (plus the kernel's own
  socket buffers); a pump splices at most a pipe's worth at a time and drains the pipe before it
  reads again, so a slow reader holds back its writer (TCP back-pressure), never memory. A pipe
  starts at the kernel's default (64 KiB) and grows to PIPE_SIZE the first time one read fills
  it (a bulk transfer): interactive connections keep small pipes, and an unprivileged
  supervisor's pipe quota (fs.pipe-user-pages-soft, per user: past it new pipes get 2 pages)
  goes to the connections that move data;
* **idle limit**: a connection on which no byte moved either way for IDLE_TIMEOUT seconds (the
  interception path's limit) is ended; the pumps wait in the kernel with SO_RCVTIMEO/SO_SNDTIMEO
  of TICK seconds and check the connection's last progress when a wait runs out (no timer, no
  poll per chunk);
* **errors**: a reset or a write to a side that went away ends the connection both ways
  (`shutdown(SHUT_RDWR)` of both sockets wakes the other pump);
* **counters**: bytes each way per connection (`Conn.up`, `Conn.down`: the first bytes the proxy
  sent upstream included) and per relay (`Relay.totals()`: connections relayed and active,
  bytes up and down), handed to `on_end(conn)` when a connection is over;
* **clean-up**: `Relay.close_all()` (the proxy's stop, on cancellation of the sandbox's egress
  service) shuts down every socket still relayed, which ends their pumps, waits (bounded:
  CLOSE_WAIT) for their `on_end` (the proxy's `egress.closed` events come before the sandbox's
  last audit records), and lets the workers go.

The pumps are reused worker threads (starting a thread per connection costs more than the rest of
its set-up), daemon threads: a supervisor never waits for them at exit.
"""
from __future__ import annotations

import fcntl
import os
import queue
import socket
import struct
import threading
import time
from typing import Callable

PIPE_SIZE = 1 << 20          # a pipe's size once a read filled it (F_SETPIPE_SZ; kept as is if refused)
IDLE_TIMEOUT = 300.0         # seconds without a byte either way: the connection is ended
TICK = 5.0                   # how often a waiting pump looks at the idle limit
CLOSE_WAIT = 2.0             # close_all: at most this long for the aborted connections' on_end
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
# not SPLICE_F_MORE: it would hold back the last bytes of a reply (interactive protocols) like a cork
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1)


class Conn:
    """One relayed connection: its two sockets, bytes moved each way, last progress (monotonic)."""

    __slots__ = ("client", "upstream", "up", "down", "last", "ended", "lock", "on_end", "idle")

    def __init__(self, client: socket.socket, upstream: socket.socket, first: int, on_end, idle: float):
        self.client, self.upstream = client, upstream
        self.up, self.down = first, 0
        self.last = time.monotonic()
        self.ended = 0
        self.lock = threading.Lock()
        self.on_end = on_end
        self.idle = idle

    def abort(self) -> None:
        """End both directions now (a reset, the idle limit, the proxy's stop)."""
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Relay:
    def __init__(self, max_threads: int, idle: float = IDLE_TIMEOUT, tick: float = TICK):
        self.pool = _Workers(max_threads)
        self.idle, self.tick = idle, tick
        self.lock = threading.Lock()
        self.ended = threading.Condition(self.lock)
        self.conns: set[Conn] = set()
        self.ending = 0              # connections whose on_end is running
        self.count = 0
        self.bytes_up = 0
        self.bytes_down = 0

    def start(self, client: socket.socket, upstream: socket.socket, first: int = 0,
              on_end: Callable[[Conn], None] | None = None) -> Conn:
        """Relay both ways until both sides end; `first`: bytes already sent upstream (counted).
        The sockets belong to the relay from here on (it closes them)."""
        tv = struct.pack("ll", int(self.tick), int((self.tick % 1) * 1e6))
        try:
            for s in (client, upstream):
                s.setblocking(True)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        except OSError:
            client.close()
            upstream.close()
            raise
        conn = Conn(client, upstream, first, on_end, self.idle)
        with self.lock:
            self.conns.add(conn)
            self.count += 1
        self.pool.submit(self._pump, conn, client, upstream, True)
        self.pool.submit(self._pump, conn, upstream, client, False)
        return conn

    def totals(self) -> dict:
        with self.lock:
            return {"connections": self.count, "active": len(self.conns),
                    "bytes_up": self.bytes_up + sum(c.up for c in self.conns),
                    "bytes_down": self.bytes_down + sum(c.down for c in self.conns)}

    def close_all(self) -> None:
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            c.abort()
        with self.lock:
            self.ended.wait_for(lambda: not self.conns and not self.ending, CLOSE_WAIT)
        self.pool.shutdown()

    def _pump(self, conn: Conn, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            _pump(conn, src.fileno(), dst, up)
        except Exception:     # noqa: BLE001 - whatever happened, the connection ends both ways
            conn.abort()
        finally:
            with conn.lock:
                conn.ended += 1
                last = conn.ended == 2
            if last:
                self._end(conn)

    def _end(self, conn: Conn) -> None:
        for s in (conn.client, conn.upstream):
            s.close()
        with self.lock:
            self.conns.discard(conn)
            self.bytes_up += conn.up
            self.bytes_down += conn.down
            self.ending += 1
        try:
            if conn.on_end is not None:
                conn.on_end(conn)
        except Exception:     # noqa: BLE001
            pass
        finally:
            with self.lock:
                self.ending -= 1
                self.ended.notify_all()


def _idle(conn: Conn) -> bool:
    return time.monotonic() - conn.last >= conn.idle


def _pump(conn: Conn, src_fd: int, dst: socket.socket, up: bool) -> None:
    """One direction: splice src -> pipe -> dst until src ends (then SHUT_WR dst) or fails."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        size = fcntl.fcntl(w, F_GETPIPE_SZ)
        grow = size < PIPE_SIZE
        dfd = dst.fileno()
        while True:
            try:
                n = os.splice(src_fd, w, size, flags=_FLAGS)
            except BlockingIOError:                 # SO_RCVTIMEO ran out: nothing to read yet
                if _idle(conn):
                    return conn.abort()
                continue
            except OSError:                         # reset, or shut down by abort()
                return conn.abort()
            if n == 0:
                break
            full = n >= size
            while n:
                try:
                    m = os.splice(r, dfd, n, flags=_FLAGS)
                except BlockingIOError:             # SO_SNDTIMEO ran out: the reader is not reading
                    if _idle(conn):
                        return conn.abort()
                    continue
                except OSError:                     # the other side went away
                    return conn.abort()
                if m == 0:
                    return conn.abort()
                n -= m
                if up:
                    conn.up += m
                else:
                    conn.down += m
                conn.last = time.monotonic()        # progress, even if a slow reader takes a chunk in parts
            if full and grow:                       # a bulk transfer: a bigger pipe, once
                grow = False
                try:
                    size = fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
                except OSError:
                    pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    finally:
        os.close(r)
        os.close(w)


class _Workers:
    """Pump threads, reused; at most `limit` (two per connection: MAX_CONNECTIONS bounds them)."""

    def __init__(self, limit: int):
        self.q: "queue.SimpleQueue" = queue.SimpleQueue()
        self.limit = limit
        self.idle = 0
        self.count = 0
        self.lock = threading.Lock()

    def submit(self, fn, *args) -> None:
        with self.lock:
            spawn = self.idle == 0 and self.count < self.limit
            if spawn:
                self.count += 1
            else:
                self.idle -= 1
        self.q.put((fn, args))
        if spawn:
            threading.Thread(target=self._work, name="egress-splice", daemon=True).start()

    def _work(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:     # noqa: BLE001 - a connection never takes a worker down
                pass
            with self.lock:
                self.idle += 1

    def shutdown(self) -> None:
        with self.lock:
            n, self.count, self.idle = self.count, 0, 0
        for _ in range(n):
            self.q.put(None)
