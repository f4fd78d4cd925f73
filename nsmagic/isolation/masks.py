"""The kernel interfaces a container may not read or write, as the OCI runtime spec's
defaults (runc's `runc spec`, Docker) mask them: hidden paths and read-only paths of /proc
and /sys."""

from __future__ import annotations

import os

from nsmagic.isolation import mountops, syscalls

# Hidden: a read-only empty tmpfs over a directory, the empty file over a file.
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                "/sys/devices/virtual/powercap")
# Read-only: /proc/sys is where a write to kernel.core_pattern would make the host kernel
# run a program as root outside every namespace; sysrq-trigger reboots the host.
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def apply(empty_file: str, under: str = "/proc") -> None:
    """Mask and make read-only the paths under `under` (/proc or /sys) that exist here.

    empty_file: a read-only empty regular file to bind over masked files.
    """
    for path in MASKED_PATHS:
        if not path.startswith(under + "/") or not os.path.lexists(path):
            continue
        with mountops.step(f"masking {path}"):
            if os.path.isdir(path):
                mountops.mount_tmpfs(path, 0o555, syscalls.MS_RDONLY | syscalls.MS_NOSUID
                                     | syscalls.MS_NODEV | syscalls.MS_NOEXEC, size="4k")
            else:
                mountops.bind(empty_file, path)
    for path in READONLY_PATHS:
        if not path.startswith(under + "/") or not os.path.lexists(path):
            continue
        with mountops.step(f"making {path} read-only"):
            mountops.bind(path, path, recursive=True, read_only=True)
