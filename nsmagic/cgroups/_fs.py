"""Helpers shared by the cgroup drivers: interface files, group names, cgroup mounts."""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from nsmagic.errors import CapabilityError, SpecError

# Every cgroup nsmagic creates is named with this prefix plus the owning process's pid, so
# that prune can tell ours from others' and find the orphans of a process that died.
NAME_PREFIX = "nsmagic-"

# Names are nsmagic-<owner pid>-<suffix>; the pid lets prune_orphans tell a live owner's groups
# from those left behind by a process that died without cleaning up.
_NAME_RE = re.compile(r"^" + re.escape(NAME_PREFIX) + r"(\d+)-([A-Za-z0-9_.-]+)$")
_SUFFIX_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def full_name(name: str, owner_pid: int | None = None) -> str:
    """Return the directory name for a group: 'c1' becomes 'nsmagic-<owner pid>-c1'.

    A name that already has the form nsmagic-<pid>-<suffix> is kept as it is, so names
    printed by list() can be passed back to open().
    """
    name = str(name).strip()
    if _NAME_RE.match(name):
        return name
    if name.startswith(NAME_PREFIX):
        name = name[len(NAME_PREFIX):]
    if not name or name in (".", "..") or not _SUFFIX_RE.match(name):
        raise SpecError(
            f"a cgroup name may use letters, digits, '_', '.' and '-' only, not {name!r}."
        )
    return f"{NAME_PREFIX}{owner_pid if owner_pid is not None else os.getpid()}-{name}"


def owner_of(name: str) -> int | None:
    """The owner pid encoded in an nsmagic group name, or None when it is not one of ours."""
    match = _NAME_RE.match(name)
    return int(match.group(1)) if match else None


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (zombies count as dead)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The state letter follows the last ')' (the command name may contain one).
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != b"Z"


def read_text(path: Path | str) -> str:
    """The content of a cgroup interface file, stripped."""
    # Plain system calls: a buffered text file costs several times more, and the fork
    # server reads a dozen of these as each container ends.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode().strip()


def read_optional(path: Path) -> str | None:
    """Like read_text, but None when the file does not exist (controller or kernel lacks it)."""
    try:
        return read_text(path)
    except FileNotFoundError:
        return None


def read_int(path: Path) -> int | None:
    """An integer file; None when absent or 'max'."""
    text = read_optional(path)
    if text is None or text == "max" or text == "":
        return None
    return int(text)


def write_raw(path: Path, value: str | int) -> None:
    """Write one value to an interface file in a single write(2), as the kernel expects.

    O_CREAT is deliberately absent: a missing interface file means the controller is not
    enabled, and creating a regular file there would hide that (and fails on cgroupfs anyway).
    OSError propagates unchanged.
    """
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def join_cgroup(directories: Iterable[str]) -> None:
    """Move the calling process into a group, one directory per hierarchy (v1) or the one
    directory of a v2 group; a process that moves itself needs no pid from anyone."""
    for directory in directories:
        write_raw(os.path.join(directory, "cgroup.procs"), 0)


def write_text(path: Path, value: str | int) -> None:
    """write_raw, with the kernel's refusals turned into nsmagic errors that name the file."""
    try:
        write_raw(path, value)
    except FileNotFoundError:
        raise CapabilityError(
            f"{path} does not exist: the controller it belongs to is not enabled for this cgroup."
        ) from None
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ERANGE, errno.EOVERFLOW):
            raise SpecError(
                f"the kernel refused {str(value)!r} for {path.name} ({exc.strerror})."
            ) from exc
        raise CapabilityError(
            f"cannot write {path.name} in {path.parent} ({exc.strerror})."
        ) from exc


def parse_flat_keyed(text: str) -> dict[str, int]:
    """Parse 'key value' lines (cpu.stat, memory.events, memory.stat, pids.events)."""
    result: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                result[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return result


def read_flat_keyed(path: Path) -> dict[str, int]:
    """parse_flat_keyed of a file; empty when the file is absent."""
    text = read_optional(path)
    return parse_flat_keyed(text) if text is not None else {}


def parse_pressure(text: str) -> dict[str, float]:
    """Parse a PSI file into {'some_avg10': .., 'some_avg60': .., 'some_total': .., 'full_...'}.

    total is in microseconds of stall time, the avgN are percentages.
    """
    result: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for item in rest.split():
            key, _, value = item.partition("=")
            try:
                result[f"{kind}_{key}"] = float(value)
            except ValueError:
                continue
    return result


def read_pids(path: Path) -> list[int]:
    """The pids listed in a cgroup.procs file (empty when the group is gone)."""
    text = read_optional(path)
    return [int(x) for x in text.split()] if text else []


def kill_pids(pids: Iterable[int]) -> None:
    """SIGKILL each pid, ignoring those that already exited."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def rmdir_retry(path: Path, timeout: float = 2.0) -> None:
    """rmdir a cgroup, retrying EBUSY for a while: the kernel releases a cgroup a moment after
    its last process has exited. Missing directories are fine (remove is idempotent)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    """Poll predicate until it is true or timeout seconds passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


@dataclass(frozen=True)
class Mount:
    """A cgroup filesystem mount: where it is, its root inside the hierarchy, its options."""

    mountpoint: Path
    root: str
    fstype: str  # "cgroup" or "cgroup2"
    controllers: frozenset[str]  # v1 controllers of the hierarchy (from the super options)
    read_only: bool


_V1_NAMES = {"cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "blkio", "devices",
             "hugetlb", "net_cls", "net_prio", "perf_event", "rdma", "misc"}


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def cgroup_mounts(mountinfo: str | None = None) -> list[Mount]:
    """The cgroup and cgroup2 mounts listed in /proc/self/mountinfo."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lfields, rfields = left.split(), right.split()
        if len(lfields) < 6 or len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        options = set(lfields[5].split(",")) | set(rfields[2].split(","))
        controllers = frozenset(options & _V1_NAMES) if rfields[0] == "cgroup" else frozenset()
        mounts.append(Mount(Path(_unescape(lfields[4])), _unescape(lfields[3]), rfields[0],
                            controllers, "ro" in lfields[5].split(",")))
    return mounts


def own_cgroups(text: str | None = None) -> dict[str, str]:
    """Map each hierarchy of /proc/self/cgroup to the caller's path in it.

    Keys are v1 controller names (one key per controller of a co-mounted hierarchy, such as
    'cpu' and 'cpuacct') and '' for the unified (v2) hierarchy.
    """
    if text is None:
        with open("/proc/self/cgroup") as f:
            text = f.read()
    result: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            result[""] = path
        for controller in controllers.split(","):
            if controller:
                result[controller] = path
    return result


def host_path(mount: Mount, cgroup_path: str) -> Path:
    """The directory of a cgroup path (as in /proc/self/cgroup) under a mount.

    A container without a cgroup namespace often has a sub-cgroup bind-mounted as its
    hierarchy root, while /proc/self/cgroup still shows the full path: strip the mount root.
    """
    root = mount.root.rstrip("/")
    if root and (cgroup_path == root or cgroup_path.startswith(root + "/")):
        cgroup_path = cgroup_path[len(root):]
    # A deleted cgroup shows " (deleted)"; the caller's own cgroup cannot be deleted, but be safe.
    cgroup_path = cgroup_path.removesuffix(" (deleted)")
    return mount.mountpoint / cgroup_path.lstrip("/")
