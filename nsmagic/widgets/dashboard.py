"""Live CPU and memory plots of the kernel's containers: `Dashboard`, `show_dashboard()`,
`live_plot(container_id)`.

Why a PNG in an `ipywidgets.Image`, drawn by a daemon thread
------------------------------------------------------------
- It updates while other cells run. The kernel executes one cell at a time on its main
  thread; a plot that redraws from a daemon thread and pushes bytes through a widget comm is
  not blocked by a busy cell (comm messages from threads work in ipykernel >= 7.1; 7.0.x
  is broken and asyncio tasks stop when the cell completes in ipykernel 7).
- ipympl (`%matplotlib widget`) does not redraw while the cell that created the figure is
  still running, and needs its own front-end extension; Plotly/bqplot need theirs too.
- `ipywidgets.Image` is part of core ipywidgets: it renders in JupyterLab 4, Notebook 7,
  VS Code and Voila with no extension beyond ipywidgets itself.
- matplotlib is drawn through its object API (`Figure` + `FigureCanvasAgg`), never pyplot,
  which is global, not thread-safe, and would leak figures into the inline backend.

Saved notebooks
---------------
JupyterLab saves outputs without widget state, so a widget output shows in an export, on
GitHub or in a notebook reopened later only as its text/plain (ipywidgets' is
`VBox(children=(Image(value=b'\x89PNG...`), or as "Error displaying widget: model not
found". So the widget is displayed with a text/plain that says what it is, under a display
id, with an empty placeholder output (a second display id) under it. When the dashboard
stops (a live plot stops when its container ends), update_display replaces the widget's
output with the final figure as a plain `image/png` and the placeholder with the final value
table (HTML and text), and the widgets are closed: whatever saves the notebook then saves a
picture and a table, in the dashboard's own cell even when `stop()` runs in a later one.

What an open dashboard costs the kernel
---------------------------------------
A full frame costs about 100 ms of CPU, so drawing blindly at 2 frames a second costs a fifth
of a core. The thread therefore draws only when all of these hold:

- someone can see it (nsmagic.widgets.presence: a view exists and its page is alive; in a
  shell without a kernel, never);
- the monitor took a new sample (the thread sleeps until a tick wakes it, and the monitor
  itself slows down while nothing moves);
- the frame would look different from the last one (PlotRenderer.changed: a pixel or more);
- the frame rate stays within fps and within a CPU budget (nsmagic.widgets.budget: the
  thread times its own frames);

and most frames that are drawn keep their axes and cost a tenth of a full one (see
nsmagic.widgets.render). `nsmagic bench --only dashboard_idle,dashboard_busy` measures it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from nsmagic.monitor import MONITOR, Monitor, SeriesSnapshot
from nsmagic.widgets.budget import FrameBudget
from nsmagic.widgets.presence import (
    KernelActivity,
    NoFrontEnd,
    Presence,
    heartbeat_widget,
    kernel_shell,
)
from nsmagic.widgets.render import COLOURS, PlotRenderer
from nsmagic.widgets.table import table_html, table_text

DEFAULT_FPS = 2.0
MAX_FPS = 4.0
MIN_FPS = 0.2
DEFAULT_WINDOW_S = 120.0
# The thread wakes at least this often (the monitor's ticks wake it sooner) to see whether a
# view went or the time axis must take a step.
WAKE_EVERY_S = 1.0

# Dashboards started and not yet stopped (for `%dashboard stop` and extension unload).
_OPEN: list[Dashboard] = []
_OPEN_LOCK = threading.Lock()


class Dashboard:
    """A live panel: CPU and memory plots of running containers plus a table of current values.

    containers: ids, names or id prefixes to show (default: every container of the kernel that
        runs, or ended, within the time window).
    fps: frames per second (1-4 is sensible; clamped to 0.2..4).
    window: seconds of history on the time axis.
    rate: sampling rate asked of the monitor while the dashboard runs (default: its own, 4 Hz).
    stop_when_done: stop by itself once every listed container has exited (needs containers).
    title: a title above the plots.
    front_end: whether a front end may show the widget (default: whether this runs in a
        Jupyter kernel). Without one nothing is drawn live; with one, frames are drawn while a
        view of the widget is shown by a live page (nsmagic.widgets.presence).

    Display it (last expression of a cell, or `display(dash)`), or call `show()`. `stop()`
    ends its thread and replaces the live widget by the final figure (a static PNG) and the
    final table; closing the widget (`dash.close()` or `dash.widget.close()`) stops it too.
    """

    def __init__(self, containers: Iterable[str] | None = None, fps: float = DEFAULT_FPS,
                 window: float = DEFAULT_WINDOW_S, rate: float | None = None,
                 stop_when_done: bool = False, title: str | None = None,
                 monitor: Monitor | None = None, width: float = 10.0,
                 height: float = 3.6, front_end: bool | None = None) -> None:
        import ipywidgets

        self.containers = None if containers is None else [str(c) for c in containers]
        if stop_when_done and not self.containers:
            raise ValueError("stop_when_done needs the containers to wait for")
        self.fps = min(MAX_FPS, max(MIN_FPS, float(fps)))
        self.window = float(window)
        self.rate = rate
        self.stop_when_done = stop_when_done
        self.title = title
        self.monitor = monitor if monitor is not None else MONITOR
        self.t0 = time.time()
        self.frames = 0
        self.last_png: bytes | None = None
        self._renderer = PlotRenderer(width, height, title=title)
        self._colours: dict[str, str] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()  # a tick, a view, a heartbeat after silence, stop()
        self._thread: threading.Thread | None = None
        self._finished = False
        self._finish_lock = threading.Lock()
        self._draw_lock = threading.Lock()
        self._parent: dict | None = None
        self._live_id = f"nsmagic-dashboard-{uuid.uuid4().hex}"  # the widget's output
        self._static_id = f"{self._live_id}-table"  # the placeholder under it
        self._static_shown = False
        self._shown: list[SeriesSnapshot] = []  # what the last frame drew
        self.image = ipywidgets.Image(format="png", layout=ipywidgets.Layout(
            width="100%", max_width=f"{int(width * 96)}px", height="auto"))
        self.table = ipywidgets.HTML(value=table_html([], {}))
        self.beat = heartbeat_widget()
        self.widget = ipywidgets.VBox([self.image, self.table, self.beat])
        self.widget.add_class("nsmagic-dashboard")
        self.widget.observe(self._on_comm_change, names="comm")
        self.image.observe(self._on_comm_change, names="comm")
        shell = kernel_shell()
        self.front_end = shell is not None if front_end is None else bool(front_end)
        if not self.front_end:
            self.presence: Presence | NoFrontEnd = NoFrontEnd()
        else:
            # Created in a cell (the main thread): the kernel is busy until that cell ends.
            activity = None if shell is None else KernelActivity(
                shell, busy=threading.current_thread() is threading.main_thread())
            self.presence = Presence(self.beat, self._wake.set, activity)

    # -- showing ----------------------------------------------------------------------------
    def show(self) -> Dashboard:
        """Display the widget (and the placeholder for the final table), then start."""
        from IPython.display import display

        display(self._live_bundle(), raw=True, display_id=self._live_id)
        display({"text/plain": ""}, raw=True, display_id=self._static_id)
        self._static_shown = True
        self.start()
        return self

    def _ipython_display_(self) -> None:
        self.show()

    def _what(self) -> str:
        """What this shows, in words: 'nsmagic dashboard' or 'nsmagic live plot of web'."""
        if not (self.stop_when_done and self.containers):
            return "nsmagic dashboard"
        labels = [r.label for r in self.monitor.registry.records(include_exited=True)
                  if any(r.container_id.startswith(c) or c in (r.name, r.label)
                         for c in self.containers)]
        return f"nsmagic live plot of {', '.join(labels or self.containers)}"

    def _live_bundle(self) -> dict[str, Any]:
        """The widget's output: its view, and a text/plain that stays true once saved."""
        if not self.front_end:
            return {"text/plain": f"{self._what()}: no front end to draw in here (no Jupyter "
                                  "kernel); the samples are recorded, see "
                                  "nsmagic.stats.history()"}
        bundle = dict(self.widget._repr_mimebundle_())
        bundle["text/plain"] = (f"[{self._what()}: live CPU and memory plots, a widget that "
                                "only a running kernel draws]")
        return bundle

    def start(self) -> Dashboard:
        """Start the drawing thread (idempotent); show() calls this."""
        if self._thread is not None or self._finished:
            return self
        self._parent = _current_parent()
        self._thread = threading.Thread(target=self._run, name="nsmagic-dashboard", daemon=True)
        with _OPEN_LOCK:
            _OPEN.append(self)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """True while the drawing thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    # -- stopping -----------------------------------------------------------------------------
    def stop(self) -> None:
        """End the thread, draw the final frame and leave it as a static PNG; safe twice."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self._finish()

    def close(self) -> None:
        """stop() (which leaves the final picture and table), and close the widgets."""
        self.stop()
        self._close_widgets()

    def _close_widgets(self) -> None:
        for widget in (self.widget, self.image, self.table, self.beat):
            # Their layout and style are widgets of their own, left open by close().
            for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
                if part is not None:
                    part.close()
            widget.close()

    def _on_comm_change(self, change: dict) -> None:
        if change.get("new") is None:  # the widget was closed
            self._stop.set()
            self._wake.set()

    def _finish(self) -> None:
        with self._finish_lock:
            if self._finished:
                return
            self._finished = True
        with _OPEN_LOCK:
            if self in _OPEN:
                _OPEN.remove(self)
        self.presence.close()
        if not self._static_shown:
            return  # displayed by hand (display(dash.widget)): it keeps its last frame
        from IPython.display import update_display

        if self.image.comm is None:  # closed by hand: say so where it was
            update_display({"text/plain": f"[{self._what()}: closed]"}, raw=True,
                           display_id=self._live_id)
            return
        series = self.visible_series()
        final: dict[str, Any] = {"text/plain": self._final_text(series)}
        if self.front_end and self._draw(force=True):
            final["image/png"] = self.last_png
        update_display(final, raw=True, display_id=self._live_id)
        update_display({"text/html": table_html(series, self._colours),
                        "text/plain": table_text(series)}, raw=True,
                       display_id=self._static_id)
        self._close_widgets()

    def _final_text(self, series: list[SeriesSnapshot]) -> str:
        """What the final picture shows, in words (its text/plain)."""
        ended = [s for s in series if s.state == "exited"]
        count = f"{len(series)} container{'s' if len(series) != 1 else ''}"
        return (f"[{self._what()}, final picture: CPU and memory of {count}"
                f"{f', {len(ended)} ended' if ended else ''}, "
                f"{time.time() - self.t0:.0f} s after it opened; values in the table below]")

    # -- drawing ------------------------------------------------------------------------------
    def _run(self) -> None:
        tokens = _set_thread_parent(self._parent)
        watch = self.monitor.watch(listener=lambda _: self._wake.set(), rate=self.rate)
        budget = FrameBudget(self.fps)
        try:
            while not self._stop.is_set():
                self._wake.wait(WAKE_EVERY_S)
                self._wake.clear()
                if self._stop.is_set() or self.image.comm is None or self.widget.comm is None:
                    break
                if not self.presence.seen():
                    if self.stop_when_done and self._all_done(self.visible_series()):
                        break
                    continue
                # A wake while waiting for the budget is kept for the next round.
                if self._stop.wait(budget.wait()):
                    break
                cpu = time.thread_time()
                if self._draw():
                    budget.spend(time.thread_time() - cpu)
                if self.stop_when_done and self._all_done(self._shown):
                    break
        except Exception:  # noqa: BLE001 - a plot failure must not take the kernel down
            pass
        finally:
            watch.close()
            if not self._stop.is_set():
                # Ended by itself (its containers are done, or it was closed): leave the picture.
                try:
                    self._finish()
                except Exception:  # noqa: BLE001
                    pass
            _reset_thread_parent(tokens)

    def visible_series(self) -> list[SeriesSnapshot]:
        """Snapshots of the series this dashboard shows now (copies: safe to read at leisure).

        Without a list of containers: those running, and those that ended after this
        dashboard opened and within its time window.
        """
        if self.containers is not None:
            chosen = self.monitor.snapshots(self.containers)
        else:
            chosen = self.monitor.snapshots(
                ended_after=max(time.time() - self.window, self.t0))
        for series in chosen:
            if series.container_id not in self._colours:
                self._colours[series.container_id] = COLOURS[len(self._colours) % len(COLOURS)]
        return chosen

    def _all_done(self, chosen: list[SeriesSnapshot]) -> bool:
        return bool(chosen) and len(chosen) >= len(self.containers or []) and all(
            s.state == "exited" for s in chosen)

    def _draw(self, force: bool = False) -> bool:
        """Draw a frame if it would look different (or force); whether one was drawn."""
        with self._draw_lock:
            series = self._shown = self.visible_series()
            now = time.time()
            t0 = min([self.t0, *(s.started_at for s in series)]) if self.containers else self.t0
            table = table_html(series, self._colours)
            if table != self.table.value:
                self.table.value = table
            if not force and not self._renderer.changed(series, self._colours, t0,
                                                        self.window, now):
                return False
            png = self._renderer.render(series, self._colours, t0, self.window, now)
            self.last_png = png
            self.frames += 1
            self.image.value = png
            return True

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<nsmagic Dashboard ({state}, {self.frames} frames)>"


def _current_parent() -> dict | None:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    get_parent = getattr(shell, "get_parent", None)
    if get_parent is None:
        return None
    try:
        return get_parent()
    except Exception:  # noqa: BLE001 - not a kernel shell
        return None


def _set_thread_parent(parent: dict | None) -> Any:
    # Route this thread's display messages (the final static PNG) to the cell that opened the
    # dashboard, without touching the kernel-wide parent of the running cell.
    if not parent:
        return None
    try:
        from IPython import get_ipython

        shell = get_ipython()
        setter = getattr(shell, "set_thread_parent", None)
        return (shell, setter(parent)) if setter is not None else None
    except Exception:  # noqa: BLE001
        return None


def _reset_thread_parent(tokens: Any) -> None:
    if tokens is None:
        return
    shell, token = tokens
    try:
        shell.reset_thread_parent(token)
    except Exception:  # noqa: BLE001
        pass


def show_dashboard(containers: Iterable[str] | None = None, **options: Any) -> Dashboard:
    """Display a live Dashboard of the kernel's containers and return it (call .stop() later).

    This is what `%dashboard` and `%container dashboard` run.
    """
    return Dashboard(containers, **options).show()


@contextmanager
def live_plot(container_id: str, **options: Any) -> Iterator[Dashboard]:
    """Show one container's live plot under the cell while the with block runs.

    The plot stops by itself when the container exits; leaving the block stops it too and
    replaces it with a static PNG of the final figure. `%%container --plot` wraps
    `container.wait(...)` in it.
    """
    options.setdefault("title", None)
    options.setdefault("fps", 2.0)
    dashboard = Dashboard([container_id], stop_when_done=True, **options)
    dashboard.show()
    try:
        yield dashboard
    finally:
        dashboard.stop()


def stop_all() -> int:
    """Stop every open dashboard (e.g. on extension unload); returns how many."""
    with _OPEN_LOCK:
        open_now = list(_OPEN)
    for dashboard in open_now:
        dashboard.stop()
    return len(open_now)


def open_dashboards() -> list[Dashboard]:
    """Dashboards whose thread has not been stopped."""
    with _OPEN_LOCK:
        return list(_OPEN)


__all__ = ["Dashboard", "live_plot", "open_dashboards", "show_dashboard", "stop_all"]
