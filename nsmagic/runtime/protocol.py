"""Messages between the notebook side and a container, one JSON object per datagram."""

from __future__ import annotations

import array
import json
import socket
from typing import Any

# SOCK_SEQPACKET keeps message boundaries and makes each send atomic, so the supervisor,
# pid 1 and the payload can all write to one socket without interleaving, and a closed
# peer shows as an empty read: the socket doubles as a lifeline.
MAX_MESSAGE = 1 << 16


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of message sockets; both ends close on exec."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket | int, message: dict[str, Any], fds: list[int] | None = None) -> None:
    """Send one message, optionally carrying file descriptors."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"message of {len(data)} bytes is larger than {MAX_MESSAGE}")
    if isinstance(sock, int):
        sock = socket.socket(fileno=sock)
        try:
            _send(sock, data, fds)
        finally:
            sock.detach()
    else:
        _send(sock, data, fds)


def _send(sock: socket.socket, data: bytes, fds: list[int] | None) -> None:
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(data)


def receive(sock: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """Receive one message and its descriptors; (None, []) when the peer has closed."""
    data, fds = receive_raw(sock, max_fds)
    return (json.loads(data) if data is not None else None), fds


def receive_raw(sock: socket.socket, max_fds: int = 0) -> tuple[bytes | None, list[int]]:
    """Like receive, with the message's bytes undecoded (to pass them on as they are)."""
    if max_fds:
        data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, max_fds)
    else:
        data, fds = sock.recv(MAX_MESSAGE), []
    return (data or None), list(fds)
