"""Containers with limits behave the same on cgroup v1 (this host) and v2 (a real v2 kernel
booted under qemu runs this file too: tests/vm/test_vm.py, marker cgroup_v2)."""

from __future__ import annotations

import os

import pytest

import nsmagic
from nsmagic.cgroups import describe_host

pytestmark = [pytest.mark.cgroup_v2, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="real cgroups need root here")]

READ_MEMORY_LIMIT = (
    "import os\n"
    "v2 = '/sys/fs/cgroup/memory.max'\n"
    "v1 = '/sys/fs/cgroup/memory/memory.limit_in_bytes'\n"
    "print(open(v2 if os.path.exists(v2) else v1).read().strip())"
)


def test_the_driver_matches_the_kernel():
    host = describe_host()
    assert host.driver == ("v2" if host.version == "v2" else "v1")


def test_the_memory_limit_is_what_the_container_sees():
    result = nsmagic.run(READ_MEMORY_LIMIT, memory="48M")
    assert result.ok, result.stderr
    assert result.stdout.strip() == str(48 << 20)
    assert result.cgroup_driver == describe_host().driver


def test_an_allocation_past_the_limit_is_an_oom_kill_reported_as_such():
    result = nsmagic.run("x = bytearray(200 << 20)", memory="32M")
    assert result.oom is not None and result.oom["kills"] >= 1
    assert result.describe().startswith("killed: out of memory, limit 32 MiB")


def test_a_fork_bomb_stops_at_the_pids_limit_and_the_host_is_fine():
    result = nsmagic.run("import os\nchildren = 0\nwhile True:\n    if os.fork() == 0:\n"
                         "        import time; time.sleep(5); os._exit(0)\n    children += 1",
                         pids=16)
    assert result.exception is not None and result.exception.type == "BlockingIOError"
    assert nsmagic.run("print('host still forks')").stdout == "host still forks\n"


def test_the_cgroup_is_gone_when_the_container_ends():
    result = nsmagic.run("pass", memory="64M", pids=32)
    assert result.cgroup
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        assert result.cgroup not in dirs, root
        if root.count("/") > 6:
            dirs.clear()


def test_a_user_namespace_container_gets_the_same_limits():
    result = nsmagic.run(READ_MEMORY_LIMIT + "\nprint(os.getuid())", memory="40M", userns=True)
    assert result.ok, (result.describe(), result.stderr)
    assert result.stdout.split() == [str(40 << 20), "0"]
