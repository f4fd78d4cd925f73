"""The notebook kernel's list of its containers, and the events of their lives (start, exit,
OOM kill), for `%container ls`, the monitor and the dashboard."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nsmagic.cgroups.limits import Limits


@dataclass
class ContainerRecord:
    """One container as the kernel knows it; updated as its events arrive."""

    container_id: str
    name: str | None
    limits: Limits
    namespaces: frozenset[str]
    pid: int | None = None
    cgroup: str | None = None  # the cgroup's name for nsmagic.cgroups' driver .open()
    cgroup_driver: str | None = None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    state: str = "starting"  # starting, running, exited
    outcome: str | None = None  # e.g. "exit status 0", "killed: out of memory, ..."
    oom: dict[str, Any] | None = None
    # pid 1's pidfd while it runs (the Container's own, from its supervisor): how another
    # container joins this one's network without ever naming a pid.
    pidfd_of: Callable[[], int | None] | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        """What people call it: its name, else its short id."""
        return self.name or self.container_id[:8]


Event = tuple[str, ContainerRecord]  # ("started" | "exited" | "oom", record)
Listener = Callable[[str, ContainerRecord], None]


class Registry:
    """Thread-safe: the sampler thread reads it while cells start and end containers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, ContainerRecord] = {}
        self._listeners: list[Listener] = []

    def add(self, record: ContainerRecord) -> None:
        """A container is being started."""
        with self._lock:
            self._records[record.container_id] = record

    def started(self, container_id: str, pid: int, cgroup: str | None,
                driver: str | None) -> None:
        """Its pid 1 runs (and, where cgroups exist, its cgroup is known)."""
        record = self._update(container_id, pid=pid, cgroup=cgroup, cgroup_driver=driver,
                              state="running")
        if record:
            self._emit("started", record)

    def exited(self, container_id: str, outcome: str, oom: dict[str, Any] | None) -> None:
        """It ended; it stays listed (state 'exited') until forgotten."""
        record = self._update(container_id, state="exited", outcome=outcome, oom=oom,
                              ended_at=time.time())
        if record:
            if oom:
                self._emit("oom", record)
            self._emit("exited", record)

    def forget(self, container_id: str) -> None:
        """Drop an ended container from the list."""
        with self._lock:
            self._records.pop(container_id, None)

    def records(self, include_exited: bool = False) -> list[ContainerRecord]:
        """A snapshot, oldest first."""
        with self._lock:
            found = list(self._records.values())
        return [r for r in found if include_exited or r.state != "exited"]

    def running(self, name: str) -> ContainerRecord | None:
        """The running container of that name, if any (the newest, should two share it)."""
        with self._lock:
            found = [r for r in self._records.values()
                     if r.name == name and r.state == "running"]
        return found[-1] if found else None

    def get(self, container_id: str) -> ContainerRecord | None:
        """The record of that id, if known."""
        with self._lock:
            return self._records.get(container_id)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call listener(event, record) for every event; returns an unsubscribe function."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def _update(self, container_id: str, **changes: Any) -> ContainerRecord | None:
        with self._lock:
            record = self._records.get(container_id)
            if record is not None:
                for key, value in changes.items():
                    setattr(record, key, value)
            return record

    def _emit(self, event: str, record: ContainerRecord) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event, record)
            except Exception:  # noqa: BLE001 - a broken plot must not break a container
                pass


# The kernel-wide registry every Container reports to.
REGISTRY = Registry()
# Ended containers kept for `ls` and the dashboard's history, at most this many.
KEEP_EXITED = 50
