"""How often a dashboard may draw: at most `fps` frames a second, and on average at most a
share of one core, whatever a frame costs on this machine.

A frame's cost varies tenfold (a frame over the kept background against a full redraw) and
with the machine (a shared server, many containers), so the budget is kept as credit: CPU
seconds earned at `share` per second of wall time, up to `burst`, and spent by each frame
drawn. A dashboard that has been quiet draws at once; one whose frames cost more than the
budget draws fewer of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SHARE = 0.04  # of one core
BURST_S = 0.5  # CPU seconds of credit a quiet dashboard may spend at once


class FrameBudget:
    """Frames at most fps a second and, on average, at most share of one core."""

    def __init__(self, fps: float, share: float = SHARE, burst: float = BURST_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.gap = 1.0 / fps
        self.share = share
        self.burst = burst
        self.clock = clock
        self.credit = burst
        self._earned_at = clock()
        self._last_frame: float | None = None

    def _earn(self) -> float:
        now = self.clock()
        self.credit = min(self.burst, self.credit + (now - self._earned_at) * self.share)
        self._earned_at = now
        return now

    def wait(self) -> float:
        """Seconds until the next frame may be drawn (0.0: now)."""
        now = self._earn()
        until_gap = 0.0 if self._last_frame is None else self._last_frame + self.gap - now
        until_credit = -self.credit / self.share if self.credit < 0 else 0.0
        return max(0.0, until_gap, until_credit)

    def spend(self, cpu_seconds: float) -> None:
        """A frame was drawn now and cost cpu_seconds of CPU."""
        self._last_frame = self._earn()
        self.credit -= cpu_seconds


__all__ = ["BURST_S", "SHARE", "FrameBudget"]
