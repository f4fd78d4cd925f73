"""%%container limit options on real cgroups: CPU quota, OOM kill, fork bomb, limits seen
from inside, what -o returns, and the notes printed when limits are only approximated."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from nsmagic.cgroups import Limits
from nsmagic.magics import ContainerError

from ..conftest import IS_ROOT, requires_root, wait_until
from .test_cgroup_magic import (  # noqa: F401 - fixtures shared with the %cgroup tests
    READ_LIMITS,
    MiB,
    no_cgroup_left,
    nofile_for_containers,
    running_containers,
    shown,
)

BUSY = """
import time
wall0, cpu0 = time.monotonic(), time.process_time()
while time.monotonic() - wall0 < {seconds}:
    pass
print(round((time.process_time() - cpu0) / (time.monotonic() - wall0), 3))
"""


@pytest.mark.root
@requires_root
def test_half_a_cpu_gets_half_a_cpu(ipython_shell, capsys):
    seconds = 2.5
    result = ipython_shell.run_cell_magic("container", "--cpus 0.5 -o",
                                          BUSY.format(seconds=seconds))
    share_inside = float(shown(capsys))
    assert 0.45 <= share_inside <= 0.55, share_inside
    # The cgroup's own accounting agrees (it also counts the interpreter's start, hence +0.1).
    share_cgroup = result.stats["cpu_usage_ns"] / 1e9 / seconds
    assert 0.45 <= share_cgroup <= 0.55 + 0.1, share_cgroup
    assert result.stats["cpu_throttled_periods"] > 0
    assert result.limits == Limits(cpus=0.5) and result.cgroup_driver == "v1"


@pytest.mark.root
@requires_root
def test_out_of_memory_fails_the_cell_with_one_line(ipython_shell, capsys):
    cell = "%%container --memory 64M --memory-swap 64M\nprint('started', flush=True)\n" \
           "b = b'x' * (200 << 20)\nprint('never')\n"
    failed = ipython_shell.run_cell(cell)
    assert isinstance(failed.error_in_exec, ContainerError)
    message = str(failed.error_in_exec)
    assert re.fullmatch(r"killed: out of memory, limit 64 MiB, peak \d+(\.\d)? MiB", message)
    out = shown(capsys)
    assert "started" in out and "never" not in out
    assert f"ContainerError: {message}" in out and "Traceback" not in out

    # With --no-raise the same line is printed, and -o gives the numbers behind it.
    result = ipython_shell.run_cell_magic(
        "container", "--memory 64M --memory-swap 64M --no-raise -o", "b = b'x' * (200 << 20)")
    assert "killed: out of memory, limit 64 MiB" in shown(capsys)
    assert result.oom["kills"] >= 1 and result.oom["limit"] == 64 * MiB
    assert result.stats["memory_limit"] == 64 * MiB and result.stats["oom_kills"] >= 1
    assert result.limits.memory == 64 * MiB and result.limits.memory_swap == 64 * MiB


@pytest.mark.root
@requires_root
def test_a_child_killed_by_oom_is_still_reported(ipython_shell, capsys):
    cell = ("import subprocess, sys\n"
            "child = subprocess.run(['/usr/bin/python3', '-c', \"b = b'x' * (200 << 20)\"])\n"
            "print('child', child.returncode)\n")
    ipython_shell.run_cell_magic("container", "--memory 64M --memory-swap 64M", cell)
    out = shown(capsys)
    assert "child -9" in out  # the payload itself survived and the cell succeeded...
    assert "nsmagic: a process was killed: out of memory, limit 64 MiB" in out  # ...but said


FORK_BOMB = """
import os, time
children = []
try:
    for _ in range(200):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
except BlockingIOError as error:
    print("refused after", len(children), error.errno, os.readlink("/proc/self/ns/pid"))
finally:
    for pid in children:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
"""


def in_pid_namespace(namespace: str) -> list[int]:
    """Host pids whose pid namespace is the given one ('pid:[4026...]')."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink(f"/proc/{entry}/ns/pid") == namespace:
                found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.mark.root
@requires_root
def test_a_fork_bomb_stops_at_the_pids_limit_and_the_host_is_fine(ipython_shell, capsys):
    result = ipython_shell.run_cell_magic("container", "--pids 32 -o", FORK_BOMB)
    words = shown(capsys).split()
    assert words[:2] == ["refused", "after"] and words[3] == "11"  # EAGAIN
    # 32 processes in the group: pid 1, the payload and its children.
    assert 25 <= int(words[2]) <= 30, words
    assert result.ok and result.stats["pids_limit"] == 32 and result.stats["pids_denied"] >= 1
    assert subprocess.run(["true"], check=False).returncode == 0  # the host still forks
    assert wait_until(lambda: not running_containers(), 3)
    # Nothing of the bomb is left: no process on the host is in the container's pid namespace.
    assert wait_until(lambda: not in_pid_namespace(words[4]), 3)


@pytest.mark.root
@requires_root
def test_every_limit_reads_back_inside_the_container(ipython_shell, capsys):
    line = ("--cpus 0.5 --memory 256M --memory-swap 256M --pids 64 --cpu-weight 50 "
            "--cpuset 0 -o")
    cell = READ_LIMITS + (
        "print(read('memory', 'memory.limit_in_bytes'), "
        "read('memory', 'memory.memsw.limit_in_bytes'), read('cpu', 'cpu.cfs_quota_us'), "
        "read('cpu', 'cpu.cfs_period_us'), read('cpu', 'cpu.shares'), "
        "read('pids', 'pids.max'), read('cpuset', 'cpuset.cpus'))\n"
        "print(open('/proc/self/cgroup').read())\n"
    )
    result = ipython_shell.run_cell_magic("container", line, cell)
    first, *cgroup_lines = shown(capsys).strip().splitlines()
    memory, memsw, quota, period, shares, pids, cpus = first.split()
    assert int(memory) == int(memsw) == 256 * MiB
    assert int(quota) / int(period) == 0.5
    assert int(shares) < 1024  # weight 50 is below the default 100 (1024 shares)
    assert (pids, cpus) == ("64", "0")
    # The cgroup namespace: the container's own group is the root of every hierarchy.
    assert all(line.endswith(":/") for line in cgroup_lines if line), cgroup_lines
    assert result.limits == Limits(cpus=0.5, memory=256 * MiB, memory_swap=256 * MiB, pids=64,
                                   cpu_weight=50, cpuset="0")
    assert result.cgroup.startswith("nsmagic-") and result.cgroup_driver == "v1"
    assert result.stats["memory_limit"] == 256 * MiB and result.stats["pids_limit"] == 64


@pytest.mark.unprivileged
@pytest.mark.skipif(IS_ROOT, reason="root has real cgroups here (runs in the nobody pass)")
@pytest.mark.usefixtures("nofile_for_containers")
def test_approximated_limits_are_said_on_stderr(ipython_shell, capsys):
    result = ipython_shell.run_cell_magic("container", "--memory 64M --cpus 0.5 -o",
                                          "print('ran')")
    out = capsys.readouterr()
    assert out.out == "ran\n"
    notes = [line for line in out.err.splitlines() if line.startswith("nsmagic: ")]
    assert any("limits only approximated: The CPU quota (0.5 cores) is NOT enforced" in n
               for n in notes), notes
    assert any("RLIMIT_AS" in n for n in notes), notes
    assert result.cgroup_driver == "rlimit" and result.limits == Limits(cpus=0.5,
                                                                        memory=64 * MiB)
    # -q keeps them quiet.
    ipython_shell.run_cell_magic("container", "--memory 64M -q", "print('ran')")
    assert capsys.readouterr().err == ""
