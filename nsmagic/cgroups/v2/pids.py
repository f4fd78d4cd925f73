"""cgroup v2 pids controller: pids.max, pids.current, pids.events."""

from __future__ import annotations

from pathlib import Path

from nsmagic.cgroups._fs import read_flat_keyed, read_int, read_optional, write_text
from nsmagic.cgroups.base import CgroupStats
from nsmagic.cgroups.limits import Limits

CONTROLLER = "pids"


def is_set(limits: Limits) -> bool:
    """True when limits ask for something this controller enforces."""
    return limits.pids is not None


def apply(path: Path, limits: Limits) -> None:
    """Write pids.max; fork()/clone() in the group then fail with EAGAIN at the limit."""
    if limits.pids is not None:
        write_text(path / "pids.max", limits.pids)


def read_limits(path: Path) -> dict:
    """pids (None for 'max')."""
    if read_optional(path / "pids.max") is None:
        return {}
    return {"pids": read_int(path / "pids.max")}


def stats(path: Path, record: CgroupStats) -> None:
    """pids.current, pids.max and how many forks were refused ('max' in pids.events)."""
    record.pids_current = read_int(path / "pids.current")
    record.pids_limit = read_int(path / "pids.max")
    events = read_flat_keyed(path / "pids.events")
    if "max" in events:
        record.pids_denied = events["max"]
