"""cgroup v1 specifics on a real hybrid host: a directory per hierarchy, raw files, memsw order."""

from __future__ import annotations

import os
import signal

import pytest
from cg_helpers import WAIT, go

from nsmagic.cgroups import Limits
from nsmagic.cgroups._fs import cgroup_mounts, host_path, own_cgroups, read_flat_keyed
from nsmagic.cgroups.convert import weight_to_shares

pytestmark = pytest.mark.root


@pytest.fixture
def v1(driver):
    if driver.name != "v1":
        pytest.skip(f"this host uses the {driver.name} driver, not cgroup v1")
    return driver


def read(path) -> str:
    return path.read_text().strip()


def test_group_is_one_directory_per_hierarchy_under_the_callers_cgroup(v1, make_group, spawn):
    group = make_group()
    own = own_cgroups()
    mounts = {c: m for m in cgroup_mounts() for c in m.controllers}
    for controller in ("cpu", "cpuacct", "memory", "pids"):
        parent = host_path(mounts[controller], own[controller])
        assert group.dirs[controller] == parent / group.name
        assert group.dirs[controller].is_dir()
    child = spawn(WAIT)
    group.attach(child.pid)
    for path in group.unique_dirs():
        assert read(path / "cgroup.procs") == str(child.pid), path


def test_limits_land_in_the_v1_files(v1, make_group):
    group = make_group(Limits.parse(cpus=0.25, memory="48M", pids=7, cpu_weight=200))
    d = group.dirs
    assert read(d["cpu"] / "cpu.cfs_period_us") == "100000"
    assert read(d["cpu"] / "cpu.cfs_quota_us") == "25000"  # 0.25 * 100000
    assert read(d["cpu"] / "cpu.shares") == str(weight_to_shares(200))
    assert read(d["memory"] / "memory.limit_in_bytes") == str(48 << 20)
    assert read(d["pids"] / "pids.max") == "7"


def test_memsw_is_raised_first_when_growing_and_memory_lowered_first_when_shrinking(
    v1, make_group
):
    group = make_group()
    memsw = group.dirs["memory"] / "memory.memsw.limit_in_bytes"
    if not memsw.exists():
        pytest.skip("this kernel has no swap accounting (memory.memsw.*)")
    limit = group.dirs["memory"] / "memory.limit_in_bytes"
    # Each step would fail with EINVAL if written in the wrong order.
    for memory, total in (("64M", "128M"), ("256M", "512M"), ("32M", "32M"), ("1G", "-1")):
        group.apply(Limits.parse(memory=memory, memory_swap=total))
        got = group.limits()
        assert read(limit) == str(got.memory)
        assert got.memory_swap == (-1 if total == "-1" else int(read(memsw)))


def test_cpuset_is_copied_from_the_parent_then_restricted(v1, make_group, spawn):
    group = make_group()
    cpuset_dir = group.dirs["cpuset"]
    assert read(cpuset_dir / "cpuset.cpus") == read(cpuset_dir.parent / "cpuset.cpus")
    assert read(cpuset_dir / "cpuset.mems") == read(cpuset_dir.parent / "cpuset.mems")
    group.apply(Limits(cpuset="0"))
    child = spawn(WAIT)
    group.attach(child.pid)
    assert os.sched_getaffinity(child.pid) == {0}
    assert group.limits().cpuset == "0"


def test_oom_kill_shows_in_memory_oom_control(v1, make_group, spawn):
    """On this kernel (6.18) an OOM kill leaves under_oom 0 and oom_kill 1 in oom_control."""
    group = make_group(Limits.parse(memory="32M"))
    child = spawn(WAIT + "x = [b'x' * (1 << 20) for _ in range(128)]\n")
    group.attach(child.pid)
    go(child)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    control = read_flat_keyed(group.dirs["memory"] / "memory.oom_control")
    assert control["oom_kill"] >= 1 and control["under_oom"] == 0
    assert int(read(group.dirs["memory"] / "memory.failcnt")) > 0


def test_kill_uses_the_freezer_and_thaws_it(v1, make_group, spawn):
    group = make_group()
    if "freezer" not in group.dirs:
        pytest.skip("no writable freezer hierarchy")
    child = spawn(WAIT + "import time; time.sleep(60)\n")
    group.attach(child.pid)
    group.kill()
    assert child.wait(timeout=10) == -signal.SIGKILL
    assert read(group.dirs["freezer"] / "freezer.state") == "THAWED"
