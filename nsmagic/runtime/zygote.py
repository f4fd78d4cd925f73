"""The fork server: one small single-threaded process per notebook kernel, started once with
the runtime imported, that creates containers on request and supervises them all."""

from __future__ import annotations

import gc
import os
import selectors
import signal
import socket
import sys

from nsmagic.cgroups.base import CgroupDriver
from nsmagic.errors import ContainerSetupError
from nsmagic.isolation import syscalls
from nsmagic.runtime import protocol
from nsmagic.runtime.spec import ContainerSpec, Payload
from nsmagic.runtime.supervisor import SupervisedContainer, send_quietly


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
        self.own_pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self._driver: CgroupDriver | None | bool = False  # False: not detected yet
        self._served = 0

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
                for key, _ in self.selector.select():
                    if key.data is None:
                        if not self._handle_request():
                            return
                    else:
                        container, what = key.data
                        if what == "pid":
                            self._reap(container)
                        else:
                            self._handle_container_message(container)
                if self.once and self._served and not self.containers:
                    return
        finally:
            for container in list(self.containers):
                self._forget(container)
                container.release()

    def _handle_request(self) -> bool:
        request, fds = protocol.receive(self.control, max_fds=3)
        if request is None:
            return False
        op = request.get("op")
        if op == "ping":
            protocol.send(self.control, {"pong": os.getpid()})
        elif op == "launch":
            self._launch(request, fds)
            fds = []
            if self.once:
                # A one-shot server lives as long as its container, whatever the caller does
                # with the control socket; the container's own socket is its lifeline.
                self.selector.unregister(self.control)
                self.control.close()
        for fd in fds:
            os.close(fd)
        return True

    def _launch(self, request: dict, fds: list[int]) -> None:
        stdout_fd, stderr_fd, ctl_fd = fds
        self._served += 1
        try:
            spec = ContainerSpec.from_wire(request["spec"])
            payload = Payload(**request["payload"])
            driver = self.cgroup_driver() if _wants_cgroup(spec, self) else None
        except Exception as error:  # noqa: BLE001
            send_quietly(ctl_fd, {"event": "setup-failed", "step": "reading the request",
                                  "message": str(error)})
            for fd in fds:
                os.close(fd)
            return
        container = SupervisedContainer(spec, payload, ctl_fd, stdout_fd, stderr_fd, driver)
        try:
            container.create(self.own_pid_namespace)
        except ContainerSetupError as error:
            step, _, message = str(error).partition(": ")
            send_quietly(container.ctl, {"event": "setup-failed", "step": step,
                                         "message": message})
            container.release()
            return
        self.containers.add(container)
        self.selector.register(container.pidfd, selectors.EVENT_READ, (container, "pid"))
        self.selector.register(container.ctl, selectors.EVENT_READ, (container, "ctl"))

    def _handle_container_message(self, container: SupervisedContainer) -> None:
        try:
            message, fds = protocol.receive(container.ctl)
        except OSError:
            message, fds = None, []
        for fd in fds:
            os.close(fd)
        if message is None:
            # The notebook side closed its end (or died): the container must end now. Its
            # pidfd fires once pid 1 is gone, and _reap releases the rest.
            self.selector.unregister(container.ctl)
            container.kill()
        elif message.get("op") == "kill":
            container.kill()

    def _reap(self, container: SupervisedContainer) -> None:
        self._forget(container)
        container.reap()

    def _forget(self, container: SupervisedContainer) -> None:
        self.containers.discard(container)
        for fileobj in (container.pidfd, container.ctl):
            try:
                self.selector.unregister(fileobj)
            except (KeyError, ValueError):
                pass


def _wants_cgroup(spec: ContainerSpec, server: ForkServer) -> bool:
    # A cgroup gives limits and also the usage figures, so every container gets one where
    # cgroups are writable; with only rlimits, there is nothing to gain without limits.
    if not spec.limits.is_empty() or spec.cgroup is not None:
        return True
    driver = server.cgroup_driver()
    return driver is not None and driver.name in ("v1", "v2")


def main() -> None:
    """Entry point: python -m nsmagic.runtime.zygote FD [--once]."""
    syscalls.set_process_name("nsmagic-zygote")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # When a user-namespace container's set-up process exits, its pid 1 comes to us.
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    control = socket.socket(fileno=int(sys.argv[1]))
    server = ForkServer(control, once="--once" in sys.argv[2:])
    # Objects imported so far are never collected: freezing them keeps the collector from
    # writing to their pages in every forked child (which would copy those pages).
    gc.freeze()
    server.serve()


if __name__ == "__main__":
    main()
