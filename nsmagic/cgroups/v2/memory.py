"""cgroup v2 memory controller: memory.max, memory.swap.max, usage, peak and OOM events."""

from __future__ import annotations

from pathlib import Path

from nsmagic.cgroups._fs import read_flat_keyed, read_int, read_optional, write_text
from nsmagic.cgroups.base import CgroupStats
from nsmagic.cgroups.convert import swap_v2
from nsmagic.cgroups.limits import Limits
from nsmagic.cgroups.sampling import KeptFiles, flat_value
from nsmagic.errors import CapabilityError

CONTROLLER = "memory"
# The files sample() reads (kept open by a FileStatsReader).
SAMPLED = ("memory.current", "memory.peak", "memory.max", "memory.events")


def is_set(limits: Limits) -> bool:
    """True when limits ask for something this controller enforces."""
    return limits.memory is not None or limits.memory_swap is not None


def apply(path: Path, limits: Limits) -> None:
    """Write memory.max, then memory.swap.max.

    v2 has no ordering constraint between the two (unlike v1's memsw), because swap.max
    counts swap alone: swap = memory_swap - memory, and -1 (unlimited) becomes 'max'.
    """
    if limits.memory is not None:
        write_text(path / "memory.max", limits.memory)
    swap = swap_v2(limits.memory, limits.memory_swap)
    if swap is not None:
        if not (path / "memory.swap.max").exists():
            # Kernels booted with swapaccount=0 (or without CONFIG_MEMCG_SWAP) have no
            # swap files at all: say so instead of silently allowing swap.
            raise CapabilityError(
                "this kernel does not account swap per cgroup (no memory.swap.max), "
                "so a memory+swap limit cannot be set; leave memory_swap unset."
            )
        write_text(path / "memory.swap.max", swap)


def read_limits(path: Path) -> dict:
    """memory and memory_swap (memory + swap, -1 when swap is unlimited)."""
    result: dict = {}
    memory = read_int(path / "memory.max")
    if read_optional(path / "memory.max") is not None:
        result["memory"] = memory
    swap_text = read_optional(path / "memory.swap.max")
    if swap_text is not None and memory is not None:
        result["memory_swap"] = -1 if swap_text == "max" else memory + int(swap_text)
    return result


def stats(path: Path, record: CgroupStats) -> None:
    """memory.current, memory.peak (kernel 5.19+), swap and the OOM counters of memory.events."""
    record.memory_current = read_int(path / "memory.current")
    record.memory_peak = read_int(path / "memory.peak")
    record.memory_limit = read_int(path / "memory.max")
    record.swap_current = read_int(path / "memory.swap.current")
    events = read_flat_keyed(path / "memory.events")
    if events:
        # 'oom' counts allocations that hit the limit with nothing left to reclaim,
        # 'oom_kill' the processes the OOM killer then killed in this group.
        record.oom_events = events.get("oom", 0)
        record.oom_kills = events.get("oom_kill", 0)


def sample(files: KeptFiles, record: CgroupStats, limits: bool) -> None:
    """The live figures: usage, peak (5.19+), OOM kills and (when limits) memory.max."""
    record.memory_current = files.read_int("memory.current")
    record.memory_peak = files.read_int("memory.peak")
    if limits:
        record.memory_limit = files.read_int("memory.max")
    events = files.read("memory.events")
    if events is not None:
        record.oom_kills = flat_value(events, b"oom_kill")
