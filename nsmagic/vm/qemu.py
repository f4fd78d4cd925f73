"""Boot a guest image under qemu, measure it, and make sure qemu never outlives the call."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from nsmagic.cgroups.limits import format_size, parse_size
from nsmagic.errors import CapabilityError
from nsmagic.vm.images import (
    EXIT_MARKER,
    HOSTROOT_TAG,
    READY_MARKER,
    RESULTS_TAG,
    GuestImage,
    build_image,
)

if TYPE_CHECKING:
    from nsmagic.cgroups.base import Cgroup

# Called with qemu's pid the moment the ready marker arrives (from the console thread); a true
# return value ends the run there (qemu is killed), e.g. once an idle guest has been sampled.
ReadyCallback = Callable[[int], "bool | None"]

# With a cgroup, qemu is started through this gate: the shell waits for one line on its stdin
# (a pipe), which the host writes only after it has moved the shell into the cgroup; the shell
# then execs qemu (same pid) with stdin from /dev/null, as without the gate, so qemu is
# accounted in the group from its first instruction.
_CGROUP_GATE = ["/bin/sh", "-c", 'read _; exec "$@" </dev/null', "nsmagic-vm-gate"]

QEMU = "qemu-system-x86_64"
DEFAULT_MACHINES = {"micro": "microvm", "v2": "q35"}

_READY_RE = re.compile(rf"{READY_MARKER} uptime=([0-9.]+)")
_EXIT_RE = re.compile(rf"{EXIT_MARKER} status=(\d+)")
_FAIL_RE = re.compile(r"NSMAGIC-FAIL ([^\r\n]*)")
# A broken KVM either says so or (as on the machine this was written on) spins silently in
# the kernel with the guest paused; both must end the attempt, not the timeout only.
_KVM_ERROR_RE = re.compile(r"KVM internal error|failed to initialize kvm|Could not access KVM")

# Kernel arguments: the console on the first serial port, no reboot loop on panic (with
# -no-reboot a panic then ends qemu at once), and quiet so the console is mostly ours.
# The rest is what microVM setups pass to cut boot time: no i8042 probe (there is no PS/2
# controller to find, and the probe waits for time-outs), one UART, and no crypto self-tests
# (the largest single saving here: about 0.3 s of 1.1 s guest uptime under TCG).
_CMDLINE = (
    "console=ttyS0 quiet panic=-1"
    " i8042.noaux i8042.nokbd i8042.nopnp 8250.nr_uarts=1 cryptomgr.notests"
)
# microvm has no PCI bus (the kernel still prints one line about it).
_MACHINE_CMDLINE = {"microvm": " pci=off"}


def host_tsc_khz() -> int | None:
    """The host's nominal TSC frequency in kHz, or None when it cannot be told.

    Under TCG the guest's rdtsc reads the host TSC. microvm has no HPET or ACPI PM timer, so
    the kernel calibrates the TSC against the PIT, which under emulation fails often enough
    (about one boot in three here) to leave the guest hanging without a clock; passing the
    frequency with tsc_early_khz skips that calibration.
    """
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz").read_text())
    except (OSError, ValueError):
        pass
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    # The model name's "@ 2.60GHz" is the nominal rate the TSC runs at; "cpu MHz" may be a
    # momentary, frequency-scaled value, so it is only the last resort.
    if match := re.search(r"^model name\s*:.*@\s*([0-9.]+)\s*GHz", cpuinfo, re.M):
        return int(float(match.group(1)) * 1_000_000)
    if match := re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.M):
        return int(float(match.group(1)) * 1000)
    return None


_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


@dataclass
class VMResult:
    """One boot of a guest: how it was run, what it cost, and what it printed."""

    flavour: str
    accel: str  # "kvm" or "tcg"; tcg figures are emulated, not what hardware would show
    machine: str
    memory_bytes: int
    smp: int
    kernel_bytes: int
    initramfs_bytes: int
    ready: bool = False  # the guest printed the ready marker
    boot_wall_s: float | None = None  # qemu launch to ready marker, host clock
    guest_uptime_s: float | None = None  # /proc/uptime in the guest at the marker
    qemu_rss_bytes: int | None = None  # sampled when the marker arrived
    qemu_pss_bytes: int | None = None
    qemu_cpu_s: float | None = None  # qemu user+system CPU time to reach the marker
    total_wall_s: float = 0.0  # launch to qemu exit (or kill)
    timed_out: bool = False
    qemu_returncode: int | None = None
    ran_command: bool = False  # a command was given (v2 guest); exit_status then matters
    exit_status: int | None = None  # the command's status; None if it never finished
    stdout: str = ""
    stderr: str = ""
    console: str = ""  # everything qemu and the serial console printed
    failure: str | None = None  # why the guest gave up, in its own words
    argv: list[str] = field(default_factory=list)

    @property
    def emulated(self) -> bool:
        """True when the CPU was emulated (TCG): times and CPU figures are not hardware's."""
        return self.accel != "kvm"

    @property
    def ok(self) -> bool:
        """Booted, and the command (if any) exited with status 0."""
        if not self.ready or self.timed_out:
            return False
        return self.exit_status == 0 if self.ran_command else True

    def summary(self) -> str:
        """One line for logs and test output."""
        label = "emulated (TCG)" if self.emulated else "KVM"
        size = format_size(self.memory_bytes)
        parts = [f"{self.flavour} guest on {self.machine}, {size}, {label}"]
        if self.ready:
            parts.append(
                f"ready after {self.boot_wall_s:.2f} s wall / {self.guest_uptime_s:.2f} s guest"
            )
            if self.qemu_rss_bytes is not None:
                parts.append(
                    f"qemu RSS {format_size(self.qemu_rss_bytes)}"
                    f" PSS {format_size(self.qemu_pss_bytes or 0)}"
                    f" CPU {self.qemu_cpu_s:.2f} s"
                )
        else:
            parts.append("never ready")
        if self.timed_out:
            parts.append(f"killed at the timeout after {self.total_wall_s:.1f} s")
        if self.exit_status is not None:
            parts.append(f"exit status {self.exit_status}")
        if self.failure:
            parts.append(f"guest failure: {self.failure}")
        return "; ".join(parts)

    def _repr_pretty_(self, p, cycle: bool) -> None:
        p.text(self.summary())


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL qemu's whole process group and reap it; safe to call twice."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:
            proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process in D state
        pass
    with _live_lock:
        _live.discard(proc)


@atexit.register
def _kill_all() -> None:
    # For interpreter exit while another thread is still inside boot().
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        _kill(proc)


def _deathsig_prefix() -> list[str]:
    # setpriv execs qemu with PR_SET_PDEATHSIG, so qemu dies even when Python is SIGKILLed
    # and no finally block runs; done in a helper rather than a preexec_fn because forking
    # a threaded interpreter (an IPython kernel) must not run Python code in the child.
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def qemu_binary() -> str | None:
    """Path of qemu-system-x86_64, or None when it is not installed."""
    return shutil.which(QEMU)


def _argv(
    image: GuestImage,
    accel: str,
    machine: str,
    memory_bytes: int,
    smp: int,
    results: Path | None,
    extra: list[str],
    kernel_args: str = "",
    gate: bool = False,
) -> list[str]:
    qemu = qemu_binary()
    cmdline = _CMDLINE + _MACHINE_CMDLINE.get(machine, "")
    if kernel_args:
        cmdline += " " + kernel_args
    if accel == "tcg" and machine.startswith("microvm") and (khz := host_tsc_khz()):
        cmdline += f" tsc_early_khz={khz}"
    if not qemu:
        raise CapabilityError(f"{QEMU} is not installed (Debian package qemu-system-x86).")
    argv = [
        qemu,
        "-accel", accel,
        "-M", machine,
        # tcg's default qemu64 CPU lacks SSE4/AVX that host-built wheels may assume.
        "-cpu", "host" if accel == "kvm" else "max",
        "-smp", str(smp),
        "-m", f"{max(1, memory_bytes // (1024 * 1024))}M",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-serial", "stdio", "-monitor", "none",
        "-no-reboot",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initramfs),
        "-append", cmdline,
    ]  # fmt: skip
    if image.flavour == "v2":
        # multidevs=remap: / spans several host filesystems and their inode numbers collide.
        argv += [
            "-virtfs",
            f"local,path=/,mount_tag={HOSTROOT_TAG},security_model=none,readonly=on,"
            "multidevs=remap",
        ]
        if results is not None:
            argv += [
                "-virtfs",
                f"local,path={results},mount_tag={RESULTS_TAG},security_model=none",
            ]
    return _deathsig_prefix() + (_CGROUP_GATE if gate else []) + argv + extra


class _ConsoleReader(threading.Thread):
    """Drains qemu's output and samples qemu the moment the ready marker shows up."""

    def __init__(
        self, proc: subprocess.Popen, started: float, on_ready: ReadyCallback | None = None
    ) -> None:
        super().__init__(daemon=True, name="nsmagic-vm-console")
        self.proc = proc
        self.started = started
        self.on_ready = on_ready
        self.stop_requested = threading.Event()
        self.chunks: list[bytes] = []
        self.ready_at: float | None = None
        self.uptime: float | None = None
        self.rss: int | None = None
        self.pss: int | None = None
        self.cpu: float | None = None
        self.kvm_error = threading.Event()
        self.exited = threading.Event()

    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")

    def _sample(self) -> None:
        try:
            qemu = psutil.Process(self.proc.pid)
            mem = qemu.memory_full_info()
            cpu = qemu.cpu_times()
            self.rss, self.pss = mem.rss, getattr(mem, "pss", None)
            self.cpu = cpu.user + cpu.system
        except (psutil.Error, OSError):
            pass

    def _call_on_ready(self) -> None:
        if self.on_ready is None:
            return
        try:
            if self.on_ready(self.proc.pid):
                self.stop_requested.set()
        except Exception:  # noqa: BLE001 - a failing sampler must not hang the boot
            self.stop_requested.set()

    def run(self) -> None:
        fd = self.proc.stdout.fileno()
        tail = ""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            now = time.monotonic()
            self.chunks.append(chunk)
            # Search only the new text plus a little overlap: a marker can straddle chunks.
            tail = (tail + chunk.decode(errors="replace"))[-4096:]
            if self.ready_at is None:
                match = _READY_RE.search(tail)
                if match and tail[match.end() :].find("\n") >= 0:
                    self.ready_at = now - self.started
                    self._sample()
                    self.uptime = float(match.group(1))
                    self._call_on_ready()
                elif match is None and READY_MARKER not in tail and _KVM_ERROR_RE.search(tail):
                    self.kvm_error.set()
        self.exited.set()


def _parse_memory(memory: str | int) -> int:
    return parse_size(memory, "memory")


def boot(
    flavour: str = "micro",
    *,
    image: GuestImage | None = None,
    memory: str | int = "256M",
    machine: str | None = None,
    accel: str = "auto",
    smp: int = 1,
    timeout: float = 60.0,
    script: str | None = None,
    extra_args: list[str] | None = None,
    kernel_args: str = "",
    cgroup: Cgroup | None = None,
    on_ready: ReadyCallback | None = None,
) -> VMResult:
    """Boot a guest once and return its figures; qemu is killed on every way out.

    flavour 'micro' prints the ready marker and powers off; 'v2' mounts the host root
    read-only and, given a shell `script`, runs it there (tests/vm/guest.py). accel is
    'kvm', 'tcg' or 'auto' (KVM when a probe boot proves it works, else TCG).

    kernel_args are appended to the guest's kernel command line (the micro guest reads its
    workload from there). With a cgroup (nsmagic.cgroups), qemu runs inside it from its first
    instruction; the caller owns the group and removes it. on_ready(pid) is called the moment
    the ready marker arrives; returning True ends the run there.
    """
    image = image or build_image(flavour)
    flavour = image.flavour
    machine = machine or DEFAULT_MACHINES[flavour]
    memory_bytes = _parse_memory(memory)
    if accel == "auto":
        accel = "kvm" if kvm_works()[0] else "tcg"
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be 'auto', 'kvm' or 'tcg', not {accel!r}.")
    if script is not None and flavour != "v2":
        raise ValueError("only the 'v2' guest can run a command.")

    results: Path | None = None
    if flavour == "v2" and script is not None:
        results = Path(tempfile.mkdtemp(prefix="nsmagic-vm-"))
    try:
        if results is not None:
            (results / "cmd.sh").write_text(script)
        argv = _argv(
            image,
            accel,
            machine,
            memory_bytes,
            smp,
            results,
            list(extra_args or []),
            kernel_args=kernel_args,
            gate=cgroup is not None,
        )
        result = VMResult(
            flavour=flavour,
            accel=accel,
            machine=machine,
            memory_bytes=memory_bytes,
            smp=smp,
            kernel_bytes=image.kernel_bytes,
            initramfs_bytes=image.initramfs_bytes,
            ran_command=script is not None,
            argv=argv,
        )
        _run_qemu(argv, timeout, result, cgroup=cgroup, on_ready=on_ready)
        if results is not None:
            result.stdout = _read(results / "stdout")
            result.stderr = _read(results / "stderr")
            status = _read(results / "status").strip()
            if status.isdigit():
                result.exit_status = int(status)
            elif match := _EXIT_RE.search(result.console):
                result.exit_status = int(match.group(1))
        return result
    finally:
        if results is not None:
            shutil.rmtree(results, ignore_errors=True)


def _run_qemu(
    argv: list[str],
    timeout: float,
    result: VMResult,
    cgroup: Cgroup | None = None,
    on_ready: ReadyCallback | None = None,
) -> None:
    """Run qemu to its end or the timeout, filling in the console and the figures."""
    proc: subprocess.Popen | None = None
    reader: _ConsoleReader | None = None
    started = time.monotonic()
    try:
        # A Ctrl-C landing inside Popen (after the fork, before we hold the process) would
        # leave a qemu nobody kills: hold the KeyboardInterrupt back until it is recorded.
        # (Masking SIGINT in this thread is not enough: the kernel then hands it to another
        # thread, and Python still raises it here.)
        deferred: list[int] = []
        previous = signal.getsignal(signal.SIGINT)
        # Only the main thread may set handlers, and one installed from C cannot be put back.
        masked = threading.current_thread() is threading.main_thread() and previous is not None
        if masked:
            signal.signal(signal.SIGINT, lambda signum, _frame: deferred.append(signum))
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL if cgroup is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                # Its own process group, so that the kill reaches anything qemu may spawn and
                # a Ctrl-C in a terminal reaches us (who then kill qemu), not qemu behind our
                # back.
                start_new_session=True,
            )
            with _live_lock:
                _live.add(proc)
        finally:
            if masked:
                signal.signal(signal.SIGINT, previous)
        if deferred:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt
        if cgroup is not None:
            cgroup.attach(proc.pid)  # still the gate's shell: qemu is not running yet
            proc.stdin.write(b"go\n")
            proc.stdin.close()
        reader = _ConsoleReader(proc, started, on_ready)
        reader.start()
        deadline = started + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result.timed_out = True
                break
            try:
                proc.wait(timeout=min(remaining, 0.05))
                break
            except subprocess.TimeoutExpired:
                if reader.kvm_error.is_set() or reader.stop_requested.is_set():
                    break
    finally:
        if proc is not None:
            _kill(proc)
            result.qemu_returncode = proc.returncode
        result.total_wall_s = time.monotonic() - started
        if reader is not None:
            reader.exited.wait(timeout=5)
        if proc is not None and proc.stdout:
            proc.stdout.close()

    result.console = reader.text()
    result.ready = reader.ready_at is not None
    result.boot_wall_s = reader.ready_at
    result.guest_uptime_s = reader.uptime
    result.qemu_rss_bytes, result.qemu_pss_bytes = reader.rss, reader.pss
    result.qemu_cpu_s = reader.cpu
    if fail := _FAIL_RE.search(result.console):
        result.failure = fail.group(1).strip()
    elif reader.kvm_error.is_set():
        result.failure = "KVM failed"


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


_kvm_answer: tuple[bool, str] | None = None
_kvm_lock = threading.Lock()


def kvm_works(probe_timeout: float = 4.0) -> tuple[bool, str]:
    """(True, why) when KVM can boot a guest here; probed once per process with a short boot.

    /dev/kvm existing proves little: on a nested host KVM may fail only once the guest runs,
    and qemu then pauses instead of exiting. So the probe boots the micro image under KVM
    and requires its ready marker before the (short) timeout.
    """
    global _kvm_answer
    with _kvm_lock:
        if _kvm_answer is None:
            _kvm_answer = _probe_kvm(probe_timeout)
        return _kvm_answer


def _probe_kvm(probe_timeout: float) -> tuple[bool, str]:
    if not os.path.exists("/dev/kvm"):
        return False, "no /dev/kvm (KVM module not loaded or not passed into this machine)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not readable and writable by this user"
    if not qemu_binary():
        return False, f"{QEMU} is not installed"
    try:
        image = build_image("micro")
    except CapabilityError as exc:
        return False, f"no image to probe KVM with: {exc}"
    result = boot(image=image, accel="kvm", memory="128M", timeout=probe_timeout)
    if result.ready:
        return True, f"KVM booted a probe guest in {result.boot_wall_s:.2f} s"
    if result.timed_out:
        return False, (
            f"KVM did not boot a probe guest within {probe_timeout:.0f} s"
            " (qemu hangs or pauses: nested virtualisation without VMX/SVM?)"
        )
    last = result.console.strip().splitlines()[-1:] or ["no output"]
    return False, f"KVM failed: {last[0]}"
