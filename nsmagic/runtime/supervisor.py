"""Supervision of one container from outside its namespaces: create its processes and kernel
resources, notice how it ends, report it, and release everything, whatever happens."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import traceback
from typing import NoReturn

from nsmagic.cgroups.base import Cgroup, CgroupDriver
from nsmagic.cgroups.limits import format_size
from nsmagic.errors import ContainerSetupError
from nsmagic.isolation import capabilities, namespaces, network, syscalls
from nsmagic.runtime import protocol
from nsmagic.runtime.forker import Forker, reap
from nsmagic.runtime.init import PidOne, setup_inside
from nsmagic.runtime.payload import run_payload
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


class ContainerFds:
    """The descriptors a container's processes need, by role."""

    ROLES = ("ctl", "stdout", "stderr", "data", "lifeline", "sync", "join_user", "join_net")

    def __init__(self, **fds: int | None) -> None:
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


class SupervisedContainer:
    """The fork server's record of one container: its pid 1, message socket, cgroup and
    network attachment.

    `release()` is the one place that gives everything back; it is safe to call twice and is
    called whether the container ended, failed to start, or its notebook went away.
    """

    def __init__(self, spec: ContainerSpec, payload: Payload, fds: list[int],
                 cgroup_driver: CgroupDriver | None,
                 bridge: network.Bridge | None = None) -> None:
        stdout_fd, stderr_fd, ctl_fd, data_fd = fds
        self.spec = spec
        self.payload = payload
        self.ctl = socket.socket(fileno=ctl_fd)
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd
        self.data_fd = data_fd
        self.cgroup_driver = cgroup_driver
        self.bridge = bridge
        self.attachment: network.Attachment | None = None
        self.cgroup: Cgroup | None = None
        self.owns_cgroup = spec.cgroup is None
        self._oom_kills_before = 0
        self.init_pid: int | None = None
        self.pidfd: int | None = None
        self._lifeline_write: int | None = None
        self._released = False

    def _close_payload_fds(self) -> None:
        for fd in (self.stdout_fd, self.stderr_fd, self.data_fd):
            os.close(fd)

    # -- creation ------------------------------------------------------------------------
    def create(self, forker: Forker, request: bytes) -> None:
        """Create the container from the launch request (the notebook's bytes, which its
        main process parses); raise ContainerSetupError naming the step that failed.

        On failure the caller reports it on the message socket, then calls release().
        """
        step = Step()
        try:
            self._create(step, forker, request)
        except Exception as error:  # noqa: BLE001 - turned into one message for the user
            raise ContainerSetupError(f"{step.name}: {explain(error)}") from error
        finally:
            self._close_payload_fds()

    def _create(self, step: Step, forker: Forker, request: bytes) -> None:
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
        if self.spec.net == "bridge":
            step("creating the container's veth pair on the bridge")
            self.attachment = self.bridge.attach(self.spec.container_id)
        userns = "user" in self.spec.namespaces
        join_user = join_net = None
        if self.spec.net.startswith("container:"):
            step("opening the network namespace to share")
            target = int(self.spec.net.split(":", 1)[1])
            join_net = os.open(f"/proc/{target}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            if userns:
                join_user = os.open(f"/proc/{target}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        lifeline_read, self._lifeline_write = os.pipe2(os.O_CLOEXEC)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = ContainerFds(ctl=self.ctl.fileno(), stdout=self.stdout_fd, stderr=self.stderr_fd,
                           data=self.data_fd, lifeline=lifeline_read, sync=theirs.fileno(),
                           join_user=join_user, join_net=join_net)
        directories = self.cgroup.directories() if self.cgroup is not None else []
        step("forking the container's first process")
        try:
            # With a user namespace, the forked process is the set-up process (see
            # start_container_process); without, it only forks pid 1 and exits.
            child = forker.spawn("container", Launch.header(self.spec, directories), fds,
                                 request)
        finally:
            for fd in (lifeline_read, join_user, join_net):
                if fd is not None:
                    os.close(fd)
            theirs.close()
        try:
            self._drive_setup(step, child, ours, userns)
        finally:
            ours.close()

    def _drive_setup(self, step: Step, child: int, sync: socket.socket, userns: bool) -> None:
        if not userns:
            # pid 1 is (about to be) our child; track it before anything can fail.
            reply = _expect(sync, step)
            if not reply.startswith(b"pid:"):
                raise RuntimeError(f"the container's first process did not start ({reply!r})")
            self.init_pid = child = int(reply[4:])
            self.pidfd = os.pidfd_open(child)
        if self.cgroup is not None:
            step("moving the container into its cgroup")
            self.cgroup.attach(child)
        sync.send(b"go")
        reply = _expect(sync, step)
        if reply == b"maps":
            step("writing the user namespace id maps")
            namespaces.write_id_maps(child, namespaces.IdMap(0, self.spec.uid_outside),
                                     namespaces.IdMap(0, self.spec.gid_outside))
            sync.send(b"ok")
            reply = _expect(sync, step)
        if userns:
            # The set-up process reports pid 1's pid and pid 1 reports ready, on one socket
            # and in either order.
            replies = [reply, _expect(sync, step)]
            pid_reply = next((r for r in replies if r.startswith(b"pid:")), None)
            if pid_reply is None:
                raise RuntimeError(f"the set-up process ended unexpectedly ({replies!r})")
            self.init_pid = int(pid_reply[4:])
            self.pidfd = os.pidfd_open(self.init_pid)
            reply = next((r for r in replies if r != pid_reply), b"")
        if reply != b"ready":
            raise RuntimeError(f"pid 1 ended during set-up ({reply!r})")
        if self.attachment is not None:
            step("moving the veth end into the container")
            self.bridge.move_into(self.attachment, self.init_pid)
            sync.send(b"net:" + json.dumps(self.attachment.to_wire()).encode())
            if _expect(sync, step) != b"ok":
                raise RuntimeError("pid 1 ended while configuring its network")
        # The notebook side learns pid 1 and the cgroup before the payload can print.
        self._announce(warm=False)
        sync.send(b"run")

    def adopt(self, warm: WarmContainer, request: bytes) -> None:
        """Take over a pre-warmed pid 1 instead of creating one (see pool.py); request is the
        launch request as it came, which the payload process reads itself."""
        try:
            self.cgroup, self.init_pid, self.pidfd = warm.cgroup, warm.pid, warm.pidfd
            self._lifeline_write = warm.lifeline_write
            self._announce(warm=True)  # before the payload can print
            warm.hand_over(self.spec, request,
                           [self.ctl.fileno(), self.stdout_fd, self.stderr_fd, self.data_fd])
        except Exception as error:  # noqa: BLE001
            raise ContainerSetupError(f"handing over to a warm container: {explain(error)}") \
                from error
        finally:
            self._close_payload_fds()

    def _announce(self, warm: bool) -> None:
        # Quietly: if the notebook side has gone already, the server notices the closed
        # socket right after and ends the container.
        send_quietly(self.ctl, {
            "event": "started", "pid": self.init_pid, "warm": warm,
            "cgroup": self.cgroup.name if self.cgroup else None,
            "cgroup_driver": getattr(self.cgroup_driver, "name", None),
            "address": self.attachment.address if self.attachment else None,
            "warnings": self._limit_warnings(),
        })

    def _limit_warnings(self) -> list[str]:
        if self.cgroup is None or self.spec.limits.is_empty():
            return []
        return [f"limits only approximated: {note}" for note in self.cgroup.approximations()]

    # -- end -----------------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL pid 1; its pid namespace, and so the whole container, dies with it."""
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:
                pass  # already gone (ESRCH, or EINVAL once its pid namespace is dead)
        if self.cgroup is not None and self.owns_cgroup and "pid" not in self.spec.namespaces:
            self.cgroup.kill()  # without a pid namespace, only the cgroup knows them all

    def reap(self) -> None:
        """pid 1 has ended: collect its status, tell the notebook, release everything."""
        wait_status = reap(self.init_pid)
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
                reap(self.init_pid)
            except ChildProcessError:
                pass
            self.init_pid = None
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if self._lifeline_write is not None:
            os.close(self._lifeline_write)
            self._lifeline_write = None
        problems = []
        if self.attachment is not None:
            try:
                self.bridge.detach(self.attachment)
            except Exception as error:  # noqa: BLE001
                problems.append(f"veth {self.attachment.host_ifname} not removed: "
                                f"{explain(error)}")
            self.attachment = None
        if self.cgroup is not None and self.owns_cgroup:
            try:
                self.cgroup.remove()
            except OSError as error:
                problems.append(f"cgroup not removed: {explain(error)}")
            self.cgroup = None
        for problem in problems:
            send_quietly(self.ctl, {"event": "warning", "message": problem})
        self.ctl.close()


def _expect(sync: socket.socket, step: Step) -> bytes:
    """The next set-up message; an error report from the child raises, naming its step."""
    reply = sync.recv(4096)
    if reply.startswith(b"error:"):
        failed_step, _, message = reply[6:].decode().partition(":")
        step(failed_step)
        raise OSError(message)
    return reply


# -- the container's own processes (forked by the fork helper) -----------------------------
class Launch:
    """A container's launch as its own processes see it: the few fields pid 1 needs, from
    a small header, and the notebook's request, parsed only by the process that runs it."""

    def __init__(self, header: dict, request: bytes) -> None:
        self.namespaces = frozenset(header["namespaces"])
        self.privileged = bool(header["privileged"])
        self.cgroup_directories: list[str] = header["dirs"]
        self.request = request

    @staticmethod
    def header(spec: ContainerSpec, cgroup_directories: list[str]) -> dict:
        """The header for a spec (in the fork server)."""
        return {"namespaces": sorted(spec.namespaces), "privileged": spec.privileged,
                "dirs": cgroup_directories}

    def parse(self) -> tuple[ContainerSpec, Payload]:
        """The spec and payload of the request."""
        request = json.loads(self.request)
        return ContainerSpec.from_wire(request["spec"]), Payload.from_wire(request["payload"])


def start_container_process(header: dict, request: bytes, fds: ContainerFds) -> int:
    """In the fork helper's intermediate process: become the user-namespace set-up process,
    or fork pid 1 into a new pid namespace and report its pid; return our exit code."""
    launch = Launch(header, request)
    if "user" in launch.namespaces:
        # A pid namespace must belong to the new user namespace (or root inside could not
        # mount its /proc), so this process creates both, then forks pid 1.
        _child_main(_setup_process, fds, launch)
    sync = socket.socket(fileno=fds.sync)
    try:
        if "pid" in launch.namespaces:
            syscalls.unshare(syscalls.CLONE_NEWPID)  # for our next child only
        init_pid = os.fork()
        if init_pid == 0:
            _child_main(_init_process, fds, launch)
    except Exception as error:  # noqa: BLE001 - handed to the server to report
        return _report_error(sync, "starting pid 1", error)
    try:
        sync.send(f"pid:{init_pid}".encode())
    except OSError:
        return 1  # the server gave up on this container (pid 1 stops at the missing 'go')
    return 0


def _child_main(function, fds: ContainerFds, launch: Launch) -> NoReturn:  # noqa: ANN001
    """Keep only this container's descriptors, then run function(launch, fds)."""
    code = SETUP_FAILED
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        code = function(launch, fds.keep_only())
    except BaseException:  # noqa: BLE001 - a child must never return into the server's loop
        traceback.print_exc()
    finally:
        os._exit(code)


def _report_error(sync: socket.socket, step: str, error: BaseException) -> int:
    sync.send(f"error:{step}:{explain(error)}".encode()[:4000])
    return SETUP_FAILED


def _setup_process(launch: Launch, fds: ContainerFds) -> int:
    """User-namespace path: create every namespace, get mapped, fork pid 1, exit."""
    sync = socket.socket(fileno=fds.sync)
    step = "creating namespaces"
    try:
        if sync.recv(16) != b"go":
            return SETUP_FAILED  # the server gave up on this container
        flags = namespaces.flags_for(launch.namespaces)
        if fds.join_user is not None:
            # Sharing another container's network: enter its user namespace (where we are
            # already mapped), then its network namespace, and create only the rest.
            step = "joining the other container's namespaces"
            syscalls.setns(fds.join_user, syscalls.CLONE_NEWUSER)
            syscalls.setns(fds.join_net, syscalls.CLONE_NEWNET)
            syscalls.unshare(flags & ~syscalls.CLONE_NEWUSER)
        else:
            syscalls.unshare(flags)
            step = "mapping root inside the user namespace"
            sync.send(b"maps")
            if sync.recv(16) != b"ok":
                return SETUP_FAILED
        namespaces.become_root_inside()
        step = "starting pid 1"
        init_pid = os.fork()
        if init_pid == 0:
            os._exit(_init_inside(launch, fds, sync))
        sync.send(f"pid:{init_pid}".encode())
    except Exception as error:  # noqa: BLE001 - handed to the server to report
        return _report_error(sync, step, error)
    return 0


def _init_process(launch: Launch, fds: ContainerFds) -> int:
    """Root path: we are pid 1 already; wait for our cgroup, then create the namespaces."""
    sync = socket.socket(fileno=fds.sync)
    try:
        if sync.recv(16) != b"go":
            return SETUP_FAILED  # the server gave up on this container
        flags = namespaces.flags_for(launch.namespaces - {"pid"})
        if fds.join_net is not None:
            syscalls.setns(fds.join_net, syscalls.CLONE_NEWNET)
        syscalls.unshare(flags)
    except Exception as error:  # noqa: BLE001
        return _report_error(sync, "creating namespaces", error)
    return _init_inside(launch, fds, sync)


def _init_inside(launch: Launch, fds: ContainerFds, sync: socket.socket) -> int:
    """pid 1, in the container's namespaces: fork the container's main process at once, then
    supervise it. The main process sets the namespaces up and runs the payload; pid 1 does no
    more than it must, as each page it writes stays a private copy for the container's life.
    """
    syscalls.set_process_name("nsmagic-init")
    redirect_stdio(fds.stdout, fds.stderr)
    # pivot_root (--rootfs) moves each process whose root and working directory are the old
    # root to the new one: be such a process.
    os.chdir("/")
    if not launch.privileged:
        capabilities.drop_bounding_set()  # once, for both processes
    init = PidOne(fds.lifeline)
    main_pid = init.fork_payload(lambda: _set_up_and_run(launch, fds, sync))
    sync.close()
    if fds.data is not None:
        os.close(fds.data)  # only the payload talks on it
    return init.supervise(main_pid, fds.ctl, launch.privileged)


def _set_up_and_run(launch: Launch, fds: ContainerFds, sync: socket.socket) -> int:
    """The container's main process: set the namespaces up, then run the payload."""
    step = "reading the request"
    try:
        spec, payload = launch.parse()
        step = "setting up inside the container"
        directories = launch.cgroup_directories if "cgroup" in spec.namespaces else []
        warnings = setup_inside(spec, directories)
        sync.send(b"ready")
        message = sync.recv(4096)
        if message.startswith(b"net:"):
            step = "configuring the container's network"
            network.configure_inside(json.loads(message[4:]))
            sync.send(b"ok")
            message = sync.recv(4096)
        if message != b"run":
            return SETUP_FAILED
    except Exception as error:  # noqa: BLE001
        return _report_error(sync, step, error)
    sync.close()
    send_quietly(fds.ctl, {"event": "ready", "warnings": warnings})
    return run_payload(payload, fds.ctl, spec.env, spec.cwd, fds.data, spec.privileged)


def redirect_stdio(stdout_fd: int, stderr_fd: int) -> None:
    """Make fds 1 and 2 the container's output pipes and 0 /dev/null; close the originals."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    for fd in (devnull, stdout_fd, stderr_fd):
        os.close(fd)


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
