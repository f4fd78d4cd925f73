"""cgroup v2 specifics on a real unified hierarchy (runs in the cgroup v2 VM; skips elsewhere)."""

from __future__ import annotations

import os
import signal

import pytest
from cg_helpers import WAIT, go

from nsmagic.cgroups import Limits

pytestmark = [pytest.mark.root, pytest.mark.cgroup_v2]


@pytest.fixture
def v2(driver):
    if driver.name != "v2":
        pytest.skip(f"this host uses the {driver.name} driver, not cgroup v2")
    return driver


def read(path) -> str:
    return path.read_text().strip()


def test_controllers_are_handed_down_and_limits_land_in_v2_files(v2, make_group):
    group = make_group(Limits.parse(cpus=0.5, memory="64M", pids=16, cpu_weight=200))
    assert group.path.parent == v2.base
    assert {"cpu", "memory", "pids"} <= set(read(v2.base / "cgroup.subtree_control").split())
    assert read(group.path / "cpu.max") == "50000 100000"
    assert read(group.path / "cpu.weight") == "200"
    assert read(group.path / "memory.max") == str(64 << 20)
    assert read(group.path / "pids.max") == "16"
    if (group.path / "memory.swap.max").exists():
        group.apply(Limits.parse(memory="64M", memory_swap="96M"))
        assert read(group.path / "memory.swap.max") == str(32 << 20)  # swap alone


def test_stats_include_pressure_and_oom_events(v2, make_group, spawn):
    group = make_group(Limits.parse(memory="32M"))
    child = spawn(WAIT + "x = [b'x' * (1 << 20) for _ in range(128)]\n")
    group.attach(child.pid)
    go(child)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    stats = group.stats()
    assert stats.oom_kills >= 1 and stats.oom_events >= 1
    if (group.path / "memory.peak").exists():
        assert stats.memory_peak > 16 << 20
    if (group.path / "cpu.pressure").exists():
        assert "some_avg10" in stats.pressure["cpu"]
        assert "some_total" in stats.pressure["memory"]


def test_kill_empties_the_group_and_populated_drops_to_zero(v2, make_group, spawn):
    group = make_group()
    child = spawn(WAIT + "import time; time.sleep(60)\n")
    group.attach(child.pid)
    assert group.populated()
    group.kill()
    assert child.wait(timeout=10) == -signal.SIGKILL
    assert not group.populated()
    assert "populated 0" in read(group.path / "cgroup.events")


def test_cpuset_is_enabled_only_when_asked(v2, make_group, spawn):
    available = read(v2.base / "cgroup.controllers").split()
    if "cpuset" not in available:
        pytest.skip("cpuset is not available to this cgroup")
    group = make_group(Limits(cpuset="0"))
    child = spawn(WAIT)
    group.attach(child.pid)
    assert os.sched_getaffinity(child.pid) == {0}


def test_internal_processes_are_refused_or_evacuated_into_a_leaf(v2, make_group, spawn):
    """The no-internal-process rule, on a group of ours standing in for a busy user cgroup."""
    from nsmagic.cgroups.v2 import INIT_LEAF, V2Driver
    from nsmagic.errors import CapabilityError

    outer = make_group()  # removed at the end with everything below it
    child = spawn(WAIT)
    outer.attach(child.pid)
    with pytest.raises(CapabilityError, match="no internal processes"):
        V2Driver(base=outer.path).create("inner")
    inner = V2Driver(base=outer.path, evacuate=True).create("inner", Limits(pids=8))
    assert read(outer.path / INIT_LEAF / "cgroup.procs") == str(child.pid)
    assert read(outer.path / "cgroup.procs") == ""
    assert read(inner.path / "pids.max") == "8"
