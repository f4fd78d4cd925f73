"""One measured boot of the micro guest: in its own cgroup, sampled the moment it is ready."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nsmagic.cgroups.limits import parse_size
from nsmagic.vm.console import StageCallback
from nsmagic.vm.instance import ReadySampler, cgroup_driver, new_vm_group, register_vm
from nsmagic.vm.loops import guest_workload_args
from nsmagic.vm.memory import MemorySplit

if TYPE_CHECKING:
    from nsmagic.cgroups.base import CgroupDriver


@dataclass
class VMRun:
    """One boot of the micro guest, sampled the moment it was ready."""

    ok: bool
    boot_wall_s: float | None  # qemu launch to the ready marker, host clock
    guest_uptime_s: float | None  # the guest kernel's uptime at the marker
    qemu_rss_bytes: int | None
    qemu_pss_bytes: int | None
    cpu_s: float | None  # qemu's user+system CPU to reach the marker
    total_wall_s: float  # launch -> ready -> sampled -> torn down
    cgroup: str | None
    cgroup_memory_bytes: int | None = None  # Cgroup.stats().memory_current at the marker
    cgroup_cpu_s: float | None = None
    split: MemorySplit | None = None
    summary: str = ""
    console: str = ""  # what qemu and the guest printed: the run's log, for whoever asks


def boot_measured(
    *,
    memory: str | int = "256M",
    machine: str = "microvm",
    accel: str = "auto",
    timeout: float = 120.0,
    driver: CgroupDriver | None = None,
    on_stage: StageCallback | None = None,
) -> VMRun:
    """Boot the micro guest once in its own cgroup, sample it at the ready marker, tear it down.

    on_stage(name, seconds since launch) reports the boot's stages (see boot()).
    """
    from nsmagic.runtime.registry import REGISTRY
    from nsmagic.vm.qemu import boot

    memory_bytes = parse_size(memory, "memory")
    group = new_vm_group(driver or cgroup_driver())
    record = register_vm()
    sampler = ReadySampler(group, memory_bytes, record.container_id, stop=True)
    outcome = "not booted"
    try:
        # The guest idles after its marker until the sample is taken, then qemu is killed:
        # a guest that powered off by itself could vanish while smaps is being read.
        result = boot(
            "micro",
            memory=memory_bytes,
            machine=machine,
            accel=accel,
            timeout=timeout,
            kernel_args=guest_workload_args("idle", 60),
            cgroup=group,
            on_ready=sampler,
            on_stage=on_stage,
        )
        outcome = "stopped after its sample" if result.ready else "never ready"
    finally:
        REGISTRY.exited(record.container_id, outcome, None)
        group.remove()
    stats = sampler.stats
    return VMRun(
        ok=result.ready and not result.timed_out,
        boot_wall_s=result.boot_wall_s,
        guest_uptime_s=result.guest_uptime_s,
        qemu_rss_bytes=result.qemu_rss_bytes,
        qemu_pss_bytes=result.qemu_pss_bytes,
        cpu_s=result.qemu_cpu_s,
        total_wall_s=result.total_wall_s,
        cgroup=group.name,
        cgroup_memory_bytes=stats.memory_current if stats else None,
        cgroup_cpu_s=stats.cpu_usage_ns / 1e9 if stats and stats.cpu_usage_ns else None,
        split=sampler.split,
        summary=result.summary(),
        console=result.console,
    )
