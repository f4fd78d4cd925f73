"""What %vm_baseline runs: boot real micro VMs and start containers in one call, then compare."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from nsmagic.cgroups.limits import format_size, parse_size
from nsmagic.errors import CapabilityError, NsmagicError
from nsmagic.vm.console import StageCallback
from nsmagic.vm.figures import fill_figures
from nsmagic.vm.instance import cgroup_driver
from nsmagic.vm.loops import DEFAULT_WORKLOAD_MIB, DEFAULT_WORKLOAD_SECONDS, WORKLOADS
from nsmagic.vm.measure_containers import measure_containers
from nsmagic.vm.measure_vm import boot_measured
from nsmagic.vm.progress import Progress, ProgressTracker
from nsmagic.vm.reference import load_reference
from nsmagic.vm.report import Baseline
from nsmagic.vm.workload import compare_workload

if TYPE_CHECKING:
    from nsmagic.cgroups.base import CgroupDriver
    from nsmagic.images.api import Image
    from nsmagic.vm.images import GuestImage

MACHINES = ("microvm", "q35")


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


def _prepare_vm(out: Baseline, accel: str) -> GuestImage:
    """Note the guest image and choose the accelerator; out.accel stays None without a VM."""
    from nsmagic.vm.accel import kvm_verdict
    from nsmagic.vm.images import build_image

    image = build_image("micro")
    out.kernel = f"{image.kernel_package} {image.kernel_version}"
    out.kernel_bytes, out.initramfs_bytes = image.kernel_bytes, image.initramfs_bytes
    if accel == "auto":
        verdict = kvm_verdict()
        accel, out.accel_reason = verdict.accel, verdict.reason
        out.qemu_log = verdict.qemu_log if verdict.emulated else ""
    elif accel == "tcg":
        out.accel_reason = "TCG was asked for (--accel tcg), so the VM runs emulated"
    else:
        out.accel_reason = "KVM was asked for (--accel kvm)"
    out.accel = accel
    return image


def _accel_text(out: Baseline) -> str:
    if out.accel == "kvm":
        return "VMs run with KVM"
    return f"no KVM: {out.accel_reason}"


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


def _boot_reporter(track: ProgressTracker, n: int, runs: int) -> StageCallback:
    """Boot stages of VM n (from the console thread) as the tracker's stages of round n."""

    def stage(name: str, at: float) -> None:
        track.reached(name, _boot_stage_text(name, at, n, runs), n)

    return stage


def _boot_stage_text(stage: str, at: float, n: int, runs: int) -> str:
    what = {
        "launched": "qemu started; the guest kernel boots",
        "init": f"init reached {at:.1f} s after launch",
        "ready": f"ready marker {at:.1f} s after launch",
        "sampled": "qemu and its cgroup sampled at the marker",
        "stopped": f"qemu stopped, {at:.1f} s end to end",
    }[stage]
    return f"VM {n}/{runs}: {what}"


def _keep_qemu_log(out: Baseline) -> None:
    """Write qemu's own messages to a file, with one note, when they explain a failure."""
    from nsmagic.vm.images import cache_dir

    failed = [(n, r) for n, r in enumerate(out.vm_runs, 1) if not r.ok]
    logs = [out.qemu_log] if out.qemu_log else []
    logs += [f"-- VM run {n} --\n{r.console}" for n, r in failed]
    if not logs:
        return
    out.qemu_log = "\n".join(logs)
    path = cache_dir() / "qemu-last-baseline.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(out.qemu_log)
    except OSError:
        out.notes.append("qemu's own messages: the qemu_log of the result (%vm_baseline -o)")
        return
    out.qemu_log_path = str(path)
    out.notes.append(f"qemu's own messages: {path}")


def _measure_vm(
    out: Baseline, track: ProgressTracker, n: int, driver: CgroupDriver, timeout: float
) -> None:
    """Boot VM n of out.runs, measured; its stages go to the tracker as they are reached."""
    vm_run = boot_measured(
        memory=out.memory_bytes, machine=out.machine, accel=out.accel, timeout=timeout,
        driver=driver, on_stage=_boot_reporter(track, n, out.runs),
    )
    out.vm_runs.append(vm_run)
    if not vm_run.ok:
        out.notes.append(f"VM run {n} did not become ready: {vm_run.summary}")


def _measure_containers(out: Baseline, track: ProgressTracker, n: int, ok: bool) -> bool:
    """Measure container round n (while containers can run); False once they cannot."""
    if ok:
        track.note(f"containers {n}/{out.runs}: starting and measuring", "containers", n)
        try:
            out.container_runs.append(measure_containers())
        except (NsmagicError, OSError) as exc:
            ok = False
            out.notes.append(f"containers could not be measured: {exc}")
    track.reached("containers", f"containers {n}/{out.runs}: {'' if ok else 'not '}measured", n)
    return ok


def _measure_disk(out: Baseline, guest: GuestImage | None, named: Image | None) -> str:
    """Measure the VM's files and the container images into out.disk; what was measured."""
    from nsmagic.vm.disk import measure_disk
    from nsmagic.vm.images import resolve_versions

    version = guest.busybox_version if guest is not None else None
    if version is None and named is None:
        try:  # no VM here, but the shell's image can still be built and measured
            version = resolve_versions("micro")["busybox_version"]
        except (CapabilityError, OSError) as exc:
            out.notes.append(f"the busybox image could not be built here: {exc}")
    out.disk = disk = measure_disk(guest, version, named)
    said = [f"VM {format_size(disk.vm_bytes)}" if disk.vm_bytes else "no VM disk"]
    said.append(f"container image {format_size(disk.image.size)}" if disk.image else "no image")
    if disk.base is not None:
        said.append(f"a base of {format_size(disk.base.base_bytes)} stored once")
    return "disk measured: " + ", ".join(said)


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
    image: str | None = None,
) -> Baseline:
    """Boot a real minimal VM `runs` times and start containers in the same call; compare.

    memory: the guest's RAM (-m); machine: 'microvm' or 'q35'; workload: 'none', 'cpu' or
    'memory' (then the same loop also runs once in a VM and in a container, sampled through
    their cgroups); budget: the RAM the density estimate divides (default: this machine's).
    Where no VM can be booted, the result holds the published reference instead, labelled
    "published, not measured on this host" (containers are still measured if they can be).
    """
    memory_bytes = _check(memory, machine, runs, workload)
    named = None
    if image:  # a name that is not there fails now, before any VM boots
        from nsmagic.vm.program_images import named_image

        named = named_image(image)
    track = ProgressTracker(runs, workload, progress)
    out = Baseline(
        measured=False,
        machine=machine,
        memory_bytes=memory_bytes,
        runs=runs,
        workload=workload,
        reference=load_reference(),
    )
    track.note("looking for qemu and a guest image")
    ok, why = vm_available()
    guest = None
    if ok:
        track.reached("image", f"guest image ready: {why}")
        guest = _prepare_vm(out, accel)
        track.reached("accelerator", _accel_text(out))
    else:
        out.why_not_measured = why
        track.reached("image", f"no VM here ({why}): the published reference stands in")

    driver = cgroup_driver()
    out.cgroup_driver = driver.name
    track.note("starting a first, unmeasured container", "containers-warm")
    container_ok = _warm_up_containers(out)
    track.reached(
        "containers-warm",
        "containers: the fork server is warm" if container_ok else "containers cannot run here",
    )
    for n in range(1, runs + 1):
        if out.accel:
            _measure_vm(out, track, n, driver, timeout)
        container_ok = _measure_containers(out, track, n, container_ok)
    if workload != "none":
        track.note(f"running the {workload} workload in a VM and in a container", "workload")
        if out.accel and container_ok:
            out.workload_run = compare_workload(workload, seconds, mib, memory_bytes, out.accel)
        track.reached("workload", f"the {workload} workload ran")
    track.note("the container images (built once from Debian's packages) and the VM's files: "
               "measuring their bytes on disk", "disk")
    track.reached("disk", _measure_disk(out, guest, named))
    fill_figures(out, budget)
    _keep_qemu_log(out)
    track.reached("done", f"done in {time.monotonic() - track.started:.1f} s")
    return out
