"""cgroup v1 cpuset controller: cpuset.cpus/mems, copied from the parent before use."""

from __future__ import annotations

from pathlib import Path

from nsmagic.cgroups._fs import read_optional, write_text
from nsmagic.cgroups.base import CgroupStats
from nsmagic.cgroups.limits import Limits
from nsmagic.errors import CapabilityError

CONTROLLER = "cpuset"


def is_set(limits: Limits) -> bool:
    """True when limits ask for something this controller enforces."""
    return limits.cpuset is not None


def prepare(path: Path) -> None:
    """Copy cpuset.cpus and cpuset.mems from the parent into a new group.

    A new v1 cpuset starts with both empty (unless the parent has cgroup.clone_children),
    and attaching a process to it then fails with ENOSPC.
    """
    for name in ("cpuset.mems", "cpuset.cpus"):
        if read_optional(path / name):
            continue
        value = read_optional(path.parent / name)
        if not value:
            raise CapabilityError(
                f"{path.parent / name} is empty, so no cpuset can be made below it."
            )
        write_text(path / name, value)


def apply(path: Path, limits: Limits) -> None:
    """Write cpuset.cpus (must be a subset of the parent's)."""
    if limits.cpuset is not None:
        write_text(path / "cpuset.cpus", limits.cpuset)


def read_limits(path: Path) -> dict:
    """cpuset, or None when it is the parent's set (not restricted)."""
    own = read_optional(path / "cpuset.cpus")
    if own is None:
        return {}
    return {"cpuset": None if own == read_optional(path.parent / "cpuset.cpus") else own}


def stats(path: Path, record: CgroupStats) -> None:
    """No usage counters in cpuset."""
