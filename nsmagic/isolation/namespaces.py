"""Namespaces: which ones a container gets, and the user-namespace id maps written from outside."""

from __future__ import annotations

import os
from dataclasses import dataclass

from nsmagic.isolation import syscalls

# The order in which they are listed to users; Docker's default set plus user and cgroup.
NAMESPACE_FLAGS = {
    "pid": syscalls.CLONE_NEWPID,
    "uts": syscalls.CLONE_NEWUTS,
    "ipc": syscalls.CLONE_NEWIPC,
    "net": syscalls.CLONE_NEWNET,
    "mount": syscalls.CLONE_NEWNS,
    "user": syscalls.CLONE_NEWUSER,
    "cgroup": syscalls.CLONE_NEWCGROUP,
}
# /proc/PID/ns/<file> for each namespace name.
PROC_NS_FILE = {"pid": "pid", "uts": "uts", "ipc": "ipc", "net": "net", "mount": "mnt",
                "user": "user", "cgroup": "cgroup"}


def flags_for(namespaces: frozenset[str]) -> int:
    """The CLONE_NEW* bits for a set of namespace names."""
    flags = 0
    for name in namespaces:
        flags |= NAMESPACE_FLAGS[name]
    return flags


def namespace_id(pid: int | str, name: str) -> str:
    """The kernel's identity of a process's namespace, e.g. 'pid:[4026531836]'."""
    return os.readlink(f"/proc/{pid}/ns/{PROC_NS_FILE[name]}")


@dataclass(frozen=True)
class IdMap:
    """One uid or gid map: container id -> host id, for count ids."""

    inside: int
    outside: int
    count: int = 1

    def line(self) -> str:
        """The line the kernel expects in /proc/PID/uid_map."""
        return f"{self.inside} {self.outside} {self.count}\n"


def become_root_inside() -> None:
    """After the maps are written, take uid/gid 0 of the new user namespace."""
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
