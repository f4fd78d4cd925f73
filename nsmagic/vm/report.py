"""The comparison's result: rows of VM and container figures with their ratio, as text and HTML."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING, Any

from nsmagic.cgroups.limits import format_size
from nsmagic.tables import html_table, text_table
from nsmagic.vm.reference import PUBLISHED_LABEL, reference_lines

if TYPE_CHECKING:
    from nsmagic.vm.disk import DiskFigures
    from nsmagic.vm.measure_containers import ContainerRun
    from nsmagic.vm.measure_vm import VMRun
    from nsmagic.vm.workload import WorkloadRun

ESTIMATE_LABEL = "estimate"
MEASURED = "measured, bytes on disk"


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
            return "n/a (container: 0)" if self.vm is not None and self.container == 0 else "n/a"
        return f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:.1f}x"



@dataclass
class Baseline:
    """What nsmagic.vm.baseline() found: measured here, or the published reference."""

    measured: bool  # False: no VM here; only the published reference (and containers) shown
    accel: str | None = None  # "kvm" or "tcg"
    accel_reason: str = ""  # why KVM is (not) used: nsmagic.vm.accel's words, as the doctor's
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
    disk: DiskFigures | None = None  # the VM's files and the container images, measured
    rows: list[Row] = field(default_factory=list)
    density: list[Row] = field(default_factory=list)
    density_budget_bytes: int = 0
    density_budget_source: str = ""
    reference: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    why_not_measured: str = ""
    cgroup_driver: str | None = None
    qemu_log: str = ""  # qemu's own messages when they explain a failure; never in the report
    qemu_log_path: str | None = None  # the same, written to a file (a note names it)

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
        # The label already says how the VM ran: said once, not again after the machine.
        return (
            f"VM vs container, {self.label}: {self.machine} guest, "
            f"{format_size(self.memory_bytes)}, median of {self.runs} run(s)"
        )

    def _table(self, rows: list[Row]) -> list[list[str]]:
        vm_head = "VM (emulated)" if self.emulated else "VM"
        lines = [["figure", vm_head, "container", "VM / container", "note"]]
        for r in rows:
            ratio = r.format_ratio()
            lines.append([r.figure, r.format(r.vm), r.format(r.container), ratio, r.note])
        return lines

    @property
    def disk_sentence(self) -> str:
        """The course's sentence: the container image against the VM's disk, and a base
        stored once ("" when nothing of the disk could be measured)."""
        return self.disk.sentence() if self.disk is not None else ""

    def base_rows(self) -> list[list[str]]:
        """Two images on one base as table lines: image, size, shared, unique, layers; then
        what the store holds for both."""
        base = self.disk.base if self.disk is not None else None
        if base is None:
            return []
        lines = [["image", "size", "shared", "unique", "layers"]]
        for i in base.images:
            sizes = (i.size, i.shared, i.unique)
            lines.append([i.name, *(format_size(v) for v in sizes), str(i.layers)])
        lines.append(["stored for both (each byte once)", format_size(base.stored_bytes),
                      format_size(base.base_bytes), "", ""])
        lines.append(["their sizes added up", format_size(base.sum_of_sizes), "", "", ""])
        return lines

    def _base_title(self) -> str:
        assert self.disk is not None and self.disk.base is not None
        store = self.disk.base.images[0].store
        return f"Two images on one base ({MEASURED}, in the store {store}): the base once"

    def reference_rows(self) -> list[list[str]]:
        """The published figures as table lines: system, what, value, source."""
        return reference_lines(self.reference)

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
        if self.base_rows():
            out.append(self._base_title())
            out.append(_text_table(self.base_rows()))
        if self.disk_sentence:
            out.append(self.disk_sentence)
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
        if self.base_rows():
            parts.append(f"<p><b>{escape(self._base_title())}</b></p>")
            parts.append(_html_table(self.base_rows()))
        if self.disk_sentence:
            parts.append(f"<p>{escape(self.disk_sentence)}</p>")
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
            "disk": self.disk.as_dict() if self.disk is not None else None,
            "disk_sentence": self.disk_sentence,
            "notes": self.notes,
        }


def _text_table(lines: list[list[str]]) -> str:
    return text_table(lines[0], lines[1:], rule=True)


def _html_table(lines: list[list[str]]) -> str:
    return html_table(lines[0], lines[1:])
