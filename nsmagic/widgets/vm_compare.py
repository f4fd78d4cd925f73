"""The VM-vs-container comparison on screen: the progress of its stages while VMs boot, the
table (HTML and text), and a bar chart rendered with matplotlib's object API to a PNG."""

from __future__ import annotations

import io
import textwrap
import uuid
from html import escape
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nsmagic.vm.disk import SharedBase
from nsmagic.vm.figures import DISK_ROW
from nsmagic.vm.progress import ProgressEvent
from nsmagic.vm.reference import PUBLISHED_LABEL
from nsmagic.vm.report import MEASURED, Baseline, Row

VM_COLOUR = "#c0504d"
CONTAINER_COLOUR = "#4f81bd"
PUBLISHED_COLOUR = "#9e9e9e"

# The rows the chart shows, by panel: times on one axis, memory on another.
TIME_ROWS = ("start: launch -> ready", "start: end to end", "CPU time to start")
MEMORY_ROWS = ("host memory (PSS)", "cgroup memory (memory.current)")
SHARED_COLOUR = "#9bbb59"


def _bars(ax: Any, rows: list[Row], unit: str, emulated: bool) -> None:
    """Grouped horizontal bars, VM above container; the ratio goes into the row's label."""
    labels, vm, ct = [], [], []
    for row in rows:
        labels.append(f"{row.figure}\nVM/container: {row.format_ratio()}")
        vm.append(row.vm or 0)
        ct.append(row.container or 0)
    ys = range(len(rows))
    height = 0.38
    vm_label = "VM (emulated, TCG)" if emulated else "VM"
    ax.barh([y - height / 2 for y in ys], vm, height, color=VM_COLOUR, label=vm_label)
    ax.barh([y + height / 2 for y in ys], ct, height, color=CONTAINER_COLOUR, label="container")
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    positive = [v for v in vm + ct if v > 0]
    if positive and max(positive) / min(positive) > 50:
        ax.set_xscale("log")
    log = ax.get_xscale() == "log"
    ax.set_xlabel(f"{'seconds' if unit == 's' else unit}{' (log scale)' if log else ''}")
    for y, row in zip(ys, rows, strict=True):
        for offset, value in ((-height / 2, row.vm), (height / 2, row.container)):
            if value:
                ax.annotate(
                    row.format(value),
                    (value, y + offset),
                    xytext=(3, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=7,
                )
    ax.margins(x=0.15)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)


def figure(result: Baseline) -> Figure:
    """A bar chart of the comparison (a matplotlib Figure; no pyplot)."""
    if not result.measured:
        return _reference_figure(result)
    time_rows = [r for r in result.rows if r.figure.startswith(TIME_ROWS)]
    memory_rows = [r for r in result.rows if r.figure.startswith(MEMORY_ROWS) and r.vm]
    workload = result.workload_run
    disk = [r for r in result.rows if r.figure.startswith(DISK_ROW)]
    base = result.disk.base if result.disk is not None else None
    panels = 2 + (workload is not None) + bool(disk) + (base is not None)
    fig = Figure(figsize=(10, 3.2 * panels), layout="constrained")
    axes = list(fig.subplots(panels, 1))
    _bars(axes[0], time_rows, "s", result.emulated)
    axes[0].set_title("time (lower is better)")
    mib = [
        Row(r.figure, "MiB", (r.vm or 0) / 2**20, (r.container or 0) / 2**20, r.note)
        for r in memory_rows
    ]
    _bars(axes[1], mib, "MiB", result.emulated)
    axes[1].set_title("host memory per instance (lower is better)")
    rest = axes[2:]
    if disk:
        ax = rest.pop(0)
        mib = [Row(r.figure, "MiB", (r.vm or 0) / 2**20, (r.container or 0) / 2**20, r.note)
               for r in disk]  # fmt: skip
        _bars(ax, mib, "MiB", result.emulated)
        ax.set_title(f"disk for the same program ({MEASURED}; lower is better)")
    if base is not None:
        _base_bars(rest.pop(0), base, result.disk_sentence)
    if workload is not None:
        ax = rest.pop(0)
        for samples, colour, name in (
            (workload.vm_samples, VM_COLOUR, "VM (boot, then workload)"),
            (workload.container_samples, CONTAINER_COLOUR, "container"),
        ):
            if samples:
                ax.plot(
                    [s[0] for s in samples],
                    [s[2] / 2**20 for s in samples],
                    color=colour,
                    label=name,
                )
        ax.set_xlabel("seconds since launch")
        ax.set_ylabel("cgroup memory (MiB)")
        ax.set_title(f"{workload.kind} workload ({workload.seconds:g} s): cgroup memory")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.suptitle(textwrap.fill(result.title(), 110), fontsize=10)
    return fig


def _base_bars(ax: Any, base: SharedBase, sentence: str) -> None:
    """Each image as its shared part and its own, then what the store holds: the base once."""
    labels = [i.name.rsplit("/", 1)[-1] for i in base.images]
    shared = [i.shared / 2**20 for i in base.images]
    unique = [i.unique / 2**20 for i in base.images]
    labels.append("the store holds both")
    shared.append(base.base_bytes / 2**20)
    unique.append((base.stored_bytes - base.base_bytes) / 2**20)
    ys = range(len(labels))
    ax.barh(ys, shared, color=SHARED_COLOUR, label="the shared base")
    ax.barh(ys, unique, left=shared, color=CONTAINER_COLOUR, label="each image's own layers")
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    for y, (low, high) in enumerate(zip(shared, unique, strict=True)):
        ax.annotate(f"{low + high:.1f} MiB", (low + high, y), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=7)
    ax.set_xlabel("MiB")
    ax.margins(x=0.15)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_title(textwrap.fill(sentence, 100), fontsize=9)


def _reference_figure(result: Baseline) -> Figure:
    """Published figures (grey, labelled as such) beside any container measured here."""
    figures = result.reference.get("figures", [])

    def name(f: dict[str, Any], extra: str = "") -> str:
        bound = "" if f.get("bound") in ("=", None) else f"{f['bound']} "
        return textwrap.fill(f"{f['system']}{extra}", 45) + f"\n({bound}published: {f['cite']})"

    times: list[tuple[str, float, str]] = []
    for f in figures:
        if f.get("metric") not in ("boot", "start") or f.get("value") is None:
            continue
        if "per_container_ms" in f:
            times.append((name(f, ", per container"), f["per_container_ms"], PUBLISHED_COLOUR))
        elif f["unit"] == "ms":
            times.append((name(f), f["value"], PUBLISHED_COLOUR))
    memory = [
        (name(f), f["value"], PUBLISHED_COLOUR)
        for f in figures
        if f.get("metric") == "memory" and f.get("unit") == "MiB"
    ]
    ready = result.row("start: launch -> ready")
    if ready is not None and ready.container is not None:
        times.append(
            (
                "nsmagic container to ready\n(measured here)",
                ready.container * 1000,
                CONTAINER_COLOUR,
            )
        )
    pss = result.row("host memory (PSS)")
    if pss is not None and pss.container is not None:
        memory.append(
            (
                "nsmagic idle container, PSS\n(measured here)",
                pss.container / 2**20,
                CONTAINER_COLOUR,
            )
        )
    fig = Figure(figsize=(10, 8), layout="constrained")
    ax_time, ax_mem = fig.subplots(2, 1)
    for ax, items, unit in ((ax_time, times, "ms"), (ax_mem, memory, "MiB")):
        ax.barh(range(len(items)), [i[1] for i in items], color=[i[2] for i in items])
        ax.set_yticks(range(len(items)), [i[0] for i in items], fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel(f"{unit} (log scale)")
        for y, item in enumerate(items):
            ax.annotate(
                f"{item[1]:.3g} {unit}",
                (item[1], y),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        ax.margins(x=0.3)
    ax_time.set_title(f"start / boot time (grey: {PUBLISHED_LABEL})", fontsize=9)
    ax_mem.set_title(f"memory per instance (grey: {PUBLISHED_LABEL})", fontsize=9)
    fig.suptitle(textwrap.fill(result.title(), 110), fontsize=10)
    return fig


def png(result: Baseline, dpi: int = 100) -> bytes:
    """The chart as PNG bytes."""
    fig = figure(result)
    FigureCanvasAgg(fig)  # attach a raster canvas; no pyplot, no global state
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def show(result: Baseline) -> None:
    """Display the table (HTML, with a text fallback) and the chart (a PNG image)."""
    from IPython.display import Image, display

    # Raw bundles: every front end gets the HTML table and the text one, whatever formatters
    # the shell has switched on (a terminal IPython only enables text/plain).
    display({"text/html": result._repr_html_(), "text/plain": result.text()}, raw=True)
    display(Image(data=png(result), format="png"))


class ProgressView:
    """A baseline's progress: a bar over its planned stages and a line saying the current one
    with its elapsed time, as a widget in a kernel (text/plain kept true for saved notebooks),
    as text lines elsewhere. Full only when the baseline is done."""

    def __init__(self, widgets: bool | None = None) -> None:
        self.last: ProgressEvent | None = None
        self.finished = False
        self.bar = self.line = self.box = None
        self._display_id = f"nsmagic-vm-progress-{uuid.uuid4().hex}"
        if widgets is None:
            widgets = _in_a_kernel()
        if widgets:
            self._show_widget()

    def _show_widget(self) -> None:
        try:
            import ipywidgets
        except ImportError:  # no widgets: text lines instead
            return
        self.bar = ipywidgets.IntProgress(value=0, min=0, max=1, description="VM baseline")
        # HTML rather than a Label: a long line (the accelerator's reason) wraps instead of
        # being cut off.
        self.line = ipywidgets.HTML(escape(self.text()))
        self.box = ipywidgets.VBox([self.bar, self.line])
        self._publish(update=False)

    def _publish(self, update: bool) -> None:
        """Show the widget with a text/plain that says the same (what a viewer without widgets
        shows); updated once more at the end, so a saved notebook keeps the final state."""
        from IPython.display import display

        bundle = self.box._repr_mimebundle_()
        bundle["text/plain"] = self.text()
        display(bundle, raw=True, display_id=self._display_id, update=update)

    def text(self) -> str:
        """The current state in one line: stages reached, what happens now, elapsed time."""
        event = self.last
        if event is None:
            return "VM baseline: starting"
        if event.done:
            return f"VM baseline: done in {event.elapsed_s:.1f} s, all {event.total} stages"
        if self.finished:
            return (
                f"VM baseline: stopped after {event.elapsed_s:.1f} s, at stage"
                f" {event.step}/{event.total}: {event.text}"
            )
        where = f"stage {event.step}/{event.total} at {event.elapsed_s:.1f} s"
        return f"VM baseline, {where}: {event.text}"

    def __call__(self, event: ProgressEvent) -> None:
        self.last = event
        if self.bar is None:
            print(f"[{event.elapsed_s:6.1f} s] {event.text}", flush=True)
            return
        self.bar.max = event.total
        self.bar.value = event.step
        self.line.value = escape(self.text())

    def close(self) -> None:
        """Leave the bar as the record of the run: green when done, red when it stopped."""
        self.finished = True
        done = self.last is not None and self.last.done
        if self.bar is None:
            if not done:
                print(self.text(), flush=True)
            return
        self.bar.bar_style = "success" if done else "danger"
        self.line.value = escape(self.text())
        self._publish(update=True)


def _in_a_kernel() -> bool:
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


__all__ = ["ProgressView", "figure", "png", "show"]
