"""cgroup v2 cpuset controller: cpuset.cpus and cpuset.mems."""

from __future__ import annotations

from pathlib import Path

from nsmagic.cgroups._fs import read_optional, write_text
from nsmagic.cgroups.base import CgroupStats
from nsmagic.cgroups.limits import Limits

CONTROLLER = "cpuset"


def is_set(limits: Limits) -> bool:
    """True when limits ask for something this controller enforces."""
    return limits.cpuset is not None


def apply(path: Path, limits: Limits) -> None:
    """Write cpuset.cpus.

    Unlike v1, an empty v2 cpuset.cpus/mems means 'inherit the parent's effective set', so
    nothing has to be copied before attaching and cpuset.mems can stay untouched.
    """
    if limits.cpuset is not None:
        write_text(path / "cpuset.cpus", limits.cpuset)


def read_limits(path: Path) -> dict:
    """cpuset (None when empty, i.e. inherited)."""
    text = read_optional(path / "cpuset.cpus")
    if text is None:
        return {}
    return {"cpuset": text or None}


def stats(path: Path, record: CgroupStats) -> None:
    """No usage counters in cpuset."""
