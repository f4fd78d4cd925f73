"""cgroup v1 freezer: stops a group's processes so a kill cannot race with fork."""

from __future__ import annotations

from pathlib import Path

from nsmagic.cgroups._fs import read_optional, wait_for, write_raw

CONTROLLER = "freezer"


def freeze(path: Path, timeout: float = 1.0) -> bool:
    """Write FROZEN and wait for the state to settle (FREEZING -> FROZEN); False on timeout."""
    write_raw(path / "freezer.state", "FROZEN")
    return wait_for(lambda: read_optional(path / "freezer.state") == "FROZEN", timeout)


def thaw(path: Path) -> None:
    """Write THAWED. v1 frozen tasks receive a SIGKILL only once thawed, so thaw after killing."""
    write_raw(path / "freezer.state", "THAWED")
