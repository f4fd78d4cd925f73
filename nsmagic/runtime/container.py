"""The public Container API: start a payload in fresh namespaces, stream its output, collect
its result, and release everything however it ends."""

from __future__ import annotations

import codecs
import os
import pickle
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nsmagic.cgroups.limits import Limits
from nsmagic.errors import ContainerSetupError, NsmagicError
from nsmagic.runtime import protocol, transfer
from nsmagic.runtime.launcher import Launcher, default_launcher
from nsmagic.runtime.registry import KEEP_EXITED, REGISTRY, ContainerRecord
from nsmagic.runtime.spec import ContainerSpec, Payload

OutputCallback = Callable[[str], None]
# After Ctrl-C: how long the payload gets to stop on SIGINT, then on SIGTERM, before pid 1
# (and with it the whole pid namespace) is killed. Together well under a second.
INTERRUPT_GRACE_S = 0.3
TERMINATE_GRACE_S = 0.3


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
    """One container run: Container(spec).run(code) or start()/wait() for streaming."""

    def __init__(self, spec: ContainerSpec | None = None, launcher: Launcher | None = None,
                 **options: Any) -> None:
        if spec is not None and options:
            raise TypeError("give either a ContainerSpec or options, not both")
        if spec is None:
            limits = options.pop("limits", None)
            limit_options = {k: options.pop(k) for k in list(options)
                             if k in ("cpus", "memory", "memory_swap", "pids", "cpu_weight",
                                      "cpuset")}
            if limit_options:
                limits = Limits.parse(**limit_options)
            spec = ContainerSpec.build(limits=limits, **options)
        self.spec = spec
        self._launcher = launcher
        self._ctl = None
        self._pipes: dict[str, int] = {}
        self._pidfd: int | None = None
        self.data: socket.socket | None = None
        self._held_signals: list[int] = []
        self._orphaned_cgroup: str | None = None
        self._kind = "python"
        self.result = ContainerResult()
        self._started_at = 0.0
        self._done = False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, source: str = "", kind: str = "python", filename: str = "<container>",
              first_line: int = 1, inputs: dict[str, Any] | None = None,
              outputs: list[str] | tuple[str, ...] = ()) -> Container:
        """Launch the payload; returns at once. Output is read by wait().

        inputs: notebook variables copied in (pickled) before the code runs; outputs: names
        of variables copied back after it (into result.outputs), plain data only.
        """
        packed = transfer.pack(inputs) if inputs else None
        payload = Payload(kind=kind, source=source, filename=filename, first_line=first_line,
                          inputs=packed is not None, outputs=tuple(outputs))
        launcher = self._launcher or default_launcher()
        ours, theirs = protocol.socketpair()
        self.data, data_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stdout_read, stdout_write = os.pipe2(os.O_CLOEXEC)
        stderr_read, stderr_write = os.pipe2(os.O_CLOEXEC)
        self._ctl = ours
        self._pipes = {"stdout": stdout_read, "stderr": stderr_read}
        self._started_at = time.perf_counter()
        self._kind = kind
        REGISTRY.add(ContainerRecord(self.spec.container_id, self.spec.name, self.spec.limits,
                                     self.spec.namespaces))
        try:
            launcher.launch(self.spec, payload, stdout_write, stderr_write, theirs.fileno(),
                            data_theirs.fileno())
            if packed is not None:
                transfer.send_frame(self.data, pickle.dumps(packed))
        except BaseException:
            self.close()
            raise
        finally:
            theirs.close()
            data_theirs.close()
            os.close(stdout_write)
            os.close(stderr_write)
        self.result.timings["launch_s"] = time.perf_counter() - self._started_at
        return self

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
        selector.register(self._ctl, selectors.EVENT_READ, "ctl")
        data_buffer = bytearray()
        if self.data is not None and self._kind == "python":
            selector.register(self.data, selectors.EVENT_READ, "data")
        deadline = None if timeout is None else time.monotonic() + timeout
        escalation: list[tuple[float, int]] = []
        interrupted = False
        try:
            while selector.get_map():
                try:
                    wait_s = self._next_wait(deadline, escalation)
                    # Messages first: output is never handed on before "started" is known.
                    events = sorted(selector.select(wait_s), key=lambda e: e[0].data != "ctl")
                    for key, _ in events:
                        if key.data == "data":
                            chunk = self.data.recv(1 << 20)
                            if chunk:
                                data_buffer += chunk
                            else:
                                selector.unregister(self.data)
                            continue
                        if key.data == "ctl":
                            if not self.handle_message():
                                selector.unregister(self._ctl)
                                # Everything ended: give the pipes a moment, not forever
                                # (a stray writer outside a pid namespace could hold them).
                                deadline = min(deadline or float("inf"), time.monotonic() + 1)
                            continue
                        data = os.read(key.fd, 65536)
                        if not data:
                            selector.unregister(key.fd)
                            text = decoders[key.data].decode(b"", final=True)
                        else:
                            text = decoders[key.data].decode(data)
                        if text:
                            chunks[key.data].append(text)
                            if callbacks[key.data]:
                                callbacks[key.data](text)
                    now = time.monotonic()
                    while escalation and escalation[0][0] <= now:
                        self.send_signal(escalation.pop(0)[1])
                    if deadline is not None and now >= deadline:
                        if self._ctl in [k.fileobj for k in selector.get_map().values()]:
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
        if data_buffer:
            self._collect_outputs(transfer.split_frames(bytes(data_buffer)))
        return self.result

    def _collect_outputs(self, frames: list[bytes]) -> None:
        if len(frames) >= 2:
            self.result.outputs, self.result.output_errors = transfer.unpack_reply(*frames[:2])

    def run(self, source: str, kind: str = "python", **kwargs: Any) -> ContainerResult:
        """Start the payload and wait for it; output is collected, not printed."""
        self.start(source, kind=kind, filename=kwargs.pop("filename", "<container>"),
                   first_line=kwargs.pop("first_line", 1), inputs=kwargs.pop("inputs", None),
                   outputs=kwargs.pop("outputs", ()))
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

        Closing our end of the message socket is the supervisor's cue to kill what is
        left and release the container's kernel resources.
        """
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        if self.data is not None:
            self.data.close()
            self.data = None
        for fd in self._pipes.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._pipes = {}
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    # -- for callers that read the streams themselves (named containers, the CLI) --------
    @property
    def message_socket(self) -> socket.socket | None:
        """The container's message socket while open; when readable, call handle_message()."""
        return self._ctl

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

    def handle_message(self) -> bool:
        """Read one message from the container and record it in result; False once the
        message socket has closed (everything has ended). For callers that read the
        streams themselves; wait() does this."""
        message, _ = protocol.receive(self._ctl)
        if message is None:
            if "exited_s" not in self.result.timings and self.result.cgroup is not None:
                # The socket closed without the supervisor's last word: it died (pid 1 died
                # with it, by its lifeline), and nobody else will remove this cgroup.
                self._orphaned_cgroup = self.result.cgroup
            return False
        event = message.get("event")
        now = time.perf_counter() - self._started_at
        if event == "started":
            self.result.pid = message["pid"]
            self.result.cgroup = message.get("cgroup")
            self.result.cgroup_driver = message.get("cgroup_driver")
            self.result.address = message.get("address")
            self.result.warnings.extend(message.get("warnings", []))
            self.result.timings["started_s"] = now
            try:
                self._pidfd = os.pidfd_open(message["pid"])
            except ProcessLookupError:
                pass
            held, self._held_signals = self._held_signals, []
            for signum in held:
                self.send_signal(signum)
            REGISTRY.started(self.spec.container_id, message["pid"], self.result.cgroup,
                             self.result.cgroup_driver)
        elif event == "ready":
            self.result.timings["ready_s"] = now
            self.result.warnings.extend(message.get("warnings", []))
        elif event == "exception":
            self.result.exception = RemoteException(message["type"], message["message"],
                                                    message["traceback"])
        elif event == "payload-exited":
            self.result.timings["payload_exited_s"] = now
            self.result.exit_code = message.get("code")
            self.result.signal = message.get("signal")
        elif event == "warning":
            self.result.warnings.append(message["message"])
        elif event == "exited":
            self.result.timings["exited_s"] = now
            self.result.oom = message.get("oom")
            self.result.stats = message.get("stats")
            if self.result.exit_code is None and self.result.signal is None:
                self.result.exit_code = message.get("code")
                self.result.signal = message.get("signal")
        elif event == "setup-failed":
            step = message.get("step")
            where = f" while {step}" if step else ""
            raise ContainerSetupError(
                f"the container could not be created{where}: {message['message']}"
            )
        return True


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


def run(source: str, kind: str = "python", inputs: dict[str, Any] | None = None,
        outputs: list[str] | tuple[str, ...] = (), **options: Any) -> ContainerResult:
    """Run source in a fresh container and return its result (nsmagic.run)."""
    launcher = options.pop("launcher", None)
    with Container(launcher=launcher, **options) as container:
        return container.run(source, kind=kind, inputs=inputs, outputs=outputs)
