"""Control groups: one interface over the cgroup v2, cgroup v1 and rlimit drivers."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from nsmagic.cgroups import _fs
from nsmagic.cgroups._fs import cgroup_mounts, join_cgroup, owner_of, pid_alive
from nsmagic.cgroups.base import NAME_PREFIX, Cgroup, CgroupDriver, CgroupStats
from nsmagic.cgroups.limits import Limits, format_size, parse_size
from nsmagic.errors import CapabilityError

__all__ = [
    "NAME_PREFIX",
    "cgroup_mounts",
    "join_cgroup",
    "owner_of",
    "pid_alive",
    "Cgroup",
    "CgroupDriver",
    "CgroupStats",
    "HostCgroups",
    "Limits",
    "describe_host",
    "detect_driver",
    "format_size",
    "parse_size",
    "prune_orphans",
]

# What a cgroup driver needs to enforce --cpus, --memory and --pids and report their usage.
NEEDED = ("cpu", "memory", "pids")


@dataclass
class HostCgroups:
    """What the cgroup filesystem of this host allows the calling process to do."""

    version: str  # "v2", "hybrid" (v1 controllers plus a cgroup2 mount), "v1" or "none"
    driver: str  # what detect_driver() picks: "v2", "v1" or "rlimit"
    controllers: list[str]  # controllers the chosen cgroup driver can use (empty for rlimit)
    writable: bool  # True when nsmagic can create cgroups here
    bases: dict[str, str]  # where groups would go: controller (or "unified") -> directory
    reason: str  # plain words: why this driver, and why not the better ones
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """Plain dict for JSON and `doctor`."""
        return asdict(self)


def _version(mounts: list[_fs.Mount]) -> str:
    has_v1 = any(m.fstype == "cgroup" and m.controllers for m in mounts)
    has_v2 = any(m.fstype == "cgroup2" for m in mounts)
    if has_v1 and has_v2:
        return "hybrid"
    return "v1" if has_v1 else "v2" if has_v2 else "none"


def _probe_v2() -> tuple[dict | None, str]:
    """(details, "") when the v2 driver can work here, else (None, why not)."""
    from nsmagic.cgroups.v2 import ALWAYS, INIT_LEAF, find_base

    try:
        mount, base = find_base()
    except (CapabilityError, OSError) as exc:
        return None, str(exc)
    available = (_fs.read_optional(base / "cgroup.controllers") or "").split()
    missing = [c for c in ALWAYS if c not in available]
    if missing:
        offered = ", ".join(available) or "no controllers"
        return None, (
            f"the cgroup v2 hierarchy at {mount.mountpoint} offers {offered} to {base}, "
            f"but not {', '.join(missing)}"
        )
    # Delegation (rootless) means owning the directory and these two files.
    files = (base, base / "cgroup.subtree_control", base / "cgroup.procs")
    writable = not mount.read_only and all(os.access(p, os.W_OK) for p in files)
    if not writable:
        why = "mounted read-only" if mount.read_only else f"not writable by uid {os.getuid()}"
        return None, f"the caller's cgroup v2 {base} is {why}"
    enabled = (_fs.read_optional(base / "cgroup.subtree_control") or "").split()
    is_root = not (base / "cgroup.type").exists()
    needs_enabling = any(c not in enabled for c in ALWAYS)
    if not is_root and needs_enabling and _fs.read_pids(base / "cgroup.procs"):
        return None, (
            f"the caller's cgroup v2 {base} holds processes, and cgroup v2 forbids handing "
            "controllers to sub-groups of a cgroup with processes; run the notebook in a "
            f"cgroup of its own, or use V2Driver(evacuate=True) to move them into {INIT_LEAF}"
        )
    return {"controllers": available, "bases": {"unified": str(base)}}, ""


def _probe_v1() -> tuple[dict | None, str]:
    from nsmagic.cgroups.v1 import REQUIRED, find_bases

    try:
        bases, problems = find_bases()
    except OSError as exc:
        return None, str(exc)
    missing = [c for c in REQUIRED if c not in bases]
    if missing:
        return None, "cgroup v1: " + "; ".join(f"{problems[c]} ({c})" for c in missing)
    return {"controllers": sorted(bases), "bases": {c: str(p) for c, p in bases.items()}}, ""


def describe_host() -> HostCgroups:
    """Probe the cgroup filesystem: version, usable controllers, writability, and why not."""
    try:
        mounts = _fs.cgroup_mounts()
    except OSError:
        mounts = []
    version = _version(mounts)
    notes = []
    if version in ("v1", "hybrid"):
        notes.append("cgroup v1 has no per-cgroup pressure (PSI) files; only /proc/pressure.")
    v2, why_not_v2 = _probe_v2()
    if v2 is not None:
        return HostCgroups(version, "v2", v2["controllers"], True, v2["bases"],
                           "cgroup v2 with a writable cgroup of our own.", notes)
    v1, why_not_v1 = _probe_v1()
    if v1 is not None:
        return HostCgroups(version, "v1", v1["controllers"], True, v1["bases"],
                           f"cgroup v1 hierarchies are writable (v2 unusable: {why_not_v2}).",
                           notes)
    reasons = [r for r in (why_not_v2, why_not_v1) if r]
    if version == "none":
        reasons = ["no cgroup filesystem is mounted"]
    return HostCgroups(
        version, "rlimit", [], False, {},
        "no writable cgroup, so limits fall back to per-process rlimits: " + "; ".join(reasons)
        + ".",
        notes,
    )


def detect_driver() -> CgroupDriver:
    """The best driver this process can use: v2, else v1, else rlimit (see describe_host)."""
    host = describe_host()
    if host.driver == "v2":
        from nsmagic.cgroups.v2 import V2Driver

        return V2Driver()
    if host.driver == "v1":
        from nsmagic.cgroups.v1 import V1Driver

        return V1Driver()
    from nsmagic.cgroups.rlimit import RlimitDriver

    return RlimitDriver()


def prune_orphans(driver: CgroupDriver | None = None) -> list[str]:
    """Remove the nsmagic groups whose owner process is dead; returns their names."""
    return (driver or detect_driver()).prune_orphans()
