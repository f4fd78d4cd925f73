"""The comparison's figures from the measured runs: rows with ratios, density estimate, notes."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

import psutil

from nsmagic.cgroups.limits import format_size, parse_size
from nsmagic.vm.disk import DiskFigures
from nsmagic.vm.measure_containers import CONTAINER_STARTS_PER_RUN, ContainerRun
from nsmagic.vm.measure_vm import VMRun
from nsmagic.vm.reference import PUBLISHED_LABEL
from nsmagic.vm.report import ESTIMATE_LABEL, MEASURED, Baseline, Row

FORK_SERVER_ROW = "shared by all containers: fork server (PSS)"
DISK_ROW = "disk for the same program"


def median(values: Iterable[float | int | None]) -> float | None:
    """The median of the known values, or None when none is known."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def fill_figures(out: Baseline, budget: str | int | None = None) -> None:
    """Set out's rows, density estimate and notes from its VM and container runs.

    budget: the RAM the density estimate divides (default: this machine's).
    """
    vms = [r for r in out.vm_runs if r.ok]
    cts = out.container_runs
    out.measured = out.accel is not None  # a VM was booted here (even if a run failed)
    rows = _rows(out, vms, cts)
    if not out.measured:  # no VM here: keep what was measured (the containers') only
        rows = [r for r in rows if r.container is not None]
    # The disk is measured whether or not anything could be started here.
    out.rows = (rows if (vms or cts) else []) + disk_rows(out.disk)
    _fill_density(out, vms, cts, budget)
    _add_notes(out, cts)


def _rows(out: Baseline, vms: list[VMRun], cts: list[ContainerRun]) -> list[Row]:
    emulated = " (emulated: TCG)" if out.emulated else ""
    rows = [
        Row(
            "start: launch -> ready",
            "s",
            median(r.boot_wall_s for r in vms),
            median(v for c in cts for v in c.start_ready_s),
            "VM: qemu launch to the guest's ready marker"
            + emulated
            + "; container: to pid 1 ready",
        ),
        Row(
            "start: end to end",
            "s",
            median(r.total_wall_s for r in vms),
            median(v for c in cts for v in c.start_total_s),
            "VM: launch, ready, sampled, torn down; container: nsmagic.run('pass')",
        ),
        Row(
            "guest kernel uptime at ready",
            "s",
            median(r.guest_uptime_s for r in vms),
            None,
            "the guest's /proc/uptime at the marker; a container boots no kernel",
        ),
        Row(
            "CPU time to start",
            "s",
            median(r.cpu_s for r in vms),
            median(v for c in cts for v in c.start_cpu_s),
            "VM: qemu user+system to ready" + emulated + "; container: its cgroup over run('pass')",
        ),
        Row(
            "host memory (PSS)",
            "bytes",
            median(r.qemu_pss_bytes for r in vms),
            median(c.idle_pss_bytes for c in cts),
            "VM: qemu at ready; container: its pid 1 + idle Python main process",
        ),
        Row(
            "host memory (RSS)",
            "bytes",
            median(r.qemu_rss_bytes for r in vms),
            median(c.idle_rss_bytes for c in cts),
            "shared pages counted in full",
        ),
        Row(
            FORK_SERVER_ROW,
            "bytes",
            None,
            median(c.fork_server_pss_bytes for c in cts),
            "the kernel's fork server and fork helper, started once: charged to no container",
        ),
        Row(
            "cgroup memory (memory.current)",
            "bytes",
            median(r.cgroup_memory_bytes for r in vms),
            median(c.idle_cgroup_memory_bytes for c in cts),
            "Cgroup.stats() on both: VM's group at ready, idle container's group",
        ),
        Row(
            "  of which guest RAM (PSS)",
            "bytes",
            median(r.split.guest_ram_pss for r in vms if r.split),
            None,
            f"the {format_size(out.memory_bytes)} -m mapping: pages the guest touched",
        ),
        Row(
            "  of which TCG code cache (PSS)",
            "bytes",
            median(r.split.tcg_cache_pss for r in vms if r.split),
            None,
            "translated guest code; 0 under KVM",
        ),
        Row(
            "  of which VMM overhead (PSS)",
            "bytes",
            median(r.split.vmm_pss for r in vms if r.split),
            median(c.idle_init_pss_bytes for c in cts),
            "qemu itself; container: its pid 1 (the runtime's part, without the payload)",
        ),
    ]
    if out.workload_run is not None:
        w = out.workload_run
        rows.append(
            Row(
                f"{w.kind} workload: peak cgroup memory",
                "bytes",
                w.vm_peak_bytes,
                w.container_peak_bytes,
                f"same loop for {w.seconds:g} s; VM figure includes its boot",
            )
        )
        rows.append(
            Row(
                f"{w.kind} workload: CPU time",
                "s",
                w.vm_workload_cpu_s,
                w.container_workload_cpu_s,
                "cgroup CPU while the loop ran (VM: from its ready marker)" + emulated,
            )
        )
    return rows


def disk_rows(disk: DiskFigures | None) -> list[Row]:
    """The disk rows: the VM's files against the container image of the same program."""
    if disk is None:
        return []
    image = disk.image
    vm_what = " + ".join(p.what for p in disk.vm) or "no VM here"
    image_what = (
        f"{image.name} ({format_size(image.blobs)} of blobs: compressed layers, config,"
        f" manifest; + {format_size(image.unpacked)} unpacked)" if image else "no image here"
    )
    rows = [
        Row(
            f"{DISK_ROW}: {disk.program}",
            "bytes",
            disk.vm_bytes,
            image.size if image else None,
            f"{MEASURED}. VM: {vm_what}; container: {image_what}",
        )
    ]
    for part in disk.vm:
        note = "a container runs on the host's kernel" if part.what.startswith("kernel") else ""
        rows.append(Row(f"  of which {part.what}", "bytes", part.bytes, None, note))
    if image is not None:
        rows.append(
            Row(
                "  container image: unique to it",
                "bytes",
                None,
                image.unique,
                f"{MEASURED}: nsmagic.images.images() (what removing it frees)",
            )
        )
        rows.append(
            Row(
                "  container image: shared with other images",
                "bytes",
                None,
                image.shared,
                f"{MEASURED}: layers another image of {image.store} uses too",
            )
        )
    return rows


def _fill_density(
    out: Baseline, vms: list[VMRun], cts: list[ContainerRun], budget: str | int | None
) -> None:
    if budget is not None:
        out.density_budget_bytes = parse_size(budget, "budget")
        out.density_budget_source = "the given budget"
    else:
        out.density_budget_bytes = psutil.virtual_memory().total
        out.density_budget_source = "this machine's RAM"
    b = out.density_budget_bytes
    v_pss = median(r.qemu_pss_bytes for r in vms)
    c_pss = median(c.idle_pss_bytes for c in cts)
    if not (v_pss or c_pss):
        return
    # The fork server is paid once, whatever the number of containers.
    server = median(c.fork_server_pss_bytes for c in cts) or 0
    out.density = [
        Row(
            "instances, at the measured idle memory",
            "count",
            b // v_pss if v_pss else None,
            max(b - server, 0) // c_pss if c_pss else None,
            f"{ESTIMATE_LABEL}: budget / PSS (containers: budget less the fork server);"
            " ignores CPU, pids and page sharing limits",
        ),
    ]
    if vms and vms[0].split is not None:
        vmm = median(r.split.vmm_pss + r.split.tcg_cache_pss for r in vms if r.split)
        full_vm = (vmm or 0) + out.memory_bytes
        out.density.append(
            Row(
                "VMs, if each guest touches all its RAM",
                "count",
                b // full_vm,
                None,
                f"{ESTIMATE_LABEL}: budget / (VMM + TCG cache + -m)",
            )
        )


def _add_notes(out: Baseline, cts: list[ContainerRun]) -> None:
    if out.disk is not None:
        out.notes.extend(out.disk.notes)
    if not out.measured:
        out.notes.append(
            f"No VM could be booted here ({out.why_not_measured}): the VM column is empty and "
            f"the VM figures are the reference table's, {PUBLISHED_LABEL}."
        )
    if out.emulated:
        out.notes.append(
            f"No KVM: {out.accel_reason or 'not asked for'}; the VM's times and CPU figures"
            " are therefore far above what KVM would show, and its memory includes a TCG code"
            " cache."
        )
    if not cts:
        return
    server = median(c.fork_server_pss_bytes for c in cts)
    source = " from a warm fork server" if server is not None else ""
    out.notes.append(
        f"container figures: median of {len(cts) * CONTAINER_STARTS_PER_RUN} starts of "
        f"nsmagic.run('pass'){source}, and of one idle Python container per run"
    )
    if server is not None:
        out.notes.append(
            f"shared by all containers: fork server {server / 2**20:.1f} MiB (PSS of the "
            "kernel's fork server and its fork helper); each container is charged only its "
            "own processes"
        )
    elif any(c.idle_pss_bytes is not None for c in cts):
        out.notes.append(
            "no shared fork server here (each container starts from a helper of its own): "
            "a container's memory includes its helper"
        )
