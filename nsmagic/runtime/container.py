"""The public Container API: start a payload in fresh namespaces, stream its output, collect
its result, and release everything however it ends."""

from __future__ import annotations

import codecs
import json
import os
import pickle
import select
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from nsmagic.cgroups.limits import format_size
from nsmagic.errors import ContainerSetupError, NsmagicError, SpecError
from nsmagic.runtime import protocol, transfer
from nsmagic.runtime.launcher import Launcher, default_launcher
from nsmagic.runtime.options import build_spec, network_to_share
from nsmagic.runtime.protocol import Event
from nsmagic.runtime.registry import KEEP_EXITED, REGISTRY, ContainerRecord
from nsmagic.runtime.spec import ContainerSpec, Payload

OutputCallback = Callable[[str], None]
# After Ctrl-C: how long the payload gets to stop on SIGINT, then on SIGTERM, before pid 1
# (and with it the whole pid namespace) is killed. Together well under a second.
INTERRUPT_GRACE_S = 0.3
TERMINATE_GRACE_S = 0.3
# What the kernel process keeps of a container's output (each stream) and of its --out data.
OUTPUT_LIMIT = 16 << 20
OUTPUTS_LIMIT = 256 << 20


@dataclass
class RemoteException:
    """An exception raised by the payload, as it was formatted inside the container."""

    type: str
    message: str
    traceback: list[str]

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


@dataclass
class ContainerResult:
    """How a container run ended, what it printed and how long each phase took."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    signal: int | None = None
    exception: RemoteException | None = None
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    pid: int | None = None
    cgroup: str | None = None
    cgroup_driver: str | None = None
    oom: dict[str, Any] | None = None  # kills, limit, peak and a sentence, after an OOM kill
    stats: dict[str, Any] | None = None  # the cgroup's usage when the container ended
    address: str | None = None  # on --net bridge
    root_outside: int | None = None  # with a user namespace: the host uid of root inside
    outputs: dict[str, Any] = field(default_factory=dict)  # variables copied out (--out)
    output_errors: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the payload ran to completion with exit status 0."""
        return self.exit_code == 0 and self.exception is None and not self.interrupted

    def describe(self) -> str:
        """One line on how it ended: 'exit status 0', 'killed by signal 9 (SIGKILL)'..."""
        if self.interrupted:
            return "interrupted"
        if self.oom is not None and (self.signal == signal.SIGKILL or self.exit_code == 137):
            return self.oom["text"]
        if self.exception is not None:
            return f"raised {self.exception}"
        if self.signal is not None:
            return f"killed by signal {self.signal} ({_signal_name(self.signal)})"
        return f"exit status {self.exit_code}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        total = self.timings.get("total_s")
        timing = f" in {total * 1000:.1f} ms" if total is not None else ""
        printer.text(f"<ContainerResult: {self.describe()}{timing}>")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


class Container:
    """One container run: Container(spec).run(code) or start()/wait() for streaming.

    share_network_with: a pidfd of the container whose network namespace this one joins
    (--net container:NAME); the caller keeps it. output_limit: at most this many bytes of
    each stream are kept in the result and handed to the callbacks; the rest is read and
    dropped, with one note (a flood must not fill the notebook's memory).
    """

    def __init__(self, spec: ContainerSpec | None = None, launcher: Launcher | None = None,
                 share_network_with: int | None = None, output_limit: int = OUTPUT_LIMIT,
                 **options: Any) -> None:
        if spec is not None and options:
            raise TypeError("give either a ContainerSpec or options, not both")
        notes: list[str] = []
        if spec is None:
            resolved = build_spec(**options)
            spec, notes = resolved.spec, resolved.notes
        # Ours to close: a duplicate of the caller's pidfd, or one found for the name.
        if share_network_with is not None:
            self._share_network_with: int | None = os.dup(share_network_with)
        else:
            self._share_network_with = network_to_share(spec.net)
        if spec.net.startswith("container:") and self._share_network_with is None:
            raise SpecError(f"--net {spec.net}: there is no container of that name to share "
                            "a network with.")
        self.spec = spec
        self._launcher = launcher
        self.output_limit = output_limit
        self._supervisor: socket.socket | None = None
        self._events: socket.socket | None = None
        self._pipes: dict[str, int] = {}
        self._pidfd: int | None = None
        self.data: socket.socket | None = None
        self._held_signals: list[int] = []
        self._orphaned_cgroup: str | None = None
        self._kind = "python"
        self._kept = {"stdout": 0, "stderr": 0}
        self._malformed_noted = False
        self._lease: Any = None
        self.writable_layer: Any = None  # an image container's (images.WritableLayer)
        self.keep_writable_layer = False  # a build commits it after the container ended
        self.result = ContainerResult(warnings=list(notes))
        self._started_at = 0.0

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, source: str = "", kind: str = "python", filename: str = "<container>",
              first_line: int = 1, inputs: dict[str, Any] | None = None,
              outputs: list[str] | tuple[str, ...] = (), argv: list[str] | tuple[str, ...] = ()
              ) -> Container:
        """Launch the payload; returns at once. Output is read by wait().

        kind: "python" (source), "shell" (source, a script), "command" (argv, executed as
        it is) or "agent". inputs: notebook variables copied in (pickled) before the code
        runs; outputs: names of variables copied back after it (into result.outputs), plain
        data only.
        """
        packed = transfer.pack(inputs) if inputs else None
        payload = Payload(kind=kind, source=source, filename=filename, first_line=first_line,
                          inputs=packed is not None, outputs=tuple(outputs), argv=tuple(argv))
        if self.spec.image and kind in ("python", "agent") and not _image_has_python(self.spec):
            raise SpecError(f"the image {self.spec.image} has no python3 on its PATH, so it "
                            "cannot run Python: run a shell cell instead (%%container bash "
                            f"--image {self.spec.image}, or kind='shell').")
        if self.spec.image and self._lease is None:
            # Held while the container lives: the image's layers are its root.
            self._lease = images_lease(self.spec.image)
            if not self.spec.read_only:
                # Its writable layer on disk, where diff, commit and a build read it.
                self.writable_layer = new_writable_layer(self.spec.container_id)
                self.spec = replace(self.spec, image_upper=self.writable_layer.path)
        launcher = self._launcher or default_launcher()
        supervisor_theirs = events_theirs = data_theirs = None
        stdout_write = stderr_write = None
        try:
            self._supervisor, supervisor_theirs = protocol.socketpair()
            self._events, events_theirs = protocol.socketpair()
            self.data, data_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            stdout_read, stdout_write = os.pipe2(os.O_CLOEXEC)
            self._pipes["stdout"] = stdout_read
            stderr_read, stderr_write = os.pipe2(os.O_CLOEXEC)
            self._pipes["stderr"] = stderr_read
            self._started_at = time.perf_counter()
            self._kind = kind
            REGISTRY.add(ContainerRecord(self.spec.container_id, self.spec.name,
                                         self.spec.limits, self.spec.namespaces,
                                         pidfd_of=lambda: self._pidfd))
            fds = [stdout_write, stderr_write, supervisor_theirs.fileno(),
                   events_theirs.fileno(), data_theirs.fileno()]
            if self._share_network_with is not None:
                fds.append(self._share_network_with)
            launcher.launch(self.spec, fds)
            for fd in (stdout_write, stderr_write):
                os.close(fd)
            stdout_write = stderr_write = None
            supervisor_theirs.close()
            events_theirs.close()
            data_theirs.close()
            self._send_request(payload, packed)
        except BaseException:
            for end in (supervisor_theirs, events_theirs, data_theirs):
                if end is not None:
                    end.close()
            for fd in (stdout_write, stderr_write):
                if fd is not None:
                    os.close(fd)
            self.close()
            raise
        self.result.timings["launch_s"] = time.perf_counter() - self._started_at
        return self

    def _send_request(self, payload: Payload, packed: dict[str, bytes] | None) -> None:
        # Only the container's main process reads this: neither the fork server nor any
        # process a later container is forked from ever holds a cell's code or inputs.
        request = json.dumps({"spec": self.spec.to_wire(), "payload": payload.to_wire()})
        try:
            protocol.send_frame(self.data, request.encode())
            if packed is not None:
                protocol.send_frame(self.data, pickle.dumps(packed))
        except (BrokenPipeError, ConnectionResetError):
            pass  # it failed before reading: the supervisor says why

    def wait(self, on_stdout: OutputCallback | None = None,
             on_stderr: OutputCallback | None = None, timeout: float | None = None
             ) -> ContainerResult:
        """Stream output to the callbacks until the container ends; Ctrl-C stops it.

        On KeyboardInterrupt the container gets SIGINT, then SIGTERM, then is killed, and the
        KeyboardInterrupt is raised again once nothing of it is left.
        """
        callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        chunks: dict[str, list[str]] = {"stdout": [], "stderr": []}
        decoders = {name: codecs.getincrementaldecoder("utf-8")(errors="replace")
                    for name in self._pipes}
        selector = selectors.DefaultSelector()
        for name, fd in self._pipes.items():
            selector.register(fd, selectors.EVENT_READ, name)
        selector.register(self._supervisor, selectors.EVENT_READ, "supervisor")
        selector.register(self._events, selectors.EVENT_READ, "events")
        frames = protocol.FrameReader(OUTPUTS_LIMIT)
        if self.data is not None and self._kind == "python":
            selector.register(self.data, selectors.EVENT_READ, "data")
        deadline = None if timeout is None else time.monotonic() + timeout
        escalation: list[tuple[float, int]] = []
        interrupted = False
        try:
            while selector.get_map():
                try:
                    wait_s = self._next_wait(deadline, escalation)
                    # The supervisor's word first: output is never handed on before
                    # "started" is known, and the container's events before its output.
                    events = sorted(selector.select(wait_s),
                                    key=lambda e: _READ_ORDER.get(e[0].data, 3))
                    for key, _ in events:
                        if key.data == "data":
                            if not self._read_data(frames):
                                selector.unregister(self.data)
                        elif key.data in ("supervisor", "events"):
                            self.handle_message(key.fileobj)
                            still_open = self.message_sockets
                            for other in list(selector.get_map().values()):
                                if other.data in ("supervisor", "events") \
                                        and other.fileobj not in still_open:
                                    selector.unregister(other.fileobj)
                            if self._supervisor is None:
                                # Everything ended: give the pipes a moment, not forever
                                # (a stray writer outside a pid namespace could hold them).
                                deadline = min(deadline or float("inf"), time.monotonic() + 1)
                        else:
                            self._read_output(key, decoders, chunks, callbacks, selector)
                    now = time.monotonic()
                    while escalation and escalation[0][0] <= now:
                        self.send_signal(escalation.pop(0)[1])
                    if deadline is not None and now >= deadline:
                        if self._supervisor is not None:
                            raise TimeoutError(f"container still running after {timeout} s")
                        break
                except KeyboardInterrupt:
                    if interrupted:  # a second Ctrl-C: no more patience
                        self.send_signal(signal.SIGKILL)
                        continue
                    interrupted = True
                    self.result.interrupted = True
                    self.send_signal(signal.SIGINT)
                    now = time.monotonic()
                    escalation = [(now + INTERRUPT_GRACE_S, signal.SIGTERM),
                                  (now + INTERRUPT_GRACE_S + TERMINATE_GRACE_S, signal.SIGKILL)]
        except TimeoutError:
            self.send_signal(signal.SIGKILL)
            raise
        finally:
            selector.close()
            self.result.stdout = "".join(chunks["stdout"])
            self.result.stderr = "".join(chunks["stderr"])
            self.finish()
        if interrupted:
            raise KeyboardInterrupt
        if len(frames.frames) >= 2:
            self.result.outputs, self.result.output_errors = transfer.unpack_reply(
                *frames.frames[:2])
        return self.result

    def _read_data(self, frames: protocol.FrameReader) -> bool:
        """Read the payload's --out frames; False at their end or when they broke the rules."""
        try:
            chunk = self.data.recv(1 << 20)
        except OSError:
            chunk = b""
        if not chunk:
            return False
        try:
            frames.feed(chunk)
        except NsmagicError as error:
            self.result.output_errors["--out"] = f"no variable was copied out: {error}."
            return False
        return True

    def _read_output(self, key: selectors.SelectorKey, decoders: dict, chunks: dict,
                     callbacks: dict, selector: selectors.BaseSelector) -> None:
        stream = key.data
        data = os.read(key.fd, 65536)
        if not data:
            selector.unregister(key.fd)
            text = decoders[stream].decode(b"", final=True)
        else:
            room = self.output_limit - self._kept[stream]
            if room <= 0:
                return  # read and dropped: the container must not block on a full pipe
            if len(data) > room:
                data = data[:room]
                self.result.warnings.append(
                    f"{stream} was cut after {format_size(self.output_limit)}; the rest was "
                    "read and dropped (the container went on)")
            self._kept[stream] += len(data)
            text = decoders[stream].decode(data)
            if self._kept[stream] >= self.output_limit:
                text += (decoders[stream].decode(b"", final=True)
                         + f"\n[nsmagic: {stream} cut after {format_size(self.output_limit)}]\n")
        if text:
            chunks[stream].append(text)
            if callbacks[stream]:
                callbacks[stream](text)

    def run(self, source: str, kind: str = "python", **kwargs: Any) -> ContainerResult:
        """Start the payload and wait for it; output is collected, not printed."""
        self.start(source, kind=kind, filename=kwargs.pop("filename", "<container>"),
                   first_line=kwargs.pop("first_line", 1), inputs=kwargs.pop("inputs", None),
                   outputs=kwargs.pop("outputs", ()), argv=kwargs.pop("argv", ()))
        return self.wait(**kwargs)

    def finish(self) -> None:
        """The container has ended (or we gave up on it): record it and release. wait()
        calls it; callers that read the streams themselves call it once they end."""
        REGISTRY.exited(self.spec.container_id, self.result.describe(), self.result.oom)
        _trim_registry()
        if self._orphaned_cgroup is not None and self.spec.cgroup is None:
            _remove_orphaned_cgroup(self._orphaned_cgroup, self.result)
        self.result.timings["total_s"] = time.perf_counter() - self._started_at
        self.close()

    def send_signal(self, signum: int) -> None:
        """Signal the container's pid 1 (which forwards to the payload; SIGKILL ends all).

        Before pid 1 is known (its "started" message not read yet), the signal is held and
        delivered as soon as it is.
        """
        if self._pidfd is None:
            self._held_signals.append(signum)
            return
        try:
            signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Release the container and everything it holds; safe to call twice.

        Closing our end of the supervisor socket is the fork server's cue to kill what is
        left and release the container's kernel resources.
        """
        for sock in (self._supervisor, self._events, self.data):
            if sock is not None:
                sock.close()
        self._supervisor = self._events = self.data = None
        for fd in self._pipes.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._pipes = {}
        if self._lease is not None:
            self._lease.close()
            self._lease = None
        if self.writable_layer is not None and not self.keep_writable_layer:
            self.writable_layer.remove()
            self.writable_layer = None
        for fd in (self._pidfd, self._share_network_with):
            if fd is not None:
                os.close(fd)
        self._pidfd = self._share_network_with = None

    # -- for callers that read the streams themselves (named containers, the CLI) --------
    @property
    def message_sockets(self) -> list[socket.socket]:
        """The supervisor and events sockets still open; when one is readable, call
        handle_message(it)."""
        return [s for s in (self._supervisor, self._events) if s is not None]

    @property
    def ended(self) -> bool:
        """True once the supervisor has closed its socket: the container and all it held
        are gone (or the container was closed)."""
        return self._supervisor is None

    @property
    def pidfd(self) -> int | None:
        """A pidfd of the container's pid 1 (from its supervisor), once it runs; ours."""
        return self._pidfd

    @property
    def output_fds(self) -> dict[str, int]:
        """The read ends of the stdout and stderr pipes, by stream, while this object holds
        them."""
        return dict(self._pipes)

    def take_output_fds(self) -> dict[str, int]:
        """Hand the output pipes over: the caller reads and closes them, wait() no longer."""
        pipes, self._pipes = self._pipes, {}
        return pipes

    @property
    def pid_known(self) -> bool:
        """True once pid 1 is known: signals are then delivered at once, not held."""
        return self._pidfd is not None

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------
    def _next_wait(self, deadline: float | None, escalation: list[tuple[float, int]]
                   ) -> float | None:
        moments = [m for m in (deadline, escalation[0][0] if escalation else None) if m]
        if not moments:
            return None
        return max(0.0, min(moments) - time.monotonic())

    def handle_message(self, sock: socket.socket) -> bool:
        """Read one message from the supervisor or events socket and record it in result.

        Returns False once that socket has closed; the supervisor's closing means everything
        has ended (then the events still buffered are read too). For callers that read the
        streams themselves; wait() does this.
        """
        if sock is not None and sock is self._supervisor:
            return self._handle_supervisor_message()
        if sock is not None and sock is self._events:
            return self._handle_container_event()
        return False

    def _handle_supervisor_message(self) -> bool:
        message, fds = protocol.receive(self._supervisor, max_fds=1)
        if message is None:
            if "exited_s" not in self.result.timings and self.result.cgroup is not None:
                # The socket closed without the supervisor's last word: it died (pid 1 died
                # with it, by its lifeline), and nobody else will remove this cgroup.
                self._orphaned_cgroup = self.result.cgroup
            self._supervisor.close()
            self._supervisor = None
            self._drain_events()
            return False
        event = message.get("event")
        now = time.perf_counter() - self._started_at
        if event == Event.STARTED:
            self.result.pid = message["pid"]
            self.result.cgroup = message.get("cgroup")
            self.result.cgroup_driver = message.get("cgroup_driver")
            self.result.address = message.get("address")
            self.result.root_outside = message.get("root_outside")
            self.result.warnings.extend(message.get("warnings", []))
            self.result.timings["started_s"] = now
            if fds:
                self._pidfd = fds.pop(0)
            held, self._held_signals = self._held_signals, []
            for signum in held:
                self.send_signal(signum)
            REGISTRY.started(self.spec.container_id, message["pid"], self.result.cgroup,
                             self.result.cgroup_driver)
        elif event == Event.WARNING:
            self.result.warnings.append(message["message"])
        elif event == Event.EXITED:
            self.result.timings["exited_s"] = now
            self.result.oom = message.get("oom")
            self.result.stats = message.get("stats")
            if self.result.exit_code is None and self.result.signal is None:
                self.result.exit_code = message.get("code")
                self.result.signal = message.get("signal")
        elif event == Event.SETUP_FAILED:
            step = message.get("step")
            where = f" while {step}" if step else ""
            raise ContainerSetupError(
                f"the container could not be created{where}: {message['message']}"
            )
        for fd in fds:
            os.close(fd)
        return True

    def _drain_events(self) -> None:
        """Read what the container said before it ended (its events arrive before the
        supervisor's last word, which waits for pid 1's end)."""
        while self._events is not None:
            ready, _, _ = select.select([self._events], [], [], 0)
            if not ready or not self._handle_container_event():
                return

    def _handle_container_event(self) -> bool:
        """One event from inside the container: untrusted, so checked field by field and
        never a source of pids, cgroups or namespaces."""
        try:
            message, _ = protocol.receive(self._events)
        except (OSError, NsmagicError):
            message = {}
            self._note_malformed()
        if message is None:
            self._events.close()
            self._events = None
            return False
        event = message.get("event")
        now = time.perf_counter() - self._started_at
        if event == Event.READY and "ready_s" not in self.result.timings:
            self.result.timings["ready_s"] = now
            self.result.warnings.extend(_strings(message.get("warnings"), 20, 1000))
        elif event == Event.EXCEPTION and self.result.exception is None:
            self.result.exception = RemoteException(
                _string(message.get("type"), 200) or "Exception",
                _string(message.get("message"), 10_000),
                _strings(message.get("traceback"), 200, 10_000))
        elif event == Event.PAYLOAD_EXITED and "payload_exited_s" not in self.result.timings:
            self.result.timings["payload_exited_s"] = now
            self.result.exit_code = _small_int(message.get("code"), 0, 255)
            self.result.signal = _small_int(message.get("signal"), 1, 64)
        elif event not in (None, Event.READY, Event.EXCEPTION, Event.PAYLOAD_EXITED):
            self._note_malformed()
        return True

    def _note_malformed(self) -> None:
        if not self._malformed_noted:
            self._malformed_noted = True
            self.result.warnings.append("the container sent a message nsmagic does not "
                                        "accept; it was ignored")


# The order in which ready sockets are read in one turn of wait()'s loop.
_READ_ORDER = {"supervisor": 0, "events": 1, "data": 2}


def _string(value: object, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _strings(value: object, count: int, limit: int) -> list[str]:
    if not isinstance(value, list):
        return []
    return [_string(v, limit) for v in value[-count:] if isinstance(v, str)]


def _small_int(value: object, low: int, high: int) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def _image_has_python(spec: ContainerSpec) -> bool:
    """Whether some layer of the image has python3 in a directory of the image's PATH."""
    directories = [d for d in spec.env.get("PATH", "").split(":") if d.startswith("/")]
    return any(os.path.lexists(os.path.join(layer + directory, "python3"))
               for layer in spec.image_layers for directory in directories)


def images_lease(reference: str) -> Any:
    """A lease on an image of the store (prune keeps it while the container runs)."""
    from nsmagic import images

    return images.lease(reference).open()


def new_writable_layer(container_id: str) -> Any:
    """A writable layer for an image container, in the image store."""
    from nsmagic.images.store import Store
    from nsmagic.images.writable import WritableLayer

    return WritableLayer.create(Store(), container_id)


def _remove_orphaned_cgroup(name: str, result: ContainerResult) -> None:
    from nsmagic.cgroups import detect_driver

    try:
        driver = detect_driver()
        if driver.name in ("v1", "v2"):
            driver.open(name).remove()
    except (KeyError, OSError, NsmagicError) as error:
        result.warnings.append(f"cgroup {name} left behind by a supervisor that died: {error}")


def _trim_registry() -> None:
    ended = [r for r in REGISTRY.records(include_exited=True) if r.state == "exited"]
    for record in ended[:-KEEP_EXITED]:
        REGISTRY.forget(record.container_id)


def run(source: str = "", kind: str = "python", inputs: dict[str, Any] | None = None,
        outputs: list[str] | tuple[str, ...] = (), argv: list[str] | tuple[str, ...] = (),
        filename: str = "<container>", first_line: int = 1, **options: Any
        ) -> ContainerResult:
    """Run source (or, kind "command", argv) in a fresh container and return its result
    (nsmagic.run); filename and first_line name the source in tracebacks."""
    launcher = options.pop("launcher", None)
    with Container(launcher=launcher, **options) as container:
        return container.run(source, kind=kind, inputs=inputs, outputs=outputs, argv=argv,
                             filename=filename, first_line=first_line)
