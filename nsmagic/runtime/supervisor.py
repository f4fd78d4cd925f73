"""Supervision of one container from outside its namespaces: create its processes and kernel
resources, notice how it ends, report it, and release everything, whatever happens."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import traceback
from typing import NoReturn

from nsmagic.cgroups.base import Cgroup, CgroupDriver
from nsmagic.cgroups.limits import format_size
from nsmagic.errors import ContainerSetupError
from nsmagic.isolation import namespaces, syscalls
from nsmagic.runtime import protocol
from nsmagic.runtime.init import run_init, setup_inside
from nsmagic.runtime.pool import WarmContainer
from nsmagic.runtime.spec import ContainerSpec, Payload

# Exit code of pid 1 when the container could not be set up (the payload never ran).
SETUP_FAILED = 125
# Where the descriptors a child keeps are moved before every other one is closed.
_KEEP_BASE = 3


class Step:
    """Names the set-up step under way, so a failure says where it happened."""

    def __init__(self) -> None:
        self.name = "starting"

    def __call__(self, name: str) -> None:
        self.name = name


class SupervisedContainer:
    """The fork server's record of one container: its pid 1, message socket and cgroup.

    `release()` is the one place that gives everything back; it is safe to call twice and is
    called whether the container ended, failed to start, or its notebook went away.
    """

    def __init__(self, spec: ContainerSpec, payload: Payload, ctl_fd: int, stdout_fd: int,
                 stderr_fd: int, cgroup_driver: CgroupDriver | None) -> None:
        self.spec = spec
        self.payload = payload
        self.ctl = socket.socket(fileno=ctl_fd)
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd
        self.cgroup_driver = cgroup_driver
        self.cgroup: Cgroup | None = None
        self.owns_cgroup = spec.cgroup is None
        self._oom_kills_before = 0
        self.init_pid: int | None = None
        self.pidfd: int | None = None
        self._lifeline_write: int | None = None
        self._released = False

    # -- creation ------------------------------------------------------------------------
    def create(self, own_pid_namespace: int) -> None:
        """Create the container; raise ContainerSetupError naming the step that failed.

        On failure the caller reports it on the message socket, then calls release().
        """
        step = Step()
        try:
            self._create(step, own_pid_namespace)
        except Exception as error:  # noqa: BLE001 - turned into one message for the user
            raise ContainerSetupError(f"{step.name}: {explain(error)}") from error
        finally:
            for fd in (self.stdout_fd, self.stderr_fd):
                os.close(fd)

    def _create(self, step: Step, own_pid_namespace: int) -> None:
        if self.spec.cgroup is not None:
            step(f"opening the cgroup {self.spec.cgroup}")
            if self.cgroup_driver is None:
                raise OSError(f"no cgroup driver for {self.spec.cgroup}")
            self.cgroup = self.cgroup_driver.open(self.spec.cgroup)
            # The group is shared: only OOM kills from now on are this container's.
            self._oom_kills_before = self.cgroup.stats().oom_kills or 0
        elif self.cgroup_driver is not None:
            step("creating the cgroup")
            self.cgroup = self.cgroup_driver.create(self.spec.container_id, self.spec.limits)
        lifeline_read, self._lifeline_write = os.pipe2(os.O_CLOEXEC)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        keep = [self.ctl.fileno(), self.stdout_fd, self.stderr_fd, lifeline_read, theirs.fileno()]
        userns = "user" in self.spec.namespaces
        step("forking the container's first process")
        if userns:
            # A pid namespace must belong to the new user namespace (or root inside could not
            # mount its /proc), so an intermediate process creates both, then forks pid 1.
            child = os.fork()
            if child == 0:
                _child_main(_setup_process, keep, self.spec, self.payload,
                            self._cgroup_directories())
        else:
            # Root needs no intermediate: a new pid namespace for our next child only, then
            # back to our own, so this server keeps forking into fresh namespaces.
            if "pid" in self.spec.namespaces:
                syscalls.unshare(syscalls.CLONE_NEWPID)
            try:
                child = os.fork()
                if child == 0:
                    _child_main(_init_process, keep, self.spec, self.payload,
                                self._cgroup_directories())
            finally:
                if "pid" in self.spec.namespaces:
                    syscalls.setns(own_pid_namespace, syscalls.CLONE_NEWPID)
        os.close(lifeline_read)
        theirs.close()
        try:
            self._drive_setup(step, child, ours, userns)
        finally:
            ours.close()
            if userns:
                os.waitpid(child, 0)
        protocol.send(self.ctl, {"event": "started", "pid": self.init_pid,
                                 "cgroup": self.cgroup.name if self.cgroup else None,
                                 "cgroup_driver": getattr(self.cgroup_driver, "name", None),
                                 "warnings": self._limit_warnings()})

    def adopt(self, warm: WarmContainer) -> None:
        """Take over a pre-warmed pid 1 instead of creating one (see pool.py)."""
        try:
            self.cgroup, self.init_pid, self.pidfd = warm.cgroup, warm.pid, warm.pidfd
            self._lifeline_write = warm.lifeline_write
            warm.hand_over(self.spec, self.payload, [self.ctl.fileno(), self.stdout_fd,
                                                     self.stderr_fd])
        except Exception as error:  # noqa: BLE001
            raise ContainerSetupError(f"handing over to a warm container: {explain(error)}") \
                from error
        finally:
            for fd in (self.stdout_fd, self.stderr_fd):
                os.close(fd)
        protocol.send(self.ctl, {"event": "started", "pid": self.init_pid, "warm": True,
                                 "cgroup": self.cgroup.name if self.cgroup else None,
                                 "cgroup_driver": getattr(self.cgroup_driver, "name", None),
                                 "warnings": self._limit_warnings()})

    def _limit_warnings(self) -> list[str]:
        if self.cgroup is None or self.spec.limits.is_empty():
            return []
        return [f"limits only approximated: {note}" for note in self.cgroup.approximations()]

    def _cgroup_directories(self) -> list[str]:
        # A shared group (--cgroup) is shown too: it is where the container's limits are.
        return self.cgroup.directories() if self.cgroup is not None else []

    def _drive_setup(self, step: Step, child: int, sync: socket.socket, userns: bool) -> None:
        if not userns:
            # pid 1 is our child; track it before anything can fail.
            self.init_pid = child
            self.pidfd = os.pidfd_open(child)
        if self.cgroup is not None:
            step("moving the container into its cgroup")
            self.cgroup.attach(child)
        sync.send(b"go")
        reply = sync.recv(4096)
        if reply == b"maps":
            step("writing the user namespace id maps")
            namespaces.write_id_maps(child, namespaces.IdMap(0, self.spec.uid_outside),
                                     namespaces.IdMap(0, self.spec.gid_outside))
            sync.send(b"ok")
            reply = sync.recv(4096)
        if reply.startswith(b"error:"):
            failed_step, _, message = reply[6:].decode().partition(":")
            step(failed_step)
            raise OSError(message)
        if userns:
            if not reply.startswith(b"pid:"):
                raise RuntimeError(f"the set-up process ended unexpectedly ({reply!r})")
            self.init_pid = int(reply[4:])
            self.pidfd = os.pidfd_open(self.init_pid)
        elif reply != b"ready":
            raise RuntimeError(f"pid 1 ended during set-up ({reply!r})")

    # -- end -----------------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL pid 1; its pid namespace, and so the whole container, dies with it."""
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.cgroup is not None and self.owns_cgroup and "pid" not in self.spec.namespaces:
            self.cgroup.kill()  # without a pid namespace, only the cgroup knows them all

    def reap(self) -> None:
        """pid 1 has ended: collect its status, tell the notebook, release everything."""
        _, wait_status = os.waitpid(self.init_pid, 0)
        self.init_pid = None  # reaped: the number may belong to someone else from now on
        if os.WIFSIGNALED(wait_status):
            status = {"signal": os.WTERMSIG(wait_status)}
        else:
            status = {"code": os.waitstatus_to_exitcode(wait_status)}
        status.update(self._oom_report())
        send_quietly(self.ctl, {"event": "exited", **status})
        self.release()

    def _oom_report(self) -> dict:
        if self.cgroup is None:
            return {}
        try:
            stats = self.cgroup.stats()
        except OSError:
            return {}
        report: dict = {"stats": stats.as_dict()}
        if (stats.oom_kills or 0) > self._oom_kills_before:
            limit = self.spec.limits.memory or stats.memory_limit
            peak = stats.memory_peak
            report["oom"] = {
                "kills": stats.oom_kills - self._oom_kills_before,
                "limit": limit,
                "peak": peak,
                "text": "killed: out of memory"
                + (f", limit {format_size(limit)}" if limit else "")
                + (f", peak {format_size(peak)}" if peak else ""),
            }
        return report

    def release(self) -> None:
        """Kill what is left and give back every resource; safe to call twice."""
        if self._released:
            return
        self._released = True
        if self.init_pid is not None:
            self.kill()
            try:
                os.waitpid(self.init_pid, 0)
            except ChildProcessError:
                pass
            self.init_pid = None
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if self._lifeline_write is not None:
            os.close(self._lifeline_write)
            self._lifeline_write = None
        if self.cgroup is not None and self.owns_cgroup:
            try:
                self.cgroup.remove()
            except OSError as error:
                send_quietly(self.ctl, {"event": "warning",
                                        "message": f"cgroup not removed: {explain(error)}"})
            self.cgroup = None
        self.ctl.close()


# -- the container's own processes (run in forked children of the server) ---------------
def _child_main(function, keep: list[int], spec: ContainerSpec, payload: Payload,  # noqa: ANN001
                cgroup_directories: list[str]) -> NoReturn:
    """Keep only this container's descriptors, then run function(spec, payload, *fds)."""
    code = SETUP_FAILED
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        fds = _keep_only(keep)
        code = function(spec, payload, *fds, cgroup_directories=cgroup_directories)
    except BaseException:  # noqa: BLE001 - a child must never return into the server's loop
        traceback.print_exc()
    finally:
        os._exit(code)


def _keep_only(fds: list[int]) -> list[int]:
    """Renumber fds to 3, 4, ... and close every other descriptor inherited from the server.

    A descriptor of another container left open here would keep that container's lifeline
    alive, so nothing of the server's may survive into a container.
    """
    # Park them above every number involved first, so no dup2 below overwrites one still
    # needed. (Not at a fixed high number: RLIMIT_NOFILE may be as low as 1024.)
    floor = max([*fds, _KEEP_BASE + len(fds)]) + 1
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in fds]
    kept = []
    for index, fd in enumerate(high):
        target = _KEEP_BASE + index
        os.dup2(fd, target, inheritable=False)
        kept.append(target)
    os.closerange(_KEEP_BASE + len(fds), 65536)
    return kept


def _setup_process(spec: ContainerSpec, payload: Payload, ctl_fd: int, stdout_fd: int,
                   stderr_fd: int, lifeline_fd: int, sync_fd: int,
                   cgroup_directories: list[str]) -> int:
    """User-namespace path: create every namespace, get mapped, fork pid 1, exit."""
    sync = socket.socket(fileno=sync_fd)
    step = "creating namespaces"
    try:
        sync.recv(16)
        syscalls.unshare(namespaces.flags_for(spec.namespaces))
        step = "mapping root inside the user namespace"
        sync.send(b"maps")
        if sync.recv(16) != b"ok":
            return SETUP_FAILED
        namespaces.become_root_inside()
        step = "starting pid 1"
        init_pid = os.fork()
        if init_pid == 0:
            os._exit(_init_inside(spec, payload, ctl_fd, stdout_fd, stderr_fd, lifeline_fd,
                                  None, cgroup_directories))
        sync.send(f"pid:{init_pid}".encode())
    except Exception as error:  # noqa: BLE001 - handed to the server to report
        sync.send(f"error:{step}:{explain(error)}".encode()[:4000])
        return SETUP_FAILED
    return 0


def _init_process(spec: ContainerSpec, payload: Payload, ctl_fd: int, stdout_fd: int,
                  stderr_fd: int, lifeline_fd: int, sync_fd: int,
                  cgroup_directories: list[str]) -> int:
    """Root path: we are pid 1 already; wait for our cgroup, then create the namespaces."""
    sync = socket.socket(fileno=sync_fd)
    try:
        sync.recv(16)
        syscalls.unshare(namespaces.flags_for(spec.namespaces - {"pid"}))
    except Exception as error:  # noqa: BLE001
        sync.send(f"error:creating namespaces:{explain(error)}".encode()[:4000])
        return SETUP_FAILED
    return _init_inside(spec, payload, ctl_fd, stdout_fd, stderr_fd, lifeline_fd, sync,
                        cgroup_directories)


def _init_inside(spec: ContainerSpec, payload: Payload, ctl_fd: int, stdout_fd: int,
                 stderr_fd: int, lifeline_fd: int, sync: socket.socket | None,
                 cgroup_directories: list[str]) -> int:
    syscalls.set_process_name("nsmagic-init")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    for fd in (devnull, stdout_fd, stderr_fd):
        os.close(fd)
    try:
        warnings = setup_inside(spec, cgroup_directories if "cgroup" in spec.namespaces else [])
    except Exception as error:  # noqa: BLE001
        message = f"setting up inside the container: {explain(error)}"
        if sync is not None:
            sync.send(f"error:{message}".encode()[:4000])
        else:
            send_quietly(ctl_fd, {"event": "setup-failed", "message": message})
        return SETUP_FAILED
    if sync is not None:
        sync.send(b"ready")
        sync.close()
    send_quietly(ctl_fd, {"event": "ready", "warnings": warnings})
    return run_init(spec, payload, ctl_fd, lifeline_fd)


def send_quietly(ctl: socket.socket | int, message: dict) -> None:
    """Send a message; if the notebook side is gone there is nobody left to tell."""
    try:
        protocol.send(ctl, message)
    except OSError:
        pass


def explain(error: BaseException) -> str:
    """An error in plain words, without Python's decoration."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror if not error.filename else f"{error.strerror}: {error.filename}"
    return str(error) or type(error).__name__
