"""The container options shared by the magics and the command line, turned into spec
arguments: --no-<namespace> flags, --userns/--no-userns, --env KEY=VALUE."""

from __future__ import annotations

from typing import Any

from nsmagic.errors import SpecError
from nsmagic.runtime.spec import DEFAULT_NAMESPACES

SWITCHABLE = ("pid", "uts", "ipc", "net", "mount")


def namespaces_from(args: Any) -> set[str]:
    """The namespace set left after args.no_pid, no_uts, ..., no_cgroupns."""
    namespaces = set(DEFAULT_NAMESPACES)
    for name in SWITCHABLE:
        if getattr(args, f"no_{name}", False):
            namespaces.discard(name)
    if getattr(args, "no_cgroupns", False):
        namespaces.discard("cgroup")
    return namespaces


def userns_from(args: Any) -> bool | None:
    """True, False, or None ('only when not root') from --userns / --no-userns."""
    if args.userns and args.no_userns:
        raise SpecError("--userns and --no-userns contradict each other; give one.")
    return True if args.userns else (False if args.no_userns else None)


def environment_from(items: list[str]) -> dict[str, str]:
    """--env KEY=VALUE items as a dict."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or "\0" in item:
            raise SpecError(f"--env takes KEY=VALUE (no NUL characters), not {item!r}.")
        env[key] = value
    return env
