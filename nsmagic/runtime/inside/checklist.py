"""A container's set-up as one ordered checklist, shared by containers created on request
(cold) and pre-warmed ones (warm): what pid 1 does, then what the main process does. Read
`pid_one` and `main_process` top to bottom, like runc's linuxStandardInit.Init() or nsjail's
containProc(); a Start says how each step happens on its path.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

from nsmagic.cgroups import join_cgroup
from nsmagic.errors import explain
from nsmagic.isolation import capabilities, mounts, namespaces, network, seccomp, syscalls
from nsmagic.runtime import protocol
from nsmagic.runtime.inside.fds import ContainerFds, redirect_stdio
from nsmagic.runtime.inside.init import PidOne
from nsmagic.runtime.inside.payload import run_payload
from nsmagic.runtime.protocol import SETUP_FAILED, Event, Word, expect, say
from nsmagic.runtime.spec import ContainerSpec, Payload, matches_warm_profile, warm_profile

# The largest request (spec and payload) the main process accepts from the data socket.
MAX_REQUEST = 64 << 20


def pid_one(start: Start) -> int:
    """pid 1, from its fork to the container's end."""
    step = "waiting for the cgroup"
    try:
        # 1. Into the container's cgroup before anything else runs (its limits bind at once).
        start.await_cgroup()
        # 2. Into its namespaces (the pid namespace was made by our parent, for us).
        step = "creating namespaces"
        start.create_namespaces()
        # 3. Become the container's init: named, its output the container's, capabilities
        #    the container may ever hold (once, for both processes), cwd / (pivot_root
        #    moves each process whose root and cwd are the old root).
        step = "becoming the container's init"
        syscalls.set_process_name("nsmagic-init")
        start.take_stdio()
        os.chdir("/")
        if not start.privileged:
            capabilities.drop_bounding_set()
        init = PidOne(start.fds.lifeline)
    except Exception as error:  # noqa: BLE001 - one step's failure, reported by name
        return start.fail(step, error)
    # 4. Fork the main process at once: pid 1 writes as little as it can, since each page it
    #    writes stays a private copy for the container's life.
    main_pid = init.fork_payload(lambda: main_process(start))
    # 5. Supervise: forward signals, reap, report how the payload ended.
    return start.supervise(init, main_pid)


def main_process(start: Start) -> int:
    """The container's main process: set the namespaces up, then run the payload."""
    step = "reading the request"
    try:
        # 6. The spec the set-up follows (a warm container knows only its profile yet).
        profile = start.profile()
        # 7. The container's world: its filesystem view and /proc, its loopback.
        step = "setting up inside the container"
        warnings = prepare_namespaces(profile, start.cgroup_directories)
        # 8. The request, if it was not needed before.
        step = "reading the request"
        request = start.request()
        # 9. What depends on the request: the host name, the network the server made.
        step = "naming the host"
        name_host(request.spec)
        step = "configuring the container's network"
        start.connect()
        if request.spec.seccomp and not seccomp.available():
            warnings.append(f"no seccomp filter: {seccomp.unavailable_reason()}")
    except Exception as error:  # noqa: BLE001 - one step's failure, reported by name
        return start.fail(step, error)
    # 10. Ready; the payload drops what it must not keep as its last step before user code.
    protocol.send_quietly(start.fds.events, {"event": Event.READY, "warnings": warnings})
    return run_payload(request.payload, request.spec, start.fds.events, start.data)


def prepare_namespaces(spec: ContainerSpec, cgroup_directories: list[str] = ()) -> list[str]:
    """Steps 7: mounts first (they need private propagation before anything is mounted), then
    loopback; return warnings for the user."""
    warnings: list[str] = []
    if "mount" in spec.namespaces:
        warnings += mounts.setup_mount_namespace(spec.mount_options(), list(cgroup_directories))
    if "net" in spec.namespaces:
        network.bring_loopback_up()
    return warnings


def name_host(spec: ContainerSpec) -> None:
    """Set the container's host name in its UTS namespace, and in its own /etc files."""
    if "uts" in spec.namespaces:
        socket.sethostname(spec.effective_hostname)
        if "mount" in spec.namespaces and not spec.host_root:
            mounts.set_host_name_files(spec.effective_hostname)


@dataclass(frozen=True)
class Request:
    """What the kernel asked for, as the main process reads it from the data socket."""

    spec: ContainerSpec
    payload: Payload

    @classmethod
    def parse(cls, data: bytes) -> Request:
        """A REQUEST frame's spec and payload."""
        request = json.loads(data)
        return cls(ContainerSpec.from_wire(request["spec"]), Payload.from_wire(request["payload"]))

    @classmethod
    def read(cls, data: socket.socket) -> Request:
        """The first frame of the data socket; the kernel sends it at launch."""
        frame = protocol.receive_frame(data, MAX_REQUEST)
        if frame is None:
            raise OSError("the notebook closed the data socket before sending the request")
        return cls.parse(frame)

    @staticmethod
    def sample() -> bytes:
        """A request like the kernel's, for a warm container to rehearse with."""
        return json.dumps({"spec": ContainerSpec(env=dict(os.environ)).to_wire(),
                           "payload": Payload(kind="python", source="pass").to_wire()}).encode()


class Start:
    """How each step of the checklist happens on one path (cold or warm)."""

    privileged = False
    cgroup_directories: list[str] = []

    def __init__(self, fds: ContainerFds) -> None:
        self.fds = fds
        self.data: socket.socket | None = None

    def await_cgroup(self) -> None:
        """Step 1."""

    def create_namespaces(self) -> None:
        """Step 2."""

    def take_stdio(self) -> None:
        """Step 3: fds 0-2 become the container's."""

    def supervise(self, init: PidOne, main_pid: int) -> int:
        """Step 5."""
        raise NotImplementedError

    def profile(self) -> ContainerSpec:
        """Step 6."""
        raise NotImplementedError

    def request(self) -> Request:
        """Step 8."""
        raise NotImplementedError

    def connect(self) -> None:
        """Step 9: the network the server set up."""

    def fail(self, step: str, error: BaseException) -> int:
        """A step failed: say which, and return pid 1's exit code for it."""
        raise NotImplementedError


class ColdStart(Start):
    """A container created on request: the fork server drives each step over the sync socket
    (Word: GO, then READY -> NET -> RUN), and the request is read first."""

    def __init__(self, header: dict, fds: ContainerFds, namespaces_made: bool = False) -> None:
        super().__init__(fds)
        self.namespaces = frozenset(header["namespaces"])
        self.privileged = bool(header["privileged"])
        self.cgroup_directories = header["dirs"] if "cgroup" in self.namespaces else []
        # With a user namespace, the set-up process did steps 1 and 2 before forking us.
        self.namespaces_made = namespaces_made
        self.sync = socket.socket(fileno=fds.sync)
        self._request: Request | None = None

    def await_cgroup(self) -> None:
        if not self.namespaces_made:
            expect(self.sync, Word.GO, step="waiting for the cgroup")

    def create_namespaces(self) -> None:
        if self.namespaces_made:
            return
        flags = namespaces.flags_for(self.namespaces - {"pid"})
        if self.fds.join is not None:
            syscalls.setns(self.fds.join, syscalls.CLONE_NEWNET)
        syscalls.unshare(flags)

    def take_stdio(self) -> None:
        redirect_stdio(self.fds.stdout, self.fds.stderr)

    def supervise(self, init: PidOne, main_pid: int) -> int:
        self.sync.close()
        os.close(self.fds.data)  # only the main process talks on it
        return init.supervise(main_pid, self.fds.events, self.privileged)

    def profile(self) -> ContainerSpec:
        self.data = socket.socket(fileno=self.fds.data)
        self._request = Request.read(self.data)
        return self._request.spec

    def request(self) -> Request:
        return self._request

    def connect(self) -> None:
        say(self.sync, Word.READY)
        word, detail = expect(self.sync, Word.NET, Word.RUN, step="waiting to run")
        if word == Word.NET:
            network.configure_inside(json.loads(detail))
            say(self.sync, Word.OK)
            expect(self.sync, Word.RUN, step="waiting to run")
        self.sync.close()

    def fail(self, step: str, error: BaseException) -> int:
        return protocol.report_error(self.sync, step, explain(error))


class WarmStart(Start):
    """A pre-warmed container: everything that needs no request is done while the server is
    idle; then the main process says WARM on its hand-over socket and waits. The container's
    descriptors (events, stdout, stderr, data) arrive with the hand-over."""

    def __init__(self, header: dict, fds: ContainerFds) -> None:
        super().__init__(fds)
        self.cgroup_directories = header["dirs"]
        self.sync = socket.socket(fileno=fds.sync)  # pid 1's: the events socket arrives here
        self.handover = socket.socket(fileno=fds.handover)  # the main process's
        self.handed_over = False

    def await_cgroup(self) -> None:
        # The slow write to cgroup.procs happens here, not in the fork server.
        join_cgroup(self.cgroup_directories)

    def create_namespaces(self) -> None:
        syscalls.unshare(namespaces.flags_for(warm_profile().namespaces - {"pid"}))

    def supervise(self, init: PidOne, main_pid: int) -> int:
        self.handover.close()
        return init.wait_then_supervise(main_pid, self.sync)

    def profile(self) -> ContainerSpec:
        syscalls.set_process_name("nsmagic-warm")  # how `ps` on the host tells the pool apart
        self.sync.close()
        return warm_profile()

    def request(self) -> Request:
        # Rehearse with the very code the request takes, so its copy-on-write faults happen
        # now rather than while the notebook waits.
        Request.parse(Request.sample())
        protocol.encode({"event": Event.READY, "warnings": []})
        compile("pass", "<rehearsal>", "exec")
        say(self.handover, Word.WARM)
        message, fds, _, _ = socket.recv_fds(self.handover, 16, 4)
        if not message or len(fds) != 4:
            os._exit(0)  # discarded: pid 1 ends the container
        self.handed_over = True
        self.handover.close()
        syscalls.set_process_name("nsmagic-init")  # as in a container created on request
        events, stdout, stderr, data = fds
        self.fds = ContainerFds(events=events, lifeline=None)
        redirect_stdio(stdout, stderr)
        self.data = socket.socket(fileno=data)
        request = Request.read(self.data)
        if not matches_warm_profile(request.spec):
            raise OSError("the request does not match the warm container's profile")
        return request

    def fail(self, step: str, error: BaseException) -> int:
        if not self.handed_over:
            return protocol.report_error(self.handover, step, explain(error))
        os.write(2, f"nsmagic: the container failed while {step}: {explain(error)}\n".encode())
        return SETUP_FAILED
