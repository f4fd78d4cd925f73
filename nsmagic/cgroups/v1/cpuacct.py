"""cgroup v1 cpuacct controller: CPU time used by the group (no limits)."""

from __future__ import annotations

import os
from pathlib import Path

from nsmagic.cgroups._fs import read_flat_keyed, read_int
from nsmagic.cgroups.base import CgroupStats
from nsmagic.cgroups.limits import Limits
from nsmagic.cgroups.sampling import KeptFiles

CONTROLLER = "cpuacct"
# The files sample() reads (kept open by a FileStatsReader).
SAMPLED = ("cpuacct.usage",)


def is_set(limits: Limits) -> bool:
    """cpuacct only accounts; it enforces nothing."""
    return False


def apply(path: Path, limits: Limits) -> None:
    """Nothing to apply."""


def read_limits(path: Path) -> dict:
    """No limits live here."""
    return {}


def clock_ticks() -> int:
    """USER_HZ, the unit of cpuacct.stat (100 on every mainstream Linux)."""
    return os.sysconf("SC_CLK_TCK")


def stats(path: Path, record: CgroupStats) -> None:
    """cpuacct.usage (ns); user/system from usage_user/usage_sys (ns, kernel 4.7+) when present,
    else from cpuacct.stat, which counts USER_HZ ticks: ns = ticks * 1e9 / USER_HZ."""
    record.cpu_usage_ns = read_int(path / "cpuacct.usage")
    user, system = read_int(path / "cpuacct.usage_user"), read_int(path / "cpuacct.usage_sys")
    if user is None or system is None:
        ticks = read_flat_keyed(path / "cpuacct.stat")
        if "user" in ticks:
            scale = 1_000_000_000 // clock_ticks()
            user, system = ticks["user"] * scale, ticks.get("system", 0) * scale
    record.cpu_user_ns, record.cpu_system_ns = user, system


def sample(files: KeptFiles, record: CgroupStats, limits: bool) -> None:
    """The live figure: total CPU time (cpuacct.usage, already in nanoseconds)."""
    record.cpu_usage_ns = files.read_int("cpuacct.usage")
