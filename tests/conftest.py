"""Shared fixtures: the leak check every test session ends with, and an IPython shell."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from nsmagic.runtime.launcher import close_default_launcher

IS_ROOT = os.geteuid() == 0
OUR_PROCESS_NAMES = ("nsmagic-sup", "nsmagic-init", "nsmagic-zygote", "nsmagic-warm")


def our_processes() -> list[str]:
    """Processes of ours (by the names our helpers give themselves) still alive."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as handle:
                name = handle.read().strip()
            with open(f"/proc/{entry}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if name.startswith(OUR_PROCESS_NAMES) and state != "Z":
            found.append(f"{entry} {name}")
    return found


def running_containers() -> list[str]:
    """Processes of containers that are running (not the fork server or its warm pool)."""
    return [p for p in our_processes() if p.endswith(("nsmagic-init", "nsmagic-sup"))]


def our_mounts() -> list[str]:
    """Mounts on the host that name nsmagic."""
    with open("/proc/self/mountinfo") as handle:
        return [line.strip() for line in handle if "nsmagic" in line]


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:  # noqa: ANN001
    """Poll predicate until it is true or the timeout passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """After the whole session, no process, mount or cgroup of ours may remain."""
    yield
    close_default_launcher()
    assert wait_until(lambda: not our_processes(), 5), f"leaked processes: {our_processes()}"
    assert not our_mounts(), f"leaked mounts: {our_mounts()}"
    leftovers = subprocess.run(
        ["find", "/sys/fs/cgroup", "-maxdepth", "4", "-type", "d", "-name", "nsmagic-*"],
        capture_output=True, text=True, check=False,
    ).stdout.split()
    assert not leftovers, f"leaked cgroups: {leftovers}"


@pytest.fixture(scope="session")
def ipython_shell():
    """A real in-process IPython shell with the extension loaded."""
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython()
    shell.run_line_magic("load_ext", "nsmagic")
    yield shell
    shell.run_line_magic("unload_ext", "nsmagic")


requires_root = pytest.mark.skipif(not IS_ROOT, reason="needs root")
