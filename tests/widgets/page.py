"""A pretend browser page for in-process tests: what a front end tells the kernel about a
dashboard it shows (a view of the widget, then the heartbeat's steps), as trait updates."""

from __future__ import annotations

import threading

from nsmagic.widgets import Dashboard


class FakePage:
    """Shows a dashboard: one view, and a heartbeat step every `every` seconds until close()."""

    def __init__(self, dashboard: Dashboard, every: float = 0.2) -> None:
        self.dashboard = dashboard
        self.every = every
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def open(self) -> FakePage:
        """The page renders the widget: its view is counted, its Play model starts stepping."""
        beat = self.dashboard.beat
        beat._view_count = (beat._view_count or 0) + 1
        assert beat.playing, "a new view turns the heartbeat on"
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._closed.wait(self.every):
            self.dashboard.beat.value += 1

    def close(self) -> None:
        """The tab is closed: no more steps, and (as in a real browser) the view stays counted."""
        self._closed.set()
        self._thread.join(5)

    def __enter__(self) -> FakePage:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
