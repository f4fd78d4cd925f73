"""Conversions between user-facing limits and cgroup v1/v2 file values, with their formulas."""

from __future__ import annotations

import math

# The CFS bandwidth period nsmagic uses on both versions: 100 ms, the kernel's default.
CPU_PERIOD_US = 100_000
# The kernel refuses quotas below 1 ms (EINVAL on cfs_quota_us / cpu.max).
MIN_QUOTA_US = 1_000

SHARES_MIN, SHARES_DEFAULT, SHARES_MAX = 2, 1024, 262_144  # v1 cpu.shares
WEIGHT_MIN, WEIGHT_DEFAULT, WEIGHT_MAX = 1, 100, 10_000  # v2 cpu.weight

# v1 reports "no limit" as PAGE_COUNTER_MAX pages in bytes (9223372036854771712 with 4 KiB
# pages); anything this large means unlimited.
V1_UNLIMITED_FLOOR = 1 << 62


def cpus_to_quota(cpus: float, period_us: int = CPU_PERIOD_US) -> int:
    """CFS quota in microseconds per period: quota = cpus * period (0.5 cores -> 50000/100000)."""
    return max(MIN_QUOTA_US, round(cpus * period_us))


def quota_to_cpus(quota_us: int, period_us: int) -> float | None:
    """Inverse of cpus_to_quota; None for an unlimited quota (-1 on v1, 'max' on v2)."""
    if quota_us < 0 or period_us <= 0:
        return None
    return round(quota_us / period_us, 4)


def shares_to_weight(shares: int) -> int:
    """v1 cpu.shares -> v2 cpu.weight, the log-based mapping of runc >= 1.3.2 and crun >= 1.23.

    With l = log2(shares):  weight = ceil(10 ** ((l*l + 125*l) / 612 - 7/34)).
    The quadratic in l goes through the three points that matter: 2 -> 1 (minimum),
    1024 -> 100 (both defaults) and 262144 -> 10000 (maximum). The older linear formula
    1 + (shares - 2) * 9999 / 262142 mapped the default 1024 to 39, which is why it was replaced.
    """
    if shares <= SHARES_MIN:
        return WEIGHT_MIN
    if shares >= SHARES_MAX:
        return WEIGHT_MAX
    lg = math.log2(shares)
    exponent = (lg * lg + 125 * lg) / 612.0 - 7.0 / 34.0
    # The small epsilon keeps exact points (1024 -> 100) from rounding up through float noise.
    return min(WEIGHT_MAX, math.ceil(10**exponent - 1e-9))


def weight_to_shares(weight: int) -> int:
    """v2 cpu.weight -> v1 cpu.shares, the inverse of shares_to_weight.

    Solving l*l + 125*l - 612*(log10(weight) + 7/34) = 0 for l = log2(shares):
    l = (-125 + sqrt(125**2 + 4*612*(log10(weight) + 7/34))) / 2, shares ~ 2 ** l.
    So 1 -> 2, 100 -> 1024, 10000 -> 262144.
    """
    if weight <= WEIGHT_MIN:
        return SHARES_MIN
    if weight >= WEIGHT_MAX:
        return SHARES_MAX
    c = 612.0 * (math.log10(weight) + 7.0 / 34.0)
    lg = (-125.0 + math.sqrt(125.0**2 + 4.0 * c)) / 2.0
    exact = 2**lg
    # shares_to_weight rounds up (ceil), so floor(exact) maps back to weight itself whenever
    # any integer share value does; prefer it so that a weight written on v1 reads back equal.
    for shares in (math.floor(exact), math.ceil(exact)):
        if shares_to_weight(shares) == weight:
            return max(SHARES_MIN, min(SHARES_MAX, shares))
    return max(SHARES_MIN, min(SHARES_MAX, round(exact)))


def swap_v2(memory: int | None, memory_swap: int | None) -> int | str | None:
    """memory.swap.max from Docker-style memory+swap: swap = memory_swap - memory; -1 -> 'max'.

    v1's memsw limit counts memory plus swap, v2's swap.max counts swap alone.
    """
    if memory_swap is None:
        return None
    if memory_swap == -1:
        return "max"
    if memory is None:
        raise ValueError("memory_swap needs memory (it is memory plus swap)")
    return max(0, memory_swap - memory)


def v1_bytes(value: int | None) -> int | None:
    """A v1 byte counter/limit, with the kernel's 'unlimited' value mapped to None."""
    if value is None or value < 0 or value >= V1_UNLIMITED_FLOOR:
        return None
    return value
