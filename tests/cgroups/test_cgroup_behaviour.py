"""What any kernel cgroup driver must do, with real processes (cgroup v1 here, v2 in the VM).

These tests use detect_driver() only, write nowhere but the cgroup filesystem, and remove what
they create even when they fail (see the make_group and spawn fixtures).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import time

import pytest
from cg_helpers import WAIT, assert_gone, go

from nsmagic.cgroups import Limits, describe_host, detect_driver
from nsmagic.cgroups.base import NAME_PREFIX
from nsmagic.errors import CapabilityError, SpecError

pytestmark = [pytest.mark.root, pytest.mark.cgroup_v2]

BUSY = WAIT + "while True: pass\n"
SLEEP = WAIT + "import time; time.sleep(60)\n"
# Touches every page (bytes multiplication fills memory), 1 MiB at a time, up to 256 MiB.
HOG = WAIT + """
chunks = [b"x" * (1 << 20) for _ in range(256)]
print("survived")
"""
FORK_BOMB = WAIT + """
import json, os, time
kids, error = [], None
for _ in range(64):
    try:
        pid = os.fork()
    except OSError as exc:
        error = exc.errno
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print(json.dumps({"forked": len(kids), "errno": error}))
"""


def test_host_is_described_and_writable(driver):
    host = describe_host()
    assert host.writable and host.driver == driver.name
    assert {"cpu", "memory", "pids"} <= set(host.controllers)
    assert host.reason


def test_names_carry_prefix_and_owner_pid(make_group, driver):
    group = make_group()
    assert group.name.startswith(f"{NAME_PREFIX}{os.getpid()}-t-")
    assert group.name in driver.list()
    # A full name is kept as it is, so list() output can be passed back to open().
    assert driver.open(group.name).name == group.name
    with pytest.raises(SpecError):
        driver.create("../escape")


def test_limits_are_written_and_read_back(make_group):
    limits = Limits.parse(cpus=0.5, memory="64M", pids=16, cpu_weight=50)
    group = make_group(limits)
    got = group.limits()
    assert (got.cpus, got.memory, got.pids, got.cpu_weight) == (0.5, 64 << 20, 16, 50)
    # None fields leave the others unchanged.
    group.apply(Limits(memory=128 << 20))
    got = group.limits()
    assert (got.cpus, got.memory, got.pids) == (0.5, 128 << 20, 16)


def test_attach_moves_a_process_in(make_group, spawn):
    group = make_group()
    child = spawn(SLEEP)
    group.attach(child.pid)
    assert group.pids() == [child.pid]
    assert group.stats().pids_current == 1
    with pytest.raises(ProcessLookupError):
        group.attach(2**22 + 1)  # above pid_max: cannot exist


def test_half_a_cpu_quota_gives_half_a_cpu(make_group, spawn):
    """A busy loop under cpus=0.5 gets 0.5 CPU, within +-10% (0.45..0.55), over 3 s.

    The CFS period is 100 ms, so 3 s is 30 periods: one period of phase error is 3%. The
    only timed assertion of the suite; it assumes one core is not saturated by others.
    """
    group = make_group(Limits(cpus=0.5))
    child = spawn(BUSY)
    group.attach(child.pid)
    go(child)
    time.sleep(0.3)  # let the interpreter start looping
    first, t0 = group.stats().cpu_usage_ns, time.monotonic()
    time.sleep(3.0)
    last, t1 = group.stats().cpu_usage_ns, time.monotonic()
    share = (last - first) / 1e9 / (t1 - t0)
    assert 0.45 <= share <= 0.55, f"busy loop got {share:.3f} CPU under a 0.5 quota"
    assert group.stats().cpu_throttled_periods > 0


def test_allocation_past_memory_limit_is_oom_killed(make_group, spawn):
    group = make_group(Limits.parse(memory="64M"))
    # Forbid swap where the kernel accounts it, so that hosts with swap OOM-kill too.
    with contextlib.suppress(CapabilityError):
        group.apply(Limits.parse(memory="64M", memory_swap="64M"))
    child = spawn(HOG)
    group.attach(child.pid)
    go(child)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, (child.returncode, out)
    assert "survived" not in out
    stats = group.stats()
    assert stats.oom_kills >= 1
    assert stats.memory_limit == 64 << 20
    assert stats.memory_peak is None or stats.memory_peak <= (64 << 20) + (1 << 20)


def test_pids_limit_stops_a_fork_bomb(make_group, spawn):
    group = make_group(Limits(pids=16))
    child = spawn(FORK_BOMB)
    group.attach(child.pid)
    go(child)
    out, err = child.communicate(timeout=30)
    result = json.loads(out)
    assert result["errno"] == errno.EAGAIN, err
    assert result["forked"] <= 15  # the bomb itself is one of the 16
    stats = group.stats()
    if stats.pids_denied is not None:
        assert stats.pids_denied >= 1
    # The host is fine: we can still start processes outside the group.
    assert subprocess.run(["true"]).returncode == 0


def test_kill_reaches_grandchildren(make_group, spawn):
    group = make_group()
    child = spawn(WAIT + """
import os, time
if os.fork() == 0:
    time.sleep(60)
print("forked", flush=True)
time.sleep(60)
""")
    group.attach(child.pid)
    go(child)
    assert child.stdout.readline().strip() == "forked"
    assert len(group.pids()) == 2
    group.kill()
    child.wait(timeout=10)
    assert group.pids() == []


def test_remove_is_idempotent_and_leaves_nothing(driver, spawn):
    group = driver.create("t-remove")
    try:
        child = spawn(SLEEP)
        group.attach(child.pid)
        group.remove()
        assert child.wait(timeout=10) == -signal.SIGKILL
        assert_gone(group)
        group.remove()
        with pytest.raises(KeyError):
            driver.open(group.name)
        assert group.name not in driver.list()
    finally:
        group.remove()


def test_prune_removes_groups_of_dead_owners_only(driver, make_group, spawn):
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan_driver = type(driver)(owner_pid=dead.pid)
    orphan = make_group(drv=orphan_driver)
    mine = make_group()
    child = spawn(SLEEP)
    orphan.attach(child.pid)
    removed = detect_driver().prune_orphans()
    assert orphan.name in removed and mine.name not in removed
    assert child.wait(timeout=10) == -signal.SIGKILL
    assert_gone(orphan)
    assert mine.name in driver.list()
