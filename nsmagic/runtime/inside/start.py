"""The entries the fork helper's intermediate process runs: it creates a container's first
process (pid 1 in a new pid namespace, or the user-namespace set-up process) and exits, so
that process becomes the fork server's child (the server is a child subreaper)."""

from __future__ import annotations

import json
import os
import signal
import socket
import traceback
from collections.abc import Callable
from typing import NoReturn

from nsmagic.errors import explain
from nsmagic.isolation import namespaces, syscalls
from nsmagic.runtime import protocol
from nsmagic.runtime.inside.checklist import ColdStart, WarmStart, pid_one
from nsmagic.runtime.inside.fds import ContainerFds
from nsmagic.runtime.protocol import SETUP_FAILED, Word, expect, say


def run_entry(message: bytes, fds: list[int]) -> int:
    """In the intermediate: run the entry a fork request names; return our exit code.

    The request is a small JSON header (which entry, the descriptors' roles, the namespaces,
    the cgroup directories): never the notebook's request, whose code and inputs reach only
    the container's own main process (a process forked from here would inherit them).
    """
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    header = json.loads(message)
    roles = ContainerFds(**dict(zip(header["roles"], fds, strict=True)))
    return ENTRIES[header["entry"]](header, roles)


def start_cold(header: dict, fds: ContainerFds) -> int:
    """A container on request: become the user-namespace set-up process, or fork pid 1 into
    a new pid namespace and report its pid."""
    if "user" in header["namespaces"]:
        # A pid namespace must belong to the new user namespace (or root inside could not
        # mount its /proc), so this process creates both, then forks pid 1.
        _as_child(lambda kept: _set_up_user_namespace(header, kept), fds)
    sync = socket.socket(fileno=fds.sync)
    try:
        if "pid" in header["namespaces"]:
            syscalls.unshare(syscalls.CLONE_NEWPID)  # for our next child only
        pid = os.fork()
        if pid == 0:
            _as_child(lambda kept: pid_one(ColdStart(header, kept)), fds)
    except Exception as error:  # noqa: BLE001 - handed to the server to report
        return protocol.report_error(sync, "starting pid 1", explain(error))
    try:
        say(sync, Word.PID, str(pid).encode())
    except OSError:
        return 1  # the server gave up on this container (pid 1 stops at the missing GO)
    return 0


def start_warm(header: dict, fds: ContainerFds) -> int:
    """A warm container: fork its pid 1 into a new pid namespace and report its pid."""
    syscalls.unshare(syscalls.CLONE_NEWPID)  # for our next child only
    pid = os.fork()
    if pid == 0:
        _as_child(lambda kept: pid_one(WarmStart(header, kept)), fds)
    try:
        say(socket.socket(fileno=fds.sync), Word.PID, str(pid).encode())
    except OSError:
        return 1  # the server gave up on this container (and killed it): nobody to tell
    return 0


ENTRIES: dict[str, Callable[[dict, ContainerFds], int]] = {"cold": start_cold,
                                                          "warm": start_warm}


def _set_up_user_namespace(header: dict, fds: ContainerFds) -> int:
    """The user-namespace path: create every namespace, get mapped, fork pid 1, exit."""
    sync = socket.socket(fileno=fds.sync)
    step = "creating namespaces"
    try:
        expect(sync, Word.GO, step="waiting for the cgroup")
        flags = namespaces.flags_for(frozenset(header["namespaces"]))
        if fds.join is not None:
            # Sharing another container's network: enter its user and network namespaces
            # (where we are mapped already), and create only the rest.
            step = "joining the other container's namespaces"
            syscalls.setns(fds.join, syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWNET)
            syscalls.unshare(flags & ~(syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWNET))
        else:
            syscalls.unshare(flags)
            step = "mapping root inside the user namespace"
            say(sync, Word.MAPS)
            expect(sync, Word.OK, step=step)
        namespaces.become_root_inside()
        step = "starting pid 1"
        pid = os.fork()
        if pid == 0:
            os._exit(pid_one(ColdStart(header, fds, namespaces_made=True)))
        say(sync, Word.PID, str(pid).encode())
    except Exception as error:  # noqa: BLE001 - handed to the server to report
        return protocol.report_error(sync, step, explain(error))
    return 0


def _as_child(function: Callable[[ContainerFds], int], fds: ContainerFds) -> NoReturn:
    """In a forked child: keep only this container's descriptors, run function, exit."""
    code = SETUP_FAILED
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        code = function(fds.keep_only())
    except BaseException:  # noqa: BLE001 - a child must never return into the helper's loop
        traceback.print_exc()
    finally:
        os._exit(code)
