"""Cgroup.stats_reader(): the cheap repeated samples a sampler thread takes, with the same
figures and the same meaning of "unlimited" as Cgroup.stats()."""

from __future__ import annotations

import os

import pytest
from cg_helpers import WAIT, go

from nsmagic.cgroups.base import CgroupStats, StatsReader
from nsmagic.cgroups.limits import Limits

pytestmark = [pytest.mark.root, pytest.mark.cgroup_v2]

MIB = 1024 * 1024
BURN = WAIT + ("import time\nx = bytearray(8_000_000)\nt = time.process_time()\n"
               "while time.process_time() - t < 0.3:\n    pass\nprint('done', flush=True)\n"
               "import sys; sys.stdin.readline()\n")


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_the_reader_reports_the_live_figures_of_stats(make_group, spawn):
    group = make_group(Limits(memory=64 * MIB, cpus=0.5))
    child = spawn(BURN)
    group.attach(child.pid)
    go(child)
    assert child.stdout.readline().strip() == "done"
    with group.stats_reader() as reader:
        assert isinstance(reader, StatsReader)
        sample = reader.read()
    full = group.stats()
    assert isinstance(sample, CgroupStats)
    assert sample.memory_limit == full.memory_limit == 64 * MIB
    assert 8_000_000 <= sample.memory_current <= 64 * MIB
    assert sample.memory_peak >= sample.memory_current
    assert 0.25e9 <= sample.cpu_usage_ns <= full.cpu_usage_ns
    assert sample.cpu_throttled_periods is not None
    assert sample.oom_kills == full.oom_kills == 0


def test_the_reader_opens_its_files_once_and_closes_them(make_group):
    group = make_group(Limits(memory=64 * MIB))
    before = open_fds()
    reader = group.stats_reader()
    kept = open_fds() - before
    assert kept, "the reader keeps its interface files open"
    for _ in range(50):
        reader.read()
    assert open_fds() - before == kept, "no descriptor is opened per sample"
    reader.close()
    reader.close()  # twice is fine
    assert not open_fds() - before


def test_limits_are_reread_every_limits_every_samples(make_group):
    group = make_group(Limits(memory=64 * MIB))
    with group.stats_reader(limits_every=3) as reader:
        assert reader.read().memory_limit == 64 * MIB
        group.apply(Limits(memory=128 * MIB))
        assert [reader.read().memory_limit for _ in range(2)] == [64 * MIB] * 2
        assert reader.read().memory_limit == 128 * MIB


def test_unlimited_is_none_and_a_huge_limit_is_still_a_limit(make_group):
    # v1 reports "no limit" as about 8 EiB; 2 EiB is a real limit, and the reader and
    # stats() must agree on both (they share convert.V1_UNLIMITED_FLOOR).
    unlimited = make_group()
    with unlimited.stats_reader() as reader:
        assert reader.read().memory_limit is None
    assert unlimited.stats().memory_limit is None
    huge = make_group(Limits(memory=1 << 61))
    with huge.stats_reader() as reader:
        assert reader.read().memory_limit == 1 << 61
    assert huge.stats().memory_limit == 1 << 61


def test_reading_a_removed_group_raises_oserror(make_group):
    group = make_group()
    reader = group.stats_reader()
    group.remove()
    with pytest.raises(OSError):
        reader.read()
    reader.close()
