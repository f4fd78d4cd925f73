"""cgroup v2 driver: one directory per group in the unified hierarchy, under the caller's cgroup."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Sequence
from pathlib import Path

from nsmagic.cgroups import _fs
from nsmagic.cgroups.base import Cgroup, CgroupDriver, CgroupStats, StatsReader
from nsmagic.cgroups.devices import DeviceRule
from nsmagic.cgroups.limits import Limits
from nsmagic.cgroups.sampling import FileStatsReader
from nsmagic.cgroups.v2 import cpu, cpuset, memory, pids
from nsmagic.cgroups.v2 import devices as device_filter
from nsmagic.errors import CapabilityError, SpecError

# Order matters only for cpuset: set the CPUs before anything else might be attached.
CONTROLLERS = (cpuset, cpu, memory, pids)
# Enabled for every group so that stats work even without limits; cpuset only when asked.
ALWAYS = ("cpu", "memory", "pids")
PRESSURE = ("cpu", "memory", "io")
# The controllers with live figures, in the order a StatsReader reads them.
SAMPLED = (cpu, memory)
# The leaf that receives the caller's cgroup's processes when evacuate=True (see V2Driver).
# It deliberately does not match nsmagic-<pid>-<suffix>, so list() and prune never touch it.
INIT_LEAF = "nsmagic-init"


def find_base() -> tuple[_fs.Mount, Path]:
    """The cgroup2 mount and the caller's own cgroup directory in it.

    Raises CapabilityError saying why when there is no cgroup2 mount.
    """
    mounts = [m for m in _fs.cgroup_mounts() if m.fstype == "cgroup2"]
    if not mounts:
        raise CapabilityError("no cgroup2 filesystem is mounted (this host uses cgroup v1 only).")
    # Prefer /sys/fs/cgroup over other mounts of the same hierarchy (bind mounts in containers).
    mounts.sort(key=lambda m: (str(m.mountpoint) != "/sys/fs/cgroup", len(str(m.mountpoint))))
    mount = mounts[0]
    own = _fs.own_cgroups().get("", "/")
    base = _fs.host_path(mount, own)
    if base.name == INIT_LEAF:
        # We evacuated ourselves earlier: groups belong next to the leaf, not inside it.
        base = base.parent
    return mount, base


class V2Cgroup(Cgroup):
    """A cgroup v2 group: one directory in the unified hierarchy."""

    driver = "v2"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.notes: list[str] = []  # what creating the group could not enforce

    def __repr__(self) -> str:
        return f"V2Cgroup({str(self.path)!r})"

    def approximations(self) -> list[str]:
        """The device rules (asked at creation) this host could not enforce."""
        return list(self.notes)

    def directories(self) -> list[str]:
        """The group's one directory in the unified hierarchy."""
        return [str(self.path)]

    @property
    def name(self) -> str:
        """The directory name, e.g. 'nsmagic-1234-c1'."""
        return self.path.name

    def apply(self, limits: Limits) -> None:
        """Write each controller's files for the limits that are set."""
        for controller in CONTROLLERS:
            if controller.is_set(limits):
                controller.apply(self.path, limits)

    def limits(self) -> Limits:
        """Read the limits back from the files."""
        values: dict = {}
        for controller in CONTROLLERS:
            values.update(controller.read_limits(self.path))
        return Limits(**values)

    def attach(self, pid: int) -> None:
        """Write pid into cgroup.procs (moves the whole process, all its threads)."""
        try:
            _fs.write_raw(self.path / "cgroup.procs", pid)
        except ProcessLookupError:
            raise ProcessLookupError(f"no process with pid {pid} to attach") from None
        except OSError as exc:
            raise CapabilityError(
                f"cannot move pid {pid} into {self.path} ({exc.strerror}); a non-root user "
                "must own the cgroup.procs of both cgroups and of their common ancestor."
            ) from exc

    def pids(self) -> list[int]:
        """Processes in the group (not in its sub-groups)."""
        return _fs.read_pids(self.path / "cgroup.procs")

    def populated(self) -> bool:
        """True while any process lives in the group or below it ('populated' in cgroup.events)."""
        events = _fs.read_flat_keyed(self.path / "cgroup.events")
        if "populated" in events:
            return events["populated"] == 1
        return bool(self.pids())

    def stats(self) -> CgroupStats:
        """Sample the controllers' counters and the group's own pressure (PSI) files."""
        record = CgroupStats(timestamp=time.time())
        for controller in CONTROLLERS:
            controller.stats(self.path, record)
        for resource in PRESSURE:
            text = _fs.read_optional(self.path / f"{resource}.pressure")
            if text:
                record.pressure[resource] = _fs.parse_pressure(text)
        return record

    def stats_reader(self, limits_every: int = 1) -> StatsReader:
        """Usage, throttling, memory and OOM kills from the few files of SAMPLED's
        controllers, opened once (see nsmagic.cgroups.sampling)."""
        return FileStatsReader(self, [(self.path, m) for m in SAMPLED], limits_every)

    def kill(self) -> None:
        """SIGKILL everything in the group and below, then wait until it is empty."""
        if not self.path.exists():
            return
        if (self.path / "cgroup.kill").exists():
            # cgroup.kill (5.14+) kills the whole subtree atomically, with no fork race.
            _fs.write_raw(self.path / "cgroup.kill", 1)
        else:
            freeze = self.path / "cgroup.freeze"
            if freeze.exists():
                # Frozen tasks cannot fork between our reading cgroup.procs and the kill;
                # SIGKILL still reaches frozen tasks on v2 (unlike v1's freezer).
                _fs.write_raw(freeze, 1)
            for _ in range(100):
                procs = [p for d in self._dirs() for p in _fs.read_pids(d / "cgroup.procs")]
                if not procs:
                    break
                _fs.kill_pids(procs)
                time.sleep(0.01)
            if freeze.exists():
                _fs.write_raw(freeze, 0)
        # Processes whose parent has not reaped them yet keep the group populated briefly.
        _fs.wait_for(lambda: not self.populated(), timeout=2.0)

    def remove(self) -> None:
        """Kill, wait for 'populated 0', then rmdir (sub-groups first). Safe to call twice."""
        try:
            os.rmdir(self.path)  # the usual case once a container has ended: empty, no sub-groups
            return
        except FileNotFoundError:
            return
        except OSError:
            pass  # processes or sub-groups inside: the long way
        self.kill()
        for directory in reversed(self._dirs()):
            _fs.rmdir_retry(directory)

    def _dirs(self) -> list[Path]:
        # Top-down list of the group and any sub-groups someone created inside it.
        found = [self.path]
        for root, dirs, _ in os.walk(self.path):
            found.extend(Path(root) / d for d in dirs)
        return found


class V2Driver(CgroupDriver):
    """Creates groups in the unified hierarchy under the caller's own cgroup.

    base: where groups go (default: the caller's cgroup, from /proc/self/cgroup).
    owner_pid: the pid written into new names (default: os.getpid()).
    evacuate: cgroup v2 forbids processes in a non-root cgroup that hands controllers to its
        children (the "no internal processes" rule). When the caller's own cgroup has
        processes and controllers must be enabled, evacuate=True first moves every process
        of that cgroup into a leaf named 'nsmagic-init' (what podman and systemd do); the
        default raises CapabilityError instead, because that move also changes the cgroup of
        other processes (the Jupyter server, a shell) that share the caller's cgroup.
    """

    name = "v2"

    def __init__(
        self, base: Path | str | None = None, owner_pid: int | None = None, evacuate: bool = False
    ) -> None:
        if base is None:
            _, base = find_base()
        self.base = Path(base)
        self.owner_pid = owner_pid if owner_pid is not None else os.getpid()
        self.evacuate = evacuate

    def __repr__(self) -> str:
        return f"V2Driver(base={str(self.base)!r})"

    def create(self, name: str, limits: Limits | None = None,
               devices: Sequence[DeviceRule] | None = None) -> V2Cgroup:
        """mkdir base/nsmagic-<owner>-<name> with the needed controllers, attach the device
        filter (with device rules), then apply limits."""
        full = _fs.full_name(name, self.owner_pid)
        limits = limits or Limits()
        wanted = list(ALWAYS) + (["cpuset"] if limits.cpuset is not None else [])
        self.enable_controllers(wanted)
        path = self.base / full
        try:
            path.mkdir()
        except FileExistsError:
            raise SpecError(f"a cgroup named {full} already exists in {self.base}.") from None
        except OSError as exc:
            raise CapabilityError(
                f"cannot create a cgroup in {self.base} ({exc.strerror})."
            ) from exc
        group = V2Cgroup(path)
        try:
            if devices is not None:
                # Before any process is attached: a filter added later cannot take back a
                # device node opened meanwhile.
                group.notes += device_filter.apply(path, devices)
            group.apply(limits)
        except BaseException:
            group.remove()
            raise
        return group

    def open(self, name: str) -> V2Cgroup:
        """The existing group of that name; KeyError when there is none."""
        full = _fs.full_name(name, self.owner_pid)
        path = self.base / full
        if not path.is_dir():
            raise KeyError(f"no nsmagic cgroup named {full} in {self.base}")
        return V2Cgroup(path)

    def list(self) -> list[str]:
        """Every nsmagic-<pid>-<suffix> group under base (of any owner)."""
        try:
            entries = os.listdir(self.base)
        except FileNotFoundError:
            return []
        return sorted(
            e for e in entries if _fs.owner_of(e) is not None and (self.base / e).is_dir()
        )

    def enable_controllers(self, wanted: list[str]) -> None:
        """Make sure base's cgroup.subtree_control hands the wanted controllers to children."""
        available = set((_fs.read_optional(self.base / "cgroup.controllers") or "").split())
        enabled = set((_fs.read_optional(self.base / "cgroup.subtree_control") or "").split())
        unavailable = [c for c in wanted if c not in available]
        if "cpuset" in unavailable:
            raise CapabilityError(
                f"the cpuset controller is not available in {self.base}, so --cpuset cannot be "
                "enforced (on systemd hosts, delegation usually leaves cpuset out)."
            )
        missing = [c for c in wanted if c in available and c not in enabled]
        if not missing:
            return
        if self._has_internal_processes():
            if not self.evacuate:
                raise CapabilityError(
                    f"cannot enable the {', '.join(missing)} controller(s) for sub-groups of "
                    f"{self.base}: it holds processes itself, and cgroup v2 forbids processes in "
                    "a cgroup whose controllers are handed to children (no internal processes). "
                    "Start the notebook in a cgroup of its own (e.g. systemd-run --user --scope "
                    "-p Delegate=yes jupyter lab), or use V2Driver(evacuate=True) to move them "
                    f"into {self.base / INIT_LEAF}."
                )
            self._evacuate()
        try:
            _fs.write_raw(self.base / "cgroup.subtree_control", " ".join("+" + c for c in missing))
        except OSError as exc:
            raise CapabilityError(
                f"cannot enable the {', '.join(missing)} controller(s) in "
                f"{self.base / 'cgroup.subtree_control'} ({exc.strerror})."
            ) from exc

    def _has_internal_processes(self) -> bool:
        # The root cgroup has no cgroup.type and is exempt from the rule.
        if not (self.base / "cgroup.type").exists():
            return False
        return bool(_fs.read_pids(self.base / "cgroup.procs"))

    def _evacuate(self) -> None:
        leaf = self.base / INIT_LEAF
        leaf.mkdir(exist_ok=True)
        # Processes can fork while we move them; repeat until the cgroup is empty.
        for _ in range(50):
            procs = _fs.read_pids(self.base / "cgroup.procs")
            if not procs:
                return
            for pid in procs:
                try:
                    _fs.write_raw(leaf / "cgroup.procs", pid)
                except ProcessLookupError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.ESRCH:
                        raise CapabilityError(
                            f"cannot move pid {pid} into {leaf} ({exc.strerror})."
                        ) from exc
        raise CapabilityError(f"processes kept appearing in {self.base}; could not evacuate it.")
