"""A container's own /dev, as Docker's: a small tmpfs with only the harmless devices, a
private pseudo-terminal instance, a private sized /dev/shm and a message-queue mount."""

from __future__ import annotations

import os

from nsmagic.isolation import mountops, syscalls

# Bound from the host's /dev (binding, not mknod: device nodes made in a user namespace do
# not open, bound ones do). Every other device stays out: the tmpfs is mounted nodev, so a
# node made with CAP_MKNOD inside does not open either.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
SHM_SIZE = "64m"  # Docker's default --shm-size
LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
         ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))


def mount_minimal_dev(host_dev: str, ipc_namespace: bool) -> list[str]:
    """Build /dev (the new root's) with devices bound from host_dev; return warnings."""
    warnings: list[str] = []
    mountops.ensure_directory("/dev", "the /dev mount point")
    with mountops.step("mounting a tmpfs on /dev"):
        mountops.mount_tmpfs("/dev", 0o755, syscalls.MS_NOSUID | syscalls.MS_NODEV
                             | syscalls.MS_NOEXEC, size="64k")
    for name in DEVICES:
        source = os.path.join(host_dev, name)
        if not os.path.exists(source):
            continue
        with mountops.step(f"binding the host's /dev/{name} into the container"):
            mountops.create_mount_point(f"/dev/{name}", is_directory=False)
            mountops.bind(source, f"/dev/{name}")
    with mountops.step("populating /dev"):
        for name, target in LINKS:
            os.symlink(target, f"/dev/{name}")
        for name in ("pts", "shm", "mqueue"):
            os.mkdir(f"/dev/{name}", 0o755)
    with mountops.step("mounting a private devpts on /dev/pts"):
        # newinstance: the container's terminals only; gid 5 (tty) only where it is mapped.
        options = "newinstance,ptmxmode=0666,mode=0620"
        try:
            syscalls.mount("devpts", "/dev/pts", "devpts", syscalls.MS_NOSUID
                           | syscalls.MS_NOEXEC, options + ",gid=5")
        except OSError:
            syscalls.mount("devpts", "/dev/pts", "devpts", syscalls.MS_NOSUID
                           | syscalls.MS_NOEXEC, options)
    with mountops.step("mounting a private tmpfs on /dev/shm"):
        mountops.mount_tmpfs("/dev/shm", 0o1777, syscalls.MS_NOSUID | syscalls.MS_NODEV
                             | syscalls.MS_NOEXEC, size=SHM_SIZE)
    if ipc_namespace:
        try:
            syscalls.mount("mqueue", "/dev/mqueue", "mqueue", syscalls.MS_NOSUID
                           | syscalls.MS_NODEV | syscalls.MS_NOEXEC)
        except OSError as error:
            warnings.append(f"/dev/mqueue could not be mounted ({error.strerror}): POSIX "
                            "message queues are not available in the container")
    return warnings
