"""The container's main process, last steps: take the container's identity and drop what it
must not keep (session keyring, user, capabilities, no_new_privs, seccomp), then become the
payload: a shell script, a command, or Python (this interpreter, or an image's own)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket

from nsmagic.isolation import capabilities, keyring, seccomp, users
from nsmagic.isolation.mounts import IMAGE_LIBRARY
from nsmagic.runtime.inside import python_runner
from nsmagic.runtime.spec import ContainerSpec, Payload


def run_payload(payload: Payload, spec: ContainerSpec, events_fd: int,
                data: socket.socket | None = None) -> int:
    """Become the payload in this (already isolated) process; return its exit code."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD,
                   signal.SIGPIPE, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    _set_environment(spec.env)
    python = _image_python(spec) if spec.image and payload.kind in ("python", "agent") else None
    request = _request_for_image(payload) if python else None
    # The last steps before the user's code, in this order: a session keyring of its own
    # (keyctl is refused from then on), the image's user, Docker's capabilities and
    # no_new_privs, then the seccomp filter (which needs no_new_privs).
    keyring.join_fresh_session_keyring()
    if spec.user:
        try:
            users.become(spec.user)
        except OSError as error:
            detail = ("that id is not mapped in this container's user namespace (without "
                      "subordinate ids only root is)" if error.errno == errno.EINVAL
                      else error.strerror or str(error))
            os.write(2, f"nsmagic: cannot run as user {spec.user}: {detail}\n".encode())
            return 126
    try:
        os.chdir(spec.cwd)
    except OSError:
        os.chdir("/")
    if not spec.privileged:
        capabilities.restrict_to()
    if spec.seccomp and seccomp.available():  # (else the READY event said why not)
        seccomp.install()
    if payload.kind == "shell":
        os.execve(payload.shell, [payload.shell, "-c", payload.source], spec.env)
    if payload.kind == "command":
        return _execute(payload.argv, spec.env)
    if python is not None:
        for fd in (events_fd, data.fileno(), request):
            os.set_inheritable(fd, True)
        # -B: no bytecode written into the image's own files (a diff would show it).
        os.execve(python, [python, "-I", "-S", "-B", "-c", python_runner.BOOT, IMAGE_LIBRARY,
                           str(events_fd), str(data.fileno()), str(request)], spec.env)
    return python_runner.run(payload.to_wire(), events_fd, data)


def _execute(argv: tuple[str, ...], env: dict[str, str]) -> int:
    """Become the program (found on the container's PATH); if that fails, say so and exit
    as a shell does: 127 when there is no such program, 126 when it cannot run."""
    try:
        os.execvpe(argv[0], list(argv), env)
    except FileNotFoundError:
        os.write(2, f"nsmagic: {argv[0]}: command not found\n".encode())
        return 127
    except OSError as error:
        os.write(2, f"nsmagic: {argv[0]}: {error.strerror}\n".encode())
        return 126


def _set_environment(env: dict[str, str]) -> None:
    for key in [k for k in os.environ if k not in env]:
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _image_python(spec: ContainerSpec) -> str:
    """The image's own python3, found on the image's PATH."""
    found = shutil.which("python3", path=spec.env.get("PATH", "/usr/local/bin:/usr/bin:/bin"))
    if found is None:
        raise FileNotFoundError(f"the image {spec.image} has no python3 on its PATH: run a "
                                "shell cell instead (%%container bash --image ...)")
    return found


def _request_for_image(payload: Payload) -> int:
    """The payload's wire form in a memory file, for the image's python3 to read."""
    fd = os.memfd_create("nsmagic-request", os.MFD_CLOEXEC)
    os.write(fd, json.dumps(payload.to_wire()).encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
