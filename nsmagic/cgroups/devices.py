"""Device rules: which device nodes a group's processes may open or create (v1 devices
controller, v2 device filter), and the set every container gets, Docker's default."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nsmagic.errors import SpecError

# Device types and access bits as the kernel names them (include/uapi/linux/bpf.h
# BPF_DEVCG_*, and the letters of the v1 devices.allow syntax).
KINDS = ("a", "b", "c")  # all, block, char
ACCESS = "rwm"  # read, write, mknod


@dataclass(frozen=True)
class DeviceRule:
    """One allowed set of devices: kind 'c', 'b' or 'a' (both), major and minor (None = any),
    and access, a subset of 'rwm'."""

    kind: str
    major: int | None
    minor: int | None
    access: str = "rwm"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SpecError(f"a device rule's kind is 'a', 'b' or 'c', not {self.kind!r}.")
        if not self.access or set(self.access) - set(ACCESS):
            raise SpecError(f"a device rule's access is some of 'rwm', not {self.access!r}.")
        # Linux device numbers: a 12-bit major and a 20-bit minor (MKDEV).
        for number, bits, what in ((self.major, 12, "major"), (self.minor, 20, "minor")):
            if number is not None and not 0 <= number < 1 << bits:
                raise SpecError(f"a device's {what} number is 0 to {(1 << bits) - 1}, "
                                f"not {number!r}.")
        if self.kind == "a" and (self.major, self.minor) != (None, None):
            raise SpecError("a rule for all devices ('a') takes no major or minor number.")

    def __str__(self) -> str:
        """The v1 devices.allow form: 'c 1:3 rwm', 'c 136:* rwm', 'b *:* m', 'a *:* rwm'."""
        major = "*" if self.major is None else self.major
        minor = "*" if self.minor is None else self.minor
        return f"{self.kind} {major}:{minor} {''.join(a for a in ACCESS if a in self.access)}"


def _char(major: int, minor: int | None) -> DeviceRule:
    return DeviceRule("c", major, minor, "rwm")


# What Docker (and runc's `runc spec`) allow a default container, but the console: everything
# else is denied.
# Making any node is allowed ('m'), so an image's /dev can be populated; opening one is not,
# unless it is one of these.
CONTAINER_DEVICES: tuple[DeviceRule, ...] = (
    DeviceRule("c", None, None, "m"),
    DeviceRule("b", None, None, "m"),
    _char(1, 3),  # /dev/null
    _char(1, 5),  # /dev/zero
    _char(1, 7),  # /dev/full
    _char(1, 8),  # /dev/random
    _char(1, 9),  # /dev/urandom
    _char(5, 0),  # /dev/tty
    # Not 5:1: a container has no console of its own here, and a node made for 5:1 would
    # be the host's system console (Docker allows it for the pts it binds there with -t).
    _char(5, 2),  # /dev/ptmx
    _char(136, None),  # /dev/pts/*
)


def describe(rules: Sequence[DeviceRule]) -> str:
    """One line for messages: 'c *:* m, b *:* m, c 1:3 rwm, ...'."""
    return ", ".join(str(rule) for rule in rules) or "none"


__all__ = ["CONTAINER_DEVICES", "DeviceRule", "describe"]
