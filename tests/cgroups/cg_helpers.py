"""Helpers shared by the cgroup tests (a module of its own so test files can import it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

# Child payloads wait for a line on stdin, so that they can be attached to a group before
# they start the work under test (a child attached mid-work would be partly charged elsewhere).
WAIT = "import sys; sys.stdin.readline()\n"


def go(child: subprocess.Popen) -> None:
    """Release a child waiting on WAIT."""
    child.stdin.write("go\n")
    child.stdin.flush()


def group_dirs(group) -> list[Path]:
    """Every directory that makes up a kernel-backed group."""
    if hasattr(group, "dirs"):
        return list(group.dirs.values())
    return [group.path]


def assert_gone(group) -> None:
    """No directory of the group remains in any hierarchy."""
    left = [p for p in group_dirs(group) if p.exists()]
    assert not left, f"left behind: {left}"
    hits = subprocess.run(
        ["find", "/sys/fs/cgroup", "-name", group.name], capture_output=True, text=True
    ).stdout.split()
    assert not hits, f"left behind: {hits}"
