"""Containers the kernel keeps: long-lived named containers that run cell after cell in one
Python process, and background runs; their logs, and the manager that lists and ends them."""

from __future__ import annotations

import codecs
import json
import os
import pickle
import select
import shlex
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
from nsmagic.runtime.options import CONTAINER_OPTIONS
from nsmagic.runtime.spec import ContainerSpec, validate_name

LOG_LINES = 10_000
# The most a container's log keeps, in characters (a flood must not fill the notebook).
LOG_LIMIT = 16 << 20
# After Ctrl-C in a cell of a named container: how long its code gets to stop before the
# whole container is killed (a named container outlives an interrupted cell otherwise).
EXEC_INTERRUPT_GRACE_S = 1.0
# When a cell's container ends under it: how long to wait for the supervisor's word on how
# (its EXITED event carries the OOM report), which follows the cell's end by milliseconds.
EXIT_REPORT_WAIT_S = 5.0
# A named container has these from its start, beside CONTAINER_OPTIONS: the group it runs in
# and the OCI bundle written of it. A cell in it cannot change any of them.
FIXED_AT_START_EXTRA = ("--cgroup", "--export-oci")


def options_fixed_at_start(args: Any) -> list[str]:
    """The flags given on a parsed command line that only a container's start can apply
    (limits, namespaces, network, filesystems, environment, ...): a cell in a named
    container runs in the container as %container start made it."""
    flags = [option.flags[0] for option in CONTAINER_OPTIONS] + list(FIXED_AT_START_EXTRA)
    return [flag for flag in flags
            if getattr(args, flag.lstrip("-").replace("-", "_"), None) not in (None, False, [])]


def script_for(shell: str | None, source: str) -> str:
    """A script that runs source with this shell (bash, say) when /bin/sh runs it: shell
    payloads and a named container's shell cells are run by /bin/sh."""
    if shell in (None, "/bin/sh"):
        return source
    return f"exec {shlex.quote(shell)} -c {shlex.quote(source)}"


@dataclass
class ExecResult:
    """How one cell run inside a named container ended."""

    exit_code: int
    exception: RemoteException | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    output_errors: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    elapsed_s: float = 0.0
    container: str = ""
    timed_out: float | None = None  # the timeout (s) after which the cell was interrupted
    killed: bool = False  # the cell would not stop when interrupted: the container was killed
    ended: str | None = None  # how the container ended, when it ended during the cell

    @property
    def ok(self) -> bool:
        """True when the cell ran to its end."""
        return (self.exit_code == 0 and self.exception is None and not self.interrupted
                and self.timed_out is None and self.ended is None)

    def describe(self) -> str:
        """One line on how the cell ended: 'exit status 0', 'raised ValueError: ...', or
        what became of the container."""
        name = f"container {self.container!r}" if self.container else "the container"
        if self.timed_out is not None:
            why = f"timed out after {self.timed_out:g} s"
            if self.killed:
                return f"{why}; the cell would not stop, so {name} was killed"
            return f"{why}; the cell was interrupted and {name} runs on"
        if self.interrupted:
            if self.killed:
                return (f"interrupted: the cell would not stop, so {name} was killed after "
                        f"{self.elapsed_s:.1f} s")
            return f"interrupted: the cell stopped after {self.elapsed_s:.1f} s; {name} runs on"
        if self.ended is not None:
            return f"{self.ended}; {name} has ended"
        if self.exception is not None:
            return f"raised {self.exception}"
        return f"exit status {self.exit_code}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"<ExecResult: {self.describe()} in {self.elapsed_s * 1000:.1f} ms>")


class CellInterrupted(KeyboardInterrupt):
    """Ctrl-C interrupted a cell in a named container; result says how it ended."""

    def __init__(self, result: ExecResult) -> None:
        super().__init__(result.describe())
        self.result = result


class BackgroundCell:
    """A cell running in a named container's background (one at a time per container)."""

    def __init__(self, container: str) -> None:
        self.container = container
        self.done = threading.Event()
        self.result: ExecResult | None = None

    @property
    def state(self) -> str:
        """running or done."""
        return "done" if self.done.is_set() else "running"

    def wait(self, timeout: float | None = None) -> ExecResult:
        """Block until the cell ends; TimeoutError if it still runs after timeout."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"the background cell in {self.container!r} still runs after "
                               f"{timeout:g} s")
        return self.result

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        how = self.result.describe() if self.result is not None else "running"
        printer.text(f"<BackgroundCell in {self.container!r}: {how}>")


class ManagedContainer:
    """A container that lives beyond one call: an agent serving cells, or a background run."""

    def __init__(self, name: str, spec: ContainerSpec, launcher: Launcher | None = None) -> None:
        self.name = name
        self.spec = spec
        self.container = Container(spec, launcher=launcher)
        self.kind = "agent"
        self.log: deque[tuple[float, str, str]] = deque()
        self._logged = 0  # characters in the log (LOG_LIMIT at most)
        self._followers: list[Callable[[str, str], None]] = []
        self._sink: dict[str, OutputCallback | None] = {"stdout": None, "stderr": None}
        self._io_lock = threading.Lock()
        self._emit_lock = threading.RLock()
        self._exec_lock = threading.Lock()
        self._decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace")
                          for s in ("stdout", "stderr")}
        self.done = threading.Event()
        self._over = threading.Event()  # an agent's supervisor has said its last word
        self.started_at = time.time()
        self._thread: threading.Thread | None = None
        self._failure: NsmagicError | None = None
        self.background: BackgroundCell | None = None  # an agent's latest background cell
        self.timeout: float | None = None  # a background run's, once it has passed

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

    def start_background(self, source: str, kind: str = "python",
                         timeout: float | None = None, **options: Any) -> ManagedContainer:
        """Run one payload in the background; output goes to the log and to followers.
        After timeout seconds it is killed (self.timeout then says so)."""
        self.kind = "background"
        self.container.start(source, kind=kind, **options)
        # A timer kills it, and wait() below still reads how it ended (Container.wait's own
        # timeout gives up on reading instead).
        timer = threading.Timer(timeout, self._time_out, (timeout,)) if timeout else None

        def run() -> None:
            try:
                if timer is not None:
                    timer.start()
                self.container.wait(on_stdout=lambda t: self._emit("stdout", t),
                                    on_stderr=lambda t: self._emit("stderr", t))
            finally:
                if timer is not None:
                    timer.cancel()
                self.done.set()

        self._thread = threading.Thread(target=run, daemon=True, name=f"nsmagic-{self.name}")
        self._thread.start()
        return self

    def _time_out(self, timeout: float) -> None:
        if self.done.is_set() or self.container.ended:
            return
        self.timeout = timeout
        self._emit("stderr", f"nsmagic: still running after its timeout of {timeout:g} s: "
                             "killed\n")
        try:
            self.container.send_signal(signal.SIGKILL)
        except OSError:
            pass  # it ended (and its pidfd was closed) meanwhile

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
        """running or exited (an agent: once its supervisor has said how it ended)."""
        return "exited" if self.done.is_set() or self._over.is_set() else "running"

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
        """Everything it printed (the last LOG_LINES chunks, LOG_LIMIT characters at most),
        in order."""
        return "".join(text for _, _, text in self.log)

    def describe(self) -> str:
        """How it ended (or 'running'), as %container ls and wait say it."""
        if not self.done.is_set():
            return "running"
        if self.timeout is not None:
            return f"killed after its timeout of {self.timeout:g} s"
        return self.result.describe()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"<ManagedContainer {self.name!r}: {self.describe()}>")

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
             on_stderr: OutputCallback | None = None, shell: str | None = None,
             timeout: float | None = None) -> ExecResult:
        """Run a cell in this container's main process; Ctrl-C interrupts the cell.

        shell: for kind 'shell', the shell to run it with (/bin/sh by default). timeout: after
        this many seconds the cell is interrupted, and if it will not stop, the container is
        killed (the result says which).
        """
        request = self._request(source, kind, filename, first_line, inputs, outputs, shell)
        self._claim_exec()
        try:
            return self._run_cell(request, on_stdout, on_stderr, timeout)
        finally:
            self._exec_lock.release()

    def exec_background(self, source: str, kind: str = "python",
                        filename: str = "<container>", first_line: int = 1,
                        inputs: dict[str, Any] | None = None, outputs: tuple[str, ...] = (),
                        on_stdout: OutputCallback | None = None,
                        on_stderr: OutputCallback | None = None, shell: str | None = None,
                        timeout: float | None = None,
                        on_end: Callable[[ExecResult], None] | None = None) -> BackgroundCell:
        """Run a cell in this container from a thread and return at once; its output goes to
        the callbacks and the log, on_end(result) is called when it ends. Other cells are
        refused until then."""
        request = self._request(source, kind, filename, first_line, inputs, outputs, shell)
        self._claim_exec()  # here, so that a cell sent right after this one is refused
        cell = BackgroundCell(self.name)

        def run() -> None:
            try:
                cell.result = self._run_cell(request, on_stdout, on_stderr, timeout)
            except Exception as error:  # noqa: BLE001 - the container was removed under it
                cell.result = ExecResult(exit_code=-1, container=self.name,
                                         ended=f"lost ({error})" if not self.done.is_set()
                                         else self.result.describe())
            finally:
                self._exec_lock.release()
                cell.done.set()
            if on_end is not None:
                try:
                    on_end(cell.result)
                except Exception:  # noqa: BLE001 - a broken viewer must not break the cell
                    pass

        self.background = cell
        threading.Thread(target=run, daemon=True, name=f"nsmagic-{self.name}-cell").start()
        return cell

    def _request(self, source: str, kind: str, filename: str, first_line: int,
                 inputs: dict[str, Any] | None, outputs: tuple[str, ...],
                 shell: str | None) -> dict[str, Any]:
        if self.kind != "agent":
            raise SpecError(f"{self.name!r} is a background run, not a container started with "
                            "%container start; it cannot run other cells.")
        if self.done.is_set():
            raise SpecError(f"container {self.name!r} has exited ({self.result.describe()}); "
                            f"%container rm {self.name} removes it.")
        if kind == "shell":
            source = script_for(shell, source)
        return {"source": source, "kind": kind, "filename": filename,
                "first_line": first_line, "outputs": list(outputs),
                "inputs": transfer.pack(inputs) if inputs else None}

    def _claim_exec(self) -> None:
        # The agent runs one cell at a time: a second one would wait unseen, so say why not.
        if not self._exec_lock.acquire(blocking=False):
            raise SpecError(f"container {self.name!r} is busy with a background cell: "
                            f"%container wait {self.name} waits for it.")

    def _run_cell(self, request: dict[str, Any], on_stdout: OutputCallback | None,
                  on_stderr: OutputCallback | None, timeout: float | None) -> ExecResult:
        """Send the cell and read its reply; the caller holds the exec lock."""
        result = ExecResult(exit_code=-1, container=self.name)
        began = time.perf_counter()
        self._sink = {"stdout": on_stdout, "stderr": on_stderr}
        try:
            try:
                protocol.send_frame(self.container.data, pickle.dumps(request))
            except (BrokenPipeError, ConnectionResetError):
                reply = packed = None  # it ended just before this cell
            else:
                reply, packed = self._await_reply(result, timeout)
        finally:
            self._drain()
            self._sink = {"stdout": None, "stderr": None}
        if reply is None:
            # The container ended (or was killed) under the cell: say how, as ls will (the
            # supervisor's EXITED event, which carries the OOM report, comes just after).
            self._over.wait(EXIT_REPORT_WAIT_S)
            if result.ended is None:
                result.ended = self.result.describe()
        else:
            _read_reply(reply, result)
            if packed is not None:
                result.outputs, result.output_errors = transfer.unpack_reply(*packed)
        result.elapsed_s = time.perf_counter() - began
        if result.interrupted:
            raise CellInterrupted(result)
        return result

    def _await_reply(self, result: ExecResult, timeout: float | None
                     ) -> tuple[dict | None, list[bytes] | None]:
        """Read the reply frames; pump output meanwhile; handle Ctrl-C and the timeout
        (both interrupt the cell; if it does not stop within the grace, the container is
        killed)."""
        grace_ends = None
        cell_ends = None if timeout is None else time.monotonic() + timeout
        frames: list[bytes] = []
        data = self.container.data
        while len(frames) < 3:
            try:
                ends = grace_ends if grace_ends is not None else cell_ends
                wait_s = None if ends is None else max(0.0, ends - time.monotonic())
                ready, _, _ = select.select([data, *self._pipe_fds()], [], [], wait_s)
                if data in ready:
                    try:
                        frame = protocol.receive_frame(data, OUTPUTS_LIMIT)
                    except NsmagicError as error:
                        # Its replies can no longer be read in step with its cells.
                        result.ended = f"killed: its reply to the cell broke the rules ({error})"
                        self.container.send_signal(signal.SIGKILL)
                        return None, None
                    if frame is None:
                        return None, None
                    frames.append(frame)
                else:
                    self._read_pipes(ready)
                now = time.monotonic()
                if grace_ends is not None and now >= grace_ends and len(frames) < 3:
                    result.killed = True
                    self.container.send_signal(signal.SIGKILL)  # the cell would not stop
                    return None, None
                if grace_ends is None and cell_ends is not None and now >= cell_ends:
                    result.timed_out = timeout
                    self.container.send_signal(signal.SIGINT)  # pid 1 forwards it to the cell
                    grace_ends = now + EXEC_INTERRUPT_GRACE_S
            except KeyboardInterrupt:
                if result.interrupted:  # a second Ctrl-C: no more patience
                    result.killed = True
                    self.container.send_signal(signal.SIGKILL)
                    continue
                result.interrupted = True
                if grace_ends is None:
                    self.container.send_signal(signal.SIGINT)
                    grace_ends = time.monotonic() + EXEC_INTERRUPT_GRACE_S
        try:
            reply = json.loads(frames[0])
        except ValueError:
            reply = {}
        return (reply if isinstance(reply, dict) else {}), frames[1:]

    # -- output plumbing -----------------------------------------------------------------
    def _pipe_fds(self) -> list[int]:
        return list(self.container.output_fds.values())

    def _read_pipes(self, ready: list) -> bool:
        """Read what is ready, in order, under the lock both threads use; False at EOF."""
        alive = True
        with self._io_lock:
            for stream, fd in list(self.container.output_fds.items()):
                if fd in ready:
                    # Both threads select on the pipes: the other may have read what made
                    # this one ready, so never block here.
                    os.set_blocking(fd, False)
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
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
            self._logged += len(text)
            while (self._logged > LOG_LIMIT or len(self.log) > LOG_LINES) and len(self.log) > 1:
                self._logged -= len(self.log.popleft()[2])  # the oldest goes first
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
            self._over.set()  # how it ended is known: a cell that waits for that reads it
            # finish() closes the data socket: a cell still reading it goes first.
            locked = self._exec_lock.acquire(timeout=EXIT_REPORT_WAIT_S)
            try:
                self._drain()
                container.finish()
            finally:
                if locked:
                    self._exec_lock.release()
                self.done.set()


def _read_reply(reply: dict, result: ExecResult) -> None:
    """A cell's REPLY frame, from the container: checked field by field into result."""
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
    result.exit_code, result.exception = code, remote


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
            managed = ManagedContainer(name, _named(spec, name), launcher).start_agent()
        except BaseException:
            self._release_name(name)
            raise
        self._containers[name] = managed
        return managed

    def run_background(self, spec: ContainerSpec, source: str, kind: str = "python",
                       name: str | None = None, launcher: Launcher | None = None,
                       timeout: float | None = None, **options: Any) -> ManagedContainer:
        """Run a payload in the background under a name (given, or bg1, bg2, ...); after
        timeout seconds it is killed."""
        name = self._claim_name(name)
        try:
            managed = ManagedContainer(name, _named(spec, name), launcher).start_background(
                source, kind, timeout, **options)
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


def _named(spec: ContainerSpec, name: str) -> ContainerSpec:
    # The spec's name is what the registry, ls, the monitor and the dashboard label it by.
    return spec if spec.name == name else replace(spec, name=name)


MANAGER = ContainerManager()
