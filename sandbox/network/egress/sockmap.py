"""A byte relay in the kernel: a BPF sockmap joining two TCP sockets. MEASURED, NOT USED BY THE PROXY.

Issue 25 asked whether the egress proxy's relay of an allowed connection (relay.py: splice pumps)
gets faster when the kernel moves the bytes itself (an sk_skb verdict program redirecting each
socket's received bytes to the other socket's send side, as service meshes do). On this kernel
(6.18, HZ=250, 2 cores) it does not, and it is unsafe for a relay between hostile parties:
* **slower**: a 1 GB download relayed on loopback ran at 380-530 MB/s through the sockmap against
  840-1350 MB/s through the splice pumps, alternated in the same runs (direct: 1.1-4.2 GB/s; other
  suites were loading the machine); 4 MiB and 32 MiB send buffers raised it to 620-770 MB/s only.
  The program's redirects are sent by a kernel worker (the psock's backlog) that used ~10% of a
  core meanwhile: the pace is set by the worker's retries when the target's send buffer is full
  (delayed work), not by CPU;
* **no back-pressure**: the program takes each skb off the source socket's receive queue at once
  (the source's TCP window stays open) and queues it for the target whatever the target's state:
  an upload to a server reading at ~6 MB/s had 1.2 GB taken from the sandbox's side in 4 s while 26
  MB had reached the server (MemAvailable fell by ~0.9 GB). 136-528 MiB were held in the kernel
  during a plain fast download. A sandbox (or a server) could pin the host's memory this way,
  outside every cgroup limit of the sandbox; the splice relay holds at most a pipe per direction.
`bench/egress.py` keeps measuring it (rows "relay alone on loopback: ..."), and
tests/system/test_egress_relay.py checks what is written below, so that a kernel that changes
either point shows; the proxy keeps relay.py. A relay built on this would also need: a user-space
flow control (take the source out of `relayed` while its target lags, put it back and kick), and
root only (BPF_PROG_TYPE_SK_SKB needs CAP_BPF and CAP_NET_ADMIN; this machine has
kernel.unprivileged_bpf_disabled=2: EPERM for anyone else), splice for every other case.

Three maps and one program per `SockMap()` (a relay would make one per proxy, i.e. per sandbox):
* `peers`   SOCKHASH, key: a socket's cookie (SO_COOKIE, u64), value: *the other* socket of its
            connection — the redirect target of the bytes that socket receives. No program is
            attached to it: a socket put there gets a psock (the kernel's sockmap state) but its
            receive path is not taken over yet.
* `relayed` SOCKHASH, key: a socket's own cookie, value: the socket; the verdict program is attached
            here (BPF_SK_SKB_STREAM_VERDICT; no stream parser: since 5.13 the kernel hands the
            verdict each skb as it comes, which is all a relay needs). A socket put here has its
            receive path taken over: every skb it receives goes to the program.
* `counts`  HASH u64 cookie -> u64 bytes: what the program redirected for each socket (the relay's
            byte counters, its idle check and its half-close check).
A connection's sockets go into `peers` first (both), then into `relayed` (both): when the first
program run happens, its target is in `peers` already, so no byte meets a missing target (a
missing one makes bpf_sk_redirect_hash return SK_DROP: bytes the kernel had acknowledged, lost).

The verdict program (hand-assembled below, every instruction commented), per received skb:
    key = bpf_get_socket_cookie(skb)                 # this socket's cookie
    if (n = counts[key]) n += skb->len               # atomic add
    return bpf_sk_redirect_hash(skb, peers, &key, 0) # flags 0: to the target's *send* side

What this kernel does (6.18; found by experiment, tests/system/test_egress_relay.py checks the
first, second and fourth points, bench/egress.py meets the third on every run):
* bytes already in a socket's receive queue when it is put into `relayed` stay there until the
  socket's data_ready runs again (the next bytes that come: maybe never, for a client waiting for
  a reply); setsockopt(SO_RCVLOWAT) calls tcp_data_ready, so `add` sets it after the insertion and
  the queued bytes go through the program, before any later ones (the queue is read from its head);
* the program is not told of a FIN; the end is the socket's RCV_SHUTDOWN, which poll still
  reports (EPOLLRDHUP | EPOLLIN) while the bytes themselves wake nobody: a relay watches its
  sockets' ends with one epoll;
* that end is reported while bytes the program redirected may still wait for the kernel worker
  that writes them into the target (0.4-0.8 s worth after a fast download's last byte): before
  passing the end on (shutdown(SHUT_WR) of the target) a relay must wait until the target has
  written all the program counted (`written`: TCP_INFO bytes_acked + SIOCOUTQ, as a difference) —
  a FIN queued earlier would cut the stream (bench/egress.py's relay does so);
* a socket that has received its FIN already (CLOSE_WAIT) cannot be put into a sockmap
  (EOPNOTSUPP): a relay would splice such a connection.
"""
from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios

from sandbox import _sys

BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_SOCKHASH = 1, 18
BPF_PROG_TYPE_SK_SKB = 14
BPF_SK_SKB_STREAM_VERDICT = 5
BPF_PSEUDO_MAP_FD = 1
SO_COOKIE = 57
FN_MAP_LOOKUP_ELEM, FN_GET_SOCKET_COOKIE, FN_SK_REDIRECT_HASH = 1, 46, 72


def _insn(op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One eBPF instruction: opcode, dst and src registers (4 bits each), offset, immediate."""
    return struct.pack("<BBhi", op, (src << 4) | dst, off, imm)


def _ld_map(dst: int, map_fd: int) -> bytes:
    """dst = the map (a 16-byte ld_imm64 whose src BPF_PSEUDO_MAP_FD has the kernel relocate the fd)."""
    return _insn(0x18, dst, BPF_PSEUDO_MAP_FD, 0, map_fd) + _insn(0, 0, 0, 0, 0)


def program(peers_fd: int, counts_fd: int) -> bytes:
    """The verdict program (19 instructions)."""
    return b"".join([
        _insn(0xbf, 6, 1),                       # r6 = r1                   the skb (__sk_buff *), kept across calls
        _insn(0x85, imm=FN_GET_SOCKET_COOKIE),   # r0 = bpf_get_socket_cookie(r1)   this socket's cookie
        _insn(0x7b, 10, 0, -8),                  # *(u64 *)(r10 - 8) = r0    the key, on the stack
        _ld_map(1, counts_fd),                   # r1 = counts               (two instruction slots)
        _insn(0xbf, 2, 10),                      # r2 = r10
        _insn(0x07, 2, imm=-8),                  # r2 += -8                  &key
        _insn(0x85, imm=FN_MAP_LOOKUP_ELEM),     # r0 = bpf_map_lookup_elem(counts, &key)
        _insn(0x15, 0, 0, 2, 0),                 # if r0 == 0 goto +2        no counter: skip the count
        _insn(0x61, 1, 6, 0),                    # r1 = *(u32 *)(r6 + 0)     skb->len
        _insn(0xdb, 0, 1, 0, 0),                 # lock *(u64 *)(r0 + 0) += r1   (BPF_ATOMIC, BPF_ADD)
        _insn(0xbf, 1, 6),                       # r1 = r6                   the skb
        _ld_map(2, peers_fd),                    # r2 = peers                (two instruction slots)
        _insn(0xbf, 3, 10),                      # r3 = r10
        _insn(0x07, 3, imm=-8),                  # r3 += -8                  &key
        _insn(0xb7, 4, imm=0),                   # r4 = 0                    flags: the target's egress (send side)
        _insn(0x85, imm=FN_SK_REDIRECT_HASH),    # r0 = bpf_sk_redirect_hash(skb, peers, &key, 0): SK_PASS or SK_DROP
        _insn(0x95),                             # exit                      return r0
    ])


def cookie(s: socket.socket) -> int:
    return struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


def written(s: socket.socket) -> int:
    """Bytes written into the socket so far (acknowledged + still in its send queue), before its FIN;
    a connecting socket's count includes its SYN (1): compare differences, not absolute values."""
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    acked = struct.unpack_from("Q", info, 120)[0]                 # tcpi_bytes_acked
    queued = struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]  # SIOCOUTQ
    return acked + queued


class SockMap:
    """The maps and the program (one set per relay). Raises OSError when the kernel refuses any of
    it (not root, no BPF, an older kernel)."""

    def __init__(self, max_sockets: int):
        fds: list[int] = []
        try:
            self.peers = _sys.bpf_map_create(BPF_MAP_TYPE_SOCKHASH, 8, 4, max_sockets, b"psb_peers")
            fds.append(self.peers)
            self.relayed = _sys.bpf_map_create(BPF_MAP_TYPE_SOCKHASH, 8, 4, max_sockets, b"psb_relayed")
            fds.append(self.relayed)
            self.counts = _sys.bpf_map_create(BPF_MAP_TYPE_HASH, 8, 8, max_sockets, b"psb_counts")
            fds.append(self.counts)
            self.prog = _sys.bpf_prog_load(BPF_PROG_TYPE_SK_SKB, program(self.peers, self.counts), b"GPL",
                                           BPF_SK_SKB_STREAM_VERDICT, b"psb_relay")
            fds.append(self.prog)
            _sys.bpf_prog_attach(self.prog, self.relayed, BPF_SK_SKB_STREAM_VERDICT)
        except OSError:
            for fd in fds:
                _sys_close(fd)
            raise

    def add(self, a: socket.socket, b: socket.socket) -> tuple[int, int]:
        """Join a and b both ways; their cookies. Raises OSError (nothing left in the maps) when
        the kernel refuses one (e.g. a socket that has received its FIN already)."""
        ca, cb = cookie(a), cookie(b)
        ka, kb = struct.pack("Q", ca), struct.pack("Q", cb)
        done: list[tuple[int, bytes]] = []
        try:
            for m, k, v in ((self.counts, ka, b"\0" * 8), (self.counts, kb, b"\0" * 8),
                            (self.peers, ka, b), (self.peers, kb, a),          # targets first
                            (self.relayed, ka, a), (self.relayed, kb, b)):     # then the take-over
                val = struct.pack("I", v.fileno()) if isinstance(v, socket.socket) else v
                _sys.bpf_map_update(m, k, val, _sys.BPF_NOEXIST)
                done.append((m, k))
        except OSError:
            for m, k in reversed(done):
                _sys.bpf_map_delete(m, k)
            raise
        for s in (a, b):                     # bytes queued before the take-over: through the program now
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        return ca, cb

    def count(self, c: int) -> int:
        v = _sys.bpf_map_lookup(self.counts, struct.pack("Q", c), 8)
        return struct.unpack("Q", v)[0] if v else 0

    def remove(self, ca: int, cb: int) -> None:
        """Take a connection out (its sockets leave the maps; closing them would do it too)."""
        for m in (self.relayed, self.peers, self.counts):
            for c in (ca, cb):
                try:
                    _sys.bpf_map_delete(m, struct.pack("Q", c))
                except OSError:
                    pass

    def close(self) -> None:
        for fd in (self.prog, self.relayed, self.peers, self.counts):
            _sys_close(fd)


def _sys_close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
