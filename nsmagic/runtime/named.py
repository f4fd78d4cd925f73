"""Containers the kernel keeps: long-lived named containers that run cell after cell in one
Python process, and background runs; their logs, and the manager that lists and ends them."""

from __future__ import annotations

import codecs
import json
import os
import pickle
import select
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nsmagic.errors import ContainerSetupError, NsmagicError, SpecError
from nsmagic.runtime import protocol, transfer
from nsmagic.runtime.container import (
    OUTPUTS_LIMIT,
    Container,
    ContainerResult,
    OutputCallback,
    RemoteException,
)
from nsmagic.runtime.launcher import Launcher
from nsmagic.runtime.spec import ContainerSpec, validate_name

LOG_LINES = 10_000
# After Ctrl-C in a cell of a named container: how long its code gets to stop before the
# whole container is killed (a named container outlives an interrupted cell otherwise).
EXEC_INTERRUPT_GRACE_S = 1.0


@dataclass
class ExecResult:
    """How one cell run inside a named container ended."""

    exit_code: int
    exception: RemoteException | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    output_errors: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the cell ran to its end."""
        return self.exit_code == 0 and self.exception is None and not self.interrupted


class ManagedContainer:
    """A container that lives beyond one call: an agent serving cells, or a background run."""

    def __init__(self, name: str, spec: ContainerSpec, launcher: Launcher | None = None) -> None:
        self.name = name
        self.spec = spec
        self.container = Container(spec, launcher=launcher)
        self.kind = "agent"
        self.log: deque[tuple[float, str, str]] = deque(maxlen=LOG_LINES)
        self._followers: list[Callable[[str, str], None]] = []
        self._sink: dict[str, OutputCallback | None] = {"stdout": None, "stderr": None}
        self._io_lock = threading.Lock()
        self._emit_lock = threading.RLock()
        self._exec_lock = threading.Lock()
        self._decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace")
                          for s in ("stdout", "stderr")}
        self.done = threading.Event()
        self.started_at = time.time()
        self._thread: threading.Thread | None = None
        self._failure: NsmagicError | None = None

    # -- starting ----------------------------------------------------------------------------
    def start_agent(self) -> ManagedContainer:
        """Start a long-lived container whose main process runs the cells sent to it."""
        self.container.start(kind="agent")
        self._thread = threading.Thread(target=self._pump_forever, daemon=True,
                                        name=f"nsmagic-{self.name}")
        self._thread.start()
        # Return once it runs (its pid and address known), or say why it could not start.
        deadline = time.monotonic() + 30
        while self.result.pid is None and not self.done.is_set():
            if time.monotonic() > deadline:
                self.close()
                raise ContainerSetupError(f"container {self.name!r} did not start in 30 s")
            time.sleep(0.002)
        if self._failure is not None:
            raise self._failure
        return self

    def start_background(self, source: str, kind: str = "python", **options: Any
                         ) -> ManagedContainer:
        """Run one payload in the background; output goes to the log and to followers."""
        self.kind = "background"
        self.container.start(source, kind=kind, **options)

        def run() -> None:
            try:
                self.container.wait(on_stdout=lambda t: self._emit("stdout", t),
                                    on_stderr=lambda t: self._emit("stderr", t))
            finally:
                self.done.set()

        self._thread = threading.Thread(target=run, daemon=True, name=f"nsmagic-{self.name}")
        self._thread.start()
        return self

    # -- state ---------------------------------------------------------------------------
    @property
    def result(self) -> ContainerResult:
        """What is known so far of how it runs or ended."""
        return self.container.result

    @property
    def pid(self) -> int | None:
        """Host pid of its pid 1 (None until it runs)."""
        return self.result.pid

    @property
    def address(self) -> str | None:
        """Its address on nsmagic's bridge (--net bridge), else None."""
        return self.result.address

    @property
    def state(self) -> str:
        """running or exited."""
        return "exited" if self.done.is_set() else "running"

    def follow(self, callback: Callable[[str, str], None], replay: bool = False
               ) -> Callable[[], None]:
        """callback(stream, text) for all output from now on (replay: and everything so
        far, with nothing lost or doubled in between); returns an unsubscribe."""
        with self._emit_lock:
            if replay:
                for _, stream, text in list(self.log):
                    callback(stream, text)
            self._followers.append(callback)
        return lambda: self._followers.remove(callback) if callback in self._followers else None

    def logs(self) -> str:
        """Everything it printed (the last LOG_LINES chunks), in order."""
        return "".join(text for _, _, text in self.log)

    def wait(self, timeout: float | None = None) -> ContainerResult:
        """Block until it ends; TimeoutError if it is still running after timeout."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"container {self.name!r} still running after {timeout} s")
        return self.result

    def stop(self, grace_s: float = 2.0) -> ContainerResult:
        """SIGTERM, then SIGKILL after grace_s; returns how it ended."""
        if not self.done.is_set():
            self.container.send_signal(signal.SIGTERM)
            if not self.done.wait(grace_s):
                self.container.send_signal(signal.SIGKILL)
                self.done.wait(5)
        return self.result

    def close(self) -> None:
        """Kill it if it runs, and release everything (closing the sockets ends it)."""
        if not self.done.is_set():
            self.container.send_signal(signal.SIGKILL)
            self.done.wait(5)
        self.container.close()

    # -- cells in a named container ------------------------------------------------------
    def exec(self, source: str, kind: str = "python", filename: str = "<container>",
             first_line: int = 1, inputs: dict[str, Any] | None = None,
             outputs: tuple[str, ...] = (), on_stdout: OutputCallback | None = None,
             on_stderr: OutputCallback | None = None) -> ExecResult:
        """Run a cell in this container's main process; Ctrl-C interrupts the cell."""
        if self.kind != "agent":
            raise SpecError(f"{self.name!r} is a background run, not a container started with "
                            "%container start; it cannot run other cells.")
        if self.done.is_set():
            raise SpecError(f"container {self.name!r} has exited ({self.result.describe()}); "
                            f"%container rm {self.name} removes it.")
        request = {"source": source, "kind": kind, "filename": filename,
                   "first_line": first_line, "outputs": list(outputs),
                   "inputs": transfer.pack(inputs) if inputs else None}
        began = time.perf_counter()
        with self._exec_lock:
            self._sink = {"stdout": on_stdout, "stderr": on_stderr}
            try:
                protocol.send_frame(self.container.data, pickle.dumps(request))
                reply, packed, interrupted = self._await_reply()
            finally:
                self._drain()
                self._sink = {"stdout": None, "stderr": None}
        if reply is None:
            result = ExecResult(exit_code=-1, interrupted=interrupted,
                                exception=RemoteException("ContainerExited",
                                                          self.result.describe(), []))
        else:
            result = _exec_result(reply, interrupted)
            if packed is not None:
                result.outputs, result.output_errors = transfer.unpack_reply(*packed)
        result.elapsed_s = time.perf_counter() - began
        if interrupted:
            raise KeyboardInterrupt
        return result

    def _await_reply(self) -> tuple[dict | None, list[bytes] | None, bool]:
        """Read the reply frames; pump output meanwhile; handle Ctrl-C."""
        interrupted = False
        deadline = None
        frames: list[bytes] = []
        data = self.container.data
        while len(frames) < 3:
            try:
                wait_s = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready, _, _ = select.select([data, *self._pipe_fds()], [], [], wait_s)
                if data in ready:
                    try:
                        frame = protocol.receive_frame(data, OUTPUTS_LIMIT)
                    except NsmagicError:
                        frame = None  # a reply past the limit: the container broke the rules
                    if frame is None:
                        return None, None, interrupted
                    frames.append(frame)
                else:
                    self._read_pipes(ready)
                if deadline is not None and time.monotonic() >= deadline and len(frames) < 3:
                    self.container.send_signal(signal.SIGKILL)  # the cell would not stop
                    return None, None, interrupted
            except KeyboardInterrupt:
                if interrupted:
                    self.container.send_signal(signal.SIGKILL)
                    continue
                interrupted = True
                self.container.send_signal(signal.SIGINT)  # pid 1 forwards it to the cell
                deadline = time.monotonic() + EXEC_INTERRUPT_GRACE_S
        try:
            reply = json.loads(frames[0])
        except ValueError:
            reply = {}
        return (reply if isinstance(reply, dict) else {}), frames[1:], interrupted

    # -- output plumbing -----------------------------------------------------------------
    def _pipe_fds(self) -> list[int]:
        return list(self.container.output_fds.values())

    def _read_pipes(self, ready: list) -> bool:
        """Read what is ready, in order, under the lock both threads use; False at EOF."""
        alive = True
        with self._io_lock:
            for stream, fd in list(self.container.output_fds.items()):
                if fd in ready:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        alive = False
                        continue
                    text = self._decoders[stream].decode(chunk)
                    if text:
                        self._emit(stream, text)
        return alive

    def _drain(self) -> None:
        """The cell's reply came after its output was flushed: read what is in the pipes."""
        while True:
            fds = self._pipe_fds()
            if not fds:
                return
            ready, _, _ = select.select(fds, [], [], 0)
            if not ready or not self._read_pipes(ready):
                return

    def _emit(self, stream: str, text: str) -> None:
        with self._emit_lock:
            self.log.append((time.time(), stream, text))
            followers = list(self._followers)
        sink = self._sink.get(stream)
        if sink is not None:
            sink(text)
        for follower in followers:
            try:
                follower(stream, text)
            except Exception:  # noqa: BLE001 - a broken viewer must not break the container
                pass

    def _pump_forever(self) -> None:
        """Background thread of an agent container: output between cells, and its end."""
        container = self.container
        try:
            while not container.ended:
                sockets = container.message_sockets
                ready, _, _ = select.select([*sockets, *self._pipe_fds()], [], [], 0.2)
                for sock in sockets:
                    if sock in ready:
                        container.handle_message(sock)
                pipes = [fd for fd in ready if not isinstance(fd, socket.socket)]
                if pipes and not self._exec_lock.locked():
                    self._read_pipes(pipes)
        except NsmagicError as error:
            self._failure = error
        except (OSError, ValueError):
            pass
        finally:
            self._drain()
            container.finish()
            self.done.set()


def _exec_result(reply: dict, interrupted: bool) -> ExecResult:
    """A cell's REPLY frame, from the container: checked field by field."""
    code = reply.get("exit_code")
    exception = reply.get("exception")
    remote = None
    if isinstance(exception, dict):
        lines = exception.get("traceback")
        remote = RemoteException(
            str(exception.get("type", "Exception"))[:200],
            str(exception.get("message", ""))[:10_000],
            [str(line)[:10_000] for line in lines[-200:]] if isinstance(lines, list) else [])
    if not isinstance(code, int) or isinstance(code, bool):
        code, remote = -1, remote or RemoteException("ProtocolError", "the container's reply "
                                                     "to the cell was malformed", [])
    return ExecResult(exit_code=code, interrupted=interrupted, exception=remote)


class ContainerManager:
    """The kernel's named containers and background runs, by name."""

    def __init__(self) -> None:
        self._containers: dict[str, ManagedContainer] = {}
        self._lock = threading.Lock()
        self._counter = 0

    def _claim_name(self, name: str | None) -> str:
        with self._lock:
            if name is None:
                self._counter += 1
                name = f"bg{self._counter}"
                while name in self._containers:
                    self._counter += 1
                    name = f"bg{self._counter}"
            validate_name(name)
            if name in self._containers:
                raise SpecError(f"a container named {name!r} exists already: "
                                f"%container rm {name} first, or choose another name.")
            self._containers[name] = None  # reserved while starting
            return name

    def _release_name(self, name: str) -> None:
        with self._lock:
            if self._containers.get(name) is None:
                self._containers.pop(name, None)

    def start(self, name: str, spec: ContainerSpec, launcher: Launcher | None = None
              ) -> ManagedContainer:
        """Start a named long-lived container."""
        name = self._claim_name(name)
        try:
            managed = ManagedContainer(name, spec, launcher).start_agent()
        except BaseException:
            self._release_name(name)
            raise
        self._containers[name] = managed
        return managed

    def run_background(self, spec: ContainerSpec, source: str, kind: str = "python",
                       name: str | None = None, launcher: Launcher | None = None,
                       **options: Any) -> ManagedContainer:
        """Run a payload in the background under a name (given, or bg1, bg2, ...)."""
        name = self._claim_name(name)
        try:
            managed = ManagedContainer(name, spec, launcher).start_background(
                source, kind, **options)
        except BaseException:
            self._release_name(name)
            raise
        self._containers[name] = managed
        return managed

    def get(self, name: str) -> ManagedContainer:
        """The container of that name; SpecError naming the known ones if there is none."""
        managed = self._containers.get(name)
        if managed is None:
            known = ", ".join(sorted(n for n, c in self._containers.items() if c)) or "none"
            raise SpecError(f"there is no container named {name!r} (known: {known}).")
        return managed

    def names(self) -> list[str]:
        """Names of every container kept, running or exited."""
        return [n for n, c in self._containers.items() if c is not None]

    def all(self) -> list[ManagedContainer]:
        """Every container kept, oldest first."""
        return [c for c in self._containers.values() if c is not None]

    def remove(self, name: str, force: bool = False) -> None:
        """Forget a container; a running one needs force (then it is killed)."""
        managed = self.get(name)
        if managed.state == "running" and not force:
            raise SpecError(f"container {name!r} is running: %container stop {name} first, "
                            "or rm -f.")
        managed.close()
        with self._lock:
            self._containers.pop(name, None)

    def close_all(self) -> None:
        """Kill and forget every container (the extension unloads or the kernel exits)."""
        for name in list(self.names()):
            self.remove(name, force=True)


MANAGER = ContainerManager()
