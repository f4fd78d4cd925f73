"""Run a command the way a Binder-like host would: unprivileged, without user namespaces.

    python sandbox.py [--uid 65534] [--home DIR] -- COMMAND ARGS...

Started as root, it becomes the unprivileged user (uid and gid 65534 'nobody' by default, no
supplementary groups), then enters a user namespace of its own that maps only that uid to
itself. There, while it still holds capabilities over the new namespace, it writes 0 to
/proc/sys/user/max_user_namespaces: that limit is per user namespace, so from now on every
attempt to create a (nested) user namespace fails with ENOSPC, as on a host whose seccomp
profile or sysctl forbids them. It then sets no_new_privs (mybinder.org pods run with
allowPrivilegeEscalation: false) and execs COMMAND, which starts with uid 65534, no
capabilities, no writable cgroup filesystem (the cgroupfs belongs to root) and no way to get
new namespaces: the "not isolated" tier of nsmagic.

Only the standard library is used, so the wrapper works before anything else is imported.
"""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWUSER = 0x10000000
PR_SET_NO_NEW_PRIVS = 38
PR_SET_DUMPABLE = 4


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def enter(uid: int = 65534, gid: int = 65534) -> None:
    """Become uid/gid and forbid user namespaces for this process and its descendants."""
    libc = _libc()
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)  # drops every capability of the initial namespace
        # A credential change makes the process non-dumpable, which hands /proc/self/* to
        # root: make it ours again so that the id maps below can be written.
        _check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    uid, gid = os.geteuid(), os.getegid()
    _check(libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1\n")
    _write("/proc/self/gid_map", f"{gid} {gid} 1\n")
    # Our capabilities in the new namespace cover its user.* sysctls: no nested namespaces.
    _write("/proc/sys/user/max_user_namespaces", "0\n")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def main(argv: list[str]) -> int:
    uid = gid = 65534
    while argv[:1] in (["--uid"], ["--home"]):
        if argv[0] == "--uid":
            uid = gid = int(argv[1])
        else:
            os.environ["HOME"] = argv[1]  # the real HOME is root's, unwritable as nobody
        argv = argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    enter(uid, gid)
    # uid != 0 in the namespace: execve clears the capabilities it still had there.
    os.execvp(argv[0], argv)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
