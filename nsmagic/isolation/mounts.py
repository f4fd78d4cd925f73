"""The container's filesystem world, built inside its own mount namespace: by default a new
root holding a read-only view of the host's userland under a private writable layer, its own
/proc (secrets masked, kernel settings read-only), /dev, /sys, /tmp and /etc files; or
another root directory (--rootfs), or, only when asked for loudly, the host's root.

Everything here runs inside the container's mount namespace, which the kernel tears down
with the container's last process: nothing is ever mounted in the host's namespace, so a
failure half-way leaves nothing behind on the host.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass

from nsmagic.isolation import dev, etc, masks, mountops, syscalls, view
from nsmagic.isolation.mountops import Detached, step

# The new root is assembled on a staging tmpfs mounted here in the container's own mount
# namespace (the host's /tmp is not touched; after the pivot it is out of reach anyway).
STAGING = "/tmp"
# Inside the new root the old root waits here until it is detached: on the tmpfs that then
# becomes the container's /tmp, so no directory is created in the root's own files for it.
OLD_ROOT = "/tmp/.oldroot"
# The most each of a container's writable RAM file systems holds (/tmp, its root's own
# directories, its writable layer): their pages count against its memory cgroup, but a
# container without --memory must not fill half the host's RAM (the kernel's default size).
TMPFS_SIZE = os.environ.get("NSMAGIC_TMPFS_SIZE", "1g")
# An empty read-only file on the staging tmpfs, bound over every masked file.
EMPTY = f"{STAGING}/empty"
ROOT_MODES = ("view", "image", "host")  # besides a directory (--rootfs)
# Where a container of an image sees nsmagic's package, read-only (its python3 runs it).
IMAGE_LIBRARY = "/.nsmagic"


@dataclass(frozen=True)
class Volume:
    """A bind mount of a host path into the container."""

    host: str
    container: str
    read_only: bool = False


@dataclass(frozen=True)
class MountOptions:
    """What the container's mount namespace should look like."""

    root: str = "view"  # "view", "image", "host" (the host's root as it is), or a directory
    layers: tuple[str, ...] = ()  # root "image": its unpacked layers, lowest first
    userxattr: bool = False  # the layers keep overlayfs's attributes in user.* xattrs
    upper: str | None = None  # root "image": the writable layer's directory on disk
    read_only: bool = False  # no writable layer: the root and all under it read-only
    proc: bool = True  # a fresh /proc for the container's pid namespace
    private_tmp: bool = True  # an empty tmpfs on /tmp
    volumes: tuple[Volume, ...] = ()
    own_network: bool = True  # a network namespace of its own: a fresh sysfs shows it
    ipc_namespace: bool = True  # an IPC namespace of its own: /dev/mqueue is its own


def setup_mount_namespace(options: MountOptions, cgroup_directories: list[str]) -> list[str]:
    """Build the container's filesystem world, in the order the kernel needs; return
    warnings. Runs inside the new mount namespace, as the container's root (real root, or
    root of the user namespace that owns this mount namespace). One checklist:

    1. Private propagation, before anything is mounted (else mounts leak to the host).
    2. Take what the container needs from the host while the host's tree is visible:
       detached copies (open_tree) of volume sources and of the container's cgroup views.
    3. The new root, a tmpfs on a staging tmpfs: the view's directories each a read-only
       lower layer under a private writable one (overlayfs; --read-only: read-only binds),
       the host's secrets in them masked, the container's own /etc files; or --rootfs's
       directory as that lower layer. Then pivot_root into it (chroot could be escaped).
    4. A fresh /proc for the pid namespace while the old root is visible (a user namespace
       may mount one only then); its masked and read-only paths.
    5. A minimal /dev (devices bound from the host's, a private devpts, /dev/shm, mqueue).
    6. A fresh read-only sysfs of the container's network namespace, masked; the
       container's own cgroup read-only at /sys/fs/cgroup.
    7. Detach the old root (umount2 MNT_DETACH): from here on no path leads to the host.
    8. Volumes: each host path bound on its container path (read-only when asked).
    9. --read-only: the root itself read-only (/tmp, /dev/shm, /etc/hosts stay writable).
    10. Lock (read-only root or read-only volume): copy the mount namespace into a child
        user namespace and enter it, so the kernel locks each read-only flag.

    Each failure raises OSError naming its step and path.
    """
    warnings: list[str] = []
    make_mounts_private()  # 1.
    if options.root == "host":
        return warnings + _host_root(options, cgroup_directories)
    volumes = [_take_volume(v) for v in options.volumes]  # 2.
    views = _take_cgroup_views(cgroup_directories)
    try:
        root, layers = _build_root(options)  # 3.
        warnings += filter(None, [layers.missing])
        _pivot_into(root)
        warnings += _mount_proc_masked(options)  # 4.
        warnings += dev.mount_minimal_dev(OLD_ROOT + "/dev", options.ipc_namespace)  # 5.
        warnings += _mount_sys(options, views)  # 6.
        _detach_old_root()  # 7.
        for volume in volumes:  # 8.
            _attach_volume(volume, may_create=not options.read_only,
                           private_tmp=options.private_tmp)
        if options.read_only:  # 9.
            with step("making the root read-only"):
                mountops.make_read_only("/", recursive=False)
    finally:
        for source in (*volumes, *views):
            source.close()
    if not options.private_tmp:
        with step("unmounting the container's /tmp"):
            syscalls.umount("/tmp", syscalls.MNT_DETACH)
    if options.read_only or any(v.read_only for v in options.volumes):  # 10.
        warnings += filter(None, [lock_mounts()])
    return warnings


def set_host_name_files(hostname: str, address: str | None = None) -> None:
    """Write the container's name into its own /etc/hostname and /etc/hosts (tmpfs files
    bound over the root's), once the name is known; a root without them has none."""
    for name, content in (("hostname", hostname + "\n"),
                          ("hosts", etc.hosts_file(hostname, address))):
        try:
            with open(f"/etc/{name}", "r+") as handle:
                handle.truncate()
                handle.write(content)
        except OSError:
            pass


# --- 3. the new root ---------------------------------------------------------------------
def _build_root(options: MountOptions) -> tuple[str, _Layers]:
    """Assemble the container's root on the staging tmpfs; return its path (a mount) and
    its layers."""
    if options.root == "image":
        # Held open, and named by descriptor in the overlay's options: shorter than their
        # paths (the options of one mount are at most a page), and the staging tmpfs may
        # cover where they are (a store under /tmp).
        held_layers = [os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                       for d in options.layers]
        held_upper = [os.open(os.path.join(options.upper, d),
                              os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                      for d in ("upper", "work")] if options.upper else []
        library = os.open(view.package_directory(), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    elif options.root != "view":
        rootfs = os.path.realpath(options.root)
        for point in ("proc", "dev", "sys", "tmp"):
            if os.path.islink(os.path.join(rootfs, point)):
                raise OSError(errno.ELOOP, f"{rootfs}/{point} is a symbolic link (the "
                              "container's own is mounted there)")
        # Held open: the staging tmpfs may cover it (a root directory under /tmp).
        held = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    with step(f"mounting the staging tmpfs on {STAGING}"):
        mountops.mount_tmpfs(STAGING, 0o700, size=TMPFS_SIZE)
        with open(EMPTY, "w"):
            pass
        os.chmod(EMPTY, 0o444)
    layers = _Layers(f"{STAGING}/layers", mountops.in_user_namespace())
    root = f"{STAGING}/root"
    os.mkdir(root, 0o755)
    if options.root == "view":
        with step(f"mounting the container's root tmpfs on {root}"):
            # nodev: a device node made inside (CAP_MKNOD) does not open.
            mountops.mount_tmpfs(root, 0o755, size=TMPFS_SIZE)
        _populate(root)
        host = view.host_view()
        for target, link in host.links:
            os.symlink(link, root + target)
        for directory in host.directories:
            _show(directory, root + directory, layers, options.read_only)
        _mask_secrets(root, host.masked)
        # Bound, as Docker binds hostname, hosts and resolv.conf: through the view's
        # layer a user-namespace root could not write files of the host's root.
        _own_etc_files(root, etc.GENERATED)
    elif options.root == "image":
        try:
            layers.stack([f"/proc/self/fd/{fd}" for fd in held_layers], root, options.read_only,
                         options.userxattr,
                         tuple(f"/proc/self/fd/{fd}" for fd in held_upper) or None)
            for point in ("proc", "dev", "sys", "tmp"):
                mountops.ensure_directory(root + "/" + point, "a mount point")
            with step("showing nsmagic's package to the image's python3"):
                target = f"{root}{IMAGE_LIBRARY}/nsmagic"
                mountops.create_mount_point(target, is_directory=True)
                mountops.bind(f"/proc/self/fd/{library}", target, read_only=True)
        finally:
            for fd in (*held_layers, *held_upper, library):
                os.close(fd)
        _own_etc_files(root, etc.BOUND)
    else:
        try:
            _show(f"/proc/self/fd/{held}", root, layers, options.read_only, named=rootfs)
        finally:
            os.close(held)
        if not options.read_only and layers.missing is None:
            for point in ("proc", "dev", "sys", "tmp"):
                os.makedirs(os.path.join(root, point), exist_ok=True)
        _own_etc_files(root, etc.BOUND)
    return root, layers


def _populate(root: str) -> None:
    """The directories a root has, empty and the container's own."""
    for path, mode in view.EMPTY_DIRECTORIES.items():
        target = root + path
        if not os.path.lexists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.mkdir(target)
            os.chmod(target, mode)


def _show(host: str, target: str, layers: _Layers, read_only: bool,
          named: str | None = None) -> None:
    """host at target: read-only under a private writable layer, or read-only alone
    (named: what to call host in messages)."""
    _make_parents(named or host, target)
    if read_only or not layers.can_name(host):
        with step(f"binding {named or host} read-only into the container"):
            os.makedirs(target, exist_ok=True)
            mountops.bind(host, target, read_only=True)
        return
    layers.mount(host, target, named)


def _make_parents(host: str, target: str) -> None:
    """The directories above target, with the host's modes (so a shown /work/main/nsmagic
    sits in a /work/main as listable as the host's)."""
    missing = []
    path, host_path = os.path.dirname(target), os.path.dirname(host)
    while not os.path.isdir(path):
        missing.append((path, host_path))
        path, host_path = os.path.dirname(path), os.path.dirname(host_path)
    for path, host_path in reversed(missing):
        os.mkdir(path)
        try:
            os.chmod(path, os.stat(host_path).st_mode & 0o7777)
        except OSError:
            pass


class _Layers:
    """Overlay mounts whose upper and work directories live on the staging tmpfs."""

    def __init__(self, base: str, in_user_namespace: bool) -> None:
        self.base = base
        # In a user namespace overlayfs keeps its own attributes in user.* xattrs.
        self.extra = ",userxattr" if in_user_namespace else ""
        self.count = 0
        self.missing: str | None = None  # why there is no writable layer, if there is none

    @staticmethod
    def can_name(path: str) -> bool:
        """Overlay options are comma separated: a path with one of these cannot be named."""
        return not any(c in path for c in ",:\\")

    def mount(self, lower: str, target: str, named: str | None = None) -> None:
        layer = f"{self.base}/{self.count}"
        self.count += 1
        with step(f"mounting a private writable layer over {named or lower} on {target}"):
            os.makedirs(f"{layer}/upper")
            os.mkdir(f"{layer}/work")
            os.makedirs(target, exist_ok=True)
            if self.missing is None:
                try:
                    syscalls.mount("overlay", target, "overlay",
                                   syscalls.MS_NOSUID | syscalls.MS_NODEV,
                                   f"lowerdir={lower},upperdir={layer}/upper,"
                                   f"workdir={layer}/work" + self.extra)
                    return
                except OSError as error:
                    if error.errno != errno.ENODEV:
                        raise
                    self.missing = ("this kernel has no overlayfs: the container's root is "
                                    "writable, but what it shows of the host (or of --rootfs) "
                                    "is read-only (writes there fail with EROFS)")
            mountops.bind(lower, target, read_only=True)

    def stack(self, lowers: list[str], target: str, read_only: bool, userxattr: bool,
              upper: tuple[str, str] | None = None) -> None:
        """An image's layers (lowest first) as one overlay at target, with a private writable
        layer on top: upper (its upper and work directories on disk, where diff and commit
        read it) or, also for read_only, one on the staging tmpfs."""
        extra = self.extra or (",userxattr" if userxattr else "")
        # overlayfs lists its lower layers from the top down.
        lowerdir = ":".join(reversed(lowers))
        with step(f"stacking the image's {len(lowers)} layers on {target}"):
            options = f"lowerdir={lowerdir}" + extra
            # Read-only too gets a layer (on the staging tmpfs): the container's own mount
            # points are made in it, then step 9 makes the root read-only.
            if upper is None or read_only:
                layer = f"{self.base}/image"
                os.makedirs(f"{layer}/upper")
                os.mkdir(f"{layer}/work")
                upper = (f"{layer}/upper", f"{layer}/work")
            options += f",upperdir={upper[0]},workdir={upper[1]}"
            try:
                syscalls.mount("overlay", target, "overlay",
                               syscalls.MS_NOSUID | syscalls.MS_NODEV, options)
            except OSError as error:
                if error.errno == errno.ENODEV:
                    raise OSError(errno.ENODEV, "this kernel has no overlayfs, which an "
                                  "image's layers need") from error
                raise


def _mask_secrets(root: str, paths: tuple[str, ...]) -> None:
    """Hide the host's secrets in the view: an empty file over each, an empty read-only
    tmpfs over each directory."""
    for path in paths:
        target = root + path
        if not os.path.lexists(target) or os.path.islink(target):
            continue
        with step(f"masking the host's {path}"):
            if os.path.isdir(target):
                mountops.mount_tmpfs(target, 0o700, syscalls.MS_RDONLY | syscalls.MS_NOSUID
                                     | syscalls.MS_NODEV | syscalls.MS_NOEXEC, size="4k")
            else:
                mountops.bind(EMPTY, target, read_only=True)


def _own_etc_files(root: str, names: tuple[str, ...]) -> None:
    """The container's own /etc files, each a tmpfs file bound over the root's."""
    directory = f"{STAGING}/etc"
    os.makedirs(directory, exist_ok=True)
    for name in names:
        target = f"{root}/etc/{name}"
        if not os.path.isdir(f"{root}/etc") or os.path.islink(target):
            continue
        if not os.path.exists(target):
            try:
                mountops.create_mount_point(target, is_directory=False)
            except OSError:
                continue  # a read-only /etc without this file: the container has none
        source = f"{directory}/{name}"
        with open(source, "w") as handle:
            handle.write(etc.generate(name))
        with step(f"binding the container's own /etc/{name}"):
            mountops.bind(source, target)


def _pivot_into(new_root: str) -> None:
    """pivot_root into new_root, the old root left at OLD_ROOT until _detach_old_root().

    A tmpfs on new_root/tmp holds the old root's directory; it becomes the container's /tmp.
    pivot_root (unlike chroot) changes the root of the whole mount namespace, so once the
    old root is detached there is nothing above the new root to escape to.
    """
    tmp = os.path.join(new_root, "tmp")
    with step(f"mounting a tmpfs on {tmp} (the container's /tmp; it holds the old root "
              "during the pivot)"):
        if os.path.islink(tmp):
            raise OSError(errno.ELOOP, f"{tmp} is a symbolic link")
        if not os.path.isdir(tmp):
            os.mkdir(tmp)
        mountops.mount_tmpfs(tmp, 0o1777, size=TMPFS_SIZE)
        os.mkdir(os.path.join(tmp, os.path.basename(OLD_ROOT)), 0o700)
    with step(f"pivot_root into {new_root}"):
        syscalls.pivot_root(new_root, new_root + OLD_ROOT)
        os.chdir("/")


def _detach_old_root() -> None:
    with step(f"detaching the old root at {OLD_ROOT}"):
        # MNT_DETACH: the old root's mounts are busy (open files of the host), so unhook the
        # whole tree now; the kernel frees it when the last reference goes.
        syscalls.umount(OLD_ROOT, syscalls.MNT_DETACH)
        os.rmdir(OLD_ROOT)


# --- 4. /proc ------------------------------------------------------------------------------
def _mount_proc_masked(options: MountOptions) -> list[str]:
    """A procfs of the container's pid namespace (without one, of the host's: the same
    processes the host's /proc shows), masked."""
    mountops.ensure_directory("/proc", "the /proc mount point")
    warning = mount_proc()
    if warning is not None:
        # Refused (a masked host /proc, or a pid namespace we do not own): the host's.
        with step("binding the host's /proc"):
            mountops.bind(OLD_ROOT + "/proc", "/proc", recursive=True)
    masks.apply(OLD_ROOT + EMPTY, under="/proc")
    return [warning] if warning and options.proc else []


# --- 6. /sys ---------------------------------------------------------------------------------
def _mount_sys(options: MountOptions, views: list[Detached]) -> list[str]:
    warnings: list[str] = []
    mountops.ensure_directory("/sys", "the /sys mount point")
    flags = syscalls.MS_RDONLY | syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
    try:
        if not options.own_network:
            raise OSError(errno.EPERM, "no network namespace of its own")
        syscalls.mount("sysfs", "/sys", "sysfs", flags)
    except OSError as error:
        # A fresh sysfs shows the mounter's network namespace, so the kernel allows it only
        # to the owner of that namespace: with the host's network, the host's sysfs.
        with step("binding the host's /sys read-only"):
            mountops.bind(OLD_ROOT + "/sys", "/sys", recursive=True, read_only=True)
        warnings.append(f"/sys is the host's, read-only ({error.strerror}): it lists the "
                        "host's network interfaces and devices")
    masks.apply(OLD_ROOT + EMPTY, under="/sys")
    warnings += filter(None, [_attach_cgroup_views(views)])
    return warnings


def _take_cgroup_views(directories: list[str]) -> list[Detached]:
    """Detached read-only copies of the container's cgroup directories, each to be shown
    where its hierarchy is mounted on the host (/sys/fs/cgroup[/controller])."""
    views: list[Detached] = []
    if not directories:
        return views
    mount_points = mountops.cgroup_mount_points()
    for directory in directories:
        target = max((m for m in mount_points if directory.startswith(m + "/")), key=len,
                     default=None)
        if target is None or not (target + "/").startswith("/sys/fs/cgroup/"):
            continue
        try:
            views.append(Detached.take(
                directory, target, recursive=False, read_only=True,
                attributes=syscalls.MOUNT_ATTR_NOSUID | syscalls.MOUNT_ATTR_NODEV
                | syscalls.MOUNT_ATTR_NOEXEC))
        except OSError:
            continue
    return views


def _attach_cgroup_views(views: list[Detached]) -> str | None:
    """The container's own cgroup, read-only, at /sys/fs/cgroup; nothing else of cgroupfs."""
    base = "/sys/fs/cgroup"
    if not views:
        return None
    try:
        # A tmpfs, so the (read-only) sysfs is not written and no host group shows.
        mountops.mount_tmpfs(base, 0o755, syscalls.MS_NOSUID | syscalls.MS_NODEV
                             | syscalls.MS_NOEXEC, size="4k")
        for source in views:
            os.makedirs(source.target, exist_ok=True)
            source.attach(OLD_ROOT)
        mountops.make_read_only(base, recursive=False)
    except OSError as error:
        return (f"the container's own view of its cgroup could not be mounted at {base} "
                f"({error.strerror})")
    return None


# --- 8. volumes ----------------------------------------------------------------------------
def _take_volume(volume: Volume) -> Detached:
    host = os.path.realpath(volume.host)
    with step(f"opening the volume source {volume.host}"):
        return Detached.take(host, os.path.normpath(volume.container), recursive=True,
                             read_only=volume.read_only)


def _attach_volume(source: Detached, may_create: bool, private_tmp: bool) -> None:
    target = source.target
    mode = "read-only" if source.read_only else "read-write"
    with step(f"mounting the volume {source.host} on {target} ({mode})"):
        if not os.path.lexists(target):
            under_private_tmp = private_tmp and target.startswith("/tmp/")
            if not (may_create or under_private_tmp):
                raise OSError(errno.ENOENT, f"the container path {target} does not exist "
                              "in the read-only root (mount it under /tmp, or drop "
                              "--read-only)")
            mountops.create_mount_point(target, source.is_directory)
        if source.fd is None:
            raise OSError(errno.ENOSYS, "volumes need Linux 5.2 or later (open_tree)")
        source.attach()
        if source.read_only:
            mountops.make_read_only(target, recursive=True)


# --- --host-root: the host's root as it is ---------------------------------------------------
def _host_root(options: MountOptions, cgroup_directories: list[str]) -> list[str]:
    """The old, unprotected world (only when asked for loudly): the host's root, read-write,
    with the container's own /proc and /tmp and its cgroup shown read-only."""
    warnings: list[str] = []
    if options.proc:
        warnings += filter(None, [mount_proc()])
    if options.private_tmp:
        mount_private_tmp()
    if cgroup_directories:
        warnings += filter(None, [mount_cgroup_views(cgroup_directories)])
    for volume in options.volumes:
        source = _take_volume(volume)
        try:
            _attach_volume(source, may_create=False, private_tmp=options.private_tmp)
        finally:
            source.close()
    return warnings


# --- the lock on read-only mounts ----------------------------------------------------------
def lock_mounts() -> str | None:
    """Lock the read-only flags of every mount: root inside can no longer clear them.

    The kernel locks a mount's flags (MNT_LOCK_READONLY, and MNT_LOCKED against unmounting
    it to see what is under it) when it copies a mount namespace into one owned by a less
    privileged user namespace. So a helper child creates a user namespace and a copy of
    this mount namespace in it, and we enter that copy (setns) while staying in our own
    user namespace, whose root is the helper namespace's owner and keeps its
    capabilities there -- but not past the locks, which hold against every process. The
    helper costs one pid. Returns a warning instead of failing where user namespaces are
    not allowed.
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
        with step("entering the locked copy of the mount namespace"):
            try:
                syscalls.setns(fds[0], syscalls.CLONE_NEWNS)
            finally:
                os.close(fds[0])
            os.chdir("/")
    finally:
        ours.close()
        os.waitpid(pid, 0)
    return None


# --- pieces shared with the doctor's probe ---------------------------------------------------
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
    mountops.mount_tmpfs("/tmp", 0o1777, size=TMPFS_SIZE)


def mount_cgroup_views(group_directories: list[str]) -> str | None:
    """With the host's root: show the container its own cgroup, read-only, over the host's
    hierarchies (bind mounts; the kernel refuses to mount an existing v1 hierarchy again)."""
    failed = []
    mount_points = mountops.cgroup_mount_points()
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
