"""The supervisor: one per container, outside its namespaces, owning every kernel resource
the container uses and releasing them however the container ends."""

from __future__ import annotations

import os
import select
import signal
import socket
import traceback
from typing import NoReturn

from nsmagic.isolation import namespaces, syscalls
from nsmagic.runtime import protocol
from nsmagic.runtime.init import run_init, setup_inside
from nsmagic.runtime.spec import ContainerSpec, Payload

# Exit codes of the helper processes themselves (not of the payload).
SETUP_FAILED = 125


class _Step:
    """Names the set-up step under way, so a failure message says where it happened."""

    def __init__(self) -> None:
        self.name = "starting"

    def __call__(self, name: str) -> None:
        self.name = name


def supervise(spec: ContainerSpec, payload: Payload, ctl_fd: int, stdout_fd: int,
              stderr_fd: int) -> NoReturn:
    """Create the container, wait for it, report how it ended, release everything; never
    returns. Runs in a fresh single-threaded child of the launcher."""
    syscalls.set_process_name("nsmagic-sup")
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Interrupts are delivered to the container's pid 1 directly, not through us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _redirect_stdio(stdout_fd, stderr_fd)
    # Subreaper: when the transient set-up process exits, pid 1 is reparented to us.
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    step = _Step()
    init_pid = None
    code = 0
    try:
        init_pid = _create(spec, payload, ctl_fd, step)
        code = _wait(init_pid, ctl_fd)
        init_pid = None  # reaped: its pid may already belong to someone else
    except Exception as error:  # noqa: BLE001 - reported to the notebook, not raised
        code = SETUP_FAILED
        _send_quietly(ctl_fd, {"event": "setup-failed", "step": step.name,
                               "message": _explain(error),
                               "detail": traceback.format_exc(limit=4)})
    finally:
        _release(init_pid)
    os._exit(code)


def _redirect_stdio(stdout_fd: int, stderr_fd: int) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    for fd in {devnull, stdout_fd, stderr_fd} - {0, 1, 2}:
        os.close(fd)


def _create(spec: ContainerSpec, payload: Payload, ctl_fd: int, step: _Step) -> int:
    """Start the container's processes; return pid 1's pid as seen from the host."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lifeline_read, lifeline_write = os.pipe()
    step("forking the set-up process")
    setup_pid = os.fork()
    if setup_pid == 0:
        ours.close()
        os.close(lifeline_write)
        _setup_process(spec, payload, ctl_fd, theirs, lifeline_read)
    theirs.close()
    os.close(lifeline_read)
    # lifeline_write stays open in this process only: pid 1 sees EOF when we are gone.
    try:
        step("preparing resources")
        ours.send(b"go")
        reply = ours.recv(4096)
        if reply == b"maps":
            step("writing the user namespace id maps")
            namespaces.write_id_maps(
                setup_pid,
                namespaces.IdMap(0, spec.uid_outside),
                namespaces.IdMap(0, spec.gid_outside),
            )
            ours.send(b"ok")
            reply = ours.recv(4096)
        if reply.startswith(b"error:"):
            failed_step, _, message = reply[6:].decode().partition(":")
            step(failed_step)
            raise OSError(message)
        if not reply.startswith(b"pid:"):
            raise RuntimeError(f"set-up process ended unexpectedly ({reply!r})")
        init_pid = int(reply[4:])
    finally:
        ours.close()
        os.waitpid(setup_pid, 0)
    protocol.send(ctl_fd, {"event": "started", "pid": init_pid, "supervisor": os.getpid()})
    return init_pid


def _setup_process(spec: ContainerSpec, payload: Payload, ctl_fd: int, sync: socket.socket,
                   lifeline_read: int) -> NoReturn:
    """Enter the new namespaces and fork pid 1 into them, then exit."""
    step = "creating namespaces"
    try:
        sync.recv(16)
        flags = namespaces.flags_for(spec.namespaces)
        syscalls.unshare(flags)
        if "user" in spec.namespaces:
            step = "mapping root inside the user namespace"
            sync.send(b"maps")
            if sync.recv(16) != b"ok":
                os._exit(SETUP_FAILED)
            namespaces.become_root_inside()
        step = "starting pid 1"
        init_pid = os.fork()
        if init_pid == 0:
            sync.close()
            os._exit(_init_process(spec, payload, ctl_fd, lifeline_read))
        sync.send(f"pid:{init_pid}".encode())
    except Exception as error:  # noqa: BLE001 - handed to the supervisor to report
        try:
            sync.send(f"error:{step}:{_explain(error)}".encode()[:4000])
        finally:
            os._exit(SETUP_FAILED)
    os._exit(0)


def _init_process(spec: ContainerSpec, payload: Payload, ctl_fd: int, lifeline_read: int) -> int:
    try:
        warnings = setup_inside(spec)
    except Exception as error:  # noqa: BLE001
        _send_quietly(ctl_fd, {"event": "setup-failed", "step": "setting up inside",
                               "message": _explain(error)})
        return SETUP_FAILED
    _send_quietly(ctl_fd, {"event": "ready", "warnings": warnings})
    return run_init(spec, payload, ctl_fd, lifeline_read)


def _wait(init_pid: int, ctl_fd: int) -> int:
    """Wait until pid 1 ends or the notebook side goes away; return pid 1's exit code."""
    pidfd = os.pidfd_open(init_pid)
    ctl = socket.socket(fileno=ctl_fd)
    try:
        while True:
            ready, _, _ = select.select([pidfd, ctl], [], [])
            if ctl in ready:
                message, _ = protocol.receive(ctl)
                if message is None:
                    # The notebook kernel died or closed the container: end it now.
                    _kill_pidfd(pidfd)
                elif message.get("op") == "kill":
                    _kill_pidfd(pidfd)
            if pidfd in ready:
                break
        _, wait_status = os.waitpid(init_pid, 0)
        if os.WIFSIGNALED(wait_status):
            status = {"signal": os.WTERMSIG(wait_status)}
        else:
            status = {"code": os.waitstatus_to_exitcode(wait_status)}
        _send_quietly(ctl, {"event": "exited", **status})
        return status.get("code", 0)
    finally:
        ctl.detach()
        os.close(pidfd)


def _kill_pidfd(pidfd: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _release(init_pid: int | None) -> None:
    """Make sure nothing of the container outlives this process."""
    if init_pid is None:
        return
    try:
        os.kill(init_pid, signal.SIGKILL)
        os.waitpid(init_pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _send_quietly(ctl: socket.socket | int, message: dict) -> None:
    try:
        protocol.send(ctl, message)
    except OSError:
        pass  # the notebook side is gone; nothing left to tell


def _explain(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror if not error.filename else f"{error.strerror}: {error.filename}"
    return str(error) or type(error).__name__
