"""Who a user-namespace container's ids are on the host: a range of the container's own, so
that no two containers (and no real user) share a host identity.

- As root: a block of 65536 ids from nsmagic's own pool, far above the ids people and
  subordinate ranges get, recorded under /run/nsmagic/ids while the container lives (and
  taken back from records whose owner has died).
- As a user with subordinate ids (/etc/subuid, /etc/subgid) and the setuid newuidmap and
  newgidmap helpers (package uidmap): the user's own id as root, then the subordinate range,
  as podman maps them.
- Otherwise (no subordinate ids, or no_new_privs, under which setuid helpers do nothing):
  root inside is the user, and only the user.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from dataclasses import dataclass, field

from nsmagic.isolation.namespaces import IdMap

RANGE_SIZE = 65536
# nsmagic's pool: blocks of RANGE_SIZE from here on. Debian hands out subordinate ranges from
# 100000 up, one 65536 block per user; a billion leaves room for thousands of users.
POOL_START = 1_000_000_000
POOL_BLOCKS = 4096
RECORDS = "/run/nsmagic/ids"


@dataclass
class IdMapping:
    """The uid and gid maps of one container's user namespace, and how they are written."""

    uids: list[IdMap]
    gids: list[IdMap]
    helpers: bool = False  # written by newuidmap/newgidmap (subordinate ids)
    record: str | None = None  # our pool's record of the block, while it is in use
    notes: list[str] = field(default_factory=list)

    @property
    def root_outside(self) -> int:
        """The host uid of root inside."""
        return self.uids[0].outside

    def write(self, pid: int) -> None:
        """Write the maps of pid's user namespace (from outside it)."""
        if self.helpers:
            if _run_helper("newuidmap", pid, self.uids) and _run_helper("newgidmap", pid,
                                                                             self.gids):
                return
            # A setuid helper under no_new_privs runs without its privilege: map just us.
            self.notes.append("newuidmap/newgidmap could not map the subordinate ids (are "
                              "privileges blocked, as by no_new_privs?): root inside is you, "
                              "and only you")
            self.uids, self.gids, self.helpers = self.uids[:1], self.gids[:1], False
        with open(f"/proc/{pid}/setgroups", "w") as handle:
            # Required before an unprivileged writer's gid_map; done by root too, so that
            # one behaviour holds everywhere (no supplementary groups inside).
            handle.write("deny")
        with open(f"/proc/{pid}/uid_map", "w") as handle:
            handle.write("".join(m.line() for m in self.uids))
        with open(f"/proc/{pid}/gid_map", "w") as handle:
            handle.write("".join(m.line() for m in self.gids))

    def release(self) -> None:
        """Give the block back to the pool; safe to call twice."""
        if self.record is not None:
            try:
                os.unlink(self.record)
            except FileNotFoundError:
                pass
            self.record = None


def for_container(owner_pid: int, container_id: str) -> IdMapping:
    """The mapping for a new container of this process (the fork server)."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        base, record = allocate_block(owner_pid, container_id)
        return IdMapping([IdMap(0, base, RANGE_SIZE)], [IdMap(0, base, RANGE_SIZE)],
                         record=record)
    name = _user_name(uid)
    sub_uids = subordinate_range("/etc/subuid", name, uid)
    sub_gids = subordinate_range("/etc/subgid", name, uid)
    if sub_uids and sub_gids and shutil.which("newuidmap") and shutil.which("newgidmap"):
        size = min(sub_uids[1], sub_gids[1], RANGE_SIZE - 1)
        return IdMapping([IdMap(0, uid), IdMap(1, sub_uids[0], size)],
                         [IdMap(0, gid), IdMap(1, sub_gids[0], size)], helpers=True)
    return IdMapping([IdMap(0, uid)], [IdMap(0, gid)])


def allocate_block(owner_pid: int, container_id: str) -> tuple[int, str]:
    """A free block of the pool, recorded as owner_pid's; (its first id, the record)."""
    os.makedirs(RECORDS, mode=0o700, exist_ok=True)
    start = random.randrange(POOL_BLOCKS)  # two servers seldom race for one block
    for offset in range(POOL_BLOCKS):
        block = (start + offset) % POOL_BLOCKS
        record = os.path.join(RECORDS, str(block))
        for _attempt in range(2):
            try:
                fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                if not _taken_back(record):
                    break  # in use: try the next block
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{owner_pid} {container_id}\n")
            return POOL_START + block * RANGE_SIZE, record
    raise OSError(errno.ENOSPC, f"all {POOL_BLOCKS} id ranges of nsmagic's pool are in use "
                                f"(see {RECORDS})")


def _taken_back(record: str) -> bool:
    """Remove a record whose owner has died; True if it was removed."""
    try:
        with open(record) as handle:
            owner = int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        os.kill(owner, 0)
        return False
    except ProcessLookupError:
        pass
    except PermissionError:
        return False
    try:
        os.unlink(record)
    except FileNotFoundError:
        pass
    return True


def subordinate_range(path: str, name: str | None, uid: int) -> tuple[int, int] | None:
    """The first range for the user (by name or id) in /etc/subuid or /etc/subgid."""
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (name, str(uid)) and fields[1].isdigit() \
                and fields[2].isdigit() and int(fields[2]) > 0:
            return int(fields[1]), int(fields[2])
    return None


def _user_name(uid: int) -> str | None:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return None


def _run_helper(helper: str, pid: int, maps: list[IdMap]) -> bool:
    """Run newuidmap/newgidmap PID inside outside count ...; True when it succeeded."""
    path = shutil.which(helper)
    if path is None:
        return False
    arguments = [helper, str(pid)] + [str(v) for m in maps for v in (m.inside, m.outside,
                                                                     m.count)]
    try:
        child = os.posix_spawn(path, arguments, {"PATH": "/usr/bin:/bin"})
        _, status = os.waitpid(child, 0)
    except OSError:
        return False
    return os.waitstatus_to_exitcode(status) == 0
