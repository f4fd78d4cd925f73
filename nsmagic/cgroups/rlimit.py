"""Fallback driver without a writable cgroupfs: per-process rlimits and psutil accounting.

Where this driver is used (an unprivileged user on a cgroup v1 host, a Binder pod whose
/sys/fs/cgroup is read-only) nothing can limit a *group* of processes, so each limit is mapped
to the closest per-process mechanism, and approximations() says plainly what that means.

Group state lives in this process only: a group cannot be found again by open() from another
process (KeyError says so). There is no kernel object to find, and a registry file could not
tell whether the processes it names are still the ones it limited.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import time
from collections.abc import Sequence
from dataclasses import fields, replace

import psutil

from nsmagic.cgroups import _fs
from nsmagic.cgroups.base import Cgroup, CgroupDriver, CgroupStats
from nsmagic.cgroups.convert import SHARES_DEFAULT, weight_to_shares
from nsmagic.cgroups.devices import DeviceRule
from nsmagic.cgroups.limits import Limits, format_size
from nsmagic.errors import CapabilityError, SpecError

# Groups of this process, by full name (see the module docstring).
_GROUPS: dict[str, RlimitGroup] = {}


def weight_to_nice(weight: int) -> int:
    """The nice value whose scheduler weight is closest to a cgroup cpu weight.

    CFS gives nice 0 a weight of 1024 (= 1024 shares = cpu.weight 100) and each nice step
    changes it by a factor of about 1.25: nice = -log(shares / 1024) / log(1.25), in -20..19.
    """
    shares = weight_to_shares(weight)
    nice = round(-math.log(shares / SHARES_DEFAULT) / math.log(1.25))
    return max(-20, min(19, nice))


def _parse_cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


class RlimitGroup(Cgroup):
    """A set of processes (attached ones and their descendants) sharing per-process limits."""

    driver = "rlimit"

    def __init__(self, name: str, limits: Limits | None = None) -> None:
        self._name = name
        self._limits = Limits()
        # pid -> psutil.Process; Process objects remember the start time, so a recycled pid
        # is not mistaken for one of ours.
        self._members: dict[int, psutil.Process] = {}
        self._roots: set[int] = set()
        # Last cumulative CPU seconds seen per member, and the CPU of members gone since.
        self._cpu_seen: dict[int, tuple[float, int | None]] = {}
        self._cpu_departed = 0.0
        self._peak = 0
        self.removed = False
        self.devices_asked = False  # device rules cannot be enforced (approximations says so)
        if limits is not None:
            self.apply(limits)

    def __repr__(self) -> str:
        return f"RlimitGroup({self._name!r}, {self._limits.describe()!r})"

    @property
    def name(self) -> str:
        """The group's name, e.g. 'nsmagic-1234-c1'."""
        return self._name

    def apply(self, limits: Limits) -> None:
        """Merge the set fields into the group's limits and apply them to every member now."""
        changes = {f.name: getattr(limits, f.name) for f in fields(limits)}
        self._limits = replace(self._limits, **{k: v for k, v in changes.items() if v is not None})
        for process in self._refresh():
            self._apply_to(process.pid)

    def limits(self) -> Limits:
        """The limits this group applies to its members."""
        return self._limits

    def attach(self, pid: int) -> None:
        """Apply the limits to the process with prlimit(2) and follow it and its descendants."""
        try:
            process = psutil.Process(pid)
        except psutil.NoSuchProcess:
            raise ProcessLookupError(f"no process with pid {pid} to attach") from None
        self._apply_to(pid)
        self._members[pid] = process
        self._roots.add(pid)

    def pids(self) -> list[int]:
        """Live attached processes and their descendants."""
        return sorted(p.pid for p in self._refresh())

    def stats(self) -> CgroupStats:
        """Sums over the members (psutil); memory is resident memory, shared pages counted twice."""
        members = self._refresh()
        cpu_total = self._cpu_departed
        user = system = 0.0
        rss = 0
        for process in members:
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    rss += process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            # children_* hold the CPU of descendants this process has reaped.
            user += times.user + times.children_user
            system += times.system + times.children_system
            total = times.user + times.system + times.children_user + times.children_system
            self._cpu_seen[process.pid] = (total, _ppid(process))
        cpu_total += user + system
        self._peak = max(self._peak, rss)
        return CgroupStats(
            timestamp=time.time(),
            cpu_usage_ns=int(cpu_total * 1e9),
            cpu_user_ns=int(user * 1e9),
            cpu_system_ns=int(system * 1e9),
            memory_current=rss,
            memory_peak=self._peak,
            memory_limit=self._limits.memory,
            pids_current=len(members),
            pids_limit=self._limits.pids,
        )

    def kill(self) -> None:
        """Stop every member (so none can fork meanwhile), then SIGKILL them all."""
        for _ in range(50):
            members = self._refresh()
            if not members:
                return
            for process in members:
                _signal(process, signal.SIGSTOP)
            # Listing again after the stop catches children forked in between.
            for process in self._refresh():
                _signal(process, signal.SIGKILL)
            _fs.wait_for(lambda: not self._refresh(), timeout=0.2)
        raise CapabilityError(f"processes of {self._name} survived SIGKILL.")

    def remove(self) -> None:
        """Kill the members and forget the group; safe to call twice."""
        if self.removed:
            return
        self.kill()
        self.removed = True
        _GROUPS.pop(self._name, None)

    def approximations(self) -> list[str]:
        """What this driver only approximates, in plain words, for the limits set."""
        limits = self._limits
        notes = [
            "No writable cgroup is available, so limits are per-process rlimits and not a "
            "sandbox: a process can lower them further but never raise them back.",
            "Usage figures are sums over the attached processes and their descendants "
            "(psutil): shared memory is counted once per process, and a process that "
            "leaves the tree before it is first seen is not counted.",
        ]
        if limits.cpus is not None:
            notes.append(
                f"The CPU quota ({limits.cpus:g} cores) is NOT enforced: only a cgroup can cap "
                "CPU time per period (RLIMIT_CPU would kill the process after a total number "
                "of CPU seconds instead)."
            )
        if limits.memory is not None:
            notes.append(
                f"Memory is limited per process to {format_size(limits.memory)} of virtual "
                "address space (RLIMIT_AS), not for the group as a whole and not resident "
                "memory: several processes may each use that much, and programs that reserve "
                "a lot of address space fail early. Allocations fail with MemoryError/ENOMEM "
                "instead of an OOM kill."
            )
        if limits.memory_swap is not None:
            notes.append("The memory+swap limit is not enforced (no per-process swap limit).")
        if limits.pids is not None:
            notes.append(
                f"The process limit ({limits.pids}) uses RLIMIT_NPROC, which counts every "
                "process of the same real user on the machine, not only this group's; "
                "root ignores it."
            )
        if limits.cpu_weight is not None:
            notes.append(
                f"The CPU weight {limits.cpu_weight} is approximated by the nice value "
                f"{weight_to_nice(limits.cpu_weight)}; unprivileged users can only lower priority."
            )
        if limits.cpuset is not None:
            notes.append(
                f"The cpuset {limits.cpuset} is CPU affinity (sched_setaffinity), which the "
                "processes could change back themselves."
            )
        if self.devices_asked:
            notes.append(
                "There is no device policy: without a writable cgroup nothing restricts which "
                "device nodes the processes open. A container in a user namespace (the "
                "default without root) cannot make device nodes (mknod needs the host's "
                "CAP_MKNOD) and what it mounts is nodev, so it can open only the nodes it is "
                "given and those whose permissions admit its uid on the host."
            )
        return notes

    def _apply_to(self, pid: int) -> None:
        limits = self._limits
        if limits.memory is not None:
            _prlimit(pid, resource.RLIMIT_AS, limits.memory, "memory")
        if limits.pids is not None:
            _prlimit(pid, resource.RLIMIT_NPROC, limits.pids, "pids")
        if limits.cpu_weight is not None:
            nice = weight_to_nice(limits.cpu_weight)
            try:
                if os.getuid() == 0 or nice > os.getpriority(os.PRIO_PROCESS, pid):
                    os.setpriority(os.PRIO_PROCESS, pid, nice)
            except (PermissionError, ProcessLookupError):
                pass  # described by approximations(); not worth failing the attach
        if limits.cpuset is not None:
            cpus = _parse_cpu_list(limits.cpuset)
            # Affinity is per thread: set it on every thread the process has now.
            for tid in _threads(pid):
                try:
                    os.sched_setaffinity(tid, cpus)
                except ProcessLookupError:
                    continue
                except OSError as exc:
                    raise CapabilityError(
                        f"cannot restrict pid {pid} to CPUs {limits.cpuset} ({exc.strerror})."
                    ) from exc

    def _refresh(self) -> list[psutil.Process]:
        # Follow descendants: a child forked after attach inherits the rlimits, so it is a
        # member too. Children whose parent died are reparented and still followed here,
        # because once seen they stay members until they exit.
        live: dict[int, psutil.Process] = {}
        for pid, process in list(self._members.items()):
            try:
                if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
                    continue
                live[pid] = process
                for child in process.children(recursive=True):
                    live.setdefault(child.pid, child)
            except psutil.NoSuchProcess:
                continue
        for pid in set(self._members) - set(live):
            total, ppid = self._cpu_seen.pop(pid, (0.0, None))
            # A member reaped by another member shows up in that member's children_* times.
            if ppid not in live:
                self._cpu_departed += total
        self._members = live
        return list(live.values())


def _prlimit(pid: int, which: int, value: int, what: str) -> None:
    soft, hard = resource.prlimit(pid, which)
    if hard != resource.RLIM_INFINITY and value > hard and os.getuid() != 0:
        # An unprivileged process cannot raise a hard limit: keep the lower one in force.
        value = hard
    try:
        resource.prlimit(pid, which, (value, value))
    except (ValueError, PermissionError) as exc:
        raise CapabilityError(f"cannot set the {what} limit of pid {pid} ({exc}).") from exc


def _signal(process: psutil.Process, sig: int) -> None:
    try:
        process.send_signal(sig)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def _ppid(process: psutil.Process) -> int | None:
    try:
        return process.ppid()
    except psutil.NoSuchProcess:
        return None


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


class RlimitDriver(CgroupDriver):
    """Groups of processes limited by rlimits, for hosts where no cgroupfs is writable."""

    name = "rlimit"

    def __init__(self, owner_pid: int | None = None) -> None:
        self.owner_pid = owner_pid if owner_pid is not None else os.getpid()

    def __repr__(self) -> str:
        return "RlimitDriver()"

    def create(self, name: str, limits: Limits | None = None,
               devices: Sequence[DeviceRule] | None = None) -> RlimitGroup:
        """A new group in this process's registry (device rules are only noted: see
        approximations())."""
        full = _fs.full_name(name, self.owner_pid)
        if full in _GROUPS:
            raise SpecError(f"a group named {full} already exists.")
        group = RlimitGroup(full, limits)
        group.devices_asked = devices is not None
        _GROUPS[full] = group
        return group

    def open(self, name: str) -> RlimitGroup:
        """A group created earlier by this process; KeyError otherwise."""
        full = _fs.full_name(name, self.owner_pid)
        try:
            return _GROUPS[full]
        except KeyError:
            raise KeyError(
                f"no group named {full} in this process: rlimit groups exist only in the "
                "process that created them (there is no writable cgroup to find them in)"
            ) from None

    def list(self) -> list[str]:
        """Names of this process's groups."""
        return sorted(_GROUPS)
