"""The container's filesystem view: a private mount tree, its own /proc and a private /tmp."""

from __future__ import annotations

import errno
from dataclasses import dataclass

from nsmagic.isolation import syscalls


@dataclass(frozen=True)
class Volume:
    """A bind mount of a host path into the container."""

    host: str
    container: str
    read_only: bool = False


@dataclass(frozen=True)
class MountOptions:
    """What the container's mount namespace should look like."""

    proc: bool = True  # a fresh /proc for the container's pid namespace
    private_tmp: bool = True  # an empty tmpfs on /tmp
    read_only: bool = False  # the root (and everything under it) read-only
    overlay: bool = False  # a writable root whose changes vanish with the container
    rootfs: str | None = None  # pivot into this directory instead of the host root
    volumes: tuple[Volume, ...] = ()

    @property
    def is_plain(self) -> bool:
        """True for the host root as it is, plus the container's /proc and /tmp."""
        return not (self.read_only or self.overlay or self.rootfs or self.volumes)


def setup_mount_namespace(options: MountOptions, cgroup_directories: list[str]) -> list[str]:
    """Build the container's filesystem view, in the order the kernel needs; return warnings.

    Runs inside the new mount namespace, as (container) root.
    """
    warnings: list[str] = []
    make_mounts_private()
    if not options.is_plain:
        raise NotImplementedError("--read-only, --overlay, --rootfs and --volume")
    if options.proc:
        warning = mount_proc()
        if warning:
            warnings.append(warning)
    if options.private_tmp:
        mount_private_tmp()
    if cgroup_directories:
        warning = mount_cgroup_views(cgroup_directories)
        if warning:
            warnings.append(warning)
    return warnings


def make_mounts_private() -> None:
    """Stop mount events propagating between the container and the host, both ways.

    Without this, a fresh /proc mounted inside a new mount namespace on a shared root
    (systemd's default) shows up on the host.
    """
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)


def mount_proc() -> str | None:
    """Mount a procfs of the current pid namespace on /proc; return a warning when refused.

    The kernel refuses a new procfs ("mount too revealing", EPERM) where parts of the host's
    /proc are masked, as in nested containers and hosted notebook pods. The pid namespace
    still isolates then, but /proc keeps showing the host's processes: say so, don't hide it.
    """
    try:
        syscalls.mount("proc", "/proc", "proc",
                       syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC)
    except OSError as error:
        if error.errno in (errno.EPERM, errno.EACCES):
            return ("/proc could not be remounted for the container's pid namespace (the host "
                    "masks parts of /proc); processes are isolated, but /proc still lists the "
                    "host's processes")
        raise
    return None


def mount_private_tmp() -> None:
    """Give the container an empty /tmp of its own that vanishes with it."""
    syscalls.mount("tmpfs", "/tmp", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV,
                   "mode=1777")


def mount_cgroup_views(group_directories: list[str]) -> str | None:
    """Show the container its own cgroup, read-only, where the host's hierarchies are.

    Each of the container's cgroup directories is bind-mounted over the mount point of its
    hierarchy, so `/sys/fs/cgroup/memory/memory.limit_in_bytes` (v1) or
    `/sys/fs/cgroup/memory.max` (v2) reads the container's own limits, as in Docker.
    Read-only, as in Docker: root inside must not raise its own limits. (A fresh cgroup
    mount in the cgroup namespace would do the same, but the kernel refuses to mount an
    existing v1 hierarchy again here, EBUSY.) Returns a warning when it cannot.
    """
    mount_points = _cgroup_mount_points()
    failed = []
    for directory in group_directories:
        target = max((m for m in mount_points if directory.startswith(m + "/")), key=len,
                     default=None)
        if target is None:
            continue
        try:
            syscalls.mount(directory, target, None, syscalls.MS_BIND)
            syscalls.mount(None, target, None, syscalls.MS_REMOUNT | syscalls.MS_BIND
                           | syscalls.MS_RDONLY | syscalls.MS_NOSUID | syscalls.MS_NODEV
                           | syscalls.MS_NOEXEC)
        except OSError as error:
            failed.append(f"{target} ({error.strerror})")
    if failed:
        return ("the container's own view of its cgroup could not be mounted at "
                + ", ".join(failed) + "; /sys/fs/cgroup there shows the host's groups")
    return None


def _cgroup_mount_points() -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2"):
                found.append(fields[4])
    return found
