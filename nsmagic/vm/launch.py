"""One qemu launch with a chosen accelerator: the command line, and what the boot gave."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nsmagic.cgroups.limits import format_size
from nsmagic.errors import CapabilityError
from nsmagic.vm.console import ReadyCallback, StageCallback, qemu_messages
from nsmagic.vm.images import HOSTROOT_TAG, RESULTS_TAG, GuestImage
from nsmagic.vm.process import CGROUP_GATE, deathsig_prefix, run_qemu

if TYPE_CHECKING:
    from nsmagic.cgroups.base import Cgroup

QEMU = "qemu-system-x86_64"
DEFAULT_MACHINES = {"micro": "microvm", "v2": "q35"}

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
    init_wall_s: float | None = None  # qemu launch to the guest's init marker (micro guest)
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
    console: str = ""  # everything qemu and the serial console printed: the run's log
    failure: str | None = None  # why the guest gave up (its words), or why KVM failed (ours)
    argv: list[str] = field(default_factory=list)

    @property
    def emulated(self) -> bool:
        """True when the CPU was emulated (TCG): times and CPU figures are not hardware's."""
        return self.accel != "kvm"

    @property
    def qemu_log(self) -> str:
        """What qemu printed about itself (errors, assertions): for whoever asks for it."""
        return qemu_messages(self.console)

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
            parts.append(f"failure: {self.failure}")
        return "; ".join(parts)

    def _repr_pretty_(self, p, cycle: bool) -> None:
        p.text(self.summary())


def qemu_binary() -> str | None:
    """Path of qemu-system-x86_64, or None when it is not installed."""
    return shutil.which(QEMU)


def qemu_argv(
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
    """qemu's command line for one boot (with the cgroup gate in front when gate is set)."""
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
    return deathsig_prefix() + (CGROUP_GATE if gate else []) + argv + extra


def launch(
    image: GuestImage,
    *,
    accel: str,
    machine: str,
    memory_bytes: int,
    smp: int = 1,
    timeout: float = 60.0,
    results: Path | None = None,
    extra_args: list[str] | None = None,
    kernel_args: str = "",
    cgroup: Cgroup | None = None,
    on_ready: ReadyCallback | None = None,
    on_stage: StageCallback | None = None,
    ran_command: bool = False,
) -> VMResult:
    """Boot an image once with accel 'kvm' or 'tcg' and return what it gave; qemu is gone after."""
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be 'kvm' or 'tcg' here, not {accel!r}.")
    argv = qemu_argv(
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
        flavour=image.flavour,
        accel=accel,
        machine=machine,
        memory_bytes=memory_bytes,
        smp=smp,
        kernel_bytes=image.kernel_bytes,
        initramfs_bytes=image.initramfs_bytes,
        ran_command=ran_command,
        argv=argv,
    )
    run_qemu(argv, timeout, result, cgroup=cgroup, on_ready=on_ready, on_stage=on_stage)
    return result
