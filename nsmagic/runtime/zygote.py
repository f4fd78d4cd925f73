"""The fork server: a small single-threaded process, started once with the runtime already
imported, that forks one supervisor per container on request."""

from __future__ import annotations

import os
import signal
import socket
import sys

from nsmagic.isolation import syscalls
from nsmagic.runtime import protocol
from nsmagic.runtime.spec import ContainerSpec, Payload
from nsmagic.runtime.supervisor import supervise


def serve(control: socket.socket, once: bool = False) -> None:
    """Handle launch requests until the notebook side closes the control socket.

    The kernel that started us is multithreaded and must never fork; we are single-threaded
    and fork for it. Each request carries three descriptors: the container's stdout and
    stderr pipes and its message socket.
    """
    syscalls.set_process_name("nsmagic-zygote")
    # Supervisors are reaped by the kernel automatically: the zygote never waits for them,
    # each supervisor watches its own container and its own lifeline.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        request, fds = protocol.receive(control, max_fds=3)
        if request is None:
            return
        if request.get("op") == "ping":
            protocol.send(control, {"pong": os.getpid()})
            for fd in fds:
                os.close(fd)
            continue
        stdout_fd, stderr_fd, ctl_fd = fds
        spec = ContainerSpec.from_wire(request["spec"])
        payload = Payload(**request["payload"])
        if once:
            control.close()
            supervise(spec, payload, ctl_fd, stdout_fd, stderr_fd)
        try:
            pid = os.fork()
        except OSError as error:
            protocol.send(ctl_fd, {"event": "setup-failed", "step": "forking the supervisor",
                                   "message": error.strerror or str(error)})
            pid = -1
        if pid == 0:
            control.close()
            supervise(spec, payload, ctl_fd, stdout_fd, stderr_fd)
        for fd in fds:
            os.close(fd)


def main() -> None:
    """Entry point: python -m nsmagic.runtime.zygote FD [--once]."""
    control = socket.socket(fileno=int(sys.argv[1]))
    serve(control, once="--once" in sys.argv[2:])


if __name__ == "__main__":
    main()
