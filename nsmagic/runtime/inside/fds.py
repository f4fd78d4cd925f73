"""The descriptors a container's processes are given, by role, and how a child keeps only
those."""

from __future__ import annotations

import fcntl
import os

# Where the descriptors a child keeps are moved before every other one is closed.
_KEEP_BASE = 3


class ContainerFds:
    """The descriptors a container's processes need, by role.

    events: the container's message socket to the kernel; stdout, stderr: its output pipes;
    data: the kernel's data socket (request, variables, cells); lifeline: read end of a pipe
    only the supervisor writes; sync: the set-up handshake with the server; join: a pidfd of
    the container whose network (and user) namespace this one shares; handover: a warm
    container's main process waits there for the container's descriptors.
    """

    ROLES = ("events", "stdout", "stderr", "data", "lifeline", "sync", "join", "handover")

    def __init__(self, **fds: int | None) -> None:
        unknown = set(fds) - set(ContainerFds.ROLES)
        if unknown:
            raise ValueError(f"unknown descriptor roles {sorted(unknown)}")
        self.fds = {role: fd for role, fd in fds.items() if fd is not None}

    def __getattr__(self, role: str) -> int | None:
        if role in ContainerFds.ROLES:
            return self.__dict__["fds"].get(role)
        raise AttributeError(role)

    def keep_only(self) -> ContainerFds:
        """In a forked child: renumber ours to 3, 4, ... and close everything else.

        A descriptor of another container left open here would keep that container's
        lifeline alive, so nothing of the server's may survive into a container.
        """
        roles = list(self.fds)
        fds = [self.fds[r] for r in roles]
        # Park them above every number involved first, so no dup2 below overwrites one
        # still needed. (Not at a fixed high number: RLIMIT_NOFILE may be as low as 1024.)
        floor = max([*fds, _KEEP_BASE + len(fds)]) + 1
        parked = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in fds]
        renumbered = {}
        for index, (role, fd) in enumerate(zip(roles, parked, strict=True)):
            os.dup2(fd, _KEEP_BASE + index, inheritable=False)
            renumbered[role] = _KEEP_BASE + index
        os.closerange(_KEEP_BASE + len(fds), 65536)
        return ContainerFds(**renumbered)


def redirect_stdio(stdout_fd: int, stderr_fd: int) -> None:
    """Make fds 1 and 2 the container's output pipes and 0 /dev/null; close the originals."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    for fd in (devnull, stdout_fd, stderr_fd):
        os.close(fd)
