"""cgroup v2 cpu controller: cpu.max (bandwidth), cpu.weight (share), cpu.stat."""

from __future__ import annotations

from pathlib import Path

from nsmagic.cgroups._fs import read_flat_keyed, read_optional, write_text
from nsmagic.cgroups.base import CgroupStats
from nsmagic.cgroups.convert import CPU_PERIOD_US, WEIGHT_DEFAULT, cpus_to_quota, quota_to_cpus
from nsmagic.cgroups.limits import Limits
from nsmagic.cgroups.sampling import KeptFiles, flat_value

CONTROLLER = "cpu"
# The files sample() reads (kept open by a FileStatsReader).
SAMPLED = ("cpu.stat",)


def is_set(limits: Limits) -> bool:
    """True when limits ask for something this controller enforces."""
    return limits.cpus is not None or limits.cpu_weight is not None


def apply(path: Path, limits: Limits) -> None:
    """Write cpu.max as '<quota> <period>' and cpu.weight."""
    if limits.cpus is not None:
        write_text(path / "cpu.max", f"{cpus_to_quota(limits.cpus)} {CPU_PERIOD_US}")
    if limits.cpu_weight is not None:
        write_text(path / "cpu.weight", limits.cpu_weight)


def read_limits(path: Path) -> dict:
    """cpus and cpu_weight in force (None for 'max' and for the default weight)."""
    result: dict = {}
    text = read_optional(path / "cpu.max")
    if text:
        quota, _, period = text.partition(" ")
        result["cpus"] = None if quota == "max" else quota_to_cpus(int(quota), int(period))
    weight = read_optional(path / "cpu.weight")
    if weight:
        result["cpu_weight"] = None if int(weight) == WEIGHT_DEFAULT else int(weight)
    return result


def stats(path: Path, record: CgroupStats) -> None:
    """cpu.stat counts microseconds; the record wants nanoseconds."""
    values = read_flat_keyed(path / "cpu.stat")
    # cpu.stat exists even without the cpu controller (usage only, from the core);
    # the throttling lines appear only when the controller is enabled.
    if "usage_usec" in values:
        record.cpu_usage_ns = values["usage_usec"] * 1000
        record.cpu_user_ns = values.get("user_usec", 0) * 1000
        record.cpu_system_ns = values.get("system_usec", 0) * 1000
    if "nr_periods" in values:
        record.cpu_periods = values["nr_periods"]
        record.cpu_throttled_periods = values.get("nr_throttled")
        if "throttled_usec" in values:
            record.cpu_throttled_ns = values["throttled_usec"] * 1000


def sample(files: KeptFiles, record: CgroupStats, limits: bool) -> None:
    """The live figures of cpu.stat: usage (microseconds there, nanoseconds in the record)
    and throttled periods."""
    data = files.read("cpu.stat")
    if data is not None:
        usage = flat_value(data, b"usage_usec")
        record.cpu_usage_ns = None if usage is None else usage * 1000
        record.cpu_throttled_periods = flat_value(data, b"nr_throttled")
