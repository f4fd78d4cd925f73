"""Recorded CPU and memory history of containers: `nsmagic.stats.history("web")`.

Samples are taken by the kernel-wide monitor (`nsmagic.monitor.MONITOR`) while something
watches it: an open dashboard or live plot, or `record()`:

    with nsmagic.stats.record():          # or: rec = nsmagic.stats.record(); ...; rec.close()
        nsmagic.run("x = bytearray(50_000_000)", memory="128M")
    h = nsmagic.stats.history(nsmagic.stats.containers()[-1])
    h["memory_current"], h.events, h.to_csv("run.csv"), h.to_json()
"""

from __future__ import annotations

from nsmagic.monitor import COLUMNS, MONITOR, History, Watch


def history(name_or_id: str) -> History:
    """One container's samples (dict of plain lists, see COLUMNS) and events.

    name_or_id: the container's name, id, id prefix or label. KeyError when it was never
    sampled (nothing watched while it ran).
    """
    return MONITOR.history(name_or_id)


def containers() -> list[str]:
    """Ids of the containers with a history, oldest first."""
    return [s.container_id for s in MONITOR.series()]


def record(rate: float | None = None) -> Watch:
    """Start sampling every container (until the returned handle is closed)."""
    return MONITOR.watch(rate=rate)


__all__ = ["COLUMNS", "History", "containers", "history", "record"]
