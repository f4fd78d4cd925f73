"""The warm pool, as the fork server keeps it: containers whose pid 1 and main process are
already in fresh namespaces and a fresh cgroup, waiting for a request, so that a start pays
none of the kernel's slow steps.

Moving a process between cgroup v1 hierarchies waits for an RCU grace period (the kernel's
cgroup_threadgroup_rwsem), which costs 1-15 ms here, far more than forking; creating a network
namespace is not free either. A warm container does those steps before it is asked for, each
one fresh and used once (what its processes do is inside/checklist.py's WarmStart). Only
requests that match the warm profile take one; every other request is created cold.
"""

from __future__ import annotations

import os
import signal
import socket

from nsmagic.cgroups.base import Cgroup, CgroupDriver
from nsmagic.cgroups.devices import CONTAINER_DEVICES
from nsmagic.runtime.inside.fds import ContainerFds
from nsmagic.runtime.protocol import HandshakeError, Word, expect
from nsmagic.runtime.server.forker import Forker, reap
from nsmagic.runtime.spec import ContainerSpec

DEFAULT_POOL_SIZE = 3


def pool_size_from_environment() -> int:
    """NSMAGIC_POOL=0 turns warm containers off; a number sets how many are kept ready."""
    value = os.environ.get("NSMAGIC_POOL", str(DEFAULT_POOL_SIZE))
    try:
        return max(0, min(16, int(value)))
    except ValueError:
        return DEFAULT_POOL_SIZE


class WarmContainer:
    """A pid 1 waiting in fresh namespaces and a fresh cgroup (no limits yet)."""

    def __init__(self, pid: int, pidfd: int, sync: socket.socket, handover: socket.socket,
                 lifeline_write: int, cgroup: Cgroup | None) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.sync = sync  # to pid 1, which receives the events socket here
        # To the pre-forked main process, which says WARM on it once the namespaces are
        # ready (or why not), then receives the container's descriptors.
        self.handover = handover
        self.lifeline_write = lifeline_write
        self.cgroup = cgroup
        self.ready = False

    def hand_over(self, spec: ContainerSpec, fds: list[int]) -> None:
        """Give the container its descriptors [events, stdout, stderr, data]; the main
        process reads the request from the data socket itself."""
        if self.cgroup is not None and not spec.limits.is_empty():
            self.cgroup.apply(spec.limits)
        # pid 1 first: it is ready to report before the payload can end.
        socket.send_fds(self.sync, [Word.GO], fds[:1])
        socket.send_fds(self.handover, [Word.GO], fds)
        self.sync.close()
        self.handover.close()

    def discard(self) -> None:
        """Kill and release an unused warm container."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except OSError:
            pass  # already gone (ESRCH, or EINVAL once its pid namespace is dead)
        try:
            reap(self.pid)
        except ChildProcessError:
            pass
        os.close(self.pidfd)
        os.close(self.lifeline_write)
        self.sync.close()
        self.handover.close()
        if self.cgroup is not None:
            self.cgroup.remove()


def start_warm_container(driver: CgroupDriver | None, forker: Forker) -> WarmContainer:
    """Start a new warm pid 1 (it gets ready on its own; its hand-over socket says WARM)."""
    # Warm containers are never privileged: Docker's device rules, as a cold one gets.
    cgroup = (driver.create(f"w{os.urandom(6).hex()}", devices=CONTAINER_DEVICES)
              if driver is not None else None)
    lifeline_read, lifeline_write = os.pipe2(os.O_CLOEXEC)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    handover_ours, handover_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        forker.spawn("warm", {"dirs": cgroup.directories() if cgroup is not None else []},
                     ContainerFds(sync=theirs.fileno(), handover=handover_theirs.fileno(),
                                  lifeline=lifeline_read))
        theirs.close()
        _, detail = expect(ours, Word.PID, step="starting a warm container")
        pid = int(detail)
    except BaseException:
        os.close(lifeline_write)
        ours.close()
        handover_ours.close()
        if cgroup is not None:
            cgroup.remove()
        raise
    finally:
        os.close(lifeline_read)
        theirs.close()
        handover_theirs.close()
    return WarmContainer(pid, os.pidfd_open(pid), ours, handover_ours, lifeline_write, cgroup)


def is_warm(warm: WarmContainer) -> bool:
    """Read what a warm container's main process said: True once it is ready, False when it
    failed (or died) and must be dropped."""
    try:
        expect(warm.handover, Word.WARM, step="warming up")
    except (HandshakeError, OSError):
        return False
    return True
