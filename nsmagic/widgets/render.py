"""Draw containers' CPU and memory series into PNG bytes with matplotlib's object API.

Only `matplotlib.figure.Figure` and `FigureCanvasAgg` are used, never pyplot: pyplot keeps
global state (current figure, backend selection, inline hooks) that is not thread-safe and
would also make the kernel's inline backend show our figures as cell outputs.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from nsmagic.monitor import SeriesSnapshot

# Colour-blind-friendly cycle (matplotlib's tab10 without the grey).
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#bcbd22", "#17becf")
MIB = 1024 * 1024
# Event markers on the time axis: (marker, colour or None for the container's, size).
MARKERS = {"start": ("^", None, 7), "exit": ("s", None, 6), "oom": ("X", "#d62728", 11),
           "throttled": ("v", "#ff7f0e", 6)}


class PlotRenderer:
    """One reusable Figure (two axes: CPU left, memory right) rendered to PNG on demand.

    The axes are set up once and each container's lines are kept and fed new data
    (set_data) frame after frame: clearing and rebuilding the axes costs about twice as much
    (tick objects are recreated). Only the few event markers are redrawn each frame.
    Not thread-safe by itself: one renderer per drawing thread (the dashboard owns one).
    """

    def __init__(self, width_in: float = 10.0, height_in: float = 3.6, dpi: int = 96,
                 title: str | None = None) -> None:
        # Fixed margins rather than a layout engine: constrained layout costs more than the
        # drawing itself, and the frame's geometry never changes.
        self.figure = Figure(figsize=(width_in, height_in), dpi=dpi)
        self.canvas = FigureCanvasAgg(self.figure)
        self.cpu_ax, self.mem_ax = self.figure.subplots(1, 2)
        top = 0.84 if title else 0.9
        self.figure.subplots_adjust(left=0.06, right=0.985, top=top, bottom=0.22, wspace=0.16)
        if title:
            self.figure.suptitle(title, fontsize=11)
        self.cpu_ax.set_title("CPU (% of one core; dashed: --cpus limit)", fontsize=10)
        self.mem_ax.set_title("Memory MiB (solid: current, dotted: peak, dashed: limit)",
                              fontsize=10)
        for ax in (self.cpu_ax, self.mem_ax):
            ax.set_xlabel("seconds", fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize=8)
        self._empty = self.cpu_ax.text(0.5, 0.5, "no container running",
                                       transform=self.cpu_ax.transAxes, ha="center",
                                       va="center", color="#777777")
        self._lines: dict[str, dict[str, Line2D]] = {}
        self._events: list = []
        self._legend = None
        self._legend_key: tuple = ()

    def _lines_for(self, container_id: str, colour: str) -> dict[str, Line2D]:
        lines = self._lines.get(container_id)
        if lines is None:
            cpu, mem = self.cpu_ax, self.mem_ax
            lines = {
                "cpu": cpu.plot([], [], color=colour, lw=1.6)[0],
                "cpu_limit": cpu.plot([], [], color=colour, ls="--", lw=1.1, alpha=0.8)[0],
                "mem": mem.plot([], [], color=colour, lw=1.6)[0],
                "peak": mem.plot([], [], color=colour, lw=0.9, ls=":")[0],
                "mem_limit": mem.plot([], [], color=colour, ls="--", lw=1.1, alpha=0.8)[0],
            }
            self._lines[container_id] = lines
        return lines

    def render(self, series: Sequence[SeriesSnapshot], colours: dict[str, str], t0: float,
               window: float = 120.0, now: float | None = None) -> bytes:
        """PNG bytes of the last `window` seconds (x = seconds since t0) of the snapshots."""
        now = time.time() if now is None else now
        left = max(t0, now - window) - t0
        right = max(now - t0, left + 10.0)
        cpu_ax, mem_ax = self.cpu_ax, self.mem_ax
        for artist in self._events:
            artist.remove()
        self._events = []
        shown = {item.container_id for item in series}
        for container_id in [k for k in self._lines if k not in shown]:
            for line in self._lines.pop(container_id).values():
                line.remove()
        cpu_top, mem_top = 100.0, 64.0
        handles = []
        for item in series:
            colour = colours.get(item.container_id, COLOURS[0])
            lines = self._lines_for(item.container_id, colour)
            times = [t - t0 for t in item.columns["time"]]
            cpu_x, cpu_y = _points(times, item.columns["cpu_percent"], 1.0)
            lines["cpu"].set_data(cpu_x, cpu_y)
            visible = [v for t, v in zip(cpu_x, cpu_y, strict=True) if t >= left - 1]
            cpu_top = max(cpu_top, *visible) if visible else cpu_top
            mem_x, mem_y = _points(times, item.columns["memory_current"], 1 / MIB)
            lines["mem"].set_data(mem_x, mem_y)
            peak_x, peak_y = _points(times, item.columns["memory_peak"], 1 / MIB)
            lines["peak"].set_data(peak_x, peak_y)
            mem_top = max([mem_top, *mem_y, *peak_y])  # a list: both may be empty
            if item.cpus:
                lines["cpu_limit"].set_data([left, right], [item.cpus * 100] * 2)
                cpu_top = max(cpu_top, item.cpus * 100)
            if item.memory_limit:
                limit = item.memory_limit / MIB
                lines["mem_limit"].set_data([left, right], [limit, limit])
                mem_top = max(mem_top, limit)
            for event in item.events:
                x = event["time"] - t0
                if not left - 0.5 <= x <= right + 0.5:
                    continue
                kind = event["kind"]
                marker, fixed, size = MARKERS.get(kind, ("o", None, 5))
                if kind in ("start", "exit"):
                    for ax in (cpu_ax, mem_ax):
                        self._events.append(ax.axvline(x, color=colour, ls=":", lw=0.8,
                                                       alpha=0.6))
                for ax in (mem_ax, cpu_ax) if kind == "oom" else (cpu_ax,):
                    self._events.extend(ax.plot(
                        [x], [0.97 if kind in ("oom", "throttled") else 0.03], marker=marker,
                        color=fixed or colour, markersize=size, ls="none", clip_on=False,
                        markeredgecolor="white" if kind == "oom" else None,
                        transform=ax.get_xaxis_transform()))
            state = "" if item.state != "exited" else " (exited)"
            limit_text = f", --cpus {item.cpus:g}" if item.cpus else ""
            handles.append((colour, f"{item.label}{limit_text}{state}"))
        cpu_ax.set_xlim(left, right)
        mem_ax.set_xlim(left, right)
        cpu_ax.set_ylim(0, cpu_top * 1.12)
        mem_ax.set_ylim(0, mem_top * 1.12)
        self._empty.set_visible(not handles)
        self._update_legend(tuple(handles))
        buffer = io.BytesIO()
        self.canvas.print_png(buffer)
        return buffer.getvalue()

    def _update_legend(self, handles: tuple) -> None:
        if handles == self._legend_key and self._legend is not None:
            return
        self._legend_key = handles
        if self._legend is not None:
            self._legend.remove()
        entries = [Line2D([], [], color=c, lw=2, label=label) for c, label in handles]
        entries += [Line2D([], [], marker=m, color=c or "#555555", ls="none",
                           markersize=s * 0.8, label=kind) for kind, (m, c, s) in MARKERS.items()]
        # Containers and the event key in one row under the plots, clear of the data.
        self._legend = self.figure.legend(
            handles=entries, loc="lower center", fontsize=8, frameon=False,
            ncol=min(len(entries), 8), bbox_to_anchor=(0.5, 0.0), columnspacing=1.2,
            handletextpad=0.4)


def _points(times: list[float], values: Iterable, scale: float) -> tuple[list, list]:
    xs, ys = [], []
    for t, v in zip(times, values, strict=True):
        if v is not None:
            xs.append(t)
            ys.append(v * scale)
    return xs, ys


__all__ = ["COLOURS", "MARKERS", "PlotRenderer"]
