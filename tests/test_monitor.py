"""The monitor on real containers: what it records (CPU under a quota, memory, OOM kills,
events), history export, and its sampler thread ending when nothing watches."""

from __future__ import annotations

import json
import statistics
import threading
import time

import pytest

import nsmagic
import nsmagic.stats
from nsmagic.cgroups import detect_driver
from nsmagic.monitor import COLUMNS, MAX_RATE_HZ, Monitor, threads_named

from .conftest import IS_ROOT, wait_until

HAS_CGROUPS = IS_ROOT and detect_driver().name in ("v1", "v2")
requires_cgroups = pytest.mark.skipif(not HAS_CGROUPS,
                                      reason="needs root and a writable cgroup hierarchy")

BUSY = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < {s}:\n    pass\n"
GROW = ("import time\nx = []\nfor _ in range(8):\n    x.append(bytearray({chunk}))\n"
        "    time.sleep(0.25)\ntime.sleep(0.5)\n")


def run_in_thread(source: str, **options) -> tuple[threading.Thread, dict]:
    """nsmagic.run in a thread (the cell would block otherwise); the result lands in box."""
    box: dict = {}

    def target() -> None:
        box["result"] = nsmagic.run(source, **options)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def newest_series(monitor: Monitor, before: set[str]):
    found = [s for s in monitor.series() if s.container_id not in before]
    assert found, "the monitor saw no new container"
    return found[-1]


@pytest.fixture
def monitor():
    mon = Monitor(rate=MAX_RATE_HZ)
    watch = mon.watch()
    yield mon
    watch.close()
    assert not mon.running


@requires_cgroups
def test_half_a_cpu_is_recorded_as_about_half(monitor):
    before = {s.container_id for s in monitor.series()}
    thread, box = run_in_thread(BUSY.format(s=3), cpus=0.5)
    thread.join(30)
    assert box["result"].ok
    series = newest_series(monitor, before)
    assert wait_until(lambda: series.state == "exited", 3)
    history = monitor.history(series.container_id)
    times = history["time"]
    assert len(times) >= 15, f"too few samples at 10 Hz over 3 s: {len(times)}"
    assert all(b > a for a, b in zip(times, times[1:], strict=False)), "timestamps must increase"
    # Drop the first samples (start-up) and the last (exit) before judging the plateau.
    cpu = [v for v in history["cpu_percent"][3:-2] if v is not None]
    assert 30 <= statistics.median(cpu) <= 70, cpu
    of_limit = [v for v in history["cpu_limit_percent"][3:-2] if v is not None]
    assert 60 <= statistics.median(of_limit) <= 140, of_limit
    kinds = [e["kind"] for e in history.events]
    assert kinds[0] == "start" and kinds[-1] == "exit"
    assert "throttled" in kinds, "a busy loop under --cpus 0.5 is throttled"
    assert sum(v for v in history["throttled_periods"] if v) > 0
    assert history.info["cpus"] == 0.5 and history.info["state"] == "exited"


def test_memory_rises_for_an_allocating_container(monitor):
    before = {s.container_id for s in monitor.series()}
    thread, box = run_in_thread(GROW.format(chunk=10_000_000), memory="512M")
    thread.join(30)
    assert box["result"].ok, box["result"].describe()
    series = newest_series(monitor, before)
    history = monitor.history(series.container_id)
    memory = [v for v in history["memory_current"] if v is not None]
    assert len(memory) >= 10
    assert max(memory) - memory[0] >= 50_000_000, memory  # 8 x 10 MB allocated
    # Rising over time: the second half is well above the first samples.
    # (The last samples may be taken while the container's processes are already exiting.)
    half = sorted(memory[len(memory) // 2:])
    assert half[len(half) // 2] > memory[0] + 20_000_000, memory
    peaks = [v for v in history["memory_peak"] if v is not None]
    assert peaks[-1] >= max(memory)
    if HAS_CGROUPS:
        assert history["memory_limit"][-1] == 512 * 1024 * 1024


@requires_cgroups
def test_oom_kill_is_recorded(monitor):
    before = {s.container_id for s in monitor.series()}
    source = ("import time\nx = []\nfor _ in range(40):\n    x.append(bytearray(5_000_000))\n"
              "    time.sleep(0.02)\n")
    thread, box = run_in_thread(source, memory="32M")
    thread.join(30)
    result = box["result"]
    assert not result.ok and result.oom is not None, result.describe()
    series = newest_series(monitor, before)
    assert wait_until(lambda: series.state == "exited", 3)
    history = monitor.history(series.container_id)
    ooms = [e for e in history.events if e["kind"] == "oom"]
    assert len(ooms) == 1, history.events
    assert history.events[-1]["kind"] == "exit"
    assert ooms[0]["time"] <= history.events[-1]["time"]
    assert "memory" in history.info["outcome"]
    limits = [v for v in history["memory_limit"] if v is not None]
    assert limits and limits[-1] == 32 * 1024 * 1024


def test_history_export_round_trip(monitor, tmp_path):
    before = {s.container_id for s in monitor.series()}
    thread, _ = run_in_thread(BUSY.format(s=1))
    thread.join(30)
    series = newest_series(monitor, before)
    history = monitor.history(series.container_id)
    assert list(history)[: len(COLUMNS)] == list(COLUMNS)
    assert all(isinstance(history[c], list) for c in COLUMNS)
    assert len(history["time"]) >= 5

    text = history.to_csv(tmp_path / "h.csv")
    assert (tmp_path / "h.csv").read_text() == text
    back = type(history).from_csv(text)
    for column in COLUMNS:
        assert back[column] == pytest.approx(history[column], rel=1e-9, abs=1e-9) \
            if all(v is not None for v in history[column]) else back[column] == history[column]

    data = history.to_json(tmp_path / "h.json")
    again = type(history).from_json((tmp_path / "h.json").read_text())
    assert again == history and again.info == history.info
    assert json.loads(data)["info"]["container_id"] == series.container_id
    # Lookup by id prefix works the same way.
    assert monitor.history(series.container_id[:8])["time"] == history["time"]


def test_sampler_thread_ends_when_nothing_watches():
    mon = Monitor(rate=10)
    assert not threads_named()
    first = mon.watch()
    second = mon.watch(rate=MAX_RATE_HZ)
    assert len(threads_named()) == 1, "one sampler thread, however many watch"
    assert mon.rate == MAX_RATE_HZ
    second.close()
    assert mon.running
    with mon.watch():
        assert len(threads_named()) == 1
    assert mon.running
    first.close()
    first.close()  # twice is fine
    assert not mon.running
    assert not threads_named(), [t.name for t in threading.enumerate()]
    # And it starts again on demand.
    with mon.watch():
        assert wait_until(lambda: mon.ticks > 0, 2)
    assert not threads_named()


def test_stats_module_uses_the_kernel_monitor():
    with nsmagic.stats.record(rate=MAX_RATE_HZ):
        thread, box = run_in_thread(BUSY.format(s=0.8))
        thread.join(30)
        time.sleep(0.2)
    assert not threads_named()
    newest = nsmagic.stats.containers()[-1]
    history = nsmagic.stats.history(newest)
    assert history["time"] and history.events[0]["kind"] == "start"
    with pytest.raises(KeyError, match="no samples"):
        nsmagic.stats.history("no-such-container")


@pytest.fixture
def sampled_group():
    """A registry with one running container whose cgroup (a real one, limited to 2 EiB of
    memory: far above any machine, yet a limit) holds a sleeping process. The record itself
    names no limit, as for a group configured by someone else (--cgroup)."""
    import subprocess

    from nsmagic.cgroups.limits import Limits
    from nsmagic.runtime.registry import ContainerRecord, Registry

    driver = detect_driver()
    group = driver.create("monitor-test", Limits(memory=1 << 61))
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        group.attach(sleeper.pid)
        registry = Registry()
        registry.add(ContainerRecord("c0ffee" * 5, "sampled", Limits(), frozenset()))
        registry.started("c0ffee" * 5, sleeper.pid, group.name, driver.name)
        yield Monitor(registry=registry, driver=driver), group
    finally:
        sleeper.kill()
        sleeper.wait()
        group.remove()


@requires_cgroups
def test_the_monitor_reports_the_limits_the_cgroup_driver_reports(sampled_group):
    monitor, group = sampled_group
    for _ in range(4):
        monitor.sample_once()
    history = monitor.history("sampled")
    assert history.info["source"] == f"cgroup {group.driver}"
    assert history["memory_limit"] == [group.stats().memory_limit] * 4 == [1 << 61] * 4
    assert None not in history["memory_current"]


@requires_cgroups
def test_a_snapshot_is_a_copy_that_later_samples_do_not_change(sampled_group):
    monitor, _ = sampled_group
    monitor.sample_once()
    monitor.sample_once()
    (snapshot,) = monitor.snapshots()
    assert snapshot.label == "sampled" and len(snapshot) == 2
    assert {len(values) for values in snapshot.columns.values()} == {2}
    assert all(isinstance(values, tuple) for values in snapshot.columns.values())
    monitor.sample_once()
    assert len(snapshot) == 2 and len(snapshot.columns["memory_current"]) == 2
    assert len(monitor.snapshot("sampled")) == 3
    assert monitor.snapshots(["no-such-container"]) == []
    assert [s.label for s in monitor.snapshots(["sampled"])] == ["sampled"]


@pytest.fixture
def sleeping():
    """A monitor over one container (no cgroup: psutil) that sleeps."""
    import subprocess

    from nsmagic.cgroups.limits import Limits
    from nsmagic.runtime.registry import ContainerRecord, Registry

    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        registry = Registry()
        registry.add(ContainerRecord("5ee9" * 8, "asleep", Limits(), frozenset()))
        registry.started("5ee9" * 8, sleeper.pid, None, None)
        yield Monitor(rate=MAX_RATE_HZ, registry=registry), sleeper
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_sampler_slows_down_while_nothing_moves(sleeping, monkeypatch):
    import nsmagic.monitor as monitor_module

    monitor, _ = sleeping
    monkeypatch.setattr(monitor_module, "IDLE_AFTER_S", 0.3)
    monitor.sample_once()  # a new container: something moved
    assert not monitor.idle and monitor.rate_in_force() == MAX_RATE_HZ
    time.sleep(0.2)
    monitor.sample_once()
    time.sleep(0.2)
    monitor.sample_once()  # a sleeping container uses no CPU and no new memory
    assert monitor.idle and monitor.rate_in_force() == monitor_module.IDLE_RATE_HZ
    with monitor.watch():  # someone new looks: full rate at once
        assert monitor.rate_in_force() == MAX_RATE_HZ


def test_the_first_sample_that_moves_brings_the_full_rate_back(sleeping, monkeypatch):
    import signal

    import nsmagic.monitor as monitor_module

    monitor, sleeper = sleeping
    monkeypatch.setattr(monitor_module, "IDLE_AFTER_S", 0.1)
    monitor.sample_once()
    time.sleep(0.2)
    monitor.sample_once()
    assert monitor.idle
    sleeper.send_signal(signal.SIGTERM)  # it exits: an event
    assert wait_until(lambda: sleeper.poll() is not None, 5)
    monitor.registry.exited("5ee9" * 8, "exit status 0", None)
    monitor.sample_once()
    assert not monitor.idle


def test_a_steady_monitor_never_slows_down(sleeping, monkeypatch):
    import nsmagic.monitor as monitor_module

    _, _ = sleeping
    monkeypatch.setattr(monitor_module, "IDLE_AFTER_S", 0.0)
    steady = Monitor(rate=MAX_RATE_HZ, idle_rate=None, registry=sleeping[0].registry)
    steady.sample_once()
    steady.sample_once()
    assert steady.idle and steady.rate_in_force() == MAX_RATE_HZ


def test_ticks_are_whole_cfs_periods_apart():
    from nsmagic.monitor import CFS_PERIOD_S, next_period, whole_periods

    assert CFS_PERIOD_S == 0.1
    assert [whole_periods(1 / r) for r in (10, 5, 4, 1)] == pytest.approx([0.1, 0.2, 0.3, 1.0])
    assert whole_periods(0.01) == pytest.approx(0.1), "never faster than one period"
    assert next_period(100.0, 100.25) == pytest.approx(100.3)
    assert next_period(100.0, 100.3) == pytest.approx(100.3)
