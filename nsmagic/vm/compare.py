"""What %vm_baseline runs: boot real micro VMs and start containers in one call, then compare."""

from __future__ import annotations

from collections.abc import Callable

from nsmagic.cgroups.limits import parse_size
from nsmagic.errors import CapabilityError, NsmagicError
from nsmagic.vm.figures import fill_figures
from nsmagic.vm.instance import cgroup_driver
from nsmagic.vm.loops import DEFAULT_WORKLOAD_MIB, DEFAULT_WORKLOAD_SECONDS, WORKLOADS
from nsmagic.vm.measure_containers import measure_containers
from nsmagic.vm.measure_vm import boot_measured
from nsmagic.vm.reference import load_reference
from nsmagic.vm.report import Baseline
from nsmagic.vm.workload import compare_workload

MACHINES = ("microvm", "q35")

Progress = Callable[[int, int, str], None]  # (step, total steps, what is happening)


def vm_available() -> tuple[bool, str]:
    """(True, what) when a VM can be booted here, else (False, why not). May build the image."""
    from nsmagic.vm.images import build_image
    from nsmagic.vm.qemu import QEMU, qemu_binary

    if not qemu_binary():
        return False, f"{QEMU} is not installed (Debian package qemu-system-x86)"
    try:
        image = build_image("micro")
    except (CapabilityError, OSError) as exc:
        return False, f"no guest kernel: {exc}"
    return True, f"{image.kernel_package} {image.kernel_version}"


def _check(memory: str | int, machine: str, runs: int, workload: str) -> int:
    """The guest's RAM in bytes, once every argument is known to be valid."""
    if machine not in MACHINES:
        raise ValueError(f"machine must be one of {', '.join(MACHINES)}, not {machine!r}.")
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}, not {workload!r}.")
    if runs < 1:
        raise ValueError("runs must be at least 1.")
    return parse_size(memory, "memory")


def _prepare_vm(out: Baseline, accel: str) -> None:
    """Build the guest image and choose the accelerator; out.accel stays None without a VM."""
    from nsmagic.vm.images import build_image
    from nsmagic.vm.qemu import kvm_works

    image = build_image("micro")
    out.kernel = f"{image.kernel_package} {image.kernel_version}"
    out.kernel_bytes, out.initramfs_bytes = image.kernel_bytes, image.initramfs_bytes
    if accel == "auto":
        kvm, out.accel_reason = kvm_works()
        accel = "kvm" if kvm else "tcg"
    out.accel = accel


def _warm_up_containers(out: Baseline) -> bool:
    """Start one unmeasured container; False (with a note) when containers cannot run here.

    The fork server and its warm pool start with the first container of a kernel, a one-off
    cost the per-container figures should not carry.
    """
    from nsmagic.runtime.container import run as run_container

    try:
        warm = run_container("pass")
    except (NsmagicError, OSError) as exc:
        out.notes.append(f"containers could not be started here: {exc}")
        return False
    if not warm.ok:
        out.notes.append(f"containers could not be started here: {warm.describe()}")
    return warm.ok


def baseline(
    memory: str | int = "256M",
    machine: str = "microvm",
    runs: int = 3,
    workload: str = "none",
    *,
    accel: str = "auto",
    budget: str | int | None = None,
    seconds: float = DEFAULT_WORKLOAD_SECONDS,
    mib: int = DEFAULT_WORKLOAD_MIB,
    progress: Progress | None = None,
    timeout: float = 120.0,
) -> Baseline:
    """Boot a real minimal VM `runs` times and start containers in the same call; compare.

    memory: the guest's RAM (-m); machine: 'microvm' or 'q35'; workload: 'none', 'cpu' or
    'memory' (then the same loop also runs once in a VM and in a container, sampled through
    their cgroups); budget: the RAM the density estimate divides (default: this machine's).
    Where no VM can be booted, the result holds the published reference instead, labelled
    "published, not measured on this host" (containers are still measured if they can be).
    """
    memory_bytes = _check(memory, machine, runs, workload)
    report = progress or (lambda step, total, text: None)
    total = 2 + runs * 2 + (1 if workload != "none" else 0)
    step = 0

    def tick(text: str) -> None:
        nonlocal step
        step += 1
        report(min(step, total), total, text)

    out = Baseline(
        measured=False,
        machine=machine,
        memory_bytes=memory_bytes,
        runs=runs,
        workload=workload,
        reference=load_reference(),
    )
    report(0, total, "checking for qemu and a guest kernel")
    ok, why = vm_available()
    tick(why if ok else f"no VM here: {why}")
    if ok:
        _prepare_vm(out, accel)
        tick(f"accelerator: {'KVM' if out.accel == 'kvm' else 'TCG (emulated)'}")
    else:
        out.why_not_measured = why
        tick("using the published reference")

    driver = cgroup_driver()
    out.cgroup_driver = driver.name
    container_ok = _warm_up_containers(out)
    for n in range(runs):
        if out.accel:
            kind = "KVM" if out.accel == "kvm" else "emulated"
            tick(f"booting VM {n + 1}/{runs} ({kind})")
            vm_run = boot_measured(
                memory=memory_bytes, machine=machine, accel=out.accel, timeout=timeout,
                driver=driver,
            )
            out.vm_runs.append(vm_run)
            if not vm_run.ok:
                out.notes.append(f"VM run {n + 1} did not become ready: {vm_run.summary}")
        else:
            tick("no VM to boot")
        tick(f"starting containers {n + 1}/{runs}")
        if container_ok:
            try:
                out.container_runs.append(measure_containers())
            except (NsmagicError, OSError) as exc:
                container_ok = False
                out.notes.append(f"containers could not be measured: {exc}")
    if workload != "none":
        tick(f"running the {workload} workload in a VM and in a container")
        if out.accel and container_ok:
            out.workload_run = compare_workload(workload, seconds, mib, memory_bytes, out.accel)
    fill_figures(out, budget)
    report(total, total, "done")
    return out
