"""Whether VMs get KVM here or run emulated (TCG), and why in plain words: one answer, given
alike by `nsmagic doctor`, the VM baseline and boot()."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from nsmagic.errors import CapabilityError
from nsmagic.vm.console import kvm_failure
from nsmagic.vm.images import build_image, cached_image
from nsmagic.vm.launch import DEFAULT_MACHINES, QEMU, launch, qemu_binary

EMULATED = "so VMs run emulated (TCG), much slower"
KVM_DEVICE = "/dev/kvm"
PROBE_TIMEOUT_S = 4.0


@dataclass(frozen=True)
class KvmVerdict:
    """Whether VMs get KVM here, why (one sentence for people), and what qemu said about it."""

    kvm: bool
    reason: str
    qemu_log: str = ""  # qemu's own output of the probe boot: kept for whoever asks, not shown
    proven: bool = True  # False: KVM looks usable, but no probe boot has confirmed it yet

    @property
    def accel(self) -> str:
        """The accelerator VMs get here: 'kvm' or 'tcg'."""
        return "kvm" if self.kvm else "tcg"

    @property
    def emulated(self) -> bool:
        """True when VMs run emulated (TCG): their times and CPU figures are not hardware's."""
        return not self.kvm


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            text = handle.read()
    except OSError:
        return set()
    return {
        flag
        for line in text.splitlines()
        if line.startswith("flags")
        for flag in line.partition(":")[2].split()
    }


def host_reason() -> str | None:
    """Why this host cannot give a VM KVM, from its devices and CPU flags alone; None: it may."""
    if not os.path.exists(KVM_DEVICE):
        return (
            "this machine has no /dev/kvm (the KVM module is not loaded, or the device is"
            f" not passed into this container), {EMULATED}"
        )
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return (
            "/dev/kvm is not readable and writable by this user (on Debian, members of the"
            f" kvm group may use it), {EMULATED}"
        )
    if not {"vmx", "svm"} & _cpu_flags():
        return (
            "the CPU offers no hardware virtualisation here (no vmx or svm flag in"
            " /proc/cpuinfo: this machine is itself a virtual machine without nested"
            f" virtualisation), {EMULATED}"
        )
    if not qemu_binary():
        return f"{QEMU} is not installed (Debian package qemu-system-x86), so no VM runs here"
    return None


def _probe(build: bool) -> KvmVerdict:
    """Boot the micro image under KVM once: only its ready marker proves that KVM works."""
    try:
        image = build_image("micro") if build else cached_image("micro")
    except CapabilityError as exc:
        return KvmVerdict(False, f"no guest image to try KVM with ({exc}), {EMULATED}")
    if image is None:
        return KvmVerdict(
            True,
            "/dev/kvm and the CPU's virtualisation are there; a probe boot confirms KVM once"
            " the first VM baseline has built a guest image",
            proven=False,
        )
    result = launch(
        image,
        accel="kvm",
        machine=DEFAULT_MACHINES["micro"],
        memory_bytes=128 * 2**20,
        timeout=PROBE_TIMEOUT_S,
    )
    if result.ready:
        return KvmVerdict(True, "KVM works: a probe guest booted with it", result.console)
    why = kvm_failure(result.console, result.qemu_returncode, result.timed_out)
    return KvmVerdict(
        False,
        f"/dev/kvm is there, but a probe guest did not boot with KVM ({why}), {EMULATED}",
        result.console,
    )


_verdict: KvmVerdict | None = None
_lock = threading.Lock()


def kvm_verdict(*, build: bool = True) -> KvmVerdict:
    """Whether VMs get KVM here and why, decided once per process.

    /dev/kvm and the CPU flags decide when they rule KVM out; otherwise a short probe boot
    does, because on a nested host KVM may fail only once a guest runs (and qemu then pauses
    instead of exiting). build=False never builds a guest image for the probe (the doctor's
    way): without one, the answer is "not yet proven" and is not remembered.
    """
    global _verdict
    with _lock:
        if _verdict is None:
            reason = host_reason()
            verdict = KvmVerdict(False, reason) if reason else _probe(build)
            if not verdict.proven:
                return verdict
            _verdict = verdict
        return _verdict
