"""The user a container's payload runs as (an image's User, or --user), looked up in the
container's own /etc/passwd and /etc/group, as Docker does: NAME or UID, optionally :GROUP
or :GID."""

from __future__ import annotations

import os

from nsmagic.errors import SpecError


def parse(user: str) -> tuple[str, str | None]:
    """'name[:group]' or 'uid[:gid]' -> (user part, group part or None); SpecError when
    malformed."""
    name, sep, group = user.partition(":")
    if not name or (sep and not group) or any(c in user for c in " \n\0/"):
        raise SpecError(f"--user takes NAME[:GROUP] or UID[:GID], not {user!r}.")
    return name, group if sep else None


def become(user: str, etc: str = "/etc") -> None:
    """Switch this process to user (resolved in etc), dropping supplementary groups but
    the user's own; its HOME becomes the user's home unless one was set."""
    name, group = parse(user)
    uid, gid, home = _lookup_user(name, etc)
    if group is not None:
        gid = _lookup_group(group, etc)
    try:
        os.setgroups([])
    except PermissionError:
        pass  # setgroups is denied in this user namespace: there are none to drop
    os.setgid(gid)
    os.setuid(uid)
    if home and os.environ.get("HOME") in (None, "/root"):
        os.environ["HOME"] = home


def _lookup_user(name: str, etc: str) -> tuple[int, int, str | None]:
    for fields in _entries(os.path.join(etc, "passwd")):
        if len(fields) >= 6 and fields[2].isdigit() and fields[3].isdigit() \
                and name in (fields[0], fields[2]):
            return int(fields[2]), int(fields[3]), fields[5]
    if name.isdigit():
        return int(name), int(name), None  # a number with no entry, as Docker allows
    raise OSError(f"there is no user {name!r} in the container's /etc/passwd")


def _lookup_group(group: str, etc: str) -> int:
    for fields in _entries(os.path.join(etc, "group")):
        if len(fields) >= 3 and fields[2].isdigit() and group in (fields[0], fields[2]):
            return int(fields[2])
    if group.isdigit():
        return int(group)
    raise OSError(f"there is no group {group!r} in the container's /etc/group")


def _entries(path: str) -> list[list[str]]:
    try:
        with open(path) as handle:
            return [line.rstrip("\n").split(":") for line in handle
                    if line.strip() and not line.startswith("#")]
    except OSError:
        return []
