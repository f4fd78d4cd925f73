"""cgroup v1 memory controller: limit, memory+swap limit (memsw), usage, peak, OOM counters."""

from __future__ import annotations

from pathlib import Path

from nsmagic.cgroups._fs import read_flat_keyed, read_int, read_optional, write_text
from nsmagic.cgroups.base import CgroupStats
from nsmagic.cgroups.convert import v1_bytes
from nsmagic.cgroups.limits import Limits
from nsmagic.cgroups.sampling import KeptFiles, flat_value
from nsmagic.errors import CapabilityError, SpecError

CONTROLLER = "memory"
LIMIT = "memory.limit_in_bytes"
MEMSW = "memory.memsw.limit_in_bytes"
# The files sample() reads (kept open by a FileStatsReader).
SAMPLED = ("memory.usage_in_bytes", "memory.max_usage_in_bytes", LIMIT, "memory.oom_control")


def is_set(limits: Limits) -> bool:
    """True when limits ask for something this controller enforces."""
    return limits.memory is not None or limits.memory_swap is not None


def write_order(
    memory: int | None, memory_swap: int | None, current_memsw: int | None
) -> list[tuple[str, int]]:
    """The (file, value) writes for new limits, in an order the kernel accepts.

    v1 insists that memsw (memory + swap) >= memory at every moment, so when both change:
    raise memsw first when it grows (new memsw > current memsw, or -1 = unlimited), otherwise
    lower memory first. Proof: if new memsw > current memsw >= current memory, writing memsw
    first is valid; otherwise new memory <= new memsw <= current memsw, so memory first is.
    current_memsw is the raw file value (None when the file does not exist).
    """
    writes: list[tuple[str, int]] = []
    if memory is not None:
        writes.append((LIMIT, memory))
    if memory_swap is not None:
        swap = (MEMSW, memory_swap)
        growing = memory_swap == -1 or current_memsw is None or memory_swap > current_memsw
        if growing:
            writes.insert(0, swap)
        else:
            writes.append(swap)
    return writes


def apply(path: Path, limits: Limits) -> None:
    """Write memory.limit_in_bytes and memory.memsw.limit_in_bytes in a valid order."""
    has_memsw = (path / MEMSW).exists()
    if limits.memory_swap is not None and not has_memsw:
        raise CapabilityError(
            "this kernel does not account swap per cgroup (no memory.memsw.limit_in_bytes; "
            "boot with swapaccount=1), so a memory+swap limit cannot be set."
        )
    current_memsw = read_int(path / MEMSW) if has_memsw else None
    for name, value in write_order(limits.memory, limits.memory_swap, current_memsw):
        try:
            write_text(path / name, value)
        except SpecError:
            if name == LIMIT and limits.memory_swap is None and has_memsw:
                raise SpecError(
                    f"memory {value} is above the group's memory+swap limit "
                    f"({current_memsw}); set memory_swap as well."
                ) from None
            raise


def read_limits(path: Path) -> dict:
    """memory and memory_swap (-1 when memory is limited but swap is not)."""
    result: dict = {}
    memory = v1_bytes(read_int(path / LIMIT))
    if read_optional(path / LIMIT) is not None:
        result["memory"] = memory
    if (path / MEMSW).exists() and memory is not None:
        memsw = v1_bytes(read_int(path / MEMSW))
        result["memory_swap"] = -1 if memsw is None else memsw
    return result


def stats(path: Path, record: CgroupStats) -> None:
    """Usage, peak (max_usage_in_bytes), swap and the OOM-kill counter of memory.oom_control.

    v1 has no equivalent of v2's memory.events 'oom' count: failcnt counts every time usage
    hit the limit (reclaim usually succeeds), so it is not reported as oom_events.
    memory.oom_control shows 'under_oom' (a state, 1 while a task waits for memory with the
    OOM killer disabled) and, since 4.13, an 'oom_kill' counter of processes killed.
    """
    record.memory_current = read_int(path / "memory.usage_in_bytes")
    record.memory_peak = read_int(path / "memory.max_usage_in_bytes")
    record.memory_limit = v1_bytes(read_int(path / LIMIT))
    stat = read_flat_keyed(path / "memory.stat")
    if "swap" in stat:
        record.swap_current = stat["swap"]
    else:
        memsw = read_int(path / "memory.memsw.usage_in_bytes")
        if memsw is not None and record.memory_current is not None:
            record.swap_current = max(0, memsw - record.memory_current)
    control = read_flat_keyed(path / "memory.oom_control")
    if "oom_kill" in control:
        record.oom_kills = control["oom_kill"]


def sample(files: KeptFiles, record: CgroupStats, limits: bool) -> None:
    """The live figures: usage, peak, OOM kills and (when limits) the limit, as in stats()."""
    record.memory_current = files.read_int("memory.usage_in_bytes")
    record.memory_peak = files.read_int("memory.max_usage_in_bytes")
    if limits:
        record.memory_limit = v1_bytes(files.read_int(LIMIT))
    control = files.read("memory.oom_control")
    if control is not None:
        record.oom_kills = flat_value(control, b"oom_kill")
