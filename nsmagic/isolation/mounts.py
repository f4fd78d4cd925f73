"""The container's filesystem view: a private mount tree, its own /proc and a private /tmp;
on request a read-only root, a throw-away overlay root, another root directory, volumes.

Everything here runs inside the container's own mount namespace, which the kernel tears down
with the container's last process: nothing is ever mounted in the host's namespace, so a
failure half-way leaves nothing behind on the host. The one exception is --rootfs: mount
points the root directory lacks (/proc, /dev, /tmp, a volume's path) are created in it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from nsmagic.isolation import syscalls

# Inside a pivoted root the old root waits here until it is detached: on the tmpfs that then
# becomes the container's /tmp, so no directory is created in the new root's files for it.
OLD_ROOT = "/tmp/.oldroot"
# The overlay root is assembled on a tmpfs mounted here in the container's mount namespace
# (the host's /tmp is not touched; after the pivot it is out of reach anyway).
STAGING = "/tmp"
# The device nodes a --rootfs container gets in its minimal /dev, bound from the host's.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# Top-level regular files up to this size are copied into a per-directory overlay root (so
# writes to them vanish too); bigger ones are bound read-only.
_COPY_LIMIT = 1 << 20


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

    Runs inside the new mount namespace, as (container) root: the real root, or the root of
    a user namespace that owns this mount namespace (unprivileged kernels). One checklist:

    1. Private propagation, before anything is mounted (else mounts leak to the host).
    2. Take what the container needs from the host while the host root is still there:
       detached copies (open_tree) of volume sources and, for --rootfs, of the cgroup views.
    3. The root. Plain and read-only: the host's root as it is. Overlay: an overlayfs with
       the host root as its lower layer and its upper layer on a tmpfs, the host's other
       mounts bound into it. Rootfs: the directory, bound onto itself. Both then pivot_root
       into the new root (chroot could be escaped; after pivot_root and detaching the old
       root, no path leads back to the host's files).
    4. A fresh /proc for the pid namespace, before the old root goes: in a user namespace
       the kernel only allows it while a full procfs is visible in the mount namespace.
    5. --rootfs: a minimal /dev (tmpfs with null, zero, full, random, urandom, tty bound
       from the host's; /dev/fd and friends as links into /proc).
    6. Detach the old root (umount2 MNT_DETACH): from here on the host root is gone.
    7. The container's own cgroup shown read-only at /sys/fs/cgroup.
    8. Read-only: every mount under / read-only (mount_setattr AT_RECURSIVE, or one remount
       per mount before Linux 5.12), /proc included. /tmp (and /dev/shm) stay writable:
    9. a private tmpfs on /tmp (and, read-only, on /dev/shm): writable, empty, gone with
       the container.
    10. Volumes: each host path bound on its container path (read-only when asked).
    11. Lock (read-only root or read-only volume): copy the mount namespace into a child
        user namespace and enter it, so the kernel locks each read-only flag: a later
        remount read-write fails (EPERM) even for root inside. See lock_mounts().

    Each failure raises OSError naming its step and path.

    What to know about each mode:
    - read-only: /tmp and /dev/shm are private writable tmpfs mounts; everything else,
      /proc included, is read-only and the flag is locked (11). Real root without a user
      namespace can still mount the host's disk anew or write its block device.
    - overlay: with real root, one overlay of the whole root. In a user namespace the
      kernel refuses that (the root has locked mounts under it), so each top-level
      directory is its own overlay: renames and hard links across them fail (EXDEV), and
      changing a file below a directory owned by an id the namespace does not map (host
      root's /var/tmp, /etc/ssl) fails with EOVERFLOW (overlayfs copies parents up with
      their owners). New files in top-level directories and /tmp work.
    - rootfs: a Python payload is a fork of a Python already running outside, so print()
      works in a tree without Python, but importing a module it had not imported fails.
      A shell payload runs the tree's /bin/sh.
    """
    warnings: list[str] = []
    # 1. Without this, a fresh /proc mounted on a shared root (systemd's default) shows up on
    #    the host. Needs CAP_SYS_ADMIN in the user namespace owning this mount namespace.
    make_mounts_private()
    if options.is_plain:
        # The path every cell takes by default (and the warm pool): keep it short.
        if options.proc:
            warnings += filter(None, [mount_proc()])
        if options.private_tmp:
            mount_private_tmp()
        if cgroup_directories:
            warnings += filter(None, [mount_cgroup_views(cgroup_directories)])
        return warnings
    pivoted = bool(options.overlay or options.rootfs)
    # 2. Volume sources and (rootfs) cgroup views, as detached mounts: the paths we would
    #    bind them from are about to be covered (overlay staging on /tmp) or gone (pivot).
    volumes = _take_volumes(options.volumes)
    views = _take_cgroup_views(cgroup_directories) if options.rootfs else []
    try:
        # 3. The root.
        if options.overlay:
            _pivot_into(_build_overlay_root())
        elif options.rootfs:
            rootfs = os.path.realpath(options.rootfs)
            with _step(f"binding the root directory {rootfs} onto itself (pivot_root needs "
                       "a mount point)"):
                syscalls.mount(rootfs, rootfs, None, syscalls.MS_BIND | syscalls.MS_REC)
            _pivot_into(rootfs)
        # 4. /proc, while the old root's procfs is still visible.
        if options.proc:
            if pivoted:
                _ensure_directory("/proc", "the /proc mount point")
            warnings += filter(None, [mount_proc()])
        # 5. A root directory brings no devices of its own.
        if options.rootfs:
            _mount_minimal_dev()
        # 6. The host root goes: after this, '..' from anywhere stops at the new root.
        if pivoted:
            _detach_old_root()
        # 7. The container's cgroup, read-only, where /sys/fs/cgroup is.
        if options.rootfs:
            warnings += filter(None, [_attach_cgroup_views(views)])
        elif cgroup_directories:
            warnings += filter(None, [mount_cgroup_views(cgroup_directories)])
        # 8. Read-only root: every mount, recursively (in a user namespace, mounts that the
        #    host had read-only were already locked so; the rest are ours to set).
        if options.read_only:
            with _step("making the root and every mount under it read-only"):
                make_read_only("/", recursive=True)
        # 9. /tmp: a pivoted root has its tmpfs there already (it held the old root).
        if options.private_tmp:
            if not pivoted:
                with _step("mounting a private tmpfs on /tmp"):
                    mount_private_tmp()
            elif options.read_only:
                with _step("making the private /tmp writable"):
                    make_writable("/tmp")
        elif pivoted:
            with _step("unmounting the staging tmpfs on /tmp"):
                syscalls.umount("/tmp", syscalls.MNT_DETACH)
        if options.read_only and os.path.isdir("/dev/shm"):
            # POSIX shared memory and semaphores (multiprocessing) need a writable /dev/shm.
            with _step("mounting a private tmpfs on /dev/shm"):
                syscalls.mount("tmpfs", "/dev/shm", "tmpfs", syscalls.MS_NOSUID
                               | syscalls.MS_NODEV, "mode=1777")
        # 10. Volumes, after the read-only step so that read-write ones stay writable.
        for volume in volumes:
            _attach_volume(volume, pivoted, may_create=pivoted and not options.read_only,
                           private_tmp=options.private_tmp)
    finally:
        for source in (*volumes, *views):
            source.close()
    # 11. Lock the read-only flags against root inside.
    if options.read_only or any(v.read_only for v in options.volumes):
        warnings += filter(None, [lock_mounts()])
    return warnings


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    """Re-raise an OSError with the step it happened in, so the user learns where."""
    try:
        yield
    except OSError as error:
        detail = error.strerror or str(error)
        if error.filename and str(error.filename) not in detail:
            detail += f": {error.filename}"
        raise OSError(error.errno, f"{what}: {detail}") from error


# --- detached copies of host mounts ------------------------------------------------------


@dataclass
class _Source:
    """A host path to mount later: a detached copy (open_tree) when the kernel has them."""

    host: str
    container: str
    fd: int | None
    is_directory: bool
    read_only: bool = False
    read_only_done: bool = False

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _take_volumes(volumes: tuple[Volume, ...]) -> list[_Source]:
    sources = []
    try:
        for volume in volumes:
            host = os.path.realpath(volume.host)
            with _step(f"opening the volume source {volume.host}"):
                is_directory = os.path.isdir(host)
                fd = _open_tree(host, recursive=True)  # the mounts under it come along
                source = _Source(host, os.path.normpath(volume.container), fd, is_directory,
                                 volume.read_only)
                sources.append(source)
                if volume.read_only and fd is not None:
                    source.read_only_done = _set_attributes_on(fd, syscalls.MOUNT_ATTR_RDONLY)
    except BaseException:
        for source in sources:
            source.close()
        raise
    return sources


def _open_tree(path: str, recursive: bool) -> int | None:
    try:
        return syscalls.open_tree(path, recursive=recursive)
    except OSError as error:
        if error.errno == errno.ENOSYS:  # before Linux 5.2: bind by path instead
            return None
        raise


def _set_attributes_on(fd: int, attributes: int) -> bool:
    """Set mount attributes on a detached tree; False where mount_setattr is missing."""
    try:
        syscalls.mount_setattr("", attr_set=attributes, recursive=True, dirfd=fd)
    except OSError as error:
        if error.errno == errno.ENOSYS:
            return False
        raise
    return True


def _attach_volume(source: _Source, pivoted: bool, may_create: bool, private_tmp: bool) -> None:
    target = source.container
    mode = "read-only" if source.read_only else "read-write"
    with _step(f"mounting the volume {source.host} on {target} ({mode})"):
        if not os.path.lexists(target):
            under_private_tmp = private_tmp and target.startswith("/tmp/")
            if not (may_create or under_private_tmp):
                raise OSError(errno.ENOENT, f"the container path {target} does not exist "
                              "(create it first, or use --overlay or --rootfs, where mount "
                              "points are created)")
            _create_mount_point(target, source.is_directory)
        if source.fd is not None:
            syscalls.move_mount(source.fd, target)
        elif not pivoted:
            syscalls.mount(source.host, target, None, syscalls.MS_BIND | syscalls.MS_REC)
        else:
            raise OSError(errno.ENOSYS, "volumes in --overlay or --rootfs containers need "
                          "Linux 5.2 or later (open_tree)")
        if source.read_only and not source.read_only_done:
            make_read_only(target, recursive=True)


def _create_mount_point(path: str, is_directory: bool) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if is_directory:
        os.mkdir(path)
    else:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def _take_cgroup_views(directories: list[str]) -> list[_Source]:
    """Detached read-only copies of the container's cgroup directories, for a rootfs."""
    sources: list[_Source] = []
    mount_points = _cgroup_mount_points()
    for directory in directories:
        target = max((m for m in mount_points if directory.startswith(m + "/")), key=len,
                     default=None)
        if target is None or not (target + "/").startswith("/sys/fs/cgroup/"):
            continue
        try:
            fd = _open_tree(directory, recursive=False)
        except OSError:
            fd = None
        if fd is None:
            continue
        source = _Source(directory, target, fd, True, True)
        sources.append(source)
        try:
            _set_attributes_on(fd, syscalls.MOUNT_ATTR_RDONLY | syscalls.MOUNT_ATTR_NOSUID
                               | syscalls.MOUNT_ATTR_NODEV | syscalls.MOUNT_ATTR_NOEXEC)
        except OSError:
            source.close()
            sources.remove(source)
    return sources


def _attach_cgroup_views(views: list[_Source]) -> str | None:
    """Mount the cgroup views in a rootfs, only where it has /sys/fs/cgroup."""
    base = "/sys/fs/cgroup"
    if not views or os.path.islink(base) or not os.path.isdir(base):
        return None
    try:
        if all(view.container == base for view in views):  # cgroup v2: one hierarchy
            syscalls.move_mount(views[0].fd, base)
            return None
        # cgroup v1: one directory per hierarchy, on a tmpfs so the rootfs is not written.
        syscalls.mount("tmpfs", base, "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV
                       | syscalls.MS_NOEXEC, "mode=0755")
        for view in views:
            target = view.container
            os.makedirs(target, exist_ok=True)
            syscalls.move_mount(view.fd, target)
        make_read_only(base, recursive=False)
    except OSError as error:
        return (f"the container's own view of its cgroup could not be mounted at {base} "
                f"({error.strerror})")
    return None


# --- a new root --------------------------------------------------------------------------


def _pivot_into(new_root: str) -> None:
    """pivot_root into new_root, the old root left at OLD_ROOT until _detach_old_root().

    A tmpfs on new_root/tmp holds the old root's directory; it becomes the container's /tmp.
    pivot_root (unlike chroot) changes the root of the whole mount namespace, so once the
    old root is detached there is nothing above the new root to escape to.
    """
    tmp = os.path.join(new_root, "tmp")
    with _step(f"mounting a tmpfs on {tmp} (the container's /tmp; it holds the old root "
               "during the pivot)"):
        if os.path.islink(tmp):
            raise OSError(errno.ELOOP, f"{tmp} is a symbolic link")
        if not os.path.isdir(tmp):
            os.mkdir(tmp)
            os.chmod(tmp, 0o1777)
        syscalls.mount("tmpfs", tmp, "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV,
                       "mode=1777")
        os.mkdir(os.path.join(tmp, os.path.basename(OLD_ROOT)), 0o700)
    with _step(f"pivot_root into {new_root}"):
        syscalls.pivot_root(new_root, new_root + OLD_ROOT)
        os.chdir("/")


def _detach_old_root() -> None:
    with _step(f"detaching the old root at {OLD_ROOT}"):
        # MNT_DETACH: the old root's mounts are busy (open files of the host), so unhook the
        # whole tree now; the kernel frees it when the last reference goes.
        syscalls.umount(OLD_ROOT, syscalls.MNT_DETACH)
        os.rmdir(OLD_ROOT)


def _ensure_directory(path: str, what: str) -> None:
    with _step(f"creating {what} {path}"):
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
            raise OSError(errno.ENOTDIR, f"{path} exists and is not a directory")
        if not os.path.isdir(path):
            os.mkdir(path, 0o755)


def _mount_minimal_dev() -> None:
    """A tmpfs /dev with the harmless devices bound from the host's (bind, not mknod: device
    nodes made in a user namespace do not work, bound ones do)."""
    _ensure_directory("/dev", "the /dev mount point")
    with _step("mounting a tmpfs on /dev"):
        syscalls.mount("tmpfs", "/dev", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NOEXEC,
                       "mode=0755")
    for name in DEVICES:
        source = f"{OLD_ROOT}/dev/{name}"
        if not os.path.exists(source):
            continue
        with _step(f"binding the host's /dev/{name} into the container"):
            _create_mount_point(f"/dev/{name}", is_directory=False)
            syscalls.mount(source, f"/dev/{name}", None, syscalls.MS_BIND)
    with _step("populating /dev"):
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, f"/dev/{name}")
        os.mkdir("/dev/shm")
        os.chmod("/dev/shm", 0o1777)


@dataclass(frozen=True)
class _Mount:
    id: int
    parent: int
    point: str
    fstype: str


def _mountinfo() -> list[_Mount]:
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            separator = fields.index("-")
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            found.append(_Mount(int(fields[0]), int(fields[1]), point, fields[separator + 1]))
    return found


def _in_user_namespace() -> bool:
    with open("/proc/self/uid_map") as handle:
        return handle.read().split() != ["0", "0", "4294967295"]


def _build_overlay_root() -> str:
    """Assemble the overlay root on a staging tmpfs; return its path (a mount point).

    One overlayfs with the whole host root as its lower layer where the kernel allows it
    (real root). In a user namespace it does not: overlayfs refuses a lower layer with
    mounts under it that the namespace cannot see past ("locked" mounts: /proc, /sys, /dev
    are), so the root is a tmpfs and each top-level directory its own overlay (recursing
    into directories that hold mounts), with the host's mounts bound in between.
    """
    mounts = _mountinfo()
    root_id = [m for m in mounts if m.point == "/"][-1].id
    with _step(f"mounting the overlay's staging tmpfs on {STAGING}"):
        syscalls.mount("tmpfs", STAGING, "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV,
                       "mode=0700")
        new_root = f"{STAGING}/root"
        os.mkdir(new_root)
    layers = _Layers(f"{STAGING}/layers", ",userxattr" if _in_user_namespace() else "")
    try:
        layers.mount("/", new_root)
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
    else:
        # The host's other mounts (/dev, /sys, ...), each with everything mounted under it.
        for mount in mounts:
            if mount.parent == root_id and mount.point != "/" and not _replaced(mount.point):
                with _step(f"binding the host's {mount.point} into the overlay root"):
                    syscalls.mount(mount.point, new_root + mount.point, None,
                                   syscalls.MS_BIND | syscalls.MS_REC)
        return new_root
    with _step(f"mounting a tmpfs for the overlay root on {new_root}"):
        syscalls.mount("tmpfs", new_root, "tmpfs", 0, "mode=0755")
    points = {m.point for m in mounts if m.point != "/"} | {STAGING}
    _overlay_tree("/", new_root, points, layers)
    return new_root


def _replaced(path: str) -> bool:
    """Paths the container gets fresh (/proc, /tmp), so the host's are not bound in."""
    return any(path == p or path.startswith(p + "/") for p in ("/proc", STAGING))


class _Layers:
    """Overlay mounts with their upper and work directories on the staging tmpfs."""

    def __init__(self, base: str, extra_options: str) -> None:
        self.base = base
        self.extra_options = extra_options
        self.count = 0

    def mount(self, lower: str, target: str) -> None:
        layer = f"{self.base}/{self.count}"
        self.count += 1
        with _step(f"mounting an overlay of {lower} on {target}"):
            os.makedirs(f"{layer}/upper")
            os.mkdir(f"{layer}/work")
            syscalls.mount("overlay", target, "overlay", 0,
                           f"lowerdir={lower},upperdir={layer}/upper,workdir={layer}/work"
                           + self.extra_options)


def _overlay_tree(host_dir: str, new_dir: str, points: set[str], layers: _Layers) -> None:
    """Recreate host_dir's entries in new_dir: directories as overlays, mount points bound."""
    for name in sorted(os.listdir(host_dir)):
        source = os.path.join(host_dir, name)
        target = os.path.join(new_dir, name)
        status = os.lstat(source)
        if stat.S_ISLNK(status.st_mode):
            os.symlink(os.readlink(source), target)
            continue
        if stat.S_ISDIR(status.st_mode):
            os.mkdir(target)
            _copy_owner_and_mode(status, target)
            if _replaced(source):
                continue  # a mount point only: a fresh /proc, a private /tmp come later
            if source in points:
                with _step(f"binding the host's {source} into the overlay root"):
                    syscalls.mount(source, target, None, syscalls.MS_BIND | syscalls.MS_REC)
            elif any(p.startswith(source + "/") for p in points):
                _overlay_tree(source, target, points, layers)
            elif re.search(r"[,:\\]", source):  # overlayfs options cannot name it
                _bind_read_only(source, target)
            else:
                layers.mount(source, target)
            continue
        if stat.S_ISREG(status.st_mode) and source not in points \
                and status.st_size <= _COPY_LIMIT:
            with _step(f"copying {source} into the overlay root"):
                shutil.copyfile(source, target, follow_symlinks=False)
                _copy_owner_and_mode(status, target)
            continue
        _create_mount_point(target, is_directory=False)  # big files, devices, sockets
        if source in points:
            with _step(f"binding the host's {source} into the overlay root"):
                syscalls.mount(source, target, None, syscalls.MS_BIND | syscalls.MS_REC)
        else:
            _bind_read_only(source, target)


def _bind_read_only(source: str, target: str) -> None:
    with _step(f"binding {source} read-only into the overlay root"):
        syscalls.mount(source, target, None, syscalls.MS_BIND)
        make_read_only(target, recursive=False)


def _copy_owner_and_mode(status: os.stat_result, path: str) -> None:
    try:
        os.chown(path, status.st_uid, status.st_gid)
    except OSError:
        pass  # an owner with no id inside this user namespace: keep ours
    os.chmod(path, stat.S_IMODE(status.st_mode))


# --- read-only mounts and their lock -----------------------------------------------------


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
        points += [m.point for m in _mountinfo() if m.point.startswith(prefix)]
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
    syscalls.mount(None, path, None,
                   syscalls.MS_BIND | syscalls.MS_REMOUNT | kept | extra)


def lock_mounts() -> str | None:
    """Lock the read-only flags of every mount: root inside can no longer clear them.

    The kernel locks a mount's flags (MNT_LOCK_READONLY, and MNT_LOCKED against unmounting
    it to see what is under it) when it copies a mount namespace into one owned by a less
    privileged user namespace. So a helper child creates a user namespace and a copy of
    this mount namespace in it, and we enter that copy (setns) while staying in our own
    user namespace, whose root is the helper namespace's owner and keeps its
    capabilities there (to mount a tmpfs, say) -- but not past the locks, which hold
    against every process. The helper costs one pid (the payload is pid 3, not 2).

    What this does not stop: real root (no user namespace) can mount the host's disk
    again or write its block device; only dropping capabilities closes that. Returns a
    warning instead of failing where user namespaces are not allowed.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            try:
                syscalls.unshare(syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWNS)
                # Our own namespace file: no pid to look up, whichever /proc is mounted.
                namespace = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
                socket.send_fds(theirs, [b"ok"], [namespace])
            except OSError as error:
                theirs.send((error.strerror or str(error)).encode())
        finally:
            os._exit(0)
    theirs.close()
    try:
        answer, fds, _, _ = socket.recv_fds(ours, 256, 1)
        if answer != b"ok" or not fds:
            return ("read-only mounts are not locked: root inside the container could "
                    "remount them read-write (creating a user namespace to lock them failed: "
                    f"{answer.decode(errors='replace') or 'helper died'})")
        with _step("entering the locked copy of the mount namespace"):
            try:
                syscalls.setns(fds[0], syscalls.CLONE_NEWNS)
            finally:
                os.close(fds[0])
            os.chdir("/")
    finally:
        ours.close()
        os.waitpid(pid, 0)
    return None


# --- the plain container's pieces --------------------------------------------------------


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
