"""How Limits map to cgroup files and how stats files are parsed, on fake v1/v2 trees in tmp_path.

These complement the real-kernel tests: they pin down exact file contents and edge cases
(kernels without swap accounting, no-internal-process rule) that one host cannot show.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nsmagic.cgroups import Limits, _fs
from nsmagic.cgroups.base import CgroupStats
from nsmagic.cgroups.convert import (
    shares_to_weight,
    swap_v2,
    weight_to_shares,
)
from nsmagic.cgroups.rlimit import RlimitDriver
from nsmagic.cgroups.sampling import flat_value
from nsmagic.cgroups.v1 import V1Cgroup
from nsmagic.cgroups.v1 import cpuacct as v1_cpuacct
from nsmagic.cgroups.v1 import memory as v1_memory
from nsmagic.cgroups.v2 import V2Cgroup, V2Driver
from nsmagic.errors import CapabilityError, SpecError

V2_FILES = {
    "cgroup.procs": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.type": "domain",
    "cpu.max": "max 100000",
    "cpu.weight": "100",
    "cpu.stat": "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\nnr_periods 30\n"
                "nr_throttled 12\nthrottled_usec 7000\nnr_bursts 0\nburst_usec 0\n",
    "memory.max": "max",
    "memory.swap.max": "max",
    "memory.current": "1048576",
    "memory.peak": "2097152",
    "memory.swap.current": "4096",
    "memory.events": "low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\noom_group_kill 0\n",
    "pids.max": "max",
    "pids.current": "3",
    "pids.events": "max 5\n",
    "cpuset.cpus": "",
    "cpu.pressure": "some avg10=1.50 avg60=0.20 avg300=0.00 total=12345\n"
                    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    "memory.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                       "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
}


def fake(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def content(path: Path) -> str:
    return path.read_text().strip()


# --- conversions ------------------------------------------------------------------------


@pytest.mark.parametrize("shares,weight", [(2, 1), (1024, 100), (262144, 10000)])
def test_shares_and_weight_agree_on_min_default_max(shares, weight):
    assert shares_to_weight(shares) == weight
    assert weight_to_shares(weight) == shares


def test_every_weight_survives_a_trip_through_shares():
    assert all(shares_to_weight(weight_to_shares(w)) == w for w in range(1, 10001))


def test_v2_swap_is_swap_alone():
    assert swap_v2(64 << 20, 192 << 20) == 128 << 20  # memory+swap 192M - memory 64M
    assert swap_v2(64 << 20, 64 << 20) == 0  # equal: no swap at all
    assert swap_v2(64 << 20, -1) == "max"
    assert swap_v2(64 << 20, None) is None


# --- names and host parsing -------------------------------------------------------------


def test_names_get_the_prefix_and_owner_pid_unless_they_have_them():
    assert _fs.full_name("c1", 42) == "nsmagic-42-c1"
    assert _fs.full_name("nsmagic-7-c1", 42) == "nsmagic-7-c1"
    assert _fs.full_name("nsmagic-c1", 42) == "nsmagic-42-c1"
    assert _fs.owner_of("nsmagic-7-c1") == 7 and _fs.owner_of("other") is None
    for bad in ("", "a/b", "..", "sp ace"):
        with pytest.raises(SpecError):
            _fs.full_name(bad, 1)


def test_mountinfo_and_proc_cgroup_of_a_hybrid_host():
    mountinfo = (
        "35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n"
        "36 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "37 25 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n"
        "38 25 0:33 / /proc rw - proc proc rw\n"
    )
    mounts = _fs.cgroup_mounts(mountinfo)
    assert [m.fstype for m in mounts] == ["cgroup2", "cgroup", "cgroup"]
    assert mounts[1].controllers == {"cpu", "cpuacct"}
    assert mounts[2].read_only
    own = _fs.own_cgroups("4:memory:/docker/abc/x\n2:cpu,cpuacct:/\n0::/user.slice\n")
    assert own == {"memory": "/docker/abc/x", "cpu": "/", "cpuacct": "/", "": "/user.slice"}
    # A sub-cgroup bind-mounted as the hierarchy root: strip the mount's root.
    assert _fs.host_path(mounts[2], own["memory"]) == Path("/sys/fs/cgroup/memory/x")


def test_pressure_lines_become_flat_keys():
    parsed = _fs.parse_pressure(V2_FILES["cpu.pressure"])
    assert parsed["some_avg10"] == 1.5 and parsed["some_total"] == 12345.0
    assert parsed["full_avg300"] == 0.0


# --- cgroup v2 --------------------------------------------------------------------------


def test_v2_limits_become_files(tmp_path):
    group = V2Cgroup(fake(tmp_path / "g", V2_FILES))
    group.apply(Limits.parse(cpus=1.5, memory="64M", memory_swap="192M", pids=64,
                             cpu_weight=300, cpuset="0-1"))
    d = group.path
    assert content(d / "cpu.max") == "150000 100000"  # quota = cpus * period
    assert content(d / "cpu.weight") == "300"
    assert content(d / "memory.max") == str(64 << 20)
    assert content(d / "memory.swap.max") == str(128 << 20)
    assert content(d / "pids.max") == "64"
    assert content(d / "cpuset.cpus") == "0-1"
    assert group.limits() == Limits(cpus=1.5, memory=64 << 20, memory_swap=192 << 20, pids=64,
                                    cpu_weight=300, cpuset="0-1")


def test_v2_unset_limits_read_back_as_none(tmp_path):
    group = V2Cgroup(fake(tmp_path / "g", V2_FILES))
    assert group.limits() == Limits()
    group.apply(Limits(memory=1 << 30, memory_swap=-1))
    assert content(group.path / "memory.swap.max") == "max"
    assert group.limits().memory_swap == -1


def test_v2_stats_are_parsed_into_one_record(tmp_path):
    stats = V2Cgroup(fake(tmp_path / "g", V2_FILES)).stats()
    assert (stats.cpu_usage_ns, stats.cpu_user_ns, stats.cpu_system_ns) == (
        2_500_000, 2_000_000, 500_000)
    assert (stats.cpu_periods, stats.cpu_throttled_periods, stats.cpu_throttled_ns) == (
        30, 12, 7_000_000)
    assert (stats.memory_current, stats.memory_peak, stats.memory_limit) == (1 << 20, 2 << 20, None)
    assert (stats.swap_current, stats.oom_events, stats.oom_kills) == (4096, 2, 1)
    assert (stats.pids_current, stats.pids_limit, stats.pids_denied) == (3, None, 5)
    assert stats.pressure["cpu"]["some_avg10"] == 1.5
    assert "io" not in stats.pressure  # absent file: left out, not zero


def test_v2_swap_limit_without_swap_accounting_is_refused(tmp_path):
    files = {k: v for k, v in V2_FILES.items() if not k.startswith("memory.swap")}
    group = V2Cgroup(fake(tmp_path / "g", files))
    with pytest.raises(CapabilityError, match="swap"):
        group.apply(Limits.parse(memory="64M", memory_swap="128M"))


def test_v2_missing_controller_files_are_named(tmp_path):
    group = V2Cgroup(fake(tmp_path / "g", {"cgroup.procs": ""}))
    with pytest.raises(CapabilityError, match="pids.max"):
        group.apply(Limits(pids=5))


def test_v2_refuses_to_enable_controllers_over_internal_processes(tmp_path):
    base = fake(tmp_path / "user.slice", {
        "cgroup.controllers": "cpu memory pids",
        "cgroup.subtree_control": "",
        "cgroup.type": "domain",  # not the root cgroup, so the rule applies
        "cgroup.procs": "1234\n",
    })
    with pytest.raises(CapabilityError, match="no internal processes"):
        V2Driver(base=base, owner_pid=1).create("c1")
    assert not list(base.glob("nsmagic-*"))


def test_v2_creates_under_base_and_enables_controllers(tmp_path):
    base = fake(tmp_path / "scope", {
        "cgroup.controllers": "cpuset cpu io memory pids",
        "cgroup.subtree_control": "",
        "cgroup.procs": "",  # no cgroup.type: the root cgroup, exempt from the rule
    })
    group = V2Driver(base=base, owner_pid=77).create("c1")
    assert group.path == base / "nsmagic-77-c1"
    assert content(base / "cgroup.subtree_control") == "+cpu +memory +pids"
    assert V2Driver(base=base, owner_pid=77).list() == ["nsmagic-77-c1"]


def test_v2_cpuset_needs_the_controller_in_the_parent(tmp_path):
    base = fake(tmp_path / "scope", {
        "cgroup.controllers": "cpu memory pids",
        "cgroup.subtree_control": "cpu memory pids",
        "cgroup.procs": "",
    })
    with pytest.raises(CapabilityError, match="cpuset"):
        V2Driver(base=base, owner_pid=1).create("c1", Limits(cpuset="0"))


# --- cgroup v1 --------------------------------------------------------------------------


def v1_tree(tmp_path: Path) -> V1Cgroup:
    name = "nsmagic-1-g"
    dirs = {
        "cpu": fake(tmp_path / "cpu" / name, {
            "cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000", "cpu.shares": "1024",
            "cpu.stat": "nr_periods 40\nnr_throttled 10\nthrottled_time 5000000\n",
        }),
        "cpuacct": fake(tmp_path / "cpuacct" / name, {
            "cpuacct.usage": "3000000000", "cpuacct.stat": "user 250\nsystem 50\n",
        }),
        "memory": fake(tmp_path / "memory" / name, {
            "memory.limit_in_bytes": "9223372036854771712",
            "memory.memsw.limit_in_bytes": "9223372036854771712",
            "memory.usage_in_bytes": "1048576", "memory.max_usage_in_bytes": "4194304",
            "memory.memsw.usage_in_bytes": "1056768",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
            "memory.stat": "cache 0\nrss 1048576\n",
        }),
        "pids": fake(tmp_path / "pids" / name, {
            "pids.max": "max", "pids.current": "2", "pids.events": "max 4\n",
        }),
    }
    return V1Cgroup(dirs)


def test_v1_limits_become_files(tmp_path):
    group = v1_tree(tmp_path)
    group.apply(Limits.parse(cpus=0.5, memory="64M", memory_swap="128M", pids=16, cpu_weight=50))
    d = group.dirs
    assert content(d["cpu"] / "cpu.cfs_quota_us") == "50000"
    assert content(d["cpu"] / "cpu.shares") == str(weight_to_shares(50))  # 421
    assert content(d["memory"] / "memory.limit_in_bytes") == str(64 << 20)
    assert content(d["memory"] / "memory.memsw.limit_in_bytes") == str(128 << 20)  # mem + swap
    assert content(d["pids"] / "pids.max") == "16"
    assert group.limits() == Limits(cpus=0.5, memory=64 << 20, memory_swap=128 << 20, pids=16,
                                    cpu_weight=50)


def test_v1_stats_convert_units(tmp_path, monkeypatch):
    monkeypatch.setattr(v1_cpuacct, "clock_ticks", lambda: 100)
    stats = v1_tree(tmp_path).stats()
    assert stats.cpu_usage_ns == 3_000_000_000
    # No usage_user/usage_sys files: cpuacct.stat ticks of 1/100 s become ns.
    assert (stats.cpu_user_ns, stats.cpu_system_ns) == (2_500_000_000, 500_000_000)
    assert (stats.cpu_periods, stats.cpu_throttled_periods, stats.cpu_throttled_ns) == (
        40, 10, 5_000_000)
    assert (stats.memory_current, stats.memory_peak, stats.memory_limit) == (1 << 20, 4 << 20, None)
    assert stats.swap_current == 8192  # memsw usage - memory usage
    assert stats.oom_kills == 3 and stats.oom_events is None
    assert (stats.pids_current, stats.pids_denied) == (2, 4)
    assert stats.pressure == {}


@pytest.mark.parametrize(
    "memory,memory_swap,current_memsw,expected",
    [
        # growing memsw (or to unlimited): memsw first
        (256, 512, 128, ["memsw", "memory"]),
        (256, -1, 512, ["memsw", "memory"]),
        # shrinking or equal: memory first
        (32, 32, 128, ["memory", "memsw"]),
        (128, 256, 256, ["memory", "memsw"]),
        (64, None, 128, ["memory"]),
    ],
)
def test_v1_memsw_write_order(memory, memory_swap, current_memsw, expected):
    order = v1_memory.write_order(memory, memory_swap, current_memsw)
    names = ["memsw" if f == v1_memory.MEMSW else "memory" for f, _ in order]
    assert names == expected


def test_v1_memsw_order_is_what_apply_writes(tmp_path, monkeypatch):
    group = v1_tree(tmp_path)
    group.apply(Limits.parse(memory="64M", memory_swap="128M"))
    writes = []
    real = v1_memory.write_text
    monkeypatch.setattr(v1_memory, "write_text",
                        lambda path, value: (writes.append(path.name), real(path, value)))
    group.apply(Limits.parse(memory="256M", memory_swap="512M"))
    assert writes == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    writes.clear()
    group.apply(Limits.parse(memory="32M", memory_swap="32M"))
    assert writes == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]


def test_v1_swap_limit_without_memsw_is_refused(tmp_path):
    group = v1_tree(tmp_path)
    (group.dirs["memory"] / "memory.memsw.limit_in_bytes").unlink()
    with pytest.raises(CapabilityError, match="swap"):
        group.apply(Limits.parse(memory="64M", memory_swap="128M"))


def test_v1_limit_on_a_missing_hierarchy_is_refused(tmp_path):
    group = v1_tree(tmp_path)
    del group.dirs["pids"]
    with pytest.raises(CapabilityError, match="pids"):
        group.apply(Limits(pids=4))


# --- stats readers (repeated cheap samples) ------------------------------------------------
SAMPLED = ("cpu_usage_ns", "cpu_throttled_periods", "memory_current", "memory_peak",
           "memory_limit", "oom_kills")


def test_flat_value_finds_a_key_only_at_the_start_of_a_line():
    data = b"oom 1\noom_kill 2\nxoom_kill 9\n"
    assert flat_value(data, b"oom") == 1
    assert flat_value(data, b"oom_kill") == 2
    assert flat_value(b"usage_usec 5", b"usage_usec") == 5  # no newline at the end
    assert flat_value(data, b"max") is None


def test_v2_reader_samples_the_live_figures_as_stats_does(tmp_path):
    group = V2Cgroup(fake(tmp_path / "g", V2_FILES))
    full = group.stats()
    with group.stats_reader() as reader:
        sample = reader.read()
    assert {k: getattr(sample, k) for k in SAMPLED} == {k: getattr(full, k) for k in SAMPLED}
    assert sample.cpu_usage_ns == 2_500_000 and sample.oom_kills == 1
    # Figures a live plot does not need are left out (they cost a file each).
    assert sample.pids_current is None and sample.pressure == {}


def test_v1_reader_samples_the_live_figures_as_stats_does(tmp_path):
    group = v1_tree(tmp_path)
    full = group.stats()
    with group.stats_reader() as reader:
        sample = reader.read()
    assert {k: getattr(sample, k) for k in SAMPLED} == {k: getattr(full, k) for k in SAMPLED}
    assert sample.memory_limit is None  # the kernel's "unlimited", as stats() reads it
    assert (sample.cpu_usage_ns, sample.oom_kills) == (3_000_000_000, 3)


def test_a_reader_repeats_limits_between_rereads(tmp_path):
    group = V2Cgroup(fake(tmp_path / "g", {**V2_FILES, "memory.max": "1000"}))
    with group.stats_reader(limits_every=2) as reader:
        assert reader.read().memory_limit == 1000
        (group.path / "memory.max").write_text("2000")
        assert reader.read().memory_limit == 1000
        assert reader.read().memory_limit == 2000


def test_a_reader_needs_at_least_one_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no interface file"):
        V2Cgroup(fake(tmp_path / "empty", {})).stats_reader()


def test_the_rlimit_driver_reader_takes_full_stats():
    group = RlimitDriver().create("sampling-test")
    try:
        with group.stats_reader(limits_every=5) as reader:
            assert isinstance(reader.read(), CgroupStats)
    finally:
        group.remove()
