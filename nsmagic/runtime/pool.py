"""Pre-warmed containers: pid 1 and the main process already forked into fresh namespaces
and a fresh cgroup, waiting for a request, so that it pays none of the kernel's slow steps.

Moving a process between cgroup v1 hierarchies waits for an RCU grace period (the kernel's
cgroup_threadgroup_rwsem), which costs 1-15 ms here, far more than forking; creating a network
namespace is not free either. A warm container does those steps before it is asked for, each
one fresh and used once. Only requests that match the warm profile (root, the default
namespaces and mounts, a fresh cgroup) take one; every other request is created cold.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import traceback
from typing import TYPE_CHECKING, NoReturn

from nsmagic.cgroups import join_cgroup
from nsmagic.cgroups.base import Cgroup, CgroupDriver
from nsmagic.isolation import capabilities, namespaces, syscalls
from nsmagic.runtime import protocol
from nsmagic.runtime.forker import Forker, reap
from nsmagic.runtime.init import PidOne, name_host, prepare_namespaces
from nsmagic.runtime.payload import run_payload
from nsmagic.runtime.spec import DEFAULT_NAMESPACES, ContainerSpec, Payload

if TYPE_CHECKING:
    from nsmagic.runtime.supervisor import ContainerFds

DEFAULT_POOL_SIZE = 3
_READY = b"warm"


def pool_size_from_environment() -> int:
    """NSMAGIC_POOL=0 turns warm containers off; a number sets how many are kept ready."""
    value = os.environ.get("NSMAGIC_POOL", str(DEFAULT_POOL_SIZE))
    try:
        return max(0, min(16, int(value)))
    except ValueError:
        return DEFAULT_POOL_SIZE


def warm_profile() -> ContainerSpec:
    """The spec warm containers are prepared for: Docker's default namespaces, as root."""
    return ContainerSpec(namespaces=DEFAULT_NAMESPACES, mount_proc=True, private_tmp=True)


def matches_warm_profile(spec: ContainerSpec) -> bool:
    """True when a warm container can serve this spec exactly as a cold one would."""
    profile = warm_profile()
    return (os.geteuid() == 0 and spec.namespaces == profile.namespaces and spec.net == "none"
            and not spec.privileged  # warm processes have dropped their bounding set
            and spec.mount_proc == profile.mount_proc
            and spec.private_tmp == profile.private_tmp and spec.cgroup is None
            and spec.mount_options() == profile.mount_options())


class WarmContainer:
    """A pid 1 waiting in fresh namespaces and a fresh cgroup (no limits yet)."""

    def __init__(self, pid: int, pidfd: int, sync: socket.socket, payload_sync: socket.socket,
                 lifeline_write: int, cgroup: Cgroup | None) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.sync = sync  # to pid 1
        # To the pre-forked payload process, which says b'warm' on it once the namespaces
        # are ready, or why not.
        self.payload_sync = payload_sync
        self.lifeline_write = lifeline_write
        self.cgroup = cgroup
        self.ready = False

    def hand_over(self, spec: ContainerSpec, request: bytes, fds: list[int]) -> None:
        """Give the payload its launch request (the notebook's own bytes, with 'spec' and
        'payload') and the container's descriptors [ctl, stdout, stderr, data]."""
        if self.cgroup is not None and not spec.limits.is_empty():
            self.cgroup.apply(spec.limits)
        # pid 1 first: it is ready to report before the payload can end.
        socket.send_fds(self.sync, [b"go"], fds[:1])
        socket.send_fds(self.payload_sync, [request], fds)
        self.sync.close()
        self.payload_sync.close()

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
        self.payload_sync.close()
        if self.cgroup is not None:
            self.cgroup.remove()


def start_warm_container(driver: CgroupDriver | None, forker: Forker) -> WarmContainer:
    """Start a new warm pid 1 (it gets ready on its own; its sync socket says b'warm')."""
    from nsmagic.runtime.supervisor import ContainerFds

    cgroup = driver.create(f"w{os.urandom(6).hex()}") if driver is not None else None
    lifeline_read, lifeline_write = os.pipe2(os.O_CLOEXEC)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    payload_ours, payload_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        forker.spawn("warm", {"dirs": cgroup.directories() if cgroup is not None else []},
                     ContainerFds(sync=theirs.fileno(), data=payload_theirs.fileno(),
                                  lifeline=lifeline_read))
        theirs.close()
        pid, error = _pid_and_error(ours)
    except BaseException:
        os.close(lifeline_write)
        ours.close()
        payload_ours.close()
        if cgroup is not None:
            cgroup.remove()
        raise
    finally:
        os.close(lifeline_read)
        theirs.close()
        payload_theirs.close()
    warm = WarmContainer(pid, os.pidfd_open(pid), ours, payload_ours, lifeline_write, cgroup)
    if error is not None:
        warm.discard()
        raise OSError(f"the warm container did not start: {error}")
    return warm


def _pid_and_error(sync: socket.socket) -> tuple[int, str | None]:
    # pid 1 may fail, and say so, before the process that forked it reports its pid.
    error = None
    while True:
        reply = sync.recv(4096)
        if reply.startswith(b"pid:"):
            return int(reply[4:]), error
        if not reply:
            raise OSError(f"the warm container did not start ({error or 'no pid reported'})")
        error = reply.removeprefix(b"error:").decode(errors="replace")


def start_warm_process(request: dict, body: bytes, fds: ContainerFds) -> int:
    """In the fork helper's intermediate process: fork a warm pid 1 into a new pid namespace
    and report its pid on the sync socket; return our exit code."""
    syscalls.unshare(syscalls.CLONE_NEWPID)  # for our next child only
    pid = os.fork()
    if pid == 0:
        _warm_main(fds.sync, fds.data, fds.lifeline, request["dirs"])
    try:
        socket.socket(fileno=fds.sync).send(f"pid:{pid}".encode())
    except OSError:
        return 1  # the server gave up on this container (and killed it): nobody to tell
    return 0


def _warm_main(sync_fd: int, payload_sync_fd: int, lifeline_fd: int,
               cgroup_directories: list[str]) -> NoReturn:
    from nsmagic.runtime.supervisor import SETUP_FAILED, ContainerFds, explain

    code = SETUP_FAILED
    sync = None
    try:
        fds = ContainerFds(sync=sync_fd, data=payload_sync_fd, lifeline=lifeline_fd).keep_only()
        sync = socket.socket(fileno=fds.sync)
        payload_sync = socket.socket(fileno=fds.data)
        code = _warm_up_and_run(sync, payload_sync, fds.lifeline, cgroup_directories)
    except BaseException as error:  # noqa: BLE001 - a child never returns to the server loop
        if sync is not None:
            try:
                sync.send(f"error:{explain(error)}".encode()[:4000])
            except OSError:
                pass
        else:
            traceback.print_exc()
    finally:
        os._exit(code)


def _warm_up_and_run(sync: socket.socket, payload_sync: socket.socket, lifeline_fd: int,
                     cgroup_directories: list[str]) -> int:
    """pid 1 of a warm container: get into the cgroup and namespaces, fork the payload process
    (which prepares the namespaces and waits for its payload), then wait for the container's
    message socket (or to be discarded)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    join_cgroup(cgroup_directories)  # the slow write happens here, not in the fork server
    syscalls.unshare(namespaces.flags_for(warm_profile().namespaces - {"pid"}))
    # pid 1 does as little as it can: each page it writes is a private copy for the life of
    # the container. What both processes need is done once, before the fork.
    os.chdir("/")
    capabilities.drop_bounding_set()
    init = PidOne(lifeline_fd)  # nsmagic-init already: the payload's `ps` must see no other
    payload_pid = init.fork_payload(
        lambda: _payload_when_asked(payload_sync, cgroup_directories),
        close_in_child=[sync.fileno()])
    payload_sync.close()
    return init.wait_then_supervise(payload_pid, sync)


def _rehearse(warnings: list[str]) -> None:
    """Run once, while idle, what the payload process runs once it is handed a request.

    A forked process shares its parent's pages until it writes to one, and the first write
    to each page costs a fault and a copy: this makes those copies now rather than while
    the notebook waits. Nothing here changes what the payload will see.
    """
    request = json.dumps({"spec": ContainerSpec(env=dict(os.environ)).to_wire(),
                          "payload": Payload(kind="python", source="pass").to_wire()})
    parsed = json.loads(request)
    ContainerSpec.from_wire(parsed["spec"])
    Payload.from_wire(parsed["payload"])
    json.dumps({"event": "ready", "warnings": warnings}, separators=(",", ":"))
    compile(ast.parse("pass", "<rehearsal>"), "<rehearsal>", "exec")


def _payload_when_asked(sync: socket.socket, cgroup_directories: list[str]) -> int:
    """The pre-forked payload process: prepare the namespaces, say b'warm', wait for the
    launch request, then run it."""
    from nsmagic.runtime.supervisor import SETUP_FAILED, explain, redirect_stdio, send_quietly

    syscalls.set_process_name("nsmagic-warm")  # how `ps` on the host tells the pool apart
    try:
        warnings = prepare_namespaces(warm_profile(), cgroup_directories)
    except Exception as error:  # noqa: BLE001 - the server drops this warm container
        sync.send(f"error:{explain(error)}".encode()[:4000])
        return SETUP_FAILED
    _rehearse(warnings)
    sync.send(_READY)
    message, fds, _, _ = socket.recv_fds(sync, protocol.MAX_MESSAGE, 4)
    if not message:
        return 0
    syscalls.set_process_name("nsmagic-init")  # as in a container created on request
    sync.close()
    request = json.loads(message)
    spec = ContainerSpec.from_wire(request["spec"])
    payload = Payload.from_wire(request["payload"])
    ctl_fd, stdout_fd, stderr_fd, data_fd = fds
    redirect_stdio(stdout_fd, stderr_fd)
    name_host(spec)
    send_quietly(ctl_fd, {"event": "ready", "warnings": warnings})
    return run_payload(payload, ctl_fd, spec.env, spec.cwd, data_fd, spec.privileged)
