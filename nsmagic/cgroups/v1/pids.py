"""cgroup v1 pids controller: pids.max, pids.current, pids.events (same files as v2)."""

from __future__ import annotations

from nsmagic.cgroups.v2.pids import apply, is_set, read_limits, stats

CONTROLLER = "pids"
__all__ = ["CONTROLLER", "apply", "is_set", "read_limits", "stats"]
