"""Every message and wire format between nsmagic's processes, by name: the kernel's requests to
the fork server, the supervisor's and the container's events, the set-up handshake words, and
the length-prefixed frames of the data socket. The C init (nsmagic/native/nsmagic-init.c)
writes Event.PAYLOAD_EXITED under the same name.

Who holds which socket (see docs/architecture.md, "Sockets of one container"):
- control (SEQPACKET): kernel <-> fork server; Op requests, the server's replies.
- supervisor (SEQPACKET): kernel <-> the server's record of one container. Only the server
  holds the far end, so what arrives here is trusted: pid 1's pidfd, the cgroup, the end.
- events (SEQPACKET): the container's pid 1 and main process -> kernel. Untrusted: parsed
  defensively, never a source of pids, cgroups or namespaces.
- sync (SEQPACKET): fork server <-> a container's processes while it is set up; Word.
- data (STREAM): kernel <-> the container's main process; frames (the request, variables,
  a named container's cells and replies). What comes back is untrusted.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
from typing import Any

from nsmagic.errors import ProtocolError

# SOCK_SEQPACKET keeps message boundaries and makes each send atomic, so pid 1 and the payload
# can share one socket without interleaving, and a closed peer shows as an empty read: each
# socket doubles as a lifeline.
MAX_MESSAGE = 1 << 16
# Exit code of pid 1 when the container could not be set up (the payload never ran).
SETUP_FAILED = 125


class Op:
    """Requests on the control socket (kernel -> server) and the supervisor socket."""

    PING = "ping"  # -> {"pong": server pid}
    LAUNCH = "launch"  # {"op", "spec"} + fds: stdout, stderr, supervisor, events, data[, join]
    KILL = "kill"  # on a supervisor socket: end this container now


class Event:
    """Events the kernel receives about one container."""

    # From the supervisor (trusted).
    STARTED = "started"  # pid, cgroup, cgroup_driver, address, warm, warnings; + pid 1's pidfd
    WARNING = "warning"  # message
    EXITED = "exited"  # code or signal, stats, oom: pid 1 was reaped, all is released
    SETUP_FAILED = "setup-failed"  # step, message
    # From inside the container (untrusted).
    READY = "ready"  # warnings: set up, the payload starts now
    EXCEPTION = "exception"  # type, message, traceback: the payload raised
    PAYLOAD_EXITED = "payload-exited"  # code or signal of the main process (from pid 1)


SUPERVISOR_EVENTS = frozenset({Event.STARTED, Event.WARNING, Event.EXITED, Event.SETUP_FAILED})
CONTAINER_EVENTS = frozenset({Event.READY, Event.EXCEPTION, Event.PAYLOAD_EXITED})


class Word:
    """The set-up handshake on the sync socket, in the order a cold start says them."""

    PID = b"pid:"  # intermediate -> server: pid 1's host pid follows
    GO = b"go"  # server -> child: its cgroup is ready (it was moved in)
    MAPS = b"maps"  # set-up process -> server: write my user namespace's id maps
    OK = b"ok"  # either way: done as asked
    READY = b"ready"  # main process -> server: the namespaces are set up
    NET = b"net:"  # server -> main process: configure this veth (JSON follows)
    RUN = b"run"  # server -> main process: run the payload
    WARM = b"warm"  # a warm main process -> server: ready for a request
    ERROR = b"error:"  # child -> server: STEP \0 MESSAGE, then it exits SETUP_FAILED
    # The fork helper's reply to a fork request is the intermediate's pid, or this.
    FORK_FAILED = b"fork-failed:"


class HandshakeError(OSError):
    """The other side of a set-up handshake reported a failure (step and message) or said
    something unexpected."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.message = message

    def __str__(self) -> str:
        return self.message


def say(sock: socket.socket, word: bytes, detail: bytes = b"") -> None:
    """Send one handshake word (with its detail, for PID and NET)."""
    sock.send(word + detail)


def expect(sock: socket.socket, *words: bytes, step: str = "") -> tuple[bytes, bytes]:
    """The next handshake word, which must be one of words; returns (word, detail).

    A reported error raises HandshakeError with the step the child named; silence (the
    child died) or any other word raises it with step as given.
    """
    message = sock.recv(4096)
    if message.startswith(Word.ERROR):
        failed_step, _, text = message[len(Word.ERROR):].partition(b"\0")
        raise HandshakeError(failed_step.decode(errors="replace"),
                             text.decode(errors="replace"))
    for word in words:
        if message == word or (word.endswith(b":") and message.startswith(word)):
            return word, message[len(word):]
    said = repr(message) if message else "nothing (it ended)"
    raise HandshakeError(step, f"expected {' or '.join(w.decode() for w in words)}, "
                               f"got {said}")


def report_error(sock: socket.socket | None, step: str, message: str) -> int:
    """Tell the server which step failed and why (the one error form); return SETUP_FAILED."""
    if sock is not None:
        try:
            sock.send((Word.ERROR + step.encode() + b"\0" + message.encode())[:4000])
        except OSError:
            pass  # the server gave up on us already
    return SETUP_FAILED


# -- messages: one JSON object per datagram -----------------------------------------------
def socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of message sockets; both ends close on exec."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def encode(message: dict[str, Any]) -> bytes:
    """A message as the bytes of one datagram."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"message of {len(data)} bytes is larger than {MAX_MESSAGE}")
    return data


def send(sock: socket.socket | int, message: dict[str, Any], fds: list[int] | None = None) -> None:
    """Send one message, optionally carrying file descriptors."""
    data = encode(message)
    if isinstance(sock, int):
        sock = socket.socket(fileno=sock)
        try:
            _send(sock, data, fds)
        finally:
            sock.detach()
    else:
        _send(sock, data, fds)


def send_quietly(sock: socket.socket | int, message: dict[str, Any],
                 fds: list[int] | None = None) -> None:
    """Send a message; if the peer is gone there is nobody left to tell."""
    try:
        send(sock, message, fds)
    except OSError:
        pass


def _send(sock: socket.socket, data: bytes, fds: list[int] | None) -> None:
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(data)


def receive(sock: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """Receive one message and its descriptors; (None, []) when the peer has closed.

    Anything but a JSON object raises ProtocolError (its descriptors closed first).
    """
    data, fds = receive_raw(sock, max_fds)
    if data is None:
        return None, fds
    return decode(data, fds), fds


def decode(data: bytes, fds: list[int] = ()) -> dict[str, Any]:
    """A datagram's message; ProtocolError (closing fds) when it is not a JSON object."""
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        message = None
    if not isinstance(message, dict):
        _close_all(fds)
        raise ProtocolError(f"a malformed message ({len(data)} bytes) was received")
    return message


def receive_raw(sock: socket.socket, max_fds: int = 0) -> tuple[bytes | None, list[int]]:
    """Like receive, with the message's bytes undecoded."""
    if max_fds:
        data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, max_fds)
    else:
        data, fds = sock.recv(MAX_MESSAGE), []
    return (data or None), list(fds)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# -- frames on the data socket ------------------------------------------------------------
# The data socket carries, in order: the kernel's REQUEST (the spec and payload, JSON: only the
# container's main process ever holds it), the INPUTS (pickled, when --in was given); back from
# the payload, after --out, an OUTPUTS_HEADER (JSON errors) and the OUTPUTS (allow-list
# pickle). A named container's agent then reads CELL frames (pickled) and answers each with a
# REPLY (JSON), an OUTPUTS_HEADER and OUTPUTS.
_FRAME_HEADER = struct.Struct("!Q")


def send_frame(sock: Any, data: bytes) -> None:
    """One length-prefixed frame on a stream socket."""
    sock.sendall(_FRAME_HEADER.pack(len(data)) + data)


def receive_frame(sock: Any, limit: int | None = None) -> bytes | None:
    """The next frame, or None at end of stream; ProtocolError above limit bytes."""
    header = _receive_exactly(sock, _FRAME_HEADER.size)
    if header is None:
        return None
    (size,) = _FRAME_HEADER.unpack(header)
    if limit is not None and size > limit:
        raise ProtocolError(f"a frame of {size} bytes is larger than the {limit} allowed")
    return _receive_exactly(sock, size) if size else b""


def _receive_exactly(sock: Any, size: int) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class FrameReader:
    """Frames from bytes read a piece at a time (a select loop), with a cap on what is held."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.frames: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        """Add bytes; ProtocolError once the frames held would pass the limit."""
        self.buffer += chunk
        while len(self.buffer) >= _FRAME_HEADER.size:
            (size,) = _FRAME_HEADER.unpack_from(self.buffer)
            if size > self.limit or len(self.buffer) > self.limit + _FRAME_HEADER.size:
                self.buffer.clear()
                raise ProtocolError(f"the container sent more than the {self.limit} bytes "
                                    "allowed back")
            end = _FRAME_HEADER.size + size
            if len(self.buffer) < end:
                return
            self.frames.append(bytes(self.buffer[_FRAME_HEADER.size:end]))
            del self.buffer[:end]
