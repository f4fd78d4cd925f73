"""A measured virtual-machine baseline beside the containers: boot a real minimal VM with qemu
and start containers in the same run, measure both the same way, and compare.

Both sides are measured on this host, in the same call, with the same code paths where the
kernel allows it: each qemu runs in a cgroup of its own (same driver as the containers,
named nsmagic-<pid>-vm-...) sampled with Cgroup.stats(); host memory is the PSS of the
processes that exist only because of the instance (qemu; a container's supervisor, pid 1 and
payload). qemu's /proc/PID/smaps is split into guest RAM (the -m sized mapping), the TCG code
cache (emulation only) and the rest (VMM overhead).

Where no VM can be booted (no qemu, no guest kernel: Binder) the result carries the published
figures of reference.json instead, labelled "published, not measured on this host".
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

import psutil

from nsmagic.cgroups.limits import format_size, parse_size
from nsmagic.errors import CapabilityError, NsmagicError
from nsmagic.tables import html_table, text_table

WORKLOADS = ("none", "cpu", "memory")
MACHINES = ("microvm", "q35")
PUBLISHED_LABEL = "published, not measured on this host"
ESTIMATE_LABEL = "estimate"
# How long a workload runs, and how much a memory workload writes, unless told otherwise.
DEFAULT_WORKLOAD_SECONDS = 3.0
DEFAULT_WORKLOAD_MIB = 64
SAMPLE_INTERVAL_S = 0.2
# Container starts are a few milliseconds: more of them make the median steadier, at no cost.
CONTAINER_STARTS_PER_RUN = 5

Progress = Callable[[int, int, str], None]  # (step, total steps, what is happening)


# -- the shell loops both sides run ------------------------------------------------------


def workload_script(kind: str, seconds: float, mib: int = DEFAULT_WORKLOAD_MIB) -> str:
    """The /bin/sh text a container runs for a workload: the same loops as the micro guest's init.

    cpu: a busy shell loop for `seconds`; memory: `mib` MiB written into a tmpfs (the
    container's private /tmp, the guest's /tmp), kept for `seconds`.
    """
    if kind == "cpu":
        return f"while :; do :; done &\nsleep {seconds:g}\nkill $!\n"
    if kind == "memory":
        return (
            f"dd if=/dev/zero of=/tmp/fill bs=1048576 count={int(mib)} 2>/dev/null\n"
            f"sleep {seconds:g}\n"
        )
    raise ValueError(f"workload must be 'cpu' or 'memory', not {kind!r}.")


def guest_workload_args(
    kind: str, seconds: float, mib: int = DEFAULT_WORKLOAD_MIB, settle: float = 0.0
) -> str:
    """Kernel command-line words that make the micro guest run a workload after its marker."""
    if kind not in ("cpu", "memory", "idle"):
        raise ValueError(f"guest workload must be 'cpu', 'memory' or 'idle', not {kind!r}.")
    return (
        f"nsmagic_workload={kind} nsmagic_seconds={seconds:g} nsmagic_mib={int(mib)}"
        f" nsmagic_settle={settle:g}"
    )


# -- qemu's memory, by what it is for ----------------------------------------------------

_SMAPS_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+)\s+(\S{4})\s+\S+\s+\S+\s+(\d+)\s*(.*)$")


@dataclass
class MemorySplit:
    """qemu's resident memory by purpose (bytes), from /proc/PID/smaps."""

    guest_ram_rss: int = 0  # the -m sized anonymous mapping: what the guest has touched
    guest_ram_pss: int = 0
    tcg_cache_rss: int = 0  # translated code (TCG only): executable anonymous or tcg-jit memfd
    tcg_cache_pss: int = 0
    vmm_rss: int = 0  # everything else: qemu's binary, libraries, heap, device state, stacks
    vmm_pss: int = 0
    guest_ram_found: bool = False

    @property
    def total_pss(self) -> int:
        """PSS of the whole qemu process."""
        return self.guest_ram_pss + self.tcg_cache_pss + self.vmm_pss


def split_smaps(text: str, guest_ram_bytes: int) -> MemorySplit:
    """Split smaps text into guest RAM, TCG code cache and VMM overhead (see MemorySplit)."""
    mappings: list[dict[str, Any]] = []
    for line in text.splitlines():
        header = _SMAPS_HEADER.match(line)
        if header:
            start, end = int(header.group(1), 16), int(header.group(2), 16)
            mappings.append(
                {
                    "size": end - start,
                    "perms": header.group(3),
                    "inode": int(header.group(4)),
                    "path": header.group(5).strip(),
                    "rss": 0,
                    "pss": 0,
                }
            )
        elif mappings and line.startswith(("Rss:", "Pss:")):
            key = "rss" if line.startswith("Rss:") else "pss"
            mappings[-1][key] = int(line.split()[1]) * 1024
    split = MemorySplit()

    def anonymous(m: dict[str, Any]) -> bool:
        return m["inode"] == 0 and (not m["path"] or m["path"].startswith("[anon"))

    # Guest RAM is one anonymous read-write mapping of exactly the -m size (the largest
    # touched one if, oddly, several match).
    candidates = [
        m for m in mappings if anonymous(m) and m["size"] == guest_ram_bytes and "w" in m["perms"]
    ]
    guest = max(candidates, key=lambda m: m["rss"]) if candidates else None
    for m in mappings:
        if m is guest:
            split.guest_ram_rss += m["rss"]
            split.guest_ram_pss += m["pss"]
            split.guest_ram_found = True
        elif "tcg" in m["path"] or (anonymous(m) and "x" in m["perms"]):
            split.tcg_cache_rss += m["rss"]
            split.tcg_cache_pss += m["pss"]
        else:
            split.vmm_rss += m["rss"]
            split.vmm_pss += m["pss"]
    return split


def read_split(pid: int, guest_ram_bytes: int) -> MemorySplit | None:
    """MemorySplit of a running qemu, or None when its smaps cannot be read."""
    try:
        return split_smaps(Path(f"/proc/{pid}/smaps").read_text(), guest_ram_bytes)
    except OSError:
        return None


def _pss(processes: list[psutil.Process]) -> tuple[int, int]:
    """(PSS, RSS) summed over processes, skipping those that vanished."""
    pss = rss = 0
    for process in processes:
        try:
            info = process.memory_full_info()
        except (psutil.Error, OSError):
            continue
        pss += getattr(info, "pss", info.rss)
        rss += info.rss
    return pss, rss


# -- one VM boot, one container start ----------------------------------------------------


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


@dataclass
class ContainerRun:
    """Container figures from one round: starts of nsmagic.run('pass') and one idle container."""

    start_total_s: list[float]  # nsmagic.run("pass") end to end
    start_ready_s: list[float]  # to the "ready" event (pid 1 set up, payload about to run)
    start_cpu_s: list[float]  # the container cgroup's CPU time over a whole run("pass")
    idle_pss_bytes: int | None = None  # supervisor + pid 1 + payload, idle Python cell
    idle_rss_bytes: int | None = None
    idle_payload_pss_bytes: int | None = None  # pid 1 + payload only (inside the container)
    idle_cgroup_memory_bytes: int | None = None
    cgroup_driver: str | None = None


@dataclass
class WorkloadRun:
    """The same workload in the VM and in a container, sampled through their cgroups."""

    kind: str
    seconds: float
    mib: int
    vm_samples: list[tuple[float, float, int]]  # (s since launch, CPU s, memory bytes)
    container_samples: list[tuple[float, float, int]]
    vm_ok: bool
    container_ok: bool
    vm_ready_s: float | None = None  # when the guest was ready (its workload starts there)

    @staticmethod
    def _peak(samples: list[tuple[float, float, int]]) -> int | None:
        return max((s[2] for s in samples), default=None)

    @staticmethod
    def _cpu(samples: list[tuple[float, float, int]]) -> float | None:
        return samples[-1][1] - samples[0][1] if len(samples) > 1 else None

    @property
    def vm_workload_cpu_s(self) -> float | None:
        """CPU time of the VM's cgroup from its ready marker on: the workload, not the boot."""
        if self.vm_ready_s is None:
            return None
        return self._cpu([s for s in self.vm_samples if s[0] >= self.vm_ready_s])

    @property
    def container_workload_cpu_s(self) -> float | None:
        """CPU time of the container's cgroup while it ran the workload."""
        return self._cpu(self.container_samples)

    @property
    def vm_peak_bytes(self) -> int | None:
        """Highest cgroup memory of the VM while it booted and ran the workload."""
        return self._peak(self.vm_samples)

    @property
    def container_peak_bytes(self) -> int | None:
        """Highest cgroup memory of the container while it ran the workload."""
        return self._peak(self.container_samples)


@dataclass
class Row:
    """One line of the comparison: a figure for the VM and for the container, and their ratio."""

    figure: str
    unit: str  # "s", "ms", "bytes", "count"
    vm: float | None
    container: float | None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """VM / container, when both are known and the container's is not zero."""
        if self.vm is None or self.container is None or self.container == 0:
            return None
        return self.vm / self.container

    def format(self, value: float | None) -> str:
        """A value in this row's unit, for people."""
        if value is None:
            return "n/a"
        if self.unit == "bytes":
            return format_size(int(value))
        if self.unit == "s":
            return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
        if self.unit == "MiB":
            return f"{value:.1f} MiB"
        if self.unit == "count":
            return f"{int(value):,}"
        return f"{value:g} {self.unit}"

    def format_ratio(self) -> str:
        """'12.3x' or why there is none."""
        ratio = self.ratio
        if ratio is None:
            return "n/a" if self.container != 0 else "n/a (container: 0)"
        return f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:.1f}x"


# -- the result --------------------------------------------------------------------------


@dataclass
class Baseline:
    """What nsmagic.vm.baseline() found: measured here, or the published reference."""

    measured: bool  # False: no VM here; only the published reference (and containers) shown
    accel: str | None = None  # "kvm" or "tcg"
    accel_reason: str = ""
    machine: str | None = None
    memory_bytes: int = 0
    runs: int = 0
    workload: str = "none"
    kernel: str = ""  # package and version of the guest kernel
    kernel_bytes: int = 0
    initramfs_bytes: int = 0
    vm_runs: list[VMRun] = field(default_factory=list)
    container_runs: list[ContainerRun] = field(default_factory=list)
    workload_run: WorkloadRun | None = None
    rows: list[Row] = field(default_factory=list)
    density: list[Row] = field(default_factory=list)
    density_budget_bytes: int = 0
    density_budget_source: str = ""
    reference: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    why_not_measured: str = ""
    cgroup_driver: str | None = None

    @property
    def emulated(self) -> bool:
        """True when the VM's CPU was emulated (TCG): its times are not what hardware shows."""
        return self.accel == "tcg"

    @property
    def label(self) -> str:
        """What the VM figures are: measured (with KVM, or emulated), or published."""
        if not self.measured:
            return PUBLISHED_LABEL
        if self.emulated:
            return "measured on this host; VM emulated (TCG), not hardware-accelerated"
        return "measured on this host with KVM"

    def row(self, figure: str) -> Row | None:
        """The row whose figure starts with this text."""
        return next((r for r in self.rows if r.figure.startswith(figure)), None)

    # -- text and HTML ----------------------------------------------------------------------
    def title(self) -> str:
        """One line: what was compared, and how it was measured."""
        if not self.measured:
            return f"VM vs container: VM figures {PUBLISHED_LABEL} ({self.why_not_measured})"
        accel = "emulated (TCG)" if self.emulated else "KVM"
        return (
            f"VM vs container, {self.label}: {self.machine} guest, "
            f"{format_size(self.memory_bytes)}, {accel}, median of {self.runs} run(s)"
        )

    def _table(self, rows: list[Row]) -> list[list[str]]:
        vm_head = "VM (emulated)" if self.emulated else "VM"
        lines = [["figure", vm_head, "container", "VM / container", "note"]]
        for r in rows:
            ratio = r.format_ratio()
            lines.append([r.figure, r.format(r.vm), r.format(r.container), ratio, r.note])
        return lines

    def reference_rows(self) -> list[list[str]]:
        """The published figures as table lines: system, what, value, source."""
        lines = [["system", "figure", "published value", "source"]]
        for f in self.reference.get("figures", []):
            if f.get("value") is None:
                value = f"(no figure) {f.get('statement', '')}".strip()
            else:
                bound = "" if f.get("bound") in ("=", None) else f"{f['bound']} "
                value = f"{bound}{f['value']:g} {f['unit']}"
            what = f["what"] if len(f["what"]) <= 70 else f["what"][:67] + "..."
            lines.append([f["system"], what, value, f.get("cite") or f["source"]])
        return lines

    def text(self) -> str:
        """The whole comparison as plain text."""
        out = [self.title()]
        if self.rows:
            out.append(_text_table(self._table(self.rows)))
        if self.density:
            budget = format_size(self.density_budget_bytes)
            out.append(
                f"Density ({ESTIMATE_LABEL}): how many fit in {budget}"
                f" ({self.density_budget_source}), from the measured memory"
            )
            out.append(_text_table(self._table(self.density)))
        if not self.measured or self.reference:
            out.append(f"Reference figures ({PUBLISHED_LABEL}):")
            out.append(_text_table(self.reference_rows()))
        out.extend(f"note: {n}" for n in self.notes)
        return "\n".join(out)

    def _repr_html_(self) -> str:
        parts = [f"<h4>{escape(self.title())}</h4>"]
        if self.rows:
            parts.append(_html_table(self._table(self.rows)))
        if self.density:
            parts.append(
                f"<p><b>Density ({ESTIMATE_LABEL})</b>: how many fit in "
                f"{escape(format_size(self.density_budget_bytes))} "
                f"({escape(self.density_budget_source)}), from the measured memory</p>"
            )
            parts.append(_html_table(self._table(self.density)))
        if not self.measured or self.reference:
            parts.append(f"<p><b>Reference figures: {PUBLISHED_LABEL}</b></p>")
            parts.append(_html_table(self.reference_rows()))
        if self.notes:
            parts.append("<ul>" + "".join(f"<li>{escape(n)}</li>" for n in self.notes) + "</ul>")
        return "\n".join(parts)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())

    def as_dict(self) -> dict[str, Any]:
        """Plain data (rows with ratios) for JSON."""

        def rows(rs: list[Row]) -> list[dict[str, Any]]:
            return [
                dict(
                    figure=r.figure,
                    unit=r.unit,
                    vm=r.vm,
                    container=r.container,
                    ratio=r.ratio,
                    note=r.note,
                )
                for r in rs
            ]

        return {
            "label": self.label,
            "measured": self.measured,
            "accel": self.accel,
            "machine": self.machine,
            "memory_bytes": self.memory_bytes,
            "runs": self.runs,
            "rows": rows(self.rows),
            "density": rows(self.density),
            "density_label": ESTIMATE_LABEL,
            "notes": self.notes,
        }


def _text_table(lines: list[list[str]]) -> str:
    return text_table(lines[0], lines[1:], rule=True)


def _html_table(lines: list[list[str]]) -> str:
    return html_table(lines[0], lines[1:])


# -- the published reference -------------------------------------------------------------


def load_reference() -> dict[str, Any]:
    """The published figures (reference.json), each with its source and what was checked."""
    text = resources.files("nsmagic.vm").joinpath("reference.json").read_text()
    return json.loads(text)


# -- running it --------------------------------------------------------------------------


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


def _driver():  # noqa: ANN202 - a CgroupDriver, imported lazily
    from nsmagic.cgroups import detect_driver

    return detect_driver()


class _VMSampler:
    """on_ready for boot(): registers the VM, samples qemu and its cgroup the moment it is ready."""

    def __init__(self, group, memory_bytes: int, record_id: str, stop: bool) -> None:  # noqa: ANN001
        self.group = group
        self.memory_bytes = memory_bytes
        self.record_id = record_id
        self.stop = stop
        self.split: MemorySplit | None = None
        self.stats = None
        self.pid: int | None = None
        self.ready_at: float | None = None  # time.monotonic() at the marker

    def __call__(self, pid: int) -> bool:
        from nsmagic.runtime.registry import REGISTRY

        self.pid = pid
        self.ready_at = time.monotonic()
        self.split = read_split(pid, self.memory_bytes)
        try:
            self.stats = self.group.stats()
        except (NsmagicError, OSError):
            self.stats = None
        REGISTRY.started(self.record_id, pid, self.group.name, self.group.driver)
        return self.stop


def _register_vm(memory_bytes: int):  # noqa: ANN202
    from nsmagic.cgroups.limits import Limits
    from nsmagic.runtime.registry import REGISTRY, ContainerRecord

    record = ContainerRecord(f"vm-{uuid.uuid4().hex[:12]}", "vm", Limits(), frozenset())
    REGISTRY.add(record)
    return record


def _vm_group(driver):  # noqa: ANN001, ANN202
    return driver.create(f"vm-{uuid.uuid4().hex[:8]}")


def boot_measured(
    *,
    memory: str | int = "256M",
    machine: str = "microvm",
    accel: str = "auto",
    timeout: float = 120.0,
    driver=None,  # noqa: ANN001
) -> VMRun:
    """Boot the micro guest once in its own cgroup, sample it at the ready marker, tear it down."""
    from nsmagic.runtime.registry import REGISTRY
    from nsmagic.vm.qemu import boot

    memory_bytes = parse_size(memory, "memory")
    driver = driver or _driver()
    group = _vm_group(driver)
    record = _register_vm(memory_bytes)
    sampler = _VMSampler(group, memory_bytes, record.container_id, stop=True)
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
    )


def measure_containers(starts: int = CONTAINER_STARTS_PER_RUN) -> ContainerRun:
    """Start nsmagic.run('pass') `starts` times, then one idle Python container, and measure."""
    from nsmagic.runtime.container import Container, run

    totals, readies, cpus = [], [], []
    driver_name = None
    for _ in range(starts):
        result = run("pass")
        if not result.ok:
            raise NsmagicError(f"a container running 'pass' failed: {result.describe()}")
        totals.append(result.timings["total_s"])
        if "ready_s" in result.timings:
            readies.append(result.timings["ready_s"])
        if result.stats and result.stats.get("cpu_usage_ns") is not None:
            cpus.append(result.stats["cpu_usage_ns"] / 1e9)
        driver_name = result.cgroup_driver
    out = ContainerRun(totals, readies, cpus, cgroup_driver=driver_name)
    _measure_idle_container(Container(), out)
    return out


def _measure_idle_container(container, out: ContainerRun) -> None:  # noqa: ANN001
    """An idle Python cell: PSS of its supervisor, pid 1 and payload, and its cgroup's memory."""
    waiter = threading.Thread(target=container.wait, kwargs={"timeout": 30}, daemon=True)
    container.start("import time\ntime.sleep(30)\n")
    waiter.start()
    try:
        deadline = time.monotonic() + 10
        init = None
        while time.monotonic() < deadline:
            pid = container.result.pid
            if pid and "ready_s" in container.result.timings:
                try:
                    init = psutil.Process(pid)
                    if init.children():
                        break
                except psutil.Error:
                    pass
            time.sleep(0.01)
        if init is None:
            return
        time.sleep(0.2)  # let the payload settle into its sleep
        inside = [init, *init.children(recursive=True)]
        try:
            supervisor = [init.parent()] if init.parent() else []
        except psutil.Error:
            supervisor = []
        out.idle_payload_pss_bytes, _ = _pss(inside)
        out.idle_pss_bytes, out.idle_rss_bytes = _pss(inside + supervisor)
        if container.result.cgroup and container.result.cgroup_driver != "rlimit":
            try:
                stats = _driver().open(container.result.cgroup).stats()
                out.idle_cgroup_memory_bytes = stats.memory_current
            except (KeyError, NsmagicError, OSError):
                pass
    finally:
        container.send_signal(9)
        waiter.join(timeout=10)
        container.close()


# -- workloads, for the comparison and for the dashboard ---------------------------------


class VMHandle:
    """A micro VM running a workload in the background, in its own cgroup (see start_vm)."""

    def __init__(
        self,
        kind: str,
        seconds: float,
        mib: int,
        memory: str | int,
        accel: str,
        machine: str = "microvm",
        settle: float = 0.0,
    ) -> None:
        from nsmagic.runtime.registry import REGISTRY
        from nsmagic.vm.qemu import boot

        self.kind, self.seconds, self.mib = kind, seconds, mib
        self.memory_bytes = parse_size(memory, "memory")
        driver = _driver()
        self.group = _vm_group(driver)
        self.cgroup_name: str = self.group.name  # what a monitor samples (driver.open(name))
        self.cgroup_driver: str = self.group.driver
        self.record = _register_vm(self.memory_bytes)
        self.record_id = self.record.container_id
        self.result = None
        self.error: BaseException | None = None
        self.started_at = time.monotonic()
        sampler = _VMSampler(self.group, self.memory_bytes, self.record_id, stop=False)
        self.sampler = sampler
        args = guest_workload_args(kind, seconds, mib, settle)
        timeout = 120.0 + seconds + settle

        def body() -> None:
            outcome = "not booted"
            try:
                self.result = boot(
                    "micro",
                    memory=self.memory_bytes,
                    machine=machine,
                    accel=accel,
                    timeout=timeout,
                    kernel_args=args,
                    cgroup=self.group,
                    on_ready=sampler,
                )
                outcome = "workload done" if self.done_marker_seen else "stopped"
            except BaseException as exc:  # noqa: BLE001 - handed to wait()
                self.error = exc
                outcome = f"failed: {exc}"
            finally:
                REGISTRY.exited(self.record_id, outcome, None)
                try:
                    self.group.remove()
                except (NsmagicError, OSError) as exc:
                    self.error = self.error or exc

        self._thread = threading.Thread(target=body, name="nsmagic-vm-workload", daemon=True)
        self._thread.start()

    @property
    def done_marker_seen(self) -> bool:
        """The guest said its workload finished."""
        from nsmagic.vm.images import WORKLOAD_DONE_MARKER

        return bool(self.result and WORKLOAD_DONE_MARKER in self.result.console)

    @property
    def running(self) -> bool:
        """qemu is still running (or starting)."""
        return self._thread.is_alive()

    def stats(self):  # noqa: ANN201 - CgroupStats, the containers' code path
        """Sample the VM's cgroup now."""
        return self.group.stats()

    def stop(self) -> None:
        """Kill qemu (everything in the VM's cgroup); wait() then returns soon."""
        try:
            self.group.kill()
        except (NsmagicError, OSError):
            pass

    def wait(self, timeout: float | None = None):  # noqa: ANN201 - VMResult
        """Wait for the guest to finish; Ctrl-C stops it. Returns the VMResult."""
        try:
            self._thread.join(timeout)
        except KeyboardInterrupt:
            self.stop()
            self._thread.join(10)
            raise
        if self.error is not None:
            raise self.error
        return self.result


def start_vm(
    kind: str = "cpu",
    seconds: float = DEFAULT_WORKLOAD_SECONDS,
    mib: int = DEFAULT_WORKLOAD_MIB,
    memory: str | int = "256M",
    accel: str = "auto",
    settle: float = 0.0,
) -> VMHandle:
    """Boot the micro guest in the background running a workload ('cpu', 'memory', 'idle').

    The VM sits in its own cgroup (handle.cgroup_name, same driver as containers) and in
    nsmagic.runtime.registry.REGISTRY as a record named "vm", so a monitor samples it next to
    the containers. It powers off after `seconds`; handle.stop() ends it sooner.
    """
    return VMHandle(kind, seconds, mib, memory, accel, settle=settle)


def _sample_until(stats, done, started: float) -> list[tuple[float, float, int]]:  # noqa: ANN001
    samples: list[tuple[float, float, int]] = []
    while True:
        running = not done()
        try:
            s = stats()
        except (NsmagicError, OSError, KeyError):
            s = None
        # A sample taken once it ended may read a removed group (zeros): keep only those
        # taken while it ran, and never a counter going backwards.
        if not running:
            return samples
        if s is not None:
            cpu = (s.cpu_usage_ns or 0) / 1e9
            if not samples or cpu >= samples[-1][1]:
                samples.append((time.monotonic() - started, cpu, s.memory_current or 0))
        time.sleep(SAMPLE_INTERVAL_S)


def compare_workload(
    kind: str,
    seconds: float = DEFAULT_WORKLOAD_SECONDS,
    mib: int = DEFAULT_WORKLOAD_MIB,
    memory: str | int = "256M",
    accel: str = "auto",
) -> WorkloadRun:
    """Run the same workload in a VM and in a container, sampling both cgroups over time."""
    from nsmagic.runtime.container import Container

    handle = start_vm(kind, seconds, mib, memory, accel)
    vm_samples = _sample_until(handle.stats, lambda: not handle.running, handle.started_at)
    try:
        handle.wait()
    except (NsmagicError, OSError):
        pass
    vm_ok = handle.done_marker_seen

    container = Container()
    started = time.monotonic()
    container.start(workload_script(kind, seconds, mib), kind="shell")
    waiter = threading.Thread(target=container.wait, kwargs={"timeout": seconds + 60}, daemon=True)
    waiter.start()
    driver = _driver()
    group: list = []

    def stats():  # noqa: ANN202
        if not group:
            if not container.result.cgroup:
                raise KeyError("not started yet")
            group.append(driver.open(container.result.cgroup))
        return group[0].stats()

    try:
        container_samples = _sample_until(stats, lambda: not waiter.is_alive(), started)
    finally:
        waiter.join(timeout=seconds + 60)
        container.close()
    ready = handle.sampler.ready_at
    return WorkloadRun(
        kind,
        seconds,
        mib,
        vm_samples,
        container_samples,
        vm_ok,
        container.result.ok,
        vm_ready_s=ready - handle.started_at if ready is not None else None,
    )


# -- the whole comparison ----------------------------------------------------------------


def _median(values: list[float | int | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


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
    if machine not in MACHINES:
        raise ValueError(f"machine must be one of {', '.join(MACHINES)}, not {machine!r}.")
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}, not {workload!r}.")
    if runs < 1:
        raise ValueError("runs must be at least 1.")
    memory_bytes = parse_size(memory, "memory")
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
        from nsmagic.vm.images import build_image
        from nsmagic.vm.qemu import kvm_works

        image = build_image("micro")
        out.kernel = f"{image.kernel_package} {image.kernel_version}"
        out.kernel_bytes, out.initramfs_bytes = image.kernel_bytes, image.initramfs_bytes
        if accel == "auto":
            kvm, out.accel_reason = kvm_works()
            accel = "kvm" if kvm else "tcg"
        out.accel = accel
        tick(f"accelerator: {'KVM' if accel == 'kvm' else 'TCG (emulated)'}")
    else:
        out.why_not_measured = why
        tick("using the published reference")

    driver = _driver()
    out.cgroup_driver = driver.name
    # One unmeasured start first: the fork server and its warm pool start with the first
    # container of a kernel, a one-off cost the per-container figures should not carry.
    try:
        from nsmagic.runtime.container import run as run_container

        warm = run_container("pass")
        container_ok = warm.ok
        if not warm.ok:
            out.notes.append(f"containers could not be started here: {warm.describe()}")
    except (NsmagicError, OSError) as exc:
        container_ok = False
        out.notes.append(f"containers could not be started here: {exc}")
    for n in range(runs):
        if out.accel:
            tick(f"booting VM {n + 1}/{runs} ({'KVM' if accel == 'kvm' else 'emulated'})")
            vm_run = boot_measured(
                memory=memory_bytes, machine=machine, accel=accel, timeout=timeout, driver=driver
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
            out.workload_run = compare_workload(workload, seconds, mib, memory_bytes, accel)
    _fill_rows(out, budget)
    report(total, total, "done")
    return out


def _fill_rows(out: Baseline, budget: str | int | None) -> None:
    vms = [r for r in out.vm_runs if r.ok]
    cts = out.container_runs
    out.measured = out.accel is not None  # a VM was booted here (even if a run failed)
    emulated = " (emulated: TCG)" if out.emulated else ""

    def med(values):  # noqa: ANN001, ANN202
        return _median(list(values))

    c_ready = med(v for c in cts for v in c.start_ready_s)
    c_total = med(v for c in cts for v in c.start_total_s)
    c_cpu = med(v for c in cts for v in c.start_cpu_s)
    c_pss = med(c.idle_pss_bytes for c in cts)
    c_inside = med(c.idle_payload_pss_bytes for c in cts)
    c_cgroup = med(c.idle_cgroup_memory_bytes for c in cts)
    v_pss = med(r.qemu_pss_bytes for r in vms)
    rows = [
        Row(
            "start: launch -> ready",
            "s",
            med(r.boot_wall_s for r in vms),
            c_ready,
            "VM: qemu launch to the guest's ready marker"
            + emulated
            + "; container: to pid 1 ready",
        ),
        Row(
            "start: end to end",
            "s",
            med(r.total_wall_s for r in vms),
            c_total,
            "VM: launch, ready, sampled, torn down; container: nsmagic.run('pass')",
        ),
        Row(
            "guest kernel uptime at ready",
            "s",
            med(r.guest_uptime_s for r in vms),
            None,
            "the guest's /proc/uptime at the marker; a container boots no kernel",
        ),
        Row(
            "CPU time to start",
            "s",
            med(r.cpu_s for r in vms),
            c_cpu,
            "VM: qemu user+system to ready" + emulated + "; container: its cgroup over run('pass')",
        ),
        Row(
            "host memory (PSS)",
            "bytes",
            v_pss,
            c_pss,
            "VM: qemu at ready; container: supervisor + pid 1 + idle Python payload",
        ),
        Row(
            "host memory (RSS)",
            "bytes",
            med(r.qemu_rss_bytes for r in vms),
            med(c.idle_rss_bytes for c in cts),
            "shared pages counted in full",
        ),
        Row(
            "cgroup memory (memory.current)",
            "bytes",
            med(r.cgroup_memory_bytes for r in vms),
            c_cgroup,
            "Cgroup.stats() on both: VM's group at ready, idle container's group",
        ),
        Row(
            "  of which guest RAM (PSS)",
            "bytes",
            med(r.split.guest_ram_pss for r in vms if r.split),
            None,
            f"the {format_size(out.memory_bytes)} -m mapping: pages the guest touched",
        ),
        Row(
            "  of which TCG code cache (PSS)",
            "bytes",
            med(r.split.tcg_cache_pss for r in vms if r.split),
            None,
            "translated guest code; 0 under KVM",
        ),
        Row(
            "  of which VMM overhead (PSS)",
            "bytes",
            med(r.split.vmm_pss for r in vms if r.split),
            c_inside,
            "qemu itself; container: pid 1 + payload only (no supervisor)",
        ),
        Row(
            "image size (kernel + initramfs)",
            "bytes",
            (out.kernel_bytes + out.initramfs_bytes) or None,
            0,
            f"{out.kernel + '; ' if out.kernel else ''}the container shares the host's root"
            " filesystem",
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
    if not out.measured:  # no VM here: keep what was measured (the containers') only
        rows = [r for r in rows if r.container is not None]
    out.rows = rows if (vms or cts) else []

    if budget is not None:
        out.density_budget_bytes = parse_size(budget, "budget")
        out.density_budget_source = "the given budget"
    else:
        out.density_budget_bytes = psutil.virtual_memory().total
        out.density_budget_source = "this machine's RAM"
    full_vm = None
    if vms and vms[0].split is not None:
        vmm = med(r.split.vmm_pss + r.split.tcg_cache_pss for r in vms if r.split)
        full_vm = (vmm or 0) + out.memory_bytes
    b = out.density_budget_bytes
    if v_pss or c_pss:
        out.density = [
            Row(
                "instances, at the measured idle memory",
                "count",
                b // v_pss if v_pss else None,
                b // c_pss if c_pss else None,
                f"{ESTIMATE_LABEL}: budget / PSS; ignores CPU, pids and page sharing limits",
            ),
        ]
        if full_vm:
            out.density.append(
                Row(
                    "VMs, if each guest touches all its RAM",
                    "count",
                    b // full_vm,
                    None,
                    f"{ESTIMATE_LABEL}: budget / (VMM + TCG cache + -m)",
                )
            )
    if not out.measured and out.accel is None:
        out.notes.append(
            f"No VM could be booted here ({out.why_not_measured}): the VM column is empty and "
            f"the VM figures are the reference table's, {PUBLISHED_LABEL}."
        )
    if out.emulated:
        out.notes.append(
            "KVM is not usable here (" + (out.accel_reason or "probe failed") + "): the VM's "
            "CPU is emulated (TCG), so its times and CPU figures are far above what KVM "
            "would show, and its memory includes a TCG code cache."
        )
    if cts:
        out.notes.append(
            f"container figures: median of {len(cts) * CONTAINER_STARTS_PER_RUN} starts of "
            "nsmagic.run('pass') from a warm fork server, and of one idle Python container "
            "per run"
        )


class _CallableModule(types.ModuleType):
    """This module is also the function: nsmagic.vm.baseline(...) runs baseline(...)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Baseline:
        return baseline(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
