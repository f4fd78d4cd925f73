"""cgroup v1 cpu controller: CFS quota/period, shares, and throttling counters."""

from __future__ import annotations

from pathlib import Path

from nsmagic.cgroups._fs import read_flat_keyed, read_int, write_text
from nsmagic.cgroups.base import CgroupStats
from nsmagic.cgroups.convert import (
    CPU_PERIOD_US,
    SHARES_DEFAULT,
    cpus_to_quota,
    quota_to_cpus,
    shares_to_weight,
    weight_to_shares,
)
from nsmagic.cgroups.limits import Limits
from nsmagic.cgroups.sampling import KeptFiles, flat_value

CONTROLLER = "cpu"
# The files sample() reads (kept open by a FileStatsReader).
SAMPLED = ("cpu.stat",)


def is_set(limits: Limits) -> bool:
    """True when limits ask for something this controller enforces."""
    return limits.cpus is not None or limits.cpu_weight is not None


def apply(path: Path, limits: Limits) -> None:
    """cpu.cfs_period_us and cpu.cfs_quota_us (quota = cpus * period), cpu.shares from weight."""
    if limits.cpus is not None:
        # The period goes first: the kernel checks quota/period against the parent's
        # bandwidth on each write, and our period is the default anyway in the usual case.
        if read_int(path / "cpu.cfs_period_us") != CPU_PERIOD_US:
            write_text(path / "cpu.cfs_period_us", CPU_PERIOD_US)
        write_text(path / "cpu.cfs_quota_us", cpus_to_quota(limits.cpus))
    if limits.cpu_weight is not None:
        # Limits speak the v2 scale (1..10000, default 100); v1 wants shares (2..262144,
        # default 1024): see convert.weight_to_shares for the formula.
        write_text(path / "cpu.shares", weight_to_shares(limits.cpu_weight))


def read_limits(path: Path) -> dict:
    """cpus (None for quota -1) and cpu_weight (None for the default 1024 shares)."""
    result: dict = {}
    quota, period = read_int(path / "cpu.cfs_quota_us"), read_int(path / "cpu.cfs_period_us")
    if quota is not None and period is not None:
        result["cpus"] = quota_to_cpus(quota, period)
    shares = read_int(path / "cpu.shares")
    if shares is not None:
        result["cpu_weight"] = None if shares == SHARES_DEFAULT else shares_to_weight(shares)
    return result


def stats(path: Path, record: CgroupStats) -> None:
    """Throttling from cpu.stat (throttled_time is already in nanoseconds on v1)."""
    values = read_flat_keyed(path / "cpu.stat")
    if "nr_periods" in values:
        record.cpu_periods = values["nr_periods"]
        record.cpu_throttled_periods = values.get("nr_throttled")
        record.cpu_throttled_ns = values.get("throttled_time")


def sample(files: KeptFiles, record: CgroupStats, limits: bool) -> None:
    """The live figure: how many CFS periods were throttled (cpu.stat nr_throttled)."""
    data = files.read("cpu.stat")
    if data is not None:
        record.cpu_throttled_periods = flat_value(data, b"nr_throttled")
