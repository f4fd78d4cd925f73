"""cgroup v1 driver: a group is one directory of the same name in each controller hierarchy."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from nsmagic.cgroups import _fs
from nsmagic.cgroups.base import Cgroup, CgroupDriver, CgroupStats, StatsReader
from nsmagic.cgroups.devices import DeviceRule
from nsmagic.cgroups.limits import Limits
from nsmagic.cgroups.sampling import FileStatsReader
from nsmagic.cgroups.v1 import cpu, cpuacct, cpuset, freezer, memory, pids
from nsmagic.cgroups.v1 import devices as device_controller
from nsmagic.errors import CapabilityError, SpecError

# cpuset first: its directory must be filled in before any process can be attached.
MODULES = {m.CONTROLLER: m for m in (cpuset, cpu, cpuacct, memory, pids)}
# devices only for groups given device rules: every hierarchy costs each attach a write.
HIERARCHIES = ("cpuset", "cpu", "cpuacct", "memory", "pids", "freezer", "devices")
REQUIRED = ("cpu", "memory", "pids")
# The controllers with live figures, in the order a StatsReader reads them.
SAMPLED = (cpuacct, cpu, memory)


def find_bases() -> tuple[dict[str, Path], dict[str, str]]:
    """The caller's own cgroup directory in each v1 hierarchy we use, and why others are missing.

    Returns (bases, problems): bases maps a controller to a writable directory; problems maps
    a controller to a plain-words reason it cannot be used.
    """
    own = _fs.own_cgroups()
    mounts = {}
    for mount in _fs.cgroup_mounts():
        for controller in mount.controllers:
            mounts.setdefault(controller, mount)
    bases: dict[str, Path] = {}
    problems: dict[str, str] = {}
    for controller in HIERARCHIES:
        mount = mounts.get(controller)
        if mount is None:
            problems[controller] = "no cgroup v1 hierarchy has this controller mounted"
            continue
        path = _fs.host_path(mount, own.get(controller, "/"))
        if not path.is_dir():
            problems[controller] = f"the caller's cgroup {path} is not visible"
        elif mount.read_only or not os.access(path, os.W_OK):
            why = "mounted read-only" if mount.read_only else f"not writable by uid {os.getuid()}"
            problems[controller] = f"{path} is {why}"
        else:
            bases[controller] = path
    return bases, problems


class V1Cgroup(Cgroup):
    """A cgroup v1 group: the directories of one name across the controller hierarchies."""

    driver = "v1"

    def __init__(self, dirs: dict[str, Path]) -> None:
        if not dirs:
            raise ValueError("a v1 group needs at least one directory")
        self.dirs = {c: Path(p) for c, p in dirs.items()}
        self.notes: list[str] = []  # what creating the group could not enforce

    def __repr__(self) -> str:
        return f"V1Cgroup({self.name!r}, {sorted(self.dirs)})"

    @property
    def name(self) -> str:
        """The directory name shared by every hierarchy, e.g. 'nsmagic-1234-c1'."""
        return next(iter(self.dirs.values())).name

    def directories(self) -> list[str]:
        """One directory per hierarchy."""
        return [str(path) for path in self.unique_dirs()]

    def unique_dirs(self) -> list[Path]:
        """One path per hierarchy (co-mounted controllers such as cpu,cpuacct share one)."""
        return list(dict.fromkeys(self.dirs.values()))

    def apply(self, limits: Limits) -> None:
        """Write each controller's files for the limits that are set."""
        for controller, module in MODULES.items():
            if not module.is_set(limits):
                continue
            if controller not in self.dirs:
                raise CapabilityError(
                    f"the {controller} controller is not available to nsmagic on this host, so "
                    f"{limits.describe()} cannot be enforced."
                )
            module.apply(self.dirs[controller], limits)

    def limits(self) -> Limits:
        """Read the limits back from the files."""
        values: dict = {}
        for controller, module in MODULES.items():
            if controller in self.dirs:
                values.update(module.read_limits(self.dirs[controller]))
        return Limits(**values)

    def attach(self, pid: int) -> None:
        """Write pid into cgroup.procs of every hierarchy (cpuset first, it is already filled)."""
        for path in self.unique_dirs():
            try:
                _fs.write_raw(path / "cgroup.procs", pid)
            except ProcessLookupError:
                raise ProcessLookupError(f"no process with pid {pid} to attach") from None
            except OSError as exc:
                raise CapabilityError(
                    f"cannot move pid {pid} into {path} ({exc.strerror})."
                ) from exc

    def pids(self) -> list[int]:
        """Processes in the group in any hierarchy (normally the same set in each)."""
        found: set[int] = set()
        for path in self.unique_dirs():
            found.update(_fs.read_pids(path / "cgroup.procs"))
        return sorted(found)

    def approximations(self) -> list[str]:
        """The device rules (asked at creation) this host could not enforce."""
        return list(self.notes)

    def stats(self) -> CgroupStats:
        """Sample every controller (v1 has no per-cgroup pressure files)."""
        record = CgroupStats(timestamp=time.time())
        for controller, module in MODULES.items():
            if controller in self.dirs:
                module.stats(self.dirs[controller], record)
        return record

    def stats_reader(self, limits_every: int = 1) -> StatsReader:
        """Usage, throttling, memory and OOM kills from the few files of SAMPLED's
        controllers, opened once (see nsmagic.cgroups.sampling)."""
        parts = [(self.dirs[m.CONTROLLER], m) for m in SAMPLED if m.CONTROLLER in self.dirs]
        return FileStatsReader(self, parts, limits_every)

    def kill(self) -> None:
        """SIGKILL every process in any hierarchy, repeating until none is left.

        With a freezer hierarchy the group is frozen first, so nothing can fork between our
        reading cgroup.procs and the kill; frozen v1 tasks only die once thawed.
        """
        frozen_dir = self.dirs.get("freezer")
        for _ in range(200):
            procs = self._all_pids()
            if not procs:
                return
            if frozen_dir is not None and frozen_dir.exists():
                try:
                    # Even a timed-out freeze helps: fewer tasks can fork meanwhile.
                    freezer.freeze(frozen_dir)
                except OSError:
                    pass
                procs = self._all_pids()
            _fs.kill_pids(procs)
            if frozen_dir is not None and frozen_dir.exists():
                try:
                    freezer.thaw(frozen_dir)
                except OSError:
                    pass
            _fs.wait_for(lambda: not self._all_pids(), timeout=0.2)
        raise CapabilityError(f"processes in {self.name} survived SIGKILL for 2 seconds.")

    def remove(self) -> None:
        """Kill, then rmdir the group and its sub-groups in every hierarchy; safe to call twice."""
        if self._remove_if_empty():
            return
        if not any(p.exists() for p in self.unique_dirs()):
            return
        self.kill()
        for path in self.unique_dirs():
            for directory in reversed(_walk(path)):
                _fs.rmdir_retry(directory)

    def _remove_if_empty(self) -> bool:
        # The usual case, when a container has ended: nothing left inside, no sub-groups.
        # One rmdir per hierarchy then does it all; anything else takes the long way.
        for path in self.unique_dirs():
            try:
                os.rmdir(path)
            except FileNotFoundError:
                continue
            except OSError:
                return False
        return True

    def _all_pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.unique_dirs():
            for directory in _walk(path):
                found.update(_fs.read_pids(directory / "cgroup.procs"))
        return sorted(found)


def _walk(path: Path) -> list[Path]:
    # Top-down: the group, then sub-groups a payload may have created inside it.
    if not path.exists():
        return []
    found = [path]
    for root, dirs, _ in os.walk(path):
        found.extend(Path(root) / d for d in dirs)
    return found


class V1Driver(CgroupDriver):
    """Creates groups in the v1 hierarchies, each under the caller's cgroup in that hierarchy.

    bases: controller -> the directory groups go under (default: the caller's own cgroups,
        from /proc/self/cgroup and /proc/self/mountinfo, keeping the writable ones).
    owner_pid: the pid written into new names (default: os.getpid()).
    """

    name = "v1"

    def __init__(
        self, bases: dict[str, Path | str] | None = None, owner_pid: int | None = None
    ) -> None:
        problems: dict[str, str] = {}
        if bases is None:
            found, problems = find_bases()
            missing = [c for c in REQUIRED if c not in found]
            if missing:
                raise CapabilityError(
                    "cgroup v1 is not usable: "
                    + "; ".join(f"{c}: {problems.get(c, 'unavailable')}" for c in missing)
                    + "."
                )
            bases = dict(found)
        self.bases = {c: Path(p) for c, p in bases.items()}
        self.problems = problems  # why a hierarchy of HIERARCHIES is not in bases
        self.owner_pid = owner_pid if owner_pid is not None else os.getpid()

    def __repr__(self) -> str:
        return f"V1Driver({ {c: str(p) for c, p in self.bases.items()} })"

    def create(self, name: str, limits: Limits | None = None,
               devices: Sequence[DeviceRule] | None = None) -> V1Cgroup:
        """mkdir the group in every hierarchy, fill in its cpuset, restrict its devices (in the
        devices hierarchy, only with device rules), then apply limits."""
        full = _fs.full_name(name, self.owner_pid)
        limits = limits or Limits()
        dirs = {c: base / full for c, base in self.bases.items()
                if c != "devices" or devices is not None}
        if any(p.exists() for p in dirs.values()):
            raise SpecError(f"a cgroup named {full} already exists.")
        group = V1Cgroup(dirs)
        try:
            for controller, path in dirs.items():
                try:
                    path.mkdir(exist_ok=True)  # co-mounted hierarchies share a directory
                except OSError as exc:
                    raise CapabilityError(
                        f"cannot create {path} ({exc.strerror})."
                    ) from exc
                if controller == "cpuset":
                    cpuset.prepare(path)
            if devices is not None:
                group.notes += self._restrict_devices(group, devices)
            group.apply(limits)
        except BaseException:
            group.remove()
            raise
        return group

    def _restrict_devices(self, group: V1Cgroup, rules: Sequence[DeviceRule]) -> list[str]:
        path = group.dirs.get("devices")
        if path is None:
            why = self.problems.get("devices", "nsmagic was given no devices hierarchy")
            return [f"no device policy: {why} (devices), so this group's processes may open "
                    "any device node they can make."]
        return device_controller.apply(path, rules)

    def open(self, name: str) -> V1Cgroup:
        """The existing group (even if only some hierarchies still have it); KeyError if none."""
        full = _fs.full_name(name, self.owner_pid)
        dirs = {c: base / full for c, base in self.bases.items() if (base / full).is_dir()}
        if not dirs:
            raise KeyError(f"no nsmagic cgroup named {full} in any cgroup v1 hierarchy")
        return V1Cgroup(dirs)

    def list(self) -> list[str]:
        """Every nsmagic-<pid>-<suffix> group under the bases, in any hierarchy."""
        names: set[str] = set()
        for base in set(self.bases.values()):
            try:
                entries = os.listdir(base)
            except FileNotFoundError:
                continue
            names.update(e for e in entries if _fs.owner_of(e) is not None and (base / e).is_dir())
        return sorted(names)
