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


def default_outside_id(is_root: bool, own_id: int) -> int:
    """Whom root inside a user namespace is on the host.

    An unprivileged caller can only map its own id (no newuidmap helper: Binder-like hosts set
    no_new_privs, which disables setuid helpers). Root maps container root to 'nobody' so that
    files written through to the host are visibly not root's.
    """
    return 65534 if is_root else own_id


def write_id_maps(pid: int, uid_map: IdMap, gid_map: IdMap) -> None:
    """Write a child's uid and gid maps from the parent user namespace.

    setgroups must be denied before gid_map is written by an unprivileged writer; root could
    keep it, but denying it everywhere keeps one behaviour (no supplementary groups inside).
    """
    with open(f"/proc/{pid}/setgroups", "w") as handle:
        handle.write("deny")
    with open(f"/proc/{pid}/uid_map", "w") as handle:
        handle.write(uid_map.line())
    with open(f"/proc/{pid}/gid_map", "w") as handle:
        handle.write(gid_map.line())


def become_root_inside() -> None:
    """After the maps are written, take uid/gid 0 of the new user namespace."""
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
