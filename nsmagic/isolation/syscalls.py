"""Thin ctypes wrappers for the Linux system calls Python 3.11 does not expose."""

from __future__ import annotations

import ctypes
import os

# The C library the interpreter itself is linked with (glibc or musl), without
# ctypes.util.find_library, which runs ldconfig and imports subprocess to find it.
_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2

# The new mount API (Linux 5.2+; mount_setattr 5.12+). These syscall numbers are the same on
# every architecture (the unified table from 424 on); pivot_root's below is x86_64's.
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x00000004
MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_NOSUID = 0x00000002
MOUNT_ATTR_NODEV = 0x00000004
MOUNT_ATTR_NOEXEC = 0x00000008
AT_FDCWD = -100

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38


def libc() -> ctypes.CDLL:
    """The C library, for the few calls (capget, capset) wrapped where they are used."""
    return _libc


def _check(result: int, what: str) -> int:
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (unshare(2))."""
    if hasattr(os, "unshare"):  # Python 3.12+
        os.unshare(flags)
        return
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace referred to by fd (setns(2))."""
    if hasattr(os, "setns"):
        os.setns(fd, nstype)
        return
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2); raises OSError naming the target."""
    result = _libc.mount(
        None if source is None else source.encode(),
        target.encode(),
        None if fstype is None else fstype.encode(),
        ctypes.c_ulong(flags),
        None if data is None else data.encode(),
    )
    _check(result, f"mount {fstype or source or ''} on {target}")


def umount(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2), which glibc does not wrap."""
    sys_pivot_root = 155  # x86_64
    _check(_libc.syscall(ctypes.c_long(sys_pivot_root), new_root.encode(), put_old.encode()),
           "pivot_root")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(path: str, attr_set: int = 0, attr_clr: int = 0, recursive: bool = False,
                  dirfd: int = AT_FDCWD) -> None:
    """mount_setattr(2) (Linux 5.12+): change per-mount flags, of a whole subtree with
    recursive=True, in one atomic call. With dirfd from open_tree() and path "", the
    detached mount dirfd refers to. ENOSYS on older kernels."""
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    flags = (AT_RECURSIVE if recursive else 0) | (AT_EMPTY_PATH if not path else 0)
    _check(_libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(dirfd), path.encode(),
                         ctypes.c_uint(flags), ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr))),
           f"mount_setattr {path or f'fd {dirfd}'}")


def open_tree(path: str, recursive: bool = True) -> int:
    """open_tree(2) with OPEN_TREE_CLONE (Linux 5.2+): a detached copy of the mount at path
    (with everything under it when recursive), as a file descriptor for move_mount()."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    return _check(_libc.syscall(ctypes.c_long(SYS_OPEN_TREE), ctypes.c_int(AT_FDCWD),
                                path.encode(), ctypes.c_uint(flags)), f"open_tree {path}")


def move_mount(fd: int, target: str) -> None:
    """move_mount(2): attach the detached mount fd (from open_tree) at target."""
    _check(_libc.syscall(ctypes.c_long(SYS_MOVE_MOUNT), ctypes.c_int(fd), b"",
                         ctypes.c_int(AT_FDCWD), target.encode(),
                         ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)),
           f"move_mount on {target}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2)."""
    return _check(
        _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                    ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)),
        "prctl",
    )


def set_process_name(name: str) -> None:
    """Name the process (what ps -o comm shows), so people can tell our helpers apart."""
    buffer = ctypes.create_string_buffer(name.encode()[:15])
    _libc.prctl(PR_SET_NAME, buffer, 0, 0, 0)

