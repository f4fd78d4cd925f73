"""Pre-warmed containers: pid 1 already forked into its namespaces and its cgroup, waiting for
a payload, so that a request pays none of the kernel's slow steps.

Moving a process between cgroup v1 hierarchies waits for an RCU grace period (the kernel's
cgroup_threadgroup_rwsem), which costs 1-15 ms here, far more than forking; creating a network
namespace is not free either. A warm container does those steps before it is asked for, each
one fresh and used once. Only requests that match the warm profile (root, the default
namespaces and mounts, a fresh cgroup) take one; every other request is created cold.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import traceback
from typing import NoReturn

from nsmagic.cgroups.base import Cgroup, CgroupDriver
from nsmagic.isolation import namespaces, syscalls
from nsmagic.runtime.init import PidOne, name_host, prepare_namespaces
from nsmagic.runtime.payload import run_payload
from nsmagic.runtime.spec import DEFAULT_NAMESPACES, ContainerSpec, Payload

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
        self.payload_sync = payload_sync  # to the pre-forked payload process
        self.lifeline_write = lifeline_write
        self.cgroup = cgroup
        self.ready = False

    def hand_over(self, spec: ContainerSpec, payload: Payload, fds: list[int]) -> None:
        """Give the payload and the container's descriptors [ctl, stdout, stderr, data]."""
        if self.cgroup is not None and not spec.limits.is_empty():
            self.cgroup.apply(spec.limits)
        message = json.dumps({"spec": spec.to_wire(), "payload": payload.to_wire()}).encode()
        # The payload first, so that it starts while pid 1 is still being told.
        socket.send_fds(self.payload_sync, [message], fds)
        socket.send_fds(self.sync, [json.dumps({"privileged": spec.privileged}).encode()],
                        fds[:1])
        self.sync.close()
        self.payload_sync.close()

    def discard(self) -> None:
        """Kill and release an unused warm container."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except OSError:
            pass  # already gone (ESRCH, or EINVAL once its pid namespace is dead)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        os.close(self.pidfd)
        os.close(self.lifeline_write)
        self.sync.close()
        self.payload_sync.close()
        if self.cgroup is not None:
            self.cgroup.remove()


def start_warm_container(driver: CgroupDriver | None, own_pid_namespace: int,
                         keep_closed: list[int] | None = None) -> WarmContainer:
    """Fork a new warm pid 1 (it gets ready on its own; its sync socket says b'warm')."""
    cgroup = driver.create(f"w{secrets.token_hex(6)}") if driver is not None else None
    lifeline_read, lifeline_write = os.pipe2(os.O_CLOEXEC)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    payload_ours, payload_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        syscalls.unshare(syscalls.CLONE_NEWPID)
        try:
            pid = os.fork()
            if pid == 0:
                _warm_main(theirs.fileno(), payload_theirs.fileno(), lifeline_read, cgroup)
        finally:
            syscalls.setns(own_pid_namespace, syscalls.CLONE_NEWPID)
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
    return WarmContainer(pid, os.pidfd_open(pid), ours, payload_ours, lifeline_write, cgroup)


def _warm_main(sync_fd: int, payload_sync_fd: int, lifeline_fd: int,
               cgroup: Cgroup | None) -> NoReturn:
    from nsmagic.runtime.supervisor import SETUP_FAILED, ContainerFds, explain

    code = SETUP_FAILED
    sync = None
    try:
        fds = ContainerFds(sync=sync_fd, data=payload_sync_fd, lifeline=lifeline_fd).keep_only()
        sync = socket.socket(fileno=fds.sync)
        payload_sync = socket.socket(fileno=fds.data)
        code = _warm_up_and_run(sync, payload_sync, fds.lifeline, cgroup)
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
                     cgroup: Cgroup | None) -> int:
    """pid 1 of a warm container: get into the cgroup and namespaces, pre-fork the payload
    process, then wait to be handed a payload (or to be discarded)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if cgroup is not None:
        cgroup.attach(0)  # ourselves: the slow write happens here, not in the fork server
    profile = warm_profile()
    syscalls.unshare(namespaces.flags_for(profile.namespaces - {"pid"}))
    warnings = prepare_namespaces(profile, cgroup.directories() if cgroup else [])
    init = PidOne(lifeline_fd)
    syscalls.set_process_name("nsmagic-warm")
    payload_pid = init.fork_payload(lambda: _payload_when_asked(payload_sync, warnings),
                                    close_in_child=[sync.fileno()])
    payload_sync.close()
    sync.send(_READY)
    message, fds, _, _ = socket.recv_fds(sync, 1 << 16, 1)
    if not message:
        return 0  # discarded: the payload process dies with us, as pid 1
    syscalls.set_process_name("nsmagic-init")
    sync.close()
    return init.supervise(payload_pid, fds[0], json.loads(message).get("privileged", False))


def _payload_when_asked(sync: socket.socket, warnings: list[str]) -> int:
    """The pre-forked payload process: wait for the payload, then run it."""
    from nsmagic.runtime.supervisor import send_quietly

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    message, fds, _, _ = socket.recv_fds(sync, 1 << 16, 4)
    if not message:
        return 0
    sync.close()
    request = json.loads(message)
    spec = ContainerSpec.from_wire(request["spec"])
    payload = Payload.from_wire(request["payload"])
    ctl_fd, stdout_fd, stderr_fd, data_fd = fds
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    for fd in (devnull, stdout_fd, stderr_fd):
        os.close(fd)
    name_host(spec)
    send_quietly(ctl_fd, {"event": "ready", "warnings": warnings})
    return run_payload(payload, ctl_fd, spec.env, spec.cwd, data_fd, spec.privileged)
