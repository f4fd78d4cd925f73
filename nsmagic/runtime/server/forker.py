"""The fork helper: a quiet child of the fork server that forks every container's first
process, so that containers share memory that hardly changes instead of the busy server's.

A forked process shares its parent's pages until one of the two writes to them. The server
writes to its heap all the time (every request, every container that ends), and each page it
writes after a fork stays behind as a private copy in that container and costs the server a
page fault. The helper runs one small loop, so the pages containers inherit stay shared.

Each request forks an intermediate process that creates the container's process (pid 1 in a
new pid namespace, or the user-namespace set-up process) and exits; the server is a child
subreaper, so the container's process becomes the server's child, as if it had forked it.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import signal
import socket
import time
import traceback
from typing import Any, NoReturn

from nsmagic.isolation import syscalls
from nsmagic.runtime.inside.fds import ContainerFds
from nsmagic.runtime.inside.start import run_entry
from nsmagic.runtime.protocol import Word

# A fork request is a small header (never the notebook's request), well within one datagram.
_MAX_REQUEST = 1 << 16


class ForkHelperError(OSError):
    """The fork helper could not fork (or is gone and could not be restarted)."""


class Forker:
    """The server's handle on its fork helper, started on first use."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.sock: socket.socket | None = None

    def spawn(self, entry: str, header: dict[str, Any], fds: ContainerFds) -> int:
        """Fork an intermediate process that runs entry ('cold' or 'warm', see
        inside/start.py) with header and fds; return its pid. What it starts reports its own
        pid on fds.sync."""
        roles = list(fds.fds)
        message = json.dumps({"entry": entry, "roles": roles, **header}).encode()
        if len(message) > _MAX_REQUEST:
            raise ValueError(f"request of {len(message)} bytes is larger than {_MAX_REQUEST}")
        for _attempt in range(2):
            if self.sock is None:
                self.start()
            try:
                socket.send_fds(self.sock, [message], [fds.fds[role] for role in roles])
            except (BrokenPipeError, ConnectionResetError):
                # The helper is gone (killed from outside) and never saw this request: start
                # a new one, once.
                self.close()
                continue
            try:
                reply = self.sock.recv(4096)
            except OSError:
                reply = b""
            if reply.startswith(Word.FORK_FAILED):
                raise ForkHelperError(errno.EAGAIN,
                                      reply[len(Word.FORK_FAILED):].decode(errors="replace"))
            if not reply:
                # It died with the request in hand: it may have forked already, so asking
                # again could start the container twice.
                self.close()
                raise ForkHelperError(errno.ECHILD, "the fork helper ended during the request")
            return int(reply)
        raise ForkHelperError(errno.ECHILD, "the fork helper ended and could not be restarted")

    def start(self) -> None:
        """Fork the helper now (else it starts on first use)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            _serve(theirs)
        theirs.close()
        self.pid, self.sock = pid, ours
        # Once it has said OK it is named and serving: `ps` and the tests see it at once.
        if ours.recv(16) != Word.OK:
            self.close()
            raise ForkHelperError(errno.ECHILD, "the fork helper did not start")

    def close(self) -> None:
        """Stop the helper (its socket's EOF ends it) and reap it; safe to call twice."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.pid is not None:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = None


def reap(pid: int, timeout: float = 2.0) -> int:
    """waitpid(pid) for a container process; return its wait status.

    It becomes our child only once its intermediate parent has exited, which may be a moment
    after it ended itself: until then waitpid says it is not our child.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.0005)


# -- the helper process ----------------------------------------------------------------
def _serve(sock: socket.socket) -> NoReturn:
    """The helper's loop: fork an intermediate per request, reply with its pid."""
    try:
        keep = sock.fileno()
        os.closerange(3, keep)
        os.closerange(keep + 1, 65536)
        syscalls.set_process_name("nsmagic-forker")
        # Our intermediates exit at once; ignoring SIGCHLD lets the kernel reap them.
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        # Nothing here makes reference cycles, and a collection would write to the pages
        # every container shares with us.
        gc.disable()
        sock.send(Word.OK)
        while True:
            message, fds, _, _ = socket.recv_fds(sock, _MAX_REQUEST, 16)
            if not message:
                break
            try:
                pid = os.fork()
            except OSError as error:
                sock.send(Word.FORK_FAILED + error.strerror.encode())
            else:
                if pid == 0:
                    sock.close()
                    _intermediate(message, fds)
                sock.send(str(pid).encode())
            for fd in fds:
                os.close(fd)
    except BaseException:  # noqa: BLE001 - never return into the server's code
        traceback.print_exc()
    os._exit(0)


def _intermediate(message: bytes, fds: list[int]) -> NoReturn:
    code = 1
    try:
        code = run_entry(message, fds)
    except BaseException:  # noqa: BLE001 - a child never returns into the helper's loop
        traceback.print_exc()
    finally:
        os._exit(code)
