"""A baseline's progress: the stages it plans, each one reported as it is really reached, with
its elapsed time; the fraction reaches 1 only at "done", after the last figure."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# A VM boot's stages, in the order nsmagic.vm.console reports them; a boot that fails skips
# the rest of its stages, never the bar's end.
VM_STAGES = ("launched", "init", "ready", "sampled", "stopped")


@dataclass(frozen=True)
class ProgressEvent:
    """One stage reached (or a word on the current one): what, when, and how far the plan is."""

    stage: str  # a stage of plan(), reached or on the way; "start" before the first one
    run: int | None  # the round (1-based) of a per-run stage
    text: str  # what happened, in words
    elapsed_s: float  # since the baseline started
    step: int  # planned stages reached so far
    total: int  # stages planned; step == total only at "done"
    reached: bool = True  # False: a word on the way to the stage, the bar standing still

    @property
    def done(self) -> bool:
        """The baseline has finished: every figure is known."""
        return self.stage == "done" and self.step == self.total

    @property
    def fraction(self) -> float:
        """Planned stages reached, 0 to 1."""
        return self.step / self.total if self.total else 0.0


Progress = Callable[[ProgressEvent], None]


def plan(runs: int, workload: str) -> list[tuple[str, int | None]]:
    """The stages of a baseline of `runs` rounds, in order."""
    stages: list[tuple[str, int | None]] = [("image", None), ("accelerator", None)]
    stages.append(("containers-warm", None))
    for n in range(1, runs + 1):
        stages += [(stage, n) for stage in VM_STAGES]
        stages.append(("containers", n))
    if workload != "none":
        stages.append(("workload", None))
    stages.append(("disk", None))
    stages.append(("done", None))
    return stages


class ProgressTracker:
    """Turns stages reached (from any thread) into ProgressEvents for a Progress callback."""

    def __init__(self, runs: int, workload: str, report: Progress | None) -> None:
        self.stages = plan(runs, workload)
        self.report = report
        self.started = time.monotonic()
        self.step = 0
        self._lock = threading.Lock()

    def _emit(self, stage: str, run: int | None, text: str, reached: bool) -> None:
        elapsed = time.monotonic() - self.started
        event = ProgressEvent(stage, run, text, elapsed, self.step, len(self.stages), reached)
        if self.report is not None:
            try:
                self.report(event)
            except Exception:  # noqa: BLE001 - a broken display must not break the baseline
                self.report = None

    def reached(self, stage: str, text: str, run: int | None = None) -> None:
        """A planned stage is reached: the bar moves to it (stages skipped on the way count)."""
        with self._lock:
            index = self.stages.index((stage, run))
            self.step = max(self.step, index + 1)
            self._emit(stage, run, text, reached=True)

    def note(self, text: str, stage: str = "start", run: int | None = None) -> None:
        """Say what is happening now, the bar standing where it is."""
        with self._lock:
            self._emit(stage, run, text, reached=False)
