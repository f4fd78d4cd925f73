"""Shared fixtures: the leak check every test session ends with, and an IPython shell."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from nsmagic.runtime.launcher import close_default_launcher

IS_ROOT = os.geteuid() == 0
OUR_PROCESS_NAMES = ("nsmagic-init", "nsmagic-server", "nsmagic-warm",
                     "nsmagic-forker")


# Every process this test session starts inherits this marker in its environment, so the
# leak check counts only ours on a machine shared with other runs.
SESSION_MARKER = f"NSMAGIC_TEST_SESSION={uuid.uuid4().hex}"
os.environ["NSMAGIC_TEST_SESSION"] = SESSION_MARKER.split("=", 1)[1]


def _from_this_session(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return SESSION_MARKER.encode() in handle.read().split(b"\0")
    except OSError:
        return False


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
        if name.startswith(OUR_PROCESS_NAMES) and state != "Z" and _from_this_session(entry):
            found.append(f"{entry} {name}")
    return found


def _own_cgroup_bases() -> list[str]:
    """Where nsmagic creates groups for processes of this session: under our own cgroup in
    each hierarchy (other sessions on a shared machine sit in other cgroups)."""
    bases = []
    with open("/proc/self/cgroup") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else ["unified", ""]:
                for candidate in (f"/sys/fs/cgroup/{name}{path}", f"/sys/fs/cgroup{path}"):
                    if os.path.isdir(candidate):
                        bases.append(candidate.rstrip("/"))
    return sorted(set(bases))


def our_cgroups() -> set[str]:
    """nsmagic cgroups under our own cgroups whose owner is this session's or dead."""
    found = set()
    for base in _own_cgroup_bases():
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            if name.startswith("nsmagic-") and os.path.isdir(os.path.join(base, name)):
                owner = name.split("-")[1]
                if not os.path.exists(f"/proc/{owner}") or _from_this_session(owner):
                    found.add(os.path.join(base, name))
    return found


def running_containers() -> list[str]:
    """Processes of containers that are running (not the fork server or its warm pool: a
    warm pid 1 waits with a child named nsmagic-warm)."""
    found = our_processes()
    warm_parents = {parent_of(int(p.split()[0])) for p in found if p.endswith("nsmagic-warm")}
    return [p for p in found if p.endswith("nsmagic-init")
            and int(p.split()[0]) not in warm_parents]


def parent_of(pid: int) -> int:
    """A process's parent pid (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


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
    before = our_cgroups()  # orphans of earlier runs are not this session's doing
    yield
    close_default_launcher()
    assert wait_until(lambda: not our_processes(), 5), f"leaked processes: {our_processes()}"
    assert not our_mounts(), f"leaked mounts: {our_mounts()}"
    assert wait_until(lambda: not (our_cgroups() - before), 5), \
        f"leaked cgroups: {sorted(our_cgroups() - before)}"


@pytest.fixture(scope="session")
def ipython_shell():
    """A real in-process IPython shell with the extension loaded."""
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython()
    shell.run_line_magic("load_ext", "nsmagic")
    yield shell
    shell.run_line_magic("unload_ext", "nsmagic")


requires_root = pytest.mark.skipif(not IS_ROOT, reason="needs root")
