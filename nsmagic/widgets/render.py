"""Draw containers' CPU and memory series into PNG bytes with matplotlib's object API.

Only `matplotlib.figure.Figure` and `FigureCanvasAgg` are used, never pyplot: pyplot keeps
global state (current figure, backend selection, inline hooks) that is not thread-safe and
would also make the kernel's inline backend show our figures as cell outputs.

A full draw of the figure costs about 100 ms of CPU, nearly all of it in the axes, ticks,
titles and legend. Those change only when an axis limit or the legend does (see
nsmagic.widgets.scale), so the renderer keeps them as a saved background and, frame after
frame, restores it and draws only the data (lines and event markers), about a tenth of that.
`changed()` says whether a frame drawn now would look any different from the last one.
"""

from __future__ import annotations

import bisect
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from nsmagic.monitor import SeriesSnapshot
from nsmagic.widgets.scale import axis_top, time_limits

# Colour-blind-friendly cycle (matplotlib's tab10 without the grey).
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#bcbd22", "#17becf")
MIB = 1024 * 1024
# Event markers on the time axis: (marker, colour or None for the container's, size).
MARKERS = {"start": ("^", None, 7), "exit": ("s", None, 6), "oom": ("X", "#d62728", 11),
           "throttled": ("v", "#ff7f0e", 6)}
OTHER_MARKER = ("o", None, 5)
# Where a marker sits, as a fraction of the axes' height.
MARKER_HEIGHT = {"oom": 0.97, "throttled": 0.97}
NAN = float("nan")
CPU_TITLE = "CPU (% of one core, 1 s averages; dashed: --cpus limit)"
MEMORY_TITLE = "Memory MiB (solid: current, dotted: peak, dashed: limit)"
# zlib level 1: a third of the default's encoding time, for PNGs about 10% larger.
PNG_COMPRESSION = 1


@dataclass(frozen=True)
class Layout:
    """What the background of a frame depends on: axis limits and legend entries."""

    left: float
    right: float
    cpu_top: float
    memory_top: float
    legend: tuple[tuple[str, str], ...]


class PlotRenderer:
    """One reusable Figure (two axes: CPU left, memory right) rendered to PNG on demand.

    Each container's lines and event marks are kept and fed new data (set_data) frame after
    frame (one artist per kind of mark, whatever the number of events: artists are what
    costs); they are "animated" artists, drawn over the saved background. Not
    thread-safe by itself: one renderer per drawing thread (the dashboard owns one).
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
        self.cpu_ax.set_title(CPU_TITLE, fontsize=10)
        self.mem_ax.set_title(MEMORY_TITLE, fontsize=10)
        for ax in (self.cpu_ax, self.mem_ax):
            ax.set_xlabel("seconds", fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize=8)
        self._empty = self.cpu_ax.text(0.5, 0.5, "no container running",
                                       transform=self.cpu_ax.transAxes, ha="center",
                                       va="center", color="#777777")
        # Height of a plot area in pixels: a change smaller than 1/pixels of an axis is
        # invisible.
        self.pixels = height_in * dpi * (top - 0.22)
        self._lines: dict[str, dict[str, Line2D]] = {}
        self._legend: Any = None
        self._layout: Layout | None = None  # the background's, once drawn
        self._background: Any = None
        self._drawn: dict[str, tuple] = {}  # per container: what its last frame showed
        self.full_draws = 0
        self.frames = 0

    # -- what a frame would show ---------------------------------------------------------
    def layout(self, series: Sequence[SeriesSnapshot], colours: dict[str, str], t0: float,
               window: float, now: float) -> Layout:
        """The axis limits and legend a frame drawn at now would have."""
        left, right = time_limits(now - t0, window)
        since = t0 + left - 1.0
        cpu_high, memory_high = 0.0, 0.0
        legend = []
        for item in series:
            start = _first_at(item, since)
            cpu_high = max([cpu_high, *(v for v in item.columns["cpu_percent"][start:]
                                        if v is not None)])
            memory_high = max([memory_high, *(v / MIB for column in ("memory_current",
                                                                     "memory_peak")
                                              for v in item.columns[column][start:]
                                              if v is not None)])
            if item.cpus:
                cpu_high = max(cpu_high, item.cpus * 100)
            if item.memory_limit:
                memory_high = max(memory_high, item.memory_limit / MIB)
            state = "" if item.state != "exited" else " (exited)"
            limit_text = f", --cpus {item.cpus:g}" if item.cpus else ""
            legend.append((colours.get(item.container_id, COLOURS[0]),
                           f"{item.label}{limit_text}{state}"))
        return Layout(left, right, axis_top(cpu_high, 100.0), axis_top(memory_high, 64.0),
                      tuple(legend))

    def changed(self, series: Sequence[SeriesSnapshot], colours: dict[str, str], t0: float,
                window: float = 120.0, now: float | None = None) -> bool:
        """Whether a frame drawn now would differ visibly from the last one drawn.

        Visibly: an axis or the legend moved; a container came or went; an event, a state or
        a limit changed; or a sample since the last frame lies a pixel or more away from the
        value the last frame ended on. A flat line growing by a few pixels is not a change:
        it catches up when the time axis takes its next step.
        """
        now = time.time() if now is None else now
        layout = self.layout(series, colours, t0, window, now)
        if layout != self._layout or {s.container_id for s in series} != set(self._drawn):
            return True
        for item in series:
            drawn = self._drawn[item.container_id]
            if _identity(item) != drawn[0]:
                return True
            for values in self._new_values(item, drawn[1], layout):
                if values != drawn[2]:
                    return True
        return False

    def plotted(self, container_id: str) -> dict[str, tuple[list[float], list[float]]]:
        """The (x, y) data the last frame drew for a container: cpu, mem, peak and limits."""
        lines = self._lines.get(container_id, {})
        return {name: (list(line.get_xdata()), list(line.get_ydata()))
                for name, line in lines.items() if not name.startswith("mark ")}

    # -- drawing ---------------------------------------------------------------------------
    def render(self, series: Sequence[SeriesSnapshot], colours: dict[str, str], t0: float,
               window: float = 120.0, now: float | None = None) -> bytes:
        """PNG bytes of the last `window` seconds (x = seconds since t0) of the snapshots."""
        now = time.time() if now is None else now
        layout = self.layout(series, colours, t0, window, now)
        self._forget_gone({item.container_id for item in series})
        for item in series:
            self._update_lines(item, colours.get(item.container_id, COLOURS[0]), t0, layout)
        if layout != self._layout:
            self._draw_background(layout, bool(series))
        else:
            self.canvas.restore_region(self._background)
        for lines in self._lines.values():
            for artist in lines.values():
                if len(artist.get_xdata()):  # an empty line still costs its set-up
                    artist.axes.draw_artist(artist)
        self._drawn = {}
        for item in series:
            last = self._new_values(item, None, layout)
            times = item.columns["time"]
            self._drawn[item.container_id] = (_identity(item), times[-1] if times else None,
                                              last[-1] if last else None)
        self.frames += 1
        return self._png()

    def _draw_background(self, layout: Layout, any_series: bool) -> None:
        for ax in (self.cpu_ax, self.mem_ax):
            ax.set_xlim(layout.left, layout.right)
        self.cpu_ax.set_ylim(0, layout.cpu_top)
        self.mem_ax.set_ylim(0, layout.memory_top)
        self._empty.set_visible(not any_series)
        if self._layout is None or layout.legend != self._layout.legend:
            self._set_legend(layout.legend)
        self.canvas.draw()  # everything but the animated artists
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        self._layout = layout
        self.full_draws += 1

    def _png(self) -> bytes:
        width, height = self.canvas.get_width_height()
        image = Image.frombuffer("RGBA", (width, height), self.canvas.buffer_rgba(), "raw",
                                 "RGBA", 0, 1).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="png", compress_level=PNG_COMPRESSION)
        return buffer.getvalue()

    def _lines_for(self, container_id: str, colour: str) -> dict[str, Line2D]:
        lines = self._lines.get(container_id)
        if lines is None:
            cpu, mem = self.cpu_ax, self.mem_ax
            lines = {
                "cpu": cpu.plot([], [], color=colour, lw=1.6, animated=True)[0],
                "cpu_limit": cpu.plot([], [], color=colour, ls="--", lw=1.1, alpha=0.8,
                                      animated=True)[0],
                "mem": mem.plot([], [], color=colour, lw=1.6, animated=True)[0],
                "peak": mem.plot([], [], color=colour, lw=0.9, ls=":", animated=True)[0],
                "mem_limit": mem.plot([], [], color=colour, ls="--", lw=1.1, alpha=0.8,
                                      animated=True)[0],
            }
            # Start and exit as dotted vertical lines across both plots (one path each, the
            # segments apart by NaNs), then a marker line per kind of event.
            for ax, name in ((cpu, "cpu_rules"), (mem, "mem_rules")):
                lines[name] = ax.plot([], [], color=colour, ls=":", lw=0.8, alpha=0.6,
                                      animated=True, transform=ax.get_xaxis_transform())[0]
            for kind, (marker, fixed, size) in [*MARKERS.items(), ("other", OTHER_MARKER)]:
                for ax in (cpu, mem) if kind == "oom" else (cpu,):
                    lines[f"mark {'mem' if ax is mem else 'cpu'} {kind}"] = ax.plot(
                        [], [], marker=marker, color=fixed or colour, markersize=size,
                        ls="none", clip_on=False, animated=True,
                        markeredgecolor="white" if kind == "oom" else None,
                        transform=ax.get_xaxis_transform())[0]
            self._lines[container_id] = lines
        return lines

    def _forget_gone(self, shown: set[str]) -> None:
        for container_id in [k for k in self._lines if k not in shown]:
            for line in self._lines.pop(container_id).values():
                line.remove()

    def _update_lines(self, item: SeriesSnapshot, colour: str, t0: float,
                      layout: Layout) -> None:
        lines = self._lines_for(item.container_id, colour)
        start = _first_at(item, t0 + layout.left - 1.0)
        times = [t - t0 for t in item.columns["time"][start:]]
        lines["cpu"].set_data(*_points(times, item.columns["cpu_percent"][start:], 1.0))
        lines["mem"].set_data(*_points(times, item.columns["memory_current"][start:], 1 / MIB))
        lines["peak"].set_data(*_points(times, item.columns["memory_peak"][start:], 1 / MIB))
        span = [layout.left, layout.right]
        lines["cpu_limit"].set_data(span if item.cpus else [],
                                    [item.cpus * 100] * 2 if item.cpus else [])
        limit = item.memory_limit / MIB if item.memory_limit else None
        lines["mem_limit"].set_data(span if limit else [], [limit] * 2 if limit else [])
        marks: dict[str, list[float]] = {kind: [] for kind in [*MARKERS, "other"]}
        for event in item.events:
            x = event["time"] - t0
            if layout.left - 0.5 <= x <= layout.right + 0.5:
                marks[event["kind"] if event["kind"] in MARKERS else "other"].append(x)
        rules = sorted(marks["start"] + marks["exit"])
        rule_x = [x for at in rules for x in (at, at, NAN)]
        rule_y = [y for _ in rules for y in (0.0, 1.0, NAN)]
        lines["cpu_rules"].set_data(rule_x, rule_y)
        lines["mem_rules"].set_data(rule_x, rule_y)
        for name, artist in lines.items():
            if name.startswith("mark "):
                kind = name.rsplit(" ", 1)[1]
                artist.set_data(marks[kind], [MARKER_HEIGHT.get(kind, 0.03)] * len(marks[kind]))

    def _new_values(self, item: SeriesSnapshot, after: float | None,
                    layout: Layout) -> list[tuple]:
        """Pixel rows of (CPU, memory, peak) for the samples after the time `after`."""
        times = item.columns["time"]
        # after=None: the newest sample only (what a frame ends on).
        start = max(0, len(times) - 1) if after is None else bisect.bisect_right(times, after)
        cpu_scale = self.pixels / layout.cpu_top
        memory_scale = self.pixels / (layout.memory_top * MIB)
        columns = item.columns
        return [(_pixel(columns["cpu_percent"][i], cpu_scale),
                 _pixel(columns["memory_current"][i], memory_scale),
                 _pixel(columns["memory_peak"][i], memory_scale))
                for i in range(start, len(times))]

    def _set_legend(self, handles: tuple[tuple[str, str], ...]) -> None:
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


def _identity(item: SeriesSnapshot) -> tuple:
    """What of a series shows besides its samples: label, state, limits, events."""
    return (item.label, item.state, item.cpus, item.memory_limit, len(item.events))


def _first_at(item: SeriesSnapshot, since: float) -> int:
    """Index of the first sample taken at or after since (the times are increasing)."""
    return bisect.bisect_left(item.columns["time"], since)


def _pixel(value: float | None, scale: float) -> int | None:
    return None if value is None else round(value * scale)


def _points(times: list[float], values: Sequence, scale: float) -> tuple[list, list]:
    xs, ys = [], []
    for t, v in zip(times, values, strict=True):
        if v is not None:
            xs.append(t)
            ys.append(v * scale)
    return xs, ys


__all__ = ["COLOURS", "MARKERS", "Layout", "PlotRenderer"]
