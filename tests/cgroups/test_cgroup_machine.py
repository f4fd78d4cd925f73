"""nsmagic.cgroups.machine: every nsmagic cgroup of the machine, its owner, and the orphans."""

from __future__ import annotations

import subprocess

import pytest
from cg_helpers import WAIT

from nsmagic.cgroups import machine
from nsmagic.cgroups.limits import Limits

pytestmark = [pytest.mark.root, pytest.mark.cgroup_v2]


def only(*groups) -> dict[str, machine.MachineGroup]:
    """The machine's view of these groups alone (prune must not touch others' groups on a
    shared machine)."""
    found = machine.find_all()
    return {g.name: found[g.name] for g in groups}


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_group_is_found_with_its_owner_and_directories(make_group):
    group = make_group(Limits(memory=32 << 20))
    found = machine.find_all()[group.name]
    assert found.owner_alive and found.driver == group.driver
    assert found.directories() == sorted(group.directories())
    summary = found.summary()
    assert summary["owner_command"] and summary["limits"]["memory"] == 32 << 20
    assert summary["limits_text"].startswith("memory 32 MiB")
    assert "memory_current" in summary["stats"]


def test_a_group_is_looked_up_by_its_name_or_its_id(make_group):
    group = make_group()
    suffix = group.name.split("-", 2)[2]
    assert [g.name for g in machine.lookup(group.name)] == [group.name]
    assert [g.name for g in machine.lookup(suffix)] == [group.name]
    assert machine.lookup("no-such-group") == []


def test_prune_removes_an_empty_group_whose_owner_is_dead(driver, make_group, dead_pid):
    orphan = make_group(drv=type(driver)(owner_pid=dead_pid))
    mine = make_group()
    assert not machine.find_all()[orphan.name].owner_alive
    report = machine.prune_dead_owners(only(orphan, mine))
    assert report.removed == [orphan.name] and not report.kept and not report.failed
    assert orphan.name not in machine.find_all() and mine.name in machine.find_all()


def test_prune_keeps_a_dead_owners_group_that_still_holds_processes(
        driver, make_group, spawn, dead_pid):
    # Its owner's pid is dead here, but the group may belong to another pid namespace.
    orphan = make_group(drv=type(driver)(owner_pid=dead_pid))
    orphan.attach(spawn(WAIT).pid)
    report = machine.prune_dead_owners(only(orphan))
    assert report.kept == {orphan.name: 1} and not report.removed
    assert orphan.name in machine.find_all()
