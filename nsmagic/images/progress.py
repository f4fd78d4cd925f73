"""Progress of one layer or blob, as the callback of pull, push and export receives it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from nsmagic.images.digests import short


@dataclass(frozen=True)
class Progress:
    """Bytes done of a total for one blob; step is 'download', 'unpack', 'upload', 'copy' or
    'exists' (already there: done == total at once)."""

    digest: str
    step: str
    done: int
    total: int

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def __str__(self) -> str:
        percent = 100 * self.done // self.total if self.total else 100
        return f"{short(self.digest)} {self.step} {self.done}/{self.total} bytes ({percent}%)"


ProgressCallback = Callable[[Progress], None]


class Reporter:
    """Calls the callback for one blob at most every 0.1 s, and at the end, never twice alike."""

    def __init__(self, callback: ProgressCallback | None, digest: str, step: str,
                 total: int) -> None:
        self._callback = callback
        self._digest = digest
        self._step = step
        self._total = total
        self._last = 0.0
        self._reported = -1

    def __call__(self, done: int, force: bool = False) -> None:
        if self._callback is None or done == self._reported:
            return
        now = time.monotonic()
        if force or done >= self._total or now - self._last >= 0.1:
            self._last = now
            self._reported = done
            self._callback(Progress(self._digest, self._step, done, self._total))
