"""Resource limits of a container or cgroup, parsed and validated once."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields

from nsmagic.errors import SpecError

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
SIZE_FORMS = "a size such as 512K, 256M, 1.5G, 1GiB or plain bytes"
# Larger than any real machine; catches typos such as 1000000T before the kernel does.
MAX_SIZE = 1 << 50


def parse_size(text: str | int, option: str = "size") -> int:
    """Return a size in bytes from '512K', '256M', '1.5G', '1GiB' or plain bytes (1K = 1024)."""
    if isinstance(text, bool):
        raise SpecError(f"{option} must be {SIZE_FORMS}, not {text!r}.")
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE_RE.match(str(text))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _SIZE_UNITS:
            raise SpecError(f"{option} must be {SIZE_FORMS}, not {text!r}.")
        value = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if value <= 0:
        raise SpecError(f"{option} must be a positive size ({SIZE_FORMS}), not {text!r}.")
    if value > MAX_SIZE:
        raise SpecError(f"{option} {text!r} is larger than any machine (at most 1 PiB).")
    return value


def format_size(value: int) -> str:
    """Render bytes the way people read them: 64 MiB, 1.5 GiB, 512 KiB."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= factor:
            number = value / factor
            return f"{number:.0f} {unit}" if number == int(number) else f"{number:.1f} {unit}"
    return f"{value} B"


def parse_cpus(text: str | float, option: str = "--cpus") -> float:
    """Return a CPU quota in cores (0.5 = half of one core)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise SpecError(
            f"{option} must be a number of cores such as 0.5 or 2, not {text!r}."
        ) from None
    if not value > 0 or value != value or value > 4096:
        raise SpecError(
            f"{option} must be a number of cores above 0 (such as 0.5 or 2), not {text!r}."
        )
    return value


def parse_count(text: str | int, option: str, low: int = 1, high: int = 1 << 22) -> int:
    """Return a whole number between low and high."""
    try:
        value = int(str(text), 10)
    except ValueError:
        raise SpecError(
            f"{option} must be a whole number from {low} to {high}, not {text!r}."
        ) from None
    if not low <= value <= high:
        raise SpecError(f"{option} must be a whole number from {low} to {high}, not {text!r}.")
    return value


_CPUSET_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def parse_cpuset(text: str, option: str = "--cpuset") -> str:
    """Return a validated CPU list such as '0', '0-1' or '0,2'."""
    text = str(text).strip()
    if not _CPUSET_RE.match(text):
        raise SpecError(f"{option} must be a CPU list such as 0, 0-1 or 0,2, not {text!r}.")
    for part in text.split(","):
        if "-" in part:
            first, last = (int(x) for x in part.split("-"))
            if first > last:
                raise SpecError(f"{option} range {part!r} runs backwards; write it as low-high.")
    available = os.cpu_count() or 1
    highest = max(int(x) for x in re.split(r"[,-]", text))
    if highest >= available:
        raise SpecError(f"{option} must be a CPU list such as 0, 0-1 or 0,2 of this host's "
                        f"CPUs (0-{available - 1}), not {text!r}: there is no CPU {highest}.")
    return text


@dataclass(frozen=True)
class Limits:
    """What a cgroup may use; None means unlimited. Sizes are bytes, cpus are cores."""

    cpus: float | None = None
    memory: int | None = None
    memory_swap: int | None = None  # memory + swap, as Docker's --memory-swap
    pids: int | None = None
    cpu_weight: int | None = None  # 1..10000, cgroup v2 scale (100 = default)
    cpuset: str | None = None

    @classmethod
    def parse(
        cls,
        cpus: str | float | None = None,
        memory: str | int | None = None,
        memory_swap: str | int | None = None,
        pids: str | int | None = None,
        cpu_weight: str | int | None = None,
        cpuset: str | None = None,
    ) -> Limits:
        """Build Limits from user text, raising SpecError with one sentence on bad input."""
        limits = cls(
            cpus=None if cpus is None else parse_cpus(cpus),
            memory=None if memory is None else parse_size(memory, "--memory"),
            memory_swap=None if memory_swap is None else _parse_swap(memory_swap),
            pids=None if pids is None else parse_count(pids, "--pids", 1, 4194304),
            cpu_weight=(
                None if cpu_weight is None else parse_count(cpu_weight, "--cpu-weight", 1, 10000)
            ),
            cpuset=None if cpuset is None else parse_cpuset(cpuset),
        )
        if limits.memory_swap not in (None, -1):
            if limits.memory is None:
                raise SpecError("--memory-swap needs --memory too (it is memory plus swap).")
            if limits.memory_swap < limits.memory:
                raise SpecError(
                    "--memory-swap is memory plus swap, so it must be at least --memory."
                )
        return limits

    def is_empty(self) -> bool:
        """True when no limit is set."""
        return all(getattr(self, f.name) is None for f in fields(self))

    def describe(self) -> str:
        """One line such as 'cpus 0.5, memory 256 MiB, pids 64'."""
        parts = []
        if self.cpus is not None:
            parts.append(f"cpus {self.cpus:g}")
        if self.cpu_weight is not None:
            parts.append(f"cpu weight {self.cpu_weight}")
        if self.cpuset is not None:
            parts.append(f"cpuset {self.cpuset}")
        if self.memory is not None:
            parts.append(f"memory {format_size(self.memory)}")
        if self.memory_swap is not None:
            swap = "unlimited" if self.memory_swap == -1 else format_size(self.memory_swap)
            parts.append(f"memory+swap {swap}")
        if self.pids is not None:
            parts.append(f"pids {self.pids}")
        return ", ".join(parts) or "no limits"


def _parse_swap(text: str | int) -> int:
    if str(text).strip() == "-1":
        return -1
    return parse_size(text, "--memory-swap")
