"""How a container request reaches a single-threaded process that may fork: a long-lived
fork server (fast) or a fresh helper process per container (simple, always available)."""

from __future__ import annotations

import abc
import os
import socket
import subprocess
import sys
import threading

from nsmagic.runtime import protocol
from nsmagic.runtime.protocol import Op
from nsmagic.runtime.spec import ContainerSpec


def _helper_command(fd: int, *extra: str) -> list[str]:
    # -s: the user's site directory is not the container's business; -u: unbuffered errors.
    return [sys.executable, "-s", "-u", "-m", "nsmagic.runtime.server", str(fd), *extra]


# What of the kernel's environment the fork server starts with. Containers are forks of it,
# and a process's exec-time environment stays readable in its memory (/proc/self/environ):
# the notebook's other variables, its secrets among them, must never be there.
_SERVER_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


def _helper_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k in _SERVER_ENVIRONMENT or k.startswith("NSMAGIC_")}
    # The helpers must import this very copy of nsmagic, even when it is not installed.
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root,
                                                      os.environ.get("PYTHONPATH")]))
    return env


class Launcher(abc.ABC):
    """Hands a container request to a process that forks the container's supervisor."""

    name: str

    @abc.abstractmethod
    def launch(self, spec: ContainerSpec, fds: list[int]) -> None:
        """Start a container with the descriptors of Op.LAUNCH: stdout, stderr, supervisor,
        events, data[, join]. The payload itself goes on the data socket, never here."""

    def close(self) -> None:
        """Release the launcher's helper process, if any; safe to call twice."""
        return None


class SpawnLauncher(Launcher):
    """A fresh helper interpreter per container: about 70 ms a start, but no shared state."""

    name = "spawn"

    def launch(self, spec: ContainerSpec, fds: list[int]) -> None:
        ours, theirs = protocol.socketpair()
        with ours, theirs:
            process = subprocess.Popen(
                _helper_command(theirs.fileno(), "--once"), pass_fds=[theirs.fileno()],
                env=_helper_environment(), stdin=subprocess.DEVNULL, close_fds=True,
                # Its own session: Jupyter kills a kernel's whole process group, and the
                # server must outlive the kernel long enough to release what it owns.
                start_new_session=True,
            )
            theirs.close()
            protocol.send(ours, {"op": Op.LAUNCH, "spec": spec.to_wire(private=False)}, fds=fds)
        # The helper becomes the supervisor; reap it when it ends, without blocking the caller.
        threading.Thread(target=process.wait, name="nsmagic-reaper", daemon=True).start()


class ForkServerLauncher(Launcher):
    """One long-lived fork server per notebook kernel, started on first use."""

    name = "forkserver"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._control: socket.socket | None = None

    def _ensure_started(self) -> socket.socket:
        if self._process is not None and self._process.poll() is None and self._control:
            return self._control
        self._stop()
        ours, theirs = protocol.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                _helper_command(theirs.fileno()), pass_fds=[theirs.fileno()],
                env=_helper_environment(), stdin=subprocess.DEVNULL, close_fds=True,
                # Its own session: Jupyter kills a kernel's whole process group, and the
                # server must outlive the kernel long enough to release what it owns.
                start_new_session=True,
            )
        self._control = ours
        return ours

    @property
    def pid(self) -> int | None:
        """The fork server's pid, once started."""
        return self._process.pid if self._process else None

    @property
    def control_fd(self) -> int | None:
        """Our end of the server's control socket (its closing stops the server), once started."""
        return self._control.fileno() if self._control else None

    def ping(self) -> int:
        """Start the server if needed and wait until it answers; return its pid."""
        with self._lock:
            control = self._ensure_started()
            protocol.send(control, {"op": Op.PING})
            reply, _ = protocol.receive(control)
        if reply is None:
            raise RuntimeError("the nsmagic fork server exited at start-up")
        return int(reply["pong"])

    def launch(self, spec: ContainerSpec, fds: list[int]) -> None:
        with self._lock:
            control = self._ensure_started()
            protocol.send(control, {"op": Op.LAUNCH, "spec": spec.to_wire(private=False)},
                          fds=fds)

    def _stop(self) -> None:
        if self._control is not None:
            self._control.close()  # EOF tells the server to exit
            self._control = None
        if self._process is not None:
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def close(self) -> None:
        with self._lock:
            self._stop()


_default: Launcher | None = None
_default_lock = threading.Lock()


def default_launcher() -> Launcher:
    """The process-wide launcher: the fork server, or a fresh helper per container when
    NSMAGIC_LAUNCHER=spawn or when the fork server cannot start here."""
    global _default
    with _default_lock:
        if _default is None:
            choice = os.environ.get("NSMAGIC_LAUNCHER", "forkserver")
            _default = SpawnLauncher() if choice == "spawn" else _fork_server_or_fallback()
        return _default


def _fork_server_or_fallback() -> Launcher:
    server = ForkServerLauncher()
    try:
        server.ping()
    except (OSError, RuntimeError) as error:
        server.close()
        sys.stderr.write(f"nsmagic: the fork server could not start ({error}); starting "
                         "each container from a fresh helper process instead (slower).\n")
        return SpawnLauncher()
    return server


def close_default_launcher() -> None:
    """Stop the process-wide launcher (used when the extension is unloaded)."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.close()
            _default = None
