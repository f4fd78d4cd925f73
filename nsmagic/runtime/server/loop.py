"""The fork server's event loop: one small single-threaded process per notebook kernel,
started once with the runtime imported, that creates containers on request and supervises
them all. Run as `python -m nsmagic.runtime.server FD [--once]`."""

from __future__ import annotations

import gc
import os
import selectors
import signal
import socket
import sys
import traceback

from nsmagic.cgroups.base import CgroupDriver
from nsmagic.errors import ContainerSetupError, NsmagicError
from nsmagic.isolation import mountops, network, seccomp, syscalls, view
from nsmagic.runtime import protocol
from nsmagic.runtime.protocol import Event, Op, send_quietly
from nsmagic.runtime.server import pool
from nsmagic.runtime.server.forker import Forker
from nsmagic.runtime.server.record import LaunchFds, SupervisedContainer
from nsmagic.runtime.spec import ContainerSpec, matches_warm_profile

# How often an idle server looks at the host's view again (it walks /etc: some milliseconds).
VIEW_REFRESH_S = float(os.environ.get("NSMAGIC_VIEW_REFRESH_S", "30"))


class ForkServer:
    """Serves launch requests and watches every container it started.

    The kernel that starts us is multithreaded and must never fork; we are single-threaded
    and fork for it. One event loop watches the control socket (EOF: the kernel is gone),
    each container's message socket (EOF: its notebook side closed it) and each container's
    pid 1 (through a pidfd: it ended).
    """

    def __init__(self, control: socket.socket, once: bool = False) -> None:
        self.control = control
        self.once = once
        self.selector = selectors.DefaultSelector()
        self.containers: set[SupervisedContainer] = set()
        self.owner_pid = os.getppid()
        self.forker = Forker()
        self._driver: CgroupDriver | None | bool = False  # False: not detected yet
        self._served = 0
        self.pool_size = 0 if once else pool.pool_size_from_environment()
        self.warm: list[pool.WarmContainer] = []
        self.bridge: network.Bridge | None = None
        self._warm_failures = 0

    def cgroup_driver(self) -> CgroupDriver | None:
        """The host's cgroup driver, detected on first use."""
        if self._driver is False:
            from nsmagic.cgroups import detect_driver

            driver = detect_driver()
            if hasattr(driver, "owner_pid"):
                # Groups carry the kernel's pid, not ours: prune finds them when it dies.
                driver.owner_pid = self.owner_pid
            self._driver = driver
        return self._driver  # type: ignore[return-value]

    def serve(self) -> None:
        """Run until the control socket closes (or, once-mode, the one container ended)."""
        self.selector.register(self.control, selectors.EVENT_READ, None)
        try:
            while True:
                # Refill the warm pool only when idle: a request waiting now comes first.
                idle_wait = 0 if self._pool_wants_more() else VIEW_REFRESH_S
                events = self.selector.select(idle_wait)
                if not events:
                    if idle_wait == 0:
                        self._add_warm_container()
                    elif not self.containers:
                        self._refresh_view()
                for key, _ in events:
                    if key.data is None:
                        if not self._handle_request():
                            return
                    else:
                        subject, what = key.data
                        if what == "pid":
                            self._reap(subject)
                        elif what == "warm":
                            self._handle_warm_message(subject)
                        else:
                            self._handle_supervisor_message(subject)
                if self.once and self._served and not self.containers:
                    return
        finally:
            # Each release on its own: one that fails must not leave the others behind.
            for warm in self.warm:
                _quietly(warm.discard)
            for container in list(self.containers):
                self._forget(container)
                _quietly(container.release)
            self.warm = []
            _quietly(self._kill_orphans)
            if self.bridge is not None:
                _quietly(self.bridge.remove)
            self.forker.close()

    def _refresh_view(self) -> None:
        """Look at the host's view again (a secret file may have appeared in /etc since):
        when it changed, later containers must start from the new one, so the fork helper
        (which holds the old) and the warm containers (set up with it) are replaced."""
        old = view.host_view()
        view.host_view.cache_clear()
        if view.host_view() == old:
            return
        for warm in self.warm:
            self.selector.unregister(warm.handover)
            _quietly(warm.discard)
        self.warm = []
        self.forker.close()
        self.forker.start()

    # -- the warm pool -------------------------------------------------------------------
    def _pool_wants_more(self) -> bool:
        # Start warming only once containers are asked for, and stop after repeated
        # failures (a host that refuses some step would otherwise fork in a loop). While
        # containers run, warm only when the pool is empty (a burst of starts has used it
        # up): a warm-up's set-up competes for the CPU with the container that runs, but a
        # loop of starts must not fall back to cold ones. A move into a v1 cgroup waits for
        # an RCU grace period in the warm container's own process (not here), moves at the
        # same time share one, and a running container's forks wait about a millisecond at
        # worst (measured: p99 of fork+wait 1.8 -> 2.5 ms).
        return (self._served > 0 and len(self.warm) < self.pool_size
                and (not self.containers or not self.warm)
                and self._warm_failures < 3 and os.geteuid() == 0)

    def _add_warm_container(self) -> None:
        try:
            warm = pool.start_warm_container(self.cgroup_driver_for_pool(), self.forker)
        except Exception:  # noqa: BLE001 - warm containers are an optimisation only
            self._warm_failures += 1
            return
        self.warm.append(warm)
        self.selector.register(warm.handover, selectors.EVENT_READ, (warm, "warm"))

    def cgroup_driver_for_pool(self) -> CgroupDriver | None:
        """Warm containers get a cgroup only where real cgroups exist."""
        driver = self.cgroup_driver()
        return driver if driver is not None and driver.name in ("v1", "v2") else None

    def _handle_warm_message(self, warm: pool.WarmContainer) -> None:
        if pool.is_warm(warm):
            warm.ready = True
            return
        # It died or failed to get ready: drop it.
        self._warm_failures += 1
        self.warm.remove(warm)
        self.selector.unregister(warm.handover)
        warm.discard()

    def _take_warm(self, spec: ContainerSpec) -> pool.WarmContainer | None:
        if not matches_warm_profile(spec):
            return None
        if not spec.limits.is_empty() and self.cgroup_driver_for_pool() is None:
            return None  # rlimit limits are set at creation: the cold path does that
        for warm in self.warm:
            if warm.ready:
                self.warm.remove(warm)
                self.selector.unregister(warm.handover)
                return warm
        return None

    def _handle_request(self) -> bool:
        try:
            request, fds = protocol.receive(self.control, max_fds=6)
        except NsmagicError:
            return True  # the kernel would not send this: a malformed request is dropped
        if request is None:
            return False
        op = request.get("op")
        if op == Op.PING:
            protocol.send(self.control, {"pong": os.getpid()})
        elif op == Op.LAUNCH:
            self._launch(request, fds)
            fds = []
            if self.once:
                # A one-shot server lives as long as its container, whatever the caller does
                # with the control socket; the container's own sockets are its lifelines.
                self.selector.unregister(self.control)
                self.control.close()
        for fd in fds:
            os.close(fd)
        return True

    def _launch(self, request: dict, fds: list[int]) -> None:
        self._served += 1
        try:
            launch_fds = LaunchFds(fds)
        except ValueError:
            return  # nobody to tell: the supervisor socket is not among them
        try:
            spec = ContainerSpec.from_wire(request["spec"])
            driver = self.cgroup_driver() if _wants_cgroup(spec, self) else None
        except Exception as error:  # noqa: BLE001
            send_quietly(launch_fds.supervisor, {"event": Event.SETUP_FAILED,
                                                 "step": "reading the request",
                                                 "message": str(error)})
            launch_fds.close_container_ends()
            launch_fds.supervisor.close()
            return
        container = SupervisedContainer(spec, launch_fds, driver,
                                        self._bridge() if spec.net == "bridge" else None)
        warm = self._take_warm(spec) if launch_fds.join is None else None
        try:
            if warm is not None:
                container.adopt(warm)
            else:
                container.create(self.forker)
        except Exception as error:  # noqa: BLE001 - one container's failure never ends the server
            if isinstance(error, ContainerSetupError):
                step, _, message = str(error).partition(": ")
            else:
                step, message = "starting the container", f"{type(error).__name__}: {error}"
                traceback.print_exc()
            send_quietly(container.supervisor, {"event": Event.SETUP_FAILED, "step": step,
                                                "message": message})
            _quietly(container.release)
            self._drop_idle_bridge()
            return
        self.containers.add(container)
        self.selector.register(container.pidfd, selectors.EVENT_READ, (container, "pid"))
        self.selector.register(container.supervisor, selectors.EVENT_READ,
                               (container, "supervisor"))

    def _handle_supervisor_message(self, container: SupervisedContainer) -> None:
        try:
            message, fds = protocol.receive(container.supervisor)
        except (OSError, NsmagicError):
            message, fds = None, []
        for fd in fds:
            os.close(fd)
        if message is None:
            # The notebook side closed its end (or died): the container must end now. Its
            # pidfd fires once pid 1 is gone, and _reap releases the rest.
            self.selector.unregister(container.supervisor)
            container.kill()
        elif message.get("op") == Op.KILL:
            container.kill()

    def _reap(self, container: SupervisedContainer) -> None:
        self._forget(container)
        container.reap()
        self._drop_idle_bridge()
        if "pid" not in container.spec.namespaces:
            self._kill_orphans()

    def _kill_orphans(self) -> None:
        """Kill and reap what a container without a pid namespace left: when its pid 1 was
        killed before it could, its orphans were reparented to us (the next subreaper up),
        and without a cgroup nothing else knows them."""
        known = {self.forker.pid, *(c.init_pid for c in self.containers),
                 *(w.pid for w in self.warm)}
        # Generation by generation: killing one orphan makes its children ours in turn.
        while orphans := [pid for pid in _children() if pid not in known]:
            for pid in orphans:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass

    def _bridge(self) -> network.Bridge:
        if self.bridge is None:
            subnet = os.environ.get("NSMAGIC_SUBNET") or network.default_subnet(os.getpid())
            self.bridge = network.Bridge(os.getpid(), subnet)
        return self.bridge

    def _drop_idle_bridge(self) -> None:
        # The bridge lives exactly as long as some container is attached to it.
        if self.bridge is not None and not self.bridge.in_use:
            _quietly(self.bridge.remove)

    def _forget(self, container: SupervisedContainer) -> None:
        self.containers.discard(container)
        for fileobj in (container.pidfd, container.supervisor):
            try:
                self.selector.unregister(fileobj)
            except (KeyError, ValueError):
                pass


def _children() -> list[int]:
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as handle:
            return [int(pid) for pid in handle.read().split()]
    except OSError:
        return []


def _quietly(release) -> None:  # noqa: ANN001
    try:
        release()
    except Exception:  # noqa: BLE001
        traceback.print_exc()


def _wants_cgroup(spec: ContainerSpec, server: ForkServer) -> bool:
    # A cgroup gives limits and also the usage figures, so every container gets one where
    # cgroups are writable; with only rlimits, there is nothing to gain without limits.
    if not spec.limits.is_empty() or spec.cgroup is not None:
        return True
    driver = server.cgroup_driver()
    return driver is not None and driver.name in ("v1", "v2")


def main() -> None:
    """Entry point: python -m nsmagic.runtime.server FD [--once]."""
    syscalls.set_process_name("nsmagic-server")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Container processes are forked by the fork helper's short-lived intermediates; as a
    # subreaper we become their parent when those exit, so we can wait for them.
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    control = socket.socket(fileno=int(sys.argv[1]))
    server = ForkServer(control, once="--once" in sys.argv[2:])
    # Worked out once, here, so that every container inherits the answers: what of the
    # host a container sees, and the seccomp filter compiled by libseccomp.
    view.host_view()
    mountops.cgroup_mount_points()
    if seccomp.available():
        seccomp.build()
    # Objects imported so far are never collected: freezing them keeps the collector from
    # writing to their pages in every forked child (which would copy those pages).
    gc.freeze()
    # The fork helper starts now, while our memory is exactly what every container needs.
    server.forker.start()
    server.serve()
