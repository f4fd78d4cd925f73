"""Control groups: one interface over the cgroup v2, cgroup v1 and rlimit drivers."""

from nsmagic.cgroups.limits import Limits, format_size, parse_size

__all__ = ["Limits", "format_size", "parse_size"]
