"""Whether a front end shows a widget now: its views, a heartbeat from the page, the kernel.

A dashboard draws only while someone can see it. Three signs, because none suffices alone:

- The widget's view count (`_view_count`: ipywidgets' front ends keep it up to date once the
  kernel sets it to a number). It drops when an output is cleared, a cell deleted or the
  notebook closed inside JupyterLab, but NOT when the browser tab is closed or reloaded: the
  page goes away without telling the kernel (checked in JupyterLab 4.6: the count stays 1).
- A heartbeat: a hidden `ipywidgets.Play`, a core widget whose model in the page steps its
  value on a timer and sends every step to the kernel. Its timer starts when the page sees
  `playing` turn true, so the kernel turns it off and on whenever a new view appears. A
  closed tab sends no more steps; a tab in the background sends them rarely (browsers slow
  the timers of hidden tabs), and the dashboard rests until it is looked at again.
- The kernel's own state: while a cell runs, the kernel handles no widget messages, so the
  steps wait unread; a page that was there when the cell started counts as there until the
  cell ends. Likewise before any view was reported: "Run All" queues every cell ahead of the
  page's first messages, so a widget shown by the first cell is counted as seen while the
  kernel stays busy (and for GONE_AFTER_S after), until the page gets a word in.

No kernel (a terminal IPython, a script) means no front end at all: `NoFrontEnd`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

HEARTBEAT_MS = 1000
# No step for this long while the kernel was idle: nobody is looking.
GONE_AFTER_S = 4.0


def kernel_shell() -> Any | None:
    """The IPython shell when it runs in a Jupyter kernel (it can show widgets), else None."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return shell if getattr(shell, "kernel", None) is not None else None


def heartbeat_widget() -> Any:
    """A hidden Play widget; its page-side model steps `value` every HEARTBEAT_MS once playing."""
    import ipywidgets

    return ipywidgets.Play(value=0, min=0, max=2**31 - 1, step=1, interval=HEARTBEAT_MS,
                           repeat=True, playing=False, show_repeat=False,
                           layout=ipywidgets.Layout(display="none"))


class KernelActivity:
    """When the running cell started, or when the last one ended, from IPython's events.

    busy_since is None while the kernel is idle, idle_since is None while it runs a cell.
    """

    def __init__(self, shell: Any, busy: bool) -> None:
        self.shell = shell
        now = time.monotonic()
        self.busy_since: float | None = now if busy else None
        self.idle_since: float | None = None if busy else now
        shell.events.register("pre_execute", self._started)
        shell.events.register("post_execute", self._ended)

    def _started(self) -> None:
        self.busy_since, self.idle_since = time.monotonic(), None

    def _ended(self) -> None:
        self.busy_since, self.idle_since = None, time.monotonic()

    def close(self) -> None:
        """Stop following the kernel; safe twice."""
        for event, callback in (("pre_execute", self._started), ("post_execute", self._ended)):
            try:
                self.shell.events.unregister(event, callback)
            except ValueError:
                pass


class Presence:
    """Whether a front end shows the widget that holds `beat` (see the module's docstring).

    on_change is called (from the kernel's thread that handles widget messages) when a view
    appears or goes, and when steps come back after a silence.
    """

    def __init__(self, beat: Any, on_change: Callable[[], None] = lambda: None,
                 activity: KernelActivity | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.beat = beat
        self.on_change = on_change
        self.activity = activity
        self.clock = clock
        self.last_beat = clock()  # a grace period for the first view to come
        self.reported = False  # a front end has told us of a view (or of its end)
        self._lock = threading.Lock()
        if beat._view_count is None:
            beat._view_count = 0  # ask the front end to count its views
        beat.observe(self._on_views, names="_view_count")
        beat.observe(self._on_beat, names="value")

    @property
    def views(self) -> int:
        """Views of the widget the front ends reported (stale after a tab closed)."""
        return self.beat._view_count or 0

    def seen(self) -> bool:
        """True when a view exists and the page behind it is alive (module docstring)."""
        activity = self.activity
        if self.views <= 0:
            if self.reported or activity is None:
                return False
            # No word from any page yet: it may have had no chance to send one.
            return activity.busy_since is not None or (
                activity.idle_since is not None
                and self.clock() - activity.idle_since < GONE_AFTER_S)
        if self.clock() - self.last_beat < GONE_AFTER_S:
            return True
        since = activity.busy_since if activity is not None else None
        return since is not None and since - self.last_beat < GONE_AFTER_S

    def _on_views(self, change: dict) -> None:
        self.reported = True
        if (change["new"] or 0) > (change["old"] or 0):
            self.last_beat = self.clock()
            with self._lock:  # two updates, in this order, to start the new page's timer
                self.beat.playing = False
                self.beat.playing = True
        self.on_change()

    def _on_beat(self, change: dict) -> None:
        was_seen = self.seen()
        self.last_beat = self.clock()
        if not was_seen:
            self.on_change()

    def close(self) -> None:
        """Stop listening; safe twice."""
        for handler, name in ((self._on_views, "_view_count"), (self._on_beat, "value")):
            try:
                self.beat.unobserve(handler, names=name)
            except ValueError:
                pass
        if self.activity is not None:
            self.activity.close()


class NoFrontEnd:
    """No kernel, so nothing can show a widget: never seen."""

    views = 0

    def seen(self) -> bool:
        """Never."""
        return False

    def close(self) -> None:
        """Nothing to release."""


__all__ = ["GONE_AFTER_S", "HEARTBEAT_MS", "KernelActivity", "NoFrontEnd", "Presence",
           "heartbeat_widget", "kernel_shell"]
