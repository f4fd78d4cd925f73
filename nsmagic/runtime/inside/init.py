"""pid 1 of a container: forks the main process, reaps zombies, forwards signals and reports
how the payload ended, in Python or by becoming nsmagic-init, which does the same."""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
from collections.abc import Callable

from nsmagic.isolation import capabilities, syscalls
from nsmagic.runtime import protocol
from nsmagic.runtime.protocol import Event

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2)


def _find_native_init() -> str | None:
    # Found once, in the fork server: inside a container the path may not exist any more.
    if os.environ.get("NSMAGIC_INIT", "native") == "python":
        return None
    package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(package, "native", "nsmagic-init")
    return path if os.access(path, os.X_OK) else None


# nsmagic-init (nsmagic/native/nsmagic-init.c), built with the package when a C compiler was
# there: pid 1 executes it once the payload is forked, so that an idle container keeps one
# forked interpreter, not two. None: pid 1 stays this module's Python (NSMAGIC_INIT=python).
NATIVE_INIT = _find_native_init()


class PidOne:
    """What pid 1 does once its namespaces are ready: start the payload, forward signals to
    it, reap every zombie, and end the container when the payload ends."""

    def __init__(self, lifeline_fd: int) -> None:
        syscalls.set_process_name("nsmagic-init")
        # Subreaper so that, without a pid namespace too, orphans come back here to be reaped.
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        self.lifeline_fd = lifeline_fd
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_write, warn_on_full_buffer=False)
        self.pending: list[int] = []
        # Opened now, before the payload process changes the root filesystem (--rootfs).
        self.native_init = (os.open(NATIVE_INIT, os.O_PATH | os.O_CLOEXEC)
                            if NATIVE_INIT is not None else None)
        # pid 1 ignores every signal it has no handler for, so forwarding needs real handlers.
        for signum in (*FORWARDED_SIGNALS, signal.SIGCHLD):
            signal.signal(signum, self._remember)

    def _remember(self, signum: int, _frame: object) -> None:
        self.pending.append(signum)

    def fork_payload(self, run: Callable[[], int], close_in_child: list[int] = ()) -> int:
        """Fork the payload process, which calls run() and exits with what it returns."""
        payload_pid = os.fork()
        if payload_pid == 0:
            for fd in close_in_child:
                os.close(fd)
            os.close(self.lifeline_fd)
            os.close(self.wake_read)
            os.close(self.wake_write)
            if self.native_init is not None:
                os.close(self.native_init)
            signal.set_wakeup_fd(-1)
            # pid 1's handlers only note a signal down: here they would swallow it.
            for signum in (*FORWARDED_SIGNALS, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            code = 1
            try:
                code = run()
            finally:
                os._exit(code)
        return payload_pid

    def supervise(self, payload_pid: int, events_fd: int, privileged: bool = False) -> int:
        """Wait for the payload, report how it ended, kill what it left; return our exit code.

        With nsmagic-init, that program does it all in our place and this never returns.
        """
        if self.native_init is not None:
            os.set_inheritable(events_fd, True)
            self._become_native_init(payload_pid, str(events_fd), privileged)
        if not privileged:
            # pid 1 needs no privilege from here on, and the payload must not borrow any.
            capabilities.make_undumpable()
            capabilities.restrict_to()
        status = _supervise_payload(payload_pid, self.wake_read, self.lifeline_fd, self.pending)
        protocol.send(events_fd, {"event": Event.PAYLOAD_EXITED, **status})
        _kill_leftovers()
        return status.get("code", 128 + status.get("signal", 0))

    def wait_then_supervise(self, payload_pid: int, sync: socket.socket) -> int:
        """A warm pid 1: wait for the container's events socket on sync (end of file: the
        container is discarded), then supervise. nsmagic-init, if there, does the waiting
        itself: becoming it now keeps that work out of the container's start."""
        if self.native_init is not None:
            os.set_inheritable(sync.fileno(), True)
            self._become_native_init(payload_pid, f"sync:{sync.fileno()}", privileged=False)
        message, fds, _, _ = socket.recv_fds(sync, 16, 1)
        if not message:
            return 0  # discarded: the payload process dies with us, as pid 1
        sync.close()
        return self.supervise(payload_pid, fds[0])

    def _become_native_init(self, payload_pid: int, events: str, privileged: bool) -> None:
        """Execute nsmagic-init with the same duties (events: the events socket's number, or
        sync:N to receive it there); return only if that fails."""
        watched = {*FORWARDED_SIGNALS, signal.SIGCHLD}
        # Blocked signals stay pending across execve, where nsmagic-init reads them: none is
        # lost. Those that arrived earlier were noted by _remember: pass them on now.
        signal.pthread_sigmask(signal.SIG_BLOCK, watched)
        for signum in self.pending:
            if signum != signal.SIGCHLD:
                _signal_quietly(payload_pid, signum)
        self.pending.clear()
        os.set_inheritable(self.lifeline_fd, True)
        arguments = ["nsmagic-init", str(payload_pid), events, str(self.lifeline_fd)]
        try:
            os.execve(self.native_init, arguments + (["privileged"] if privileged else []), {})
        except OSError as error:
            # A dynamically linked build cannot start once the root has moved (--rootfs).
            os.write(2, f"nsmagic: pid 1 stays in Python ({error.strerror})\n".encode())
            os.close(self.native_init)
            self.native_init = None
        signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)


def _supervise_payload(payload_pid: int, wake_fd: int, lifeline_fd: int,
                       pending: list[int]) -> dict[str, int]:
    while True:
        try:
            ready, _, _ = select.select([wake_fd, lifeline_fd], [], [])
        except InterruptedError:
            ready = [wake_fd]
        if lifeline_fd in ready and not os.read(lifeline_fd, 1):
            # The supervisor outside is gone: nobody will clean up after us, so stop now.
            _kill_leftovers()
            os._exit(137)
        if wake_fd in ready:
            try:
                os.read(wake_fd, 512)
            except BlockingIOError:
                pass
        while pending:
            signum = pending.pop(0)
            if signum != signal.SIGCHLD:
                try:
                    os.kill(payload_pid, signum)
                except ProcessLookupError:
                    pass
        status = _reap(payload_pid)
        if status is not None:
            return status


def _reap(payload_pid: int) -> dict[str, int] | None:
    """Reap every zombie; return the payload's status once it has ended."""
    result = None
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return result
        if pid == 0:
            return result
        if pid == payload_pid:
            if os.WIFSIGNALED(wait_status):
                result = {"signal": os.WTERMSIG(wait_status)}
            else:
                result = {"code": os.waitstatus_to_exitcode(wait_status)}


def _kill_leftovers() -> None:
    """Kill what the payload left running: its orphans were reparented to us."""
    if os.getpid() == 1:
        # As pid 1 of its own namespace, kill(-1) reaches exactly the container.
        _signal_quietly(-1)
        _reap_all_blocking()
        return
    # Without a pid namespace kill(-1) would reach the whole host: kill our own children,
    # generation by generation, as each one's orphans are reparented to us (the subreaper).
    while children := _children():
        for pid in children:
            _signal_quietly(pid)
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _signal_quietly(pid: int, signum: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, signum)
    except OSError as error:
        if error.errno not in (errno.ESRCH, errno.EPERM):
            raise


def _reap_all_blocking() -> None:
    try:
        while True:
            os.waitpid(-1, 0)
    except ChildProcessError:
        pass


def _children() -> list[int]:
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as handle:
            return [int(pid) for pid in handle.read().split()]
    except OSError:
        return []
