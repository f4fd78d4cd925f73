"""Boot a guest image under qemu, KVM when this host gives it, and make sure qemu never
outlives the call (the launch itself is nsmagic.vm.launch's, the choice nsmagic.vm.accel's)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from nsmagic.cgroups.limits import parse_size
from nsmagic.vm.accel import kvm_verdict
from nsmagic.vm.console import EXIT_RE, ReadyCallback, StageCallback
from nsmagic.vm.images import GuestImage, build_image
from nsmagic.vm.launch import DEFAULT_MACHINES, QEMU, VMResult, launch, qemu_binary

if TYPE_CHECKING:
    from nsmagic.cgroups.base import Cgroup

__all__ = ["DEFAULT_MACHINES", "QEMU", "VMResult", "boot", "kvm_works", "qemu_binary"]


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
    on_stage: StageCallback | None = None,
) -> VMResult:
    """Boot a guest once and return its figures; qemu is killed on every way out.

    flavour 'micro' prints the ready marker and powers off; 'v2' mounts the host root
    read-only and, given a shell `script`, runs it there (tests/vm/guest.py). accel is
    'kvm', 'tcg' or 'auto' (KVM when nsmagic.vm.accel.kvm_verdict() says VMs get it here).

    kernel_args are appended to the guest's kernel command line (the micro guest reads its
    workload from there). With a cgroup (nsmagic.cgroups), qemu runs inside it from its first
    instruction; the caller owns the group and removes it. on_ready(pid) is called the moment
    the ready marker arrives; returning True ends the run there. on_stage(name, seconds)
    reports each boot stage as it is reached (see nsmagic.vm.console.StageCallback).
    """
    image = image or build_image(flavour)
    flavour = image.flavour
    machine = machine or DEFAULT_MACHINES[flavour]
    memory_bytes = parse_size(memory, "memory")
    if accel == "auto":
        accel = kvm_verdict().accel
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
        result = launch(
            image,
            accel=accel,
            machine=machine,
            memory_bytes=memory_bytes,
            smp=smp,
            timeout=timeout,
            results=results,
            extra_args=extra_args,
            kernel_args=kernel_args,
            cgroup=cgroup,
            on_ready=on_ready,
            on_stage=on_stage,
            ran_command=script is not None,
        )
        if results is not None:
            result.stdout = _read(results / "stdout")
            result.stderr = _read(results / "stderr")
            status = _read(results / "status").strip()
            if status.isdigit():
                result.exit_status = int(status)
            elif match := EXIT_RE.search(result.console):
                result.exit_status = int(match.group(1))
        return result
    finally:
        if results is not None:
            shutil.rmtree(results, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


def kvm_works() -> tuple[bool, str]:
    """(True, why) when VMs get KVM here, else (False, why not): kvm_verdict() as a pair."""
    verdict = kvm_verdict()
    return verdict.kvm, verdict.reason
