"""The interface every cgroup driver implements, and the one stats record they all return."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from nsmagic.cgroups._fs import NAME_PREFIX, owner_of, pid_alive
from nsmagic.cgroups.devices import DeviceRule
from nsmagic.cgroups.limits import Limits


@dataclass
class CgroupStats:
    """One sample of a cgroup's usage; None where the driver or kernel cannot tell."""

    timestamp: float  # time.time() when sampled
    cpu_usage_ns: int | None = None
    cpu_user_ns: int | None = None
    cpu_system_ns: int | None = None
    cpu_periods: int | None = None
    cpu_throttled_periods: int | None = None
    cpu_throttled_ns: int | None = None
    memory_current: int | None = None
    memory_peak: int | None = None
    memory_limit: int | None = None
    swap_current: int | None = None
    oom_events: int | None = None
    oom_kills: int | None = None
    pids_current: int | None = None
    pids_limit: int | None = None
    pids_denied: int | None = None  # forks refused at the pids limit (pids.events 'max')
    pressure: dict[str, dict[str, float]] = field(default_factory=dict)  # cpu/memory/io -> avg10..

    def as_dict(self) -> dict:
        """Plain dict for JSON and tables."""
        return asdict(self)


# The figures of CgroupStats that are limits rather than usage: they change only when
# someone applies new limits, so a StatsReader may re-read them less often than the rest.
LIMIT_FIELDS = ("memory_limit", "pids_limit")


class StatsReader:
    """Samples one group again and again, for a sampler thread: read() -> CgroupStats.

    This default runs Cgroup.stats() on each read (every figure, every file opened afresh).
    The v1 and v2 drivers return readers that open their few live files once and fill in
    only the figures a live plot needs (see nsmagic.cgroups.sampling). read() raises OSError
    once the group is gone; close() releases what the reader holds and is safe twice.
    """

    def __init__(self, cgroup: Cgroup) -> None:
        self.cgroup = cgroup

    def read(self) -> CgroupStats:
        """One sample."""
        return self.cgroup.stats()

    def close(self) -> None:
        """Release the reader's resources (nothing for this default)."""

    def __enter__(self) -> StatsReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Cgroup(abc.ABC):
    """A control group (or, for the rlimit driver, the best approximation of one)."""

    driver: str  # "v2", "v1" or "rlimit"

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The group's name relative to the driver's base (e.g. 'nsmagic-1234-c1')."""

    @abc.abstractmethod
    def apply(self, limits: Limits) -> None:
        """Set the given limits (None fields are left unchanged)."""

    @abc.abstractmethod
    def limits(self) -> Limits:
        """Read back the limits currently in force."""

    @abc.abstractmethod
    def attach(self, pid: int) -> None:
        """Move a process into the group."""

    @abc.abstractmethod
    def pids(self) -> list[int]:
        """The processes in the group."""

    @abc.abstractmethod
    def stats(self) -> CgroupStats:
        """Sample current usage."""

    def stats_reader(self, limits_every: int = 1) -> StatsReader:
        """A reader for repeated samples (see StatsReader); the figures in LIMIT_FIELDS are
        re-read every limits_every reads and repeated in between."""
        return StatsReader(self)

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL every process in the group."""

    @abc.abstractmethod
    def remove(self) -> None:
        """Kill what is left, then delete the group; safe to call twice."""

    def directories(self) -> list[str]:
        """The group's directories in cgroupfs (one per hierarchy); none for rlimit groups."""
        return []

    def approximations(self) -> list[str]:
        """Plain-language notes about limits (and device rules) this group only approximates."""
        return []


class CgroupDriver(abc.ABC):
    """Creates and finds cgroups of one kind on this host."""

    name: str  # "v2", "v1" or "rlimit"

    @abc.abstractmethod
    def create(self, name: str, limits: Limits | None = None,
               devices: Sequence[DeviceRule] | None = None) -> Cgroup:
        """Create a new group under the caller's own cgroup and apply limits; with devices, its
        processes may open or make only those device nodes (None: whatever the parent allows).

        Device rules the host cannot enforce are not an error: approximations() says which.
        """

    @abc.abstractmethod
    def open(self, name: str) -> Cgroup:
        """Open an existing group created by nsmagic; KeyError when there is none."""

    @abc.abstractmethod
    def list(self) -> list[str]:
        """Names of nsmagic's groups under the caller's cgroup."""

    def prune_orphans(self) -> list[str]:
        """Remove (killing what runs inside) the groups whose owner process is dead.

        Owners are recognised by the pid in the name, in the caller's pid namespace; a group
        whose owner pid was reused by an unrelated process is kept (the safe mistake).
        """
        removed = []
        for name in self.list():
            owner = owner_of(name)
            if owner is None or pid_alive(owner):
                continue
            try:
                self.open(name).remove()
            except KeyError:
                continue  # pruned concurrently by someone else
            removed.append(name)
        return removed


__all__ = ["LIMIT_FIELDS", "NAME_PREFIX", "Cgroup", "CgroupDriver", "CgroupStats", "StatsReader"]
