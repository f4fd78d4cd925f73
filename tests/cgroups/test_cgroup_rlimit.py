"""The rlimit fallback: what it enforces for real, as an unprivileged user, and what it admits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from cg_helpers import WAIT, go

from nsmagic.cgroups import Limits
from nsmagic.cgroups.rlimit import RlimitDriver, weight_to_nice
from nsmagic.errors import SpecError

NOBODY = 65534

# Runs as an unprivileged user: detect the driver, then check that each limit bites.
UNPRIVILEGED = r'''
import json, os, subprocess, sys
from nsmagic.cgroups import Limits, describe_host, detect_driver

WAIT = "import sys; sys.stdin.readline()\n"

def child(code):
    return subprocess.Popen([sys.executable, "-I", "-c", WAIT + code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)

out = {"uid": os.getuid(), "driver": detect_driver().name, "host": describe_host().as_dict()}
driver = detect_driver()
memory = driver.create("mem", Limits.parse(memory="256M", cpus=0.5))
hog = child(
    "try:\n    x = bytearray(512 << 20)\n    print('allocated')\n"
    "except MemoryError:\n    print('MemoryError')\n"
    "y = bytearray(16 << 20)\nprint('small-ok')\n"
)
memory.attach(hog.pid)
with open(f"/proc/{hog.pid}/limits") as f:
    out["as_line"] = [l for l in f if l.startswith("Max address space")][0].split()
out["memory"] = hog.communicate("go\n", timeout=30)[0].split()
out["approximations"] = memory.approximations()

pids = driver.create("pids", Limits(pids=1))
bomb = child(
    "import os\ntry:\n    pid = os.fork()\nexcept OSError as e:\n    print('errno', e.errno)\n"
    "else:\n    if pid == 0: os._exit(0)\n    os.waitpid(pid, 0)\n    print('forked')\n"
)
pids.attach(bomb.pid)
out["fork"] = bomb.communicate("go\n", timeout=30)[0].split()
for group in (memory, pids):
    group.remove()
    group.remove()
out["left"] = driver.list()
print(json.dumps(out))
'''


@pytest.mark.unprivileged
def test_unprivileged_user_gets_rlimit_driver_and_its_limits_bite():
    env = {"PATH": "/usr/bin:/bin", "HOME": "/", "LANG": "C.UTF-8"}
    if os.geteuid() == 0:
        # Drop to nobody in the child (the repo and the venv are world-readable).
        kwargs = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    else:
        kwargs = {}
    run = subprocess.run([sys.executable, "-c", UNPRIVILEGED], capture_output=True, text=True,
                         cwd="/", env=env, timeout=60, **kwargs)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["uid"] != 0
    assert out["driver"] == "rlimit", out["host"]["reason"]
    assert out["host"]["writable"] is False and "not writable" in out["host"]["reason"]
    assert out["as_line"][3:5] == [str(256 << 20)] * 2  # soft and hard RLIMIT_AS
    # Past the limit: MemoryError, not a kill; below it the process still works.
    assert out["memory"] == ["MemoryError", "small-ok"]
    assert out["fork"] == ["errno", "11"]  # EAGAIN from RLIMIT_NPROC
    assert any("NOT enforced" in note for note in out["approximations"])
    assert out["left"] == []


@pytest.fixture
def rdriver():
    drv = RlimitDriver()
    yield drv
    for name in drv.list():
        drv.open(name).remove()


def test_group_follows_descendants_and_sums_their_usage(rdriver, spawn):
    group = rdriver.create("tree", Limits.parse(memory="512M"))
    child = spawn(WAIT + """
import os, time
if os.fork() == 0:
    while True: pass
print("forked", flush=True)
time.sleep(60)
""")
    group.attach(child.pid)
    go(child)
    assert child.stdout.readline().strip() == "forked"
    pids = group.pids()
    assert len(pids) == 2 and child.pid in pids
    grandchild = next(p for p in pids if p != child.pid)
    with open(f"/proc/{grandchild}/limits") as f:
        assert str(512 << 20) in next(line for line in f if "address space" in line)
    first = group.stats()
    assert first.pids_current == 2 and first.memory_current > 0
    assert first.memory_limit == 512 << 20
    # CPU time only grows while the grandchild spins (no rate is asserted here).
    spin = 0
    while spin < 10 and group.stats().cpu_usage_ns <= first.cpu_usage_ns:
        spin += 1
        os.sched_yield()
        subprocess.run(["sleep", "0.05"])
    assert group.stats().cpu_usage_ns > first.cpu_usage_ns
    group.kill()
    assert child.wait(timeout=10) == -signal.SIGKILL
    assert group.pids() == []


def test_weight_and_cpuset_map_to_nice_and_affinity(rdriver, spawn):
    assert (weight_to_nice(100), weight_to_nice(1), weight_to_nice(10000)) == (0, 19, -20)
    group = rdriver.create("sched", Limits(cpu_weight=50, cpuset="0"))
    child = spawn(WAIT)
    group.attach(child.pid)
    assert os.getpriority(os.PRIO_PROCESS, child.pid) == weight_to_nice(50) > 0
    assert os.sched_getaffinity(child.pid) == {0}
    notes = " ".join(group.approximations())
    assert "nice" in notes and "affinity" in notes


def test_groups_live_only_in_their_process(rdriver):
    group = rdriver.create("here")
    assert rdriver.open(group.name) is group
    assert rdriver.list() == [group.name]
    with pytest.raises(SpecError):
        rdriver.create("here")
    group.remove()
    group.remove()
    with pytest.raises(KeyError, match="only in the process"):
        rdriver.open("here")
    with pytest.raises(ProcessLookupError):
        rdriver.create("gone").attach(2**22 + 1)
