"""Every nsmagic cgroup the whole machine shows, whoever made it, and the orphans among them.

A driver sees only the groups under the caller's own cgroup (CgroupDriver.list()). This
module looks under every cgroup mount this process sees for directories named
nsmagic-<owner pid>-<id>: the groups of other notebooks' fork servers, of `nsmagic run`, and
of owners that died without cleaning up. Owners are pids of this pid namespace.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nsmagic.cgroups._fs import cgroup_mounts, owner_of, pid_alive
from nsmagic.cgroups.base import Cgroup

# How deep under a mount point to look: nsmagic's groups sit under their owner's cgroup,
# which is rarely more than a few levels down (systemd slices, a pod's cgroup).
MAX_DEPTH = 8


@dataclass
class MachineGroup:
    """One nsmagic cgroup found on the machine: its directory in each hierarchy."""

    name: str  # nsmagic-<owner pid>-<id>
    v1: dict[str, Path] = field(default_factory=dict)  # controller -> directory
    v2: Path | None = None  # its directory in the unified hierarchy

    @property
    def owner(self) -> int:
        """The pid of the process that made it (from its name)."""
        return owner_of(self.name) or 0

    @property
    def owner_alive(self) -> bool:
        """True while that process exists in this pid namespace (zombies count as dead)."""
        return pid_alive(self.owner)

    @property
    def driver(self) -> str:
        """Its driver's name: v2 for a group of the unified hierarchy, else v1."""
        return "v2" if self.v2 is not None else "v1"

    def directories(self) -> list[str]:
        """Its directories, one per hierarchy."""
        if self.v2 is not None:
            return [str(self.v2)]
        return sorted({str(path) for path in self.v1.values()})

    def cgroup(self) -> Cgroup:
        """The group as a Cgroup of its driver (stats, limits, pids, remove)."""
        if self.v2 is not None:
            from nsmagic.cgroups.v2 import V2Cgroup

            return V2Cgroup(self.v2)
        from nsmagic.cgroups.v1 import V1Cgroup

        return V1Cgroup(self.v1)

    def summary(self) -> dict[str, Any]:
        """Name, owner (pid, alive, command), driver, directories, pids, limits and stats,
        as plain data (what `nsmagic ls --json` prints per group)."""
        group = self.cgroup()
        try:
            pids = group.pids()
            stats = group.stats().as_dict()
            limits = group.limits()
        except OSError:  # removed while we looked
            pids, stats, limits = [], {}, None
        alive = self.owner_alive
        return {
            "name": self.name, "owner_pid": self.owner, "owner_alive": alive,
            "owner_command": _command_of(self.owner) if alive else None,
            "driver": self.driver, "directories": self.directories(), "pids": pids,
            "limits": asdict(limits) if limits is not None else None,
            "limits_text": limits.describe() if limits is not None else "-",
            "stats": stats,
        }


def find_all(max_depth: int = MAX_DEPTH) -> dict[str, MachineGroup]:
    """Every directory named nsmagic-<pid>-<id> under the cgroup mounts this process sees,
    by name (a v1 group appears once, with its directory in each hierarchy)."""
    groups: dict[str, MachineGroup] = {}
    try:
        mounts = cgroup_mounts()
    except OSError:
        return groups
    for mount in mounts:
        top = str(mount.mountpoint)
        for root, dirs, _ in os.walk(top):
            for name in dirs:
                if owner_of(name) is None:
                    continue
                group = groups.setdefault(name, MachineGroup(name))
                path = Path(root) / name
                if mount.fstype == "cgroup2":
                    group.v2 = path
                else:
                    for controller in mount.controllers:
                        group.v1.setdefault(controller, path)
            # Not into our groups (a payload's sub-groups are part of its group), nor deeper
            # than max_depth.
            dirs[:] = [d for d in dirs if owner_of(d) is None]
            if root[len(top):].count("/") >= max_depth:
                dirs.clear()
    return {name: g for name, g in groups.items() if g.v2 is not None or g.v1}


def lookup(name: str, groups: dict[str, MachineGroup] | None = None) -> list[MachineGroup]:
    """The groups called name, or whose <id> part is name (a container id, a %cgroup name)."""
    found = find_all() if groups is None else groups
    return [g for full, g in found.items() if full == name or full.split("-", 2)[2] == name]


@dataclass
class PruneReport:
    """What prune_dead_owners did."""

    removed: list[str] = field(default_factory=list)  # names of the groups removed
    kept: dict[str, int] = field(default_factory=dict)  # name -> processes still inside
    failed: dict[str, str] = field(default_factory=dict)  # name -> why it was not removed


def prune_dead_owners(groups: dict[str, MachineGroup] | None = None) -> PruneReport:
    """Remove every group of the machine whose owner is dead and that holds no process.

    A group with processes is kept: its owner's pid is dead *here*, but the group may belong
    to another pid namespace, where that pid means someone else.
    """
    report = PruneReport()
    for group in (find_all() if groups is None else groups).values():
        if group.owner_alive:
            continue
        cgroup = group.cgroup()
        inside = cgroup.pids()
        if inside:
            report.kept[group.name] = len(inside)
            continue
        try:
            cgroup.remove()
            report.removed.append(group.name)
        except OSError as error:
            report.failed[group.name] = str(error)
    return report


def _command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return "-"


__all__ = ["MAX_DEPTH", "MachineGroup", "PruneReport", "find_all", "lookup",
           "prune_dead_owners"]
