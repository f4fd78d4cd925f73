"""Host memory of processes: qemu's /proc/PID/smaps split by purpose, and the PSS of a set."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

_SMAPS_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+)\s+(\S{4})\s+\S+\s+\S+\s+(\d+)\s*(.*)$")


@dataclass
class MemorySplit:
    """qemu's resident memory by purpose (bytes), from /proc/PID/smaps."""

    guest_ram_rss: int = 0  # the -m sized anonymous mapping: what the guest has touched
    guest_ram_pss: int = 0
    tcg_cache_rss: int = 0  # translated code (TCG only): executable anonymous or tcg-jit memfd
    tcg_cache_pss: int = 0
    vmm_rss: int = 0  # everything else: qemu's binary, libraries, heap, device state, stacks
    vmm_pss: int = 0
    guest_ram_found: bool = False

    @property
    def total_pss(self) -> int:
        """PSS of the whole qemu process."""
        return self.guest_ram_pss + self.tcg_cache_pss + self.vmm_pss


def _mappings(text: str) -> list[dict[str, Any]]:
    """Each mapping of smaps text: size, permissions, inode, path, Rss and Pss in bytes."""
    mappings: list[dict[str, Any]] = []
    for line in text.splitlines():
        header = _SMAPS_HEADER.match(line)
        if header:
            start, end = int(header.group(1), 16), int(header.group(2), 16)
            mappings.append(
                {
                    "size": end - start,
                    "perms": header.group(3),
                    "inode": int(header.group(4)),
                    "path": header.group(5).strip(),
                    "rss": 0,
                    "pss": 0,
                }
            )
        elif mappings and line.startswith(("Rss:", "Pss:")):
            key = "rss" if line.startswith("Rss:") else "pss"
            mappings[-1][key] = int(line.split()[1]) * 1024
    return mappings


def _anonymous(mapping: dict[str, Any]) -> bool:
    return mapping["inode"] == 0 and (not mapping["path"] or mapping["path"].startswith("[anon"))


def split_smaps(text: str, guest_ram_bytes: int) -> MemorySplit:
    """Split smaps text into guest RAM, TCG code cache and VMM overhead (see MemorySplit)."""
    mappings = _mappings(text)
    # Guest RAM is one anonymous read-write mapping of exactly the -m size (the largest
    # touched one if, oddly, several match).
    candidates = [
        m for m in mappings if _anonymous(m) and m["size"] == guest_ram_bytes and "w" in m["perms"]
    ]
    guest = max(candidates, key=lambda m: m["rss"]) if candidates else None
    split = MemorySplit()
    for m in mappings:
        if m is guest:
            split.guest_ram_rss += m["rss"]
            split.guest_ram_pss += m["pss"]
            split.guest_ram_found = True
        elif "tcg" in m["path"] or (_anonymous(m) and "x" in m["perms"]):
            split.tcg_cache_rss += m["rss"]
            split.tcg_cache_pss += m["pss"]
        else:
            split.vmm_rss += m["rss"]
            split.vmm_pss += m["pss"]
    return split


def read_split(pid: int, guest_ram_bytes: int) -> MemorySplit | None:
    """MemorySplit of a running qemu, or None when its smaps cannot be read."""
    try:
        return split_smaps(Path(f"/proc/{pid}/smaps").read_text(), guest_ram_bytes)
    except OSError:
        return None


def process_memory(processes: Iterable[psutil.Process]) -> tuple[int, int]:
    """(PSS, RSS) in bytes summed over processes, skipping those that vanished.

    PSS divides each shared page among the processes mapping it, so summing it over
    instances never counts a page twice; RSS counts shared pages in full in each.
    """
    pss = rss = 0
    for process in processes:
        try:
            info = process.memory_full_info()
        except (psutil.Error, OSError):
            continue
        pss += getattr(info, "pss", info.rss)
        rss += info.rss
    return pss, rss
