"""The container's filesystem view: a private mount tree, its own /proc and a private /tmp."""

from __future__ import annotations

import errno

from nsmagic.isolation import syscalls


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
