"""Ctrl-C in tests as Jupyter sends it: SIGINT to the kernel's process, from another thread.

signal.raise_signal() in another thread would signal that thread alone: Python runs the
handler in the main thread, but only once a select() it is blocked in returns by itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

from nsmagic.runtime.registry import REGISTRY


def a_container_runs() -> bool:
    """True while some container of this process runs (what a Ctrl-C should find)."""
    return any(record.state == "running" for record in REGISTRY.records())


@contextlib.contextmanager
def interrupt_after(seconds: float, once=a_container_runs) -> Iterator[None]:  # noqa: ANN001
    """Send this process SIGINT seconds after once() is true (unless the block has ended)."""
    done = threading.Event()

    def interrupt() -> None:
        deadline = time.monotonic() + 30
        while not once() and time.monotonic() < deadline and not done.is_set():
            time.sleep(0.01)
        if not done.wait(seconds):
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
