"""Capabilities inside a container: Docker's default set, nothing more, and no way back."""

from __future__ import annotations

import ctypes

from nsmagic.isolation import syscalls

# Docker's default (moby's oci/caps/defaults.go): enough for ordinary programs run as root,
# without the administrative ones (mounting, modules, raw devices, time, ptrace, ...).
DOCKER_DEFAULT = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
    "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13, "SYS_CHROOT": 18,
    "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31,
}
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_PR_SET_DUMPABLE = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _read_last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return 63  # dropping numbers the kernel does not know is harmless (EINVAL, ignored)


# Read once, when the fork server imports this module: inside a container, /proc is the
# container's and could be anything by the time capabilities are dropped.
_LAST_CAPABILITY = _read_last_capability()


def last_capability() -> int:
    """The highest capability number this kernel knows (read at import, outside containers)."""
    return _LAST_CAPABILITY


# What this process, or the one it was forked from, left in its bounding set.
_bounding_set_kept: frozenset[int] | None = None


def drop_bounding_set(keep: set[int] | frozenset[int] | None = None) -> None:
    """Drop every capability not in keep from the bounding set, so that nothing executed
    later can gain it. The effective set is untouched: the process may still mount, name its
    host, and so on. A process that forks after this spares its child the work."""
    global _bounding_set_kept
    keep = frozenset(DOCKER_DEFAULT.values()) if keep is None else frozenset(keep)
    if _bounding_set_kept == keep:
        return
    for cap in range(last_capability() + 1):
        if cap not in keep:
            try:
                syscalls.prctl(syscalls.PR_CAPBSET_DROP, cap)
            except OSError:
                pass  # already gone, or unknown to this kernel
    _bounding_set_kept = keep


def restrict_to(keep: set[int] | None = None) -> None:
    """Drop every capability not in keep from all sets (bounding, ambient, effective,
    permitted, inheritable), then set no_new_privs so that no setuid or file-capability
    binary can bring any back."""
    keep = set(DOCKER_DEFAULT.values()) if keep is None else keep
    drop_bounding_set(keep)
    try:
        syscalls.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    libc = syscalls.libc()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    for index in range(2):
        mask = sum(1 << (cap - 32 * index) for cap in keep if 32 * index <= cap < 32 * index + 32)
        data[index].effective &= mask
        data[index].permitted &= mask
        data[index].inheritable &= mask
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)


def make_undumpable() -> None:
    """No core dumps of, and no ptrace into, this process by the container's own code."""
    syscalls.prctl(_PR_SET_DUMPABLE, 0)


def effective_names(pid: int | str = "self") -> list[str]:
    """Names of the capabilities in a process's effective set (for doctor and tests)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("CapEff:"):
                value = int(line.split()[1], 16)
                break
    names = {v: k for k, v in DOCKER_DEFAULT.items()}
    return sorted(names.get(cap, f"cap{cap}") for cap in range(64) if value >> cap & 1)


__all__ = ["DOCKER_DEFAULT", "drop_bounding_set", "effective_names", "last_capability",
           "make_undumpable", "restrict_to"]
