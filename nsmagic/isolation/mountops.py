"""The mount operations a container's set-up is made of, each raising an OSError that names
its step and path: binds, tmpfs, read-only flags, detached copies of host mounts."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from nsmagic.isolation import syscalls

TMPFS_FLAGS = syscalls.MS_NOSUID | syscalls.MS_NODEV


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Re-raise an OSError with the step it happened in, so the user learns where."""
    try:
        yield
    except OSError as error:
        detail = error.strerror or str(error)
        if error.filename and str(error.filename) not in detail:
            detail += f": {error.filename}"
        raise OSError(error.errno, f"{what}: {detail}") from error


def mount_tmpfs(target: str, mode: int, flags: int = TMPFS_FLAGS, size: str | None = None
                ) -> None:
    """A fresh tmpfs at target (its pages count against the writer's memory cgroup)."""
    data = f"mode={mode:o}" + (f",size={size}" if size else "")
    syscalls.mount("tmpfs", target, "tmpfs", flags, data)


def bind(source: str, target: str, recursive: bool = False, read_only: bool = False) -> None:
    """Bind source onto target (which must exist), optionally read-only."""
    syscalls.mount(source, target, None,
                   syscalls.MS_BIND | (syscalls.MS_REC if recursive else 0))
    if read_only:
        make_read_only(target, recursive=recursive)


def create_mount_point(path: str, is_directory: bool, mode: int = 0o755) -> None:
    """An empty directory or file to mount on, with its parents."""
    os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
    if is_directory:
        os.makedirs(path, mode, exist_ok=True)
    elif not os.path.lexists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def ensure_directory(path: str, what: str) -> None:
    """path as a directory (created if missing), never a link or a file."""
    with step(f"creating {what} {path}"):
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
            raise OSError(errno.ENOTDIR, f"{path} exists and is not a directory")
        if not os.path.isdir(path):
            os.mkdir(path, 0o755)


# --- read-only flags -----------------------------------------------------------------------
def make_read_only(path: str, recursive: bool) -> None:
    """Make the mount at path (and, recursive, every mount under it) read-only.

    mount_setattr(2) does a whole tree atomically (Linux 5.12+); before that, one bind
    remount per mount listed in /proc/self/mountinfo (mounts hidden under others missed).
    """
    try:
        syscalls.mount_setattr(path, attr_set=syscalls.MOUNT_ATTR_RDONLY, recursive=recursive)
        return
    except OSError as error:
        if error.errno != errno.ENOSYS:
            raise
    points = [path]
    if recursive:
        prefix = path.rstrip("/") + "/"
        points += [m.point for m in mountinfo() if m.point.startswith(prefix)]
    for point in dict.fromkeys(points):
        _remount(point, syscalls.MS_RDONLY)


def make_writable(path: str) -> None:
    """Clear the read-only flag of the one mount at path (one we mounted ourselves)."""
    try:
        syscalls.mount_setattr(path, attr_clr=syscalls.MOUNT_ATTR_RDONLY)
        return
    except OSError as error:
        if error.errno != errno.ENOSYS:
            raise
    _remount(path, 0)


def _remount(path: str, extra: int) -> None:
    # A bind remount replaces all per-mount flags: keep nosuid/nodev/noexec/atime ones, or a
    # user namespace gets EPERM for trying to clear flags the host locked.
    kept = 0
    flags = os.statvfs(path).f_flag
    for st_flag, ms_flag in ((os.ST_NOSUID, syscalls.MS_NOSUID),
                             (os.ST_NODEV, syscalls.MS_NODEV),
                             (os.ST_NOEXEC, syscalls.MS_NOEXEC),
                             (os.ST_NOATIME, 1024), (os.ST_NODIRATIME, 2048),
                             (os.ST_RELATIME, 1 << 21)):
        if flags & st_flag:
            kept |= ms_flag
    syscalls.mount(None, path, None, syscalls.MS_BIND | syscalls.MS_REMOUNT | kept | extra)


# --- detached copies of host mounts ------------------------------------------------------
@dataclass
class Detached:
    """A host path to mount later, taken while the host's tree is still visible: a
    detached copy (open_tree) where the kernel has them (5.2+), else the path itself."""

    host: str
    target: str
    fd: int | None
    is_directory: bool
    read_only: bool = False

    @classmethod
    def take(cls, host: str, target: str, recursive: bool = True, read_only: bool = False,
             attributes: int = 0) -> Detached:
        """Copy the mount tree at host now; attributes (MOUNT_ATTR_*) set on the copy."""
        is_directory = os.path.isdir(host)
        try:
            fd = syscalls.open_tree(host, recursive=recursive)
        except OSError as error:
            if error.errno != errno.ENOSYS:
                raise
            fd = None
        source = cls(host, target, fd, is_directory, read_only)
        wanted = attributes | (syscalls.MOUNT_ATTR_RDONLY if read_only else 0)
        if fd is not None and wanted:
            try:
                syscalls.mount_setattr("", attr_set=wanted, recursive=True, dirfd=fd)
            except OSError as error:
                if error.errno != errno.ENOSYS:
                    source.close()
                    raise
        return source

    def attach(self, old_root: str | None = None) -> None:
        """Mount it at target; without open_tree, bind it from old_root + host."""
        if self.fd is not None:
            syscalls.move_mount(self.fd, self.target)
            self.close()
        else:
            bind((old_root or "") + self.host, self.target, recursive=True,
                 read_only=self.read_only)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# --- /proc/self/mountinfo ----------------------------------------------------------------
@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    id: int
    parent: int
    point: str
    fstype: str


def mountinfo() -> list[Mount]:
    """This mount namespace's mounts, in mount order."""
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            separator = fields.index("-")
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            found.append(Mount(int(fields[0]), int(fields[1]), point, fields[separator + 1]))
    return found


@functools.lru_cache(maxsize=1)
def cgroup_mount_points() -> tuple[str, ...]:
    """Where cgroup hierarchies are mounted on the host (read once per process, in the fork
    server before it forks: a container's own mount namespace changes them)."""
    return tuple(m.point for m in mountinfo() if m.fstype in ("cgroup", "cgroup2"))


def in_user_namespace() -> bool:
    """True inside a user namespace (the uid map is not the whole range)."""
    with open("/proc/self/uid_map") as handle:
        return handle.read().split() != ["0", "0", "4294967295"]
