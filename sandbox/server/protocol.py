"""The launch server's protocol (AF_UNIX SOCK_SEQPACKET; both ends are this package, same user).
Between the API and the server every message is one of the launch wire format (sandbox/wire.py):

  control socket (API -> server): one message per run, a launch message (a REQUEST section, and
    the plan's PLAN section the first time for its key) with four descriptors attached: the run's
    own socket, the program's stdin, stdout, stderr. Plans are sent once per key (a digest of
    the plan's wire encoding, client.plan_key) and kept by the server.
  run socket (server -> API): EVENT sections as the run goes (audit: one event, or a batch),
    then one message with the events of the clean-up and a RESULT section: the launcher's
    Result, or an error (exit code, message). The caller closing its run socket kills that
    sandbox; the control socket closing (the API process ended, however) kills them all.
  template socket (server -> template): its own small messages (template.py).

The CLI's launch server (`pysandbox server`, loop.serve(listen_fd=...)): each accepted
connection is a control socket as above, but carries the CLI's runs (sandbox/server/lean.py: a
message of its own, the run's replies and signals described there), or b"STATUS" / b"STOP" (no
descriptors), answered there with one line ("pid N sandboxes K connections C idle T"); STOP then
ends the server.

The framing helpers below are shared by the three ends.
"""
from __future__ import annotations

import socket

_PEEK = bytearray(1)


def msg_len(sock) -> int:
    """The length of the next message on a SEQPACKET socket, without taking it (0: end of stream):
    a receive buffer of that size instead of a fixed maximum (allocating 4 MiB costs more than
    the call)."""
    return sock.recv_into(_PEEK, 1, socket.MSG_PEEK | socket.MSG_TRUNC)


def recv(sock) -> bytes:
    """The next message (b"": end of stream)."""
    return sock.recv(max(msg_len(sock), 1))

