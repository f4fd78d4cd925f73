"""Sampler thread: per-container CPU and memory time series from cgroup files (or psutil).

One `Monitor` (normally the kernel-wide `MONITOR`) owns at most ONE daemon thread. The thread
exists only while something watches (`monitor.watch()`), and ends by itself when the last
watch is closed: nothing is left behind when no dashboard or recording is open.

Each tick (default 4 Hz, at most 10 Hz) it reads the counters of every running container in
`nsmagic.runtime.registry.REGISTRY`. While nothing moves (no container uses a noticeable share
of a core, no memory changes by a MiB, no event) for IDLE_AFTER_S, it ticks at IDLE_RATE_HZ
only; the first sample that moves, and every start or exit, bring the full rate back.

- containers with a cgroup (v1 or v2 driver): through the group's own
  `Cgroup.stats_reader()`, which keeps the handful of interface files it needs open and
  re-reads them with pread (see nsmagic.cgroups.sampling): no mount parsing, no path building,
  no big files such as memory.stat on the hot path;
- containers without a cgroup (the rlimit fallback) or whose group cannot be opened here:
  psutil over the container's pid 1 and its descendants.

From the counters it keeps per-container ring buffers (the last `keep_seconds`, 10 minutes by
default): CPU % of one core (from cpu_usage_ns deltas), CPU % of the `limits.cpus` quota,
memory current/peak/limit, throttled periods per sample, OOM kills, and timestamped events
(start, exit, oom, throttled). The CPU figures are averages over the last second, a whole
number of CFS periods (see CFS_PERIOD_S). Exited containers keep their series; only the
newest `KEEP_EXITED` ended ones are kept.

The buffers change under the monitor's lock only; readers elsewhere (the dashboard, history())
take a `SeriesSnapshot`, a copy made under that lock, and never touch the live buffers.

Nothing here imports IPython or ipywidgets: `nsmagic.widgets` reads this data.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nsmagic.cgroups.base import CgroupStats, StatsReader
from nsmagic.cgroups.convert import CPU_PERIOD_US
from nsmagic.runtime.registry import REGISTRY, ContainerRecord, Registry

DEFAULT_RATE_HZ = 4.0
MAX_RATE_HZ = 10.0
MIN_RATE_HZ = 0.2
KEEP_SECONDS = 600.0
KEEP_EXITED = 50
# The CFS period of the groups nsmagic creates (cpu.cfs_period_us, cpu.max): a group under a
# --cpus quota runs in bursts of quota per period, so a CPU figure over anything but a whole
# number of periods zig-zags (2 or 3 bursts in 2.5 periods: 80% or 120% of the quota). Ticks
# therefore fall on a grid of whole periods, and the CPU figure of a sample is taken over the
# last CPU_WINDOW_S (a whole number of periods): a tick a few ms late then moves the figure by
# a few ms in a second, not in a tenth of one.
CFS_PERIOD_S = CPU_PERIOD_US / 1_000_000
CPU_WINDOW_S = 10 * CFS_PERIOD_S
# Nothing moves: every running container used less than MOVING_CPU_PERCENT of a core and
# changed its memory by less than MOVING_MEMORY_BYTES since the previous sample, and no event.
IDLE_RATE_HZ = 1.0
IDLE_AFTER_S = 5.0
MOVING_CPU_PERCENT = 1.0
MOVING_MEMORY_BYTES = 1 << 20
# Limits change only when someone runs %cgroup set: the readers re-read them every this many
# samples and repeat the last value in between.
LIMIT_EVERY = 10

# The sample columns of a history, in CSV order.
COLUMNS = (
    "time",  # wall clock (time.time()) of the sample
    "elapsed",  # seconds since the container started
    "cpu_percent",  # % of one core over the last CPU_WINDOW_S (or the interval, if longer)
    "cpu_limit_percent",  # the same as % of the --cpus quota (None without one)
    "memory_current",  # bytes
    "memory_peak",  # bytes (the kernel's peak when it has one, else the highest seen)
    "memory_limit",  # bytes (None without a limit)
    "throttled_periods",  # CFS periods throttled since the previous sample
    "oom_kills",  # processes OOM-killed in the group since the container started
)


class ContainerSeries:
    """The live time series and events of one container.

    Written by its Monitor only, under the monitor's lock; read it through
    `Monitor.snapshots()` or `Monitor.history()`, which copy it under that lock.
    """

    def __init__(self, record: ContainerRecord, maxlen: int) -> None:
        self.container_id = record.container_id
        self.name = record.name
        self.label = record.label
        self.cpus: float | None = record.limits.cpus
        self.memory_limit: int | None = record.limits.memory
        self.started_at = record.started_at
        self.ended_at: float | None = None
        self.state = record.state
        self.outcome: str | None = None
        self.source = "pending"  # "cgroup v1", "cgroup v2", "psutil" or "none"
        self.columns: dict[str, deque] = {c: deque(maxlen=maxlen) for c in COLUMNS}
        self.events: deque[dict[str, Any]] = deque(maxlen=1000)

    # -- written by the monitor, holding its lock -------------------------------------------
    def add_event(self, when: float, kind: str, detail: str = "") -> None:
        self.events.append({"time": when, "elapsed": round(when - self.started_at, 3),
                            "kind": kind, "detail": detail})

    def append(self, row: dict[str, Any], keep_seconds: float) -> None:
        for name, column in self.columns.items():
            column.append(row.get(name))
        times = self.columns["time"]
        horizon = row["time"] - keep_seconds
        while times and times[0] < horizon:
            for column in self.columns.values():
                column.popleft()

    def __len__(self) -> int:
        return len(self.columns["time"])


@dataclass(frozen=True)
class SeriesSnapshot:
    """A copy of one container's series, taken under its monitor's lock: every column has
    the same length and nothing changes while it is read."""

    container_id: str
    name: str | None
    label: str
    cpus: float | None
    memory_limit: int | None
    started_at: float
    ended_at: float | None
    state: str
    outcome: str | None
    source: str
    columns: Mapping[str, tuple]
    events: tuple[dict[str, Any], ...]

    @classmethod
    def of(cls, series: ContainerSeries) -> SeriesSnapshot:
        """Copy a live series; the caller holds the lock of the monitor that owns it."""
        return cls(series.container_id, series.name, series.label, series.cpus,
                   series.memory_limit, series.started_at, series.ended_at, series.state,
                   series.outcome, series.source,
                   {name: tuple(values) for name, values in series.columns.items()},
                   tuple(dict(e) for e in series.events))

    def last(self, column: str) -> Any:
        """The newest value of a column (None when there is no sample yet)."""
        values = self.columns[column]
        return values[-1] if values else None

    def info(self) -> dict[str, Any]:
        """Identity, limits and state as a plain dict (History.info)."""
        return {"container_id": self.container_id, "name": self.name, "label": self.label,
                "cpus": self.cpus, "memory_limit": self.memory_limit,
                "started_at": self.started_at, "ended_at": self.ended_at,
                "state": self.state, "outcome": self.outcome, "source": self.source}

    def __len__(self) -> int:
        return len(self.columns["time"])


def _matches(series: ContainerSeries, name_or_id: str) -> bool:
    """True when name_or_id is the container's id, id prefix, name or label."""
    return (series.container_id.startswith(name_or_id) or series.name == name_or_id
            or series.label == name_or_id)


class History(dict):
    """A container's samples as plain lists (one per column of COLUMNS), plus "events".

    >>> h = nsmagic.stats.history("web")
    >>> h["cpu_percent"][-1], h.to_csv(), h.to_json()
    """

    info: dict[str, Any]

    def __init__(self, *args: Any, info: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.info = dict(info or {})

    @property
    def events(self) -> list[dict[str, Any]]:
        """Start, exit, oom and throttled events: dicts of time, elapsed, kind, detail."""
        return self.get("events", [])

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The samples as CSV (header = COLUMNS; empty cells for None); written to path if given."""
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in zip(*(self.get(c, []) for c in COLUMNS), strict=True):
            writer.writerow(["" if v is None else v for v in row])
        text = buffer.getvalue()
        if path is not None:
            with open(path, "w") as handle:
                handle.write(text)
        return text

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Samples, events and info (id, name, limits, state) as JSON; written to path if given."""
        import json

        text = json.dumps({"info": self.info, **self})
        if path is not None:
            with open(path, "w") as handle:
                handle.write(text)
        return text

    @classmethod
    def from_json(cls, text: str) -> History:
        """Read back what to_json wrote."""
        import json

        data = json.loads(text)
        info = data.pop("info", {})
        return cls(data, info=info)

    @classmethod
    def from_csv(cls, text: str) -> History:
        """Read back the samples of to_csv (numbers as int or float; empty cells as None)."""
        import csv
        import io

        rows = list(csv.reader(io.StringIO(text)))
        header, body = rows[0], rows[1:]
        columns: dict[str, list] = {name: [] for name in header}
        for row in body:
            for name, cell in zip(header, row, strict=True):
                columns[name].append(_number(cell))
        return cls(columns)


def _number(cell: str) -> int | float | None:
    if cell == "":
        return None
    try:
        return int(cell)
    except ValueError:
        return float(cell)


# --------------------------------------------------------------------------------------
# Readers: one per container, created once, reused every tick. Each read() returns a
# CgroupStats with the live figures filled in (usage, throttling, memory, OOM kills).


class ReaderGone(Exception):
    """The container's processes are gone (the psutil reader)."""


class _PsutilReader:
    """No cgroup: the container's pid 1 and its descendants, through psutil.

    CPU time of processes that ended between two samples is lost (there is no group to
    account it), so the CPU figure is a lower bound; memory is the sum of RSS.
    """

    def __init__(self, pid: int) -> None:
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(pid)
        self.known: dict[int, Any] = {pid: self.root}
        self.cpu_seen: dict[int, float] = {}
        self.cpu_total_ns = 0
        self.peak = 0

    def read(self) -> CgroupStats:
        """Sum over the processes alive now."""
        psutil = self._psutil
        try:
            children = self.root.children(recursive=True)
        except psutil.NoSuchProcess as error:
            raise ReaderGone(str(error)) from error
        alive: dict[int, Any] = {self.root.pid: self.root}
        for child in children:
            alive[child.pid] = self.known.get(child.pid, child)
        self.known = alive
        rss = 0
        for pid, process in alive.items():
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    rss += process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            except psutil.AccessDenied:
                continue
            used = times.user + times.system
            self.cpu_total_ns += int(max(0.0, used - self.cpu_seen.get(pid, 0.0)) * 1e9)
            self.cpu_seen[pid] = used
        self.cpu_seen = {p: v for p, v in self.cpu_seen.items() if p in alive}
        self.peak = max(self.peak, rss)
        return CgroupStats(timestamp=time.time(), cpu_usage_ns=self.cpu_total_ns,
                           memory_current=rss, memory_peak=self.peak)

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class _Tracker:
    """The sampler's state for one container: its reader and what the next sample needs."""

    reader: StatsReader | _PsutilReader | None
    previous: tuple[float, CgroupStats] | None = None  # (monotonic time, counters) last tick
    # (monotonic time, cpu_usage_ns) of the samples of the last CPU_WINDOW_S, this one last.
    usage: deque[tuple[float, int]] = field(default_factory=deque)
    throttling: bool = False  # the last sample was throttled: one event per episode
    oom_base: int | None = None  # the group's OOM kills at the first sample
    oom_seen: int = 0  # OOM kills already reported as events
    peak_seen: int = 0  # highest memory_current seen (v2 has no memory.peak before 5.19)


# --------------------------------------------------------------------------------------


class Watch:
    """A handle on a monitor's sampling: close() it (or leave the with block) to stop watching.

    listener, when given, is called from the sampler thread after each tick with the monitor.
    """

    def __init__(self, monitor: Monitor, listener: Callable[[Monitor], None] | None,
                 rate: float | None) -> None:
        self.monitor = monitor
        self.listener = listener
        self.rate = rate
        self.closed = False

    def close(self) -> None:
        """Stop watching; the sampler thread ends when no watch is left. Safe to call twice."""
        if not self.closed:
            self.closed = True
            self.monitor.unwatch(self)

    __call__ = close

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Monitor:
    """Samples every running container of a registry into per-container time series.

    rate: samples per second (DEFAULT_RATE_HZ, clamped to MIN_RATE_HZ..MAX_RATE_HZ); a watch may
        ask for a higher one, the highest asked for wins while it is open.
    keep_seconds: how much history each container keeps (ring buffers).
    idle_rate: samples per second once nothing has moved for IDLE_AFTER_S (None: never slow
        down, for a steady rate).
    driver: the cgroup driver used to open groups (default: nsmagic.cgroups.detect_driver(),
        looked up once, in the sampler thread, on first need).
    """

    def __init__(self, rate: float = DEFAULT_RATE_HZ, keep_seconds: float = KEEP_SECONDS,
                 registry: Registry | None = None, driver: Any = None,
                 idle_rate: float | None = IDLE_RATE_HZ) -> None:
        self.base_rate = _clamp_rate(rate)
        self.idle_rate = None if idle_rate is None else _clamp_rate(idle_rate)
        self.last_motion = time.monotonic()  # when a sample last moved (see IDLE_AFTER_S)
        self.keep_seconds = float(keep_seconds)
        self.registry = registry if registry is not None else REGISTRY
        self._driver = driver
        self._driver_error: str | None = None
        self._lock = threading.RLock()
        self._watches: list[Watch] = []
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._wake = threading.Event()
        self._unsubscribe: Callable[[], None] | None = None
        self._series: dict[str, ContainerSeries] = {}
        # Used by the sampler thread only, except that _finish reads oom_seen (locked).
        self._trackers: dict[str, _Tracker] = {}
        # Cost accounting of the sampler thread (for bench/sampler_cost.py and the curious).
        self.ticks = 0
        self.first_tick_cpu_s = 0.0  # includes finding the cgroup driver and opening files
        self.sampler_cpu_s = 0.0
        self.sampler_wall_s = 0.0

    # -- watching ---------------------------------------------------------------------------
    @property
    def rate(self) -> float:
        """The sampling rate in force: the highest of the base rate and the watches' rates."""
        with self._lock:
            rates = [w.rate for w in self._watches if w.rate]
        return max([self.base_rate, *map(_clamp_rate, rates)])

    @property
    def idle(self) -> bool:
        """True once nothing has moved for IDLE_AFTER_S (the sampler then slows down)."""
        return time.monotonic() - self.last_motion >= IDLE_AFTER_S

    def rate_in_force(self) -> float:
        """The rate of the next tick: rate, or idle_rate while idle."""
        rate = self.rate
        if self.idle_rate is not None and self.idle:
            return min(rate, self.idle_rate)
        return rate

    def watch(self, listener: Callable[[Monitor], None] | None = None,
              rate: float | None = None) -> Watch:
        """Start sampling (the thread starts with the first watch); returns a Watch to close."""
        handle = Watch(self, listener, rate)
        self.last_motion = time.monotonic()  # someone new looks: sample at the full rate
        with self._lock:
            self._watches.append(handle)
            if self._thread is None:
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(self._stop,),
                                                name="nsmagic-monitor", daemon=True)
                self._unsubscribe = self.registry.subscribe(self._on_event)
                self._thread.start()
        self._wake.set()
        return handle

    def subscribe(self, listener: Callable[[Monitor], None]) -> Callable[[], None]:
        """watch(listener); returns the function that unsubscribes."""
        return self.watch(listener).close

    @property
    def running(self) -> bool:
        """True while the sampler thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def unwatch(self, handle: Watch) -> None:
        """Stop one watch (what Watch.close() does); the thread ends with the last one."""
        thread = None
        with self._lock:
            if handle in self._watches:
                self._watches.remove(handle)
            if not self._watches and self._thread is not None:
                thread, self._thread = self._thread, None
                self._stop.set()
                self._wake.set()
                if self._unsubscribe is not None:
                    self._unsubscribe()
                    self._unsubscribe = None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def stop(self) -> None:
        """Close every watch and end the thread (e.g. when the extension is unloaded)."""
        with self._lock:
            watches = list(self._watches)
        for handle in watches:
            handle.close()

    # -- data -------------------------------------------------------------------------------
    def series(self, include_exited: bool = True) -> list[ContainerSeries]:
        """Every container's live series, oldest first: for identity and state; read their
        samples through snapshots() or history()."""
        with self._lock:
            found = list(self._series.values())
        return [s for s in found if include_exited or s.state != "exited"]

    def snapshots(self, containers: Iterable[str] | None = None,
                  ended_after: float | None = None) -> list[SeriesSnapshot]:
        """Copies of the series, oldest first, all taken under the lock at one moment.

        containers: only those with one of these ids, id prefixes, names or labels.
        ended_after: leave out containers that ended before this time.time().
        """
        wanted = None if containers is None else list(containers)
        with self._lock:
            return [SeriesSnapshot.of(s) for s in self._series.values()
                    if (wanted is None or any(_matches(s, c) for c in wanted))
                    and not (ended_after is not None and s.state == "exited"
                             and (s.ended_at or 0) < ended_after)]

    def find(self, name_or_id: str) -> ContainerSeries | None:
        """The series of a container by name, id, id prefix or label (newest match wins)."""
        with self._lock:
            found = list(self._series.values())
        for match in (lambda s: s.container_id == name_or_id,
                      lambda s: s.name == name_or_id or s.label == name_or_id,
                      lambda s: s.container_id.startswith(name_or_id)):
            hits = [s for s in found if match(s)]
            if hits:
                return hits[-1]
        return None

    def snapshot(self, name_or_id: str) -> SeriesSnapshot | None:
        """A copy of one container's series (found as find() does), or None."""
        with self._lock:
            series = self.find(name_or_id)
            return None if series is None else SeriesSnapshot.of(series)

    def history(self, name_or_id: str) -> History:
        """Plain lists of one container's samples and events; KeyError when never sampled."""
        snapshot = self.snapshot(name_or_id)
        if snapshot is None:
            raise KeyError(
                f"no samples of a container {name_or_id!r}: only containers that ran while "
                "something watched (a dashboard, or nsmagic.stats.record()) have a history"
            )
        data: dict[str, Any] = {c: list(v) for c, v in snapshot.columns.items()}
        data["events"] = list(snapshot.events)
        return History(data, info=snapshot.info())

    def forget(self, name_or_id: str | None = None) -> None:
        """Drop one container's series (or every ended one when name_or_id is None)."""
        with self._lock:
            if name_or_id is None:
                for key in [k for k, s in self._series.items() if s.state == "exited"]:
                    del self._series[key]
                return
            series = self.find(name_or_id)
            if series is not None:
                self._series.pop(series.container_id, None)

    # -- the sampler thread -----------------------------------------------------------------
    def _run(self, stop: threading.Event) -> None:
        cpu0, wall0 = time.thread_time(), time.monotonic()
        next_tick = origin = time.monotonic()  # ticks fall on whole CFS periods from here
        try:
            while not stop.is_set():
                self.sample_once()
                self.ticks += 1
                self.sampler_cpu_s = time.thread_time() - cpu0
                if self.ticks == 1:
                    self.first_tick_cpu_s = self.sampler_cpu_s
                self.sampler_wall_s = time.monotonic() - wall0
                with self._lock:
                    listeners = [w.listener for w in self._watches if w.listener]
                for listener in listeners:
                    try:
                        listener(self)
                    except Exception:  # noqa: BLE001 - a broken plot must not stop sampling
                        pass
                next_tick += whole_periods(1.0 / self.rate_in_force())
                now = time.monotonic()
                if next_tick < now:  # fell behind (a slow tick): do not try to catch up
                    next_tick = next_period(origin, now)
                self._wake.clear()
                if not stop.is_set() and self._wake.wait(next_tick - now):
                    # Woken early (a start, an exit, a new watch): sample at the next whole
                    # period, a tenth of a second at most, to stay on the grid.
                    next_tick = next_period(origin, time.monotonic())
                    stop.wait(max(0.0, next_tick - time.monotonic()))
        finally:
            self._close_readers()

    def _close_readers(self) -> None:
        with self._lock:
            trackers, self._trackers = self._trackers, {}
        for tracker in trackers.values():
            if tracker.reader is not None:
                tracker.reader.close()

    def sample_once(self) -> None:
        """One tick: sample every running container and note exits (the thread calls this)."""
        records = self.registry.records(include_exited=True)
        for record in records:
            series = self._series.get(record.container_id)
            if series is None:
                if record.state == "exited":
                    continue  # ended before we ever saw it
                series = self._add_series(record)
            if record.state == "running" and series.state != "exited":
                self._sample(record, series)
            elif record.state == "exited" and series.state != "exited":
                self._finish(record, series)
        # Readers are closed here only, in the thread that uses them (an fd closed from
        # another thread could be reused under a pread in flight).
        with self._lock:
            done = [k for k in self._trackers
                    if k not in self._series or self._series[k].state == "exited"]
            trackers = [self._trackers.pop(k) for k in done]
        for tracker in trackers:
            if tracker.reader is not None:
                tracker.reader.close()
        self._trim()

    def _add_series(self, record: ContainerRecord) -> ContainerSeries:
        maxlen = int(self.keep_seconds * MAX_RATE_HZ) + 1
        series = ContainerSeries(record, maxlen)
        series.add_event(record.started_at, "start", record.label)
        self.last_motion = time.monotonic()
        with self._lock:
            self._series[record.container_id] = series
        return series

    def _tracker_for(self, record: ContainerRecord, series: ContainerSeries) -> _Tracker:
        tracker = self._trackers.get(record.container_id)
        if tracker is not None:
            return tracker
        reader: StatsReader | _PsutilReader | None = None
        source = "none"
        if record.cgroup and record.cgroup_driver in ("v1", "v2"):
            driver = self._get_driver()
            if driver is not None:
                try:
                    cgroup = driver.open(record.cgroup)
                    reader = cgroup.stats_reader(limits_every=LIMIT_EVERY)
                    source = f"cgroup {cgroup.driver}"
                except (KeyError, OSError, ValueError):
                    reader = None
        if reader is None and record.pid:
            try:
                reader = _PsutilReader(record.pid)
                source = "psutil"
            except Exception:  # noqa: BLE001 - psutil.NoSuchProcess: already gone
                reader = None
        tracker = _Tracker(reader)
        with self._lock:
            series.source = source
            self._trackers[record.container_id] = tracker
        return tracker

    def _get_driver(self) -> Any:
        if self._driver is None and self._driver_error is None:
            try:
                from nsmagic.cgroups import detect_driver

                self._driver = detect_driver()
            except Exception as error:  # noqa: BLE001 - fall back to psutil
                self._driver_error = str(error)
        return self._driver

    def _sample(self, record: ContainerRecord, series: ContainerSeries) -> None:
        tracker = self._tracker_for(record, series)
        if tracker.reader is None:
            return
        try:
            counters = tracker.reader.read()
        except (ReaderGone, OSError, ValueError):
            return  # it is ending; the registry will say how
        now, wall = time.monotonic(), time.time()
        previous, tracker.previous = tracker.previous, (now, counters)
        events: list[tuple[str, str]] = []
        cpu = cpu_limit = None
        throttled = 0 if counters.cpu_throttled_periods is not None else None
        if counters.cpu_usage_ns is not None:
            cpu = _windowed_cpu(tracker.usage, now, counters.cpu_usage_ns)
            if cpu is not None and series.cpus:
                cpu_limit = round(cpu / series.cpus, 2)
        if previous is not None:
            before = previous[1]
            if throttled is not None and before.cpu_throttled_periods is not None:
                throttled = max(0, counters.cpu_throttled_periods - before.cpu_throttled_periods)
            else:
                throttled = None
        if throttled and not tracker.throttling:
            events.append(("throttled", f"{throttled} periods"))
        if throttled is not None:
            tracker.throttling = throttled > 0
        # OOM kills: counted from the first sample (a shared --cgroup may have old ones).
        kills = None
        if counters.oom_kills is not None:
            if tracker.oom_base is None:
                tracker.oom_base = counters.oom_kills
            kills = counters.oom_kills - tracker.oom_base
        peak = counters.memory_peak
        if counters.memory_current is not None:
            # Without a kernel peak (v2 before 5.19), the highest value we saw.
            tracker.peak_seen = max(tracker.peak_seen, counters.memory_current)
            peak = max(peak or 0, tracker.peak_seen)
        if events or _moved(cpu, counters, previous):
            self.last_motion = now
        with self._lock:
            if series.state == "exited":
                return  # its exit was noted meanwhile: keep the series as it ended
            series.state = "running"
            if kills is not None and kills > tracker.oom_seen:
                events.append(("oom", f"{kills - tracker.oom_seen} process(es) killed"))
                tracker.oom_seen = kills
            if counters.memory_limit is not None:
                series.memory_limit = counters.memory_limit
            for kind, detail in events:
                series.add_event(wall, kind, detail)
            series.append({
                "time": round(wall, 3), "elapsed": round(wall - series.started_at, 3),
                "cpu_percent": cpu, "cpu_limit_percent": cpu_limit,
                "memory_current": counters.memory_current, "memory_peak": peak,
                "memory_limit": series.memory_limit, "throttled_periods": throttled,
                "oom_kills": kills}, self.keep_seconds)

    def _finish(self, record: ContainerRecord, series: ContainerSeries) -> None:
        with self._lock:
            if series.state == "exited":
                return  # the event and the sampler both noticed
            series.state = "exited"
            series.ended_at = record.ended_at or time.time()
            self.last_motion = time.monotonic()
            series.outcome = record.outcome
            tracker = self._trackers.get(record.container_id)
            if record.oom and (tracker is None or tracker.oom_seen == 0):
                kills = record.oom.get("kills") if isinstance(record.oom, dict) else None
                series.add_event(series.ended_at, "oom", record.oom.get("text", "out of memory")
                                 if isinstance(record.oom, dict) else "out of memory")
                if tracker is not None:
                    tracker.oom_seen = kills or 1
            series.add_event(series.ended_at, "exit", record.outcome or "")

    def _on_event(self, event: str, record: ContainerRecord) -> None:
        # Called from the thread that started or waited for the container: note the event
        # at once (an exit must not wait for the next tick) and wake the sampler.
        if event == "exited":
            with self._lock:
                series = self._series.get(record.container_id)
            if series is not None and series.state != "exited":
                self._finish(record, series)
        self._wake.set()

    def _trim(self) -> None:
        with self._lock:
            ended = [k for k, s in self._series.items() if s.state == "exited"]
            for key in ended[:-KEEP_EXITED] if len(ended) > KEEP_EXITED else []:
                del self._series[key]


def _moved(cpu: float | None, counters: CgroupStats,
           previous: tuple[float, CgroupStats] | None) -> bool:
    """Whether a sample differs from the one before it by a noticeable amount."""
    if previous is None or (cpu is not None and cpu >= MOVING_CPU_PERCENT):
        return True
    now, before = counters.memory_current, previous[1].memory_current
    return (now is None) != (before is None) or (
        now is not None and abs(now - before) >= MOVING_MEMORY_BYTES)


def _windowed_cpu(usage: deque[tuple[float, int]], now: float, total_ns: int) -> float | None:
    """% of one core since the newest earlier sample at least CPU_WINDOW_S old (or the oldest
    kept); usage keeps the samples of that window, this one last."""
    usage.append((now, total_ns))
    # Drop the oldest while the next one is old enough to start the window (ticks are whole
    # periods apart, give or take a little lateness).
    while len(usage) > 2 and now - usage[1][0] >= CPU_WINDOW_S - CFS_PERIOD_S / 2:
        usage.popleft()
    if len(usage) < 2:
        return None
    then, before_ns = usage[0]
    if now <= then:
        return None
    return round(max(0.0, (total_ns - before_ns) / ((now - then) * 1e9) * 100), 2)


def whole_periods(seconds: float) -> float:
    """seconds rounded up to a whole number of CFS periods (at least one)."""
    return max(1, math.ceil(seconds / CFS_PERIOD_S - 1e-9)) * CFS_PERIOD_S


def next_period(origin: float, now: float) -> float:
    """The first time at or after now that is a whole number of CFS periods after origin."""
    return origin + math.ceil((now - origin) / CFS_PERIOD_S - 1e-9) * CFS_PERIOD_S


def _clamp_rate(rate: float) -> float:
    return min(MAX_RATE_HZ, max(MIN_RATE_HZ, float(rate)))


def threads_named(name: str = "nsmagic-monitor") -> list[threading.Thread]:
    """Live threads of that name (tests check none is left)."""
    return [t for t in threading.enumerate() if t.name == name]


# The kernel-wide monitor the dashboard and nsmagic.stats use.
MONITOR = Monitor()


def default_monitor() -> Monitor:
    """The kernel-wide Monitor."""
    return MONITOR


__all__ = ["COLUMNS", "DEFAULT_RATE_HZ", "MAX_RATE_HZ", "MONITOR", "ContainerSeries", "History",
           "Monitor", "SeriesSnapshot", "Watch", "default_monitor", "threads_named"]

