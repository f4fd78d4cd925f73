"""Kernel keyrings: each container's processes join a session keyring of their own, so no
key of the host's session (or another container's) is in reach of their default lookups."""

from __future__ import annotations

import ctypes
import platform

from nsmagic.isolation import syscalls

_KEYCTL_JOIN_SESSION_KEYRING = 1
# keyctl(2)'s number: glibc has no wrapper.
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}


def join_fresh_session_keyring() -> bool:
    """Join a new anonymous session keyring (as runc does for every container); False where
    the kernel has no keyrings. The user keyring stays per uid: the seccomp filter refuses
    keyctl() to the payload, which closes it."""
    number = _SYS_KEYCTL.get(platform.machine())
    if number is None:
        return False
    result = syscalls.libc().syscall(ctypes.c_long(number),
                                     ctypes.c_long(_KEYCTL_JOIN_SESSION_KEYRING), None)
    return result >= 0
