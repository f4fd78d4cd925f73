"""Sampler thread: per-container CPU and memory time series from cgroup files (or psutil).

One `Monitor` (normally the kernel-wide `MONITOR`) owns at most ONE daemon thread. The thread
exists only while something watches (`monitor.watch()`), and ends by itself when the last
watch is closed: nothing is left behind when no dashboard or recording is open.

Each tick (default 4 Hz, at most 10 Hz) it reads the counters of every running container in
`nsmagic.runtime.registry.REGISTRY`:

- containers with a cgroup (v1 or v2 driver): a handful of small interface files, each opened
  once and re-read with `os.pread(fd, n, 0)`; no mount parsing, no path building, no big files
  such as memory.stat on the hot path (see `_FastCgroupReader`);
- containers without a cgroup (the rlimit fallback) or whose group cannot be opened here:
  psutil over the container's pid 1 and its descendants.

From the counters it keeps per-container ring buffers (the last `keep_seconds`, 10 minutes by
default): CPU % of one core (from cpu_usage_ns deltas), CPU % of the `limits.cpus` quota,
memory current/peak/limit, throttled periods per sample, OOM kills, and timestamped events
(start, exit, oom, throttled). Exited containers keep their series; only the newest
`KEEP_EXITED` ended ones are kept.

Nothing here imports IPython or ipywidgets: `nsmagic.widgets` reads this data.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nsmagic.cgroups.base import CgroupStats
from nsmagic.runtime.registry import REGISTRY, ContainerRecord, Registry

DEFAULT_RATE_HZ = 4.0
MAX_RATE_HZ = 10.0
MIN_RATE_HZ = 0.2
KEEP_SECONDS = 600.0
KEEP_EXITED = 50

# The sample columns of a history, in CSV order.
COLUMNS = (
    "time",  # wall clock (time.time()) of the sample
    "elapsed",  # seconds since the container started
    "cpu_percent",  # % of one core over the last interval
    "cpu_limit_percent",  # % of the --cpus quota (None without one)
    "memory_current",  # bytes
    "memory_peak",  # bytes (the kernel's peak when it has one, else the highest seen)
    "memory_limit",  # bytes (None without a limit)
    "throttled_periods",  # CFS periods throttled since the previous sample
    "oom_kills",  # processes OOM-killed in the group since the container started
)


class ContainerSeries:
    """The time series and events of one container; appended by the sampler thread only."""

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
        self._throttling = False
        self._oom_base: int | None = None
        self._oom_seen = 0
        self._peak_seen = 0

    # -- written by the monitor ---------------------------------------------------------
    def add_event(self, when: float, kind: str, detail: str = "") -> None:
        self.events.append({"time": when, "elapsed": round(when - self.started_at, 3),
                            "kind": kind, "detail": detail})

    def has_event(self, kind: str) -> bool:
        return any(e["kind"] == kind for e in self.events)

    def append(self, row: dict[str, Any], keep_seconds: float) -> None:
        for name, column in self.columns.items():
            column.append(row.get(name))
        times = self.columns["time"]
        horizon = row["time"] - keep_seconds
        while times and times[0] < horizon:
            for column in self.columns.values():
                column.popleft()

    # -- read by anyone -------------------------------------------------------------------
    def last(self, column: str) -> Any:
        """The newest value of a column (None when there is no sample yet)."""
        values = self.columns[column]
        return values[-1] if values else None

    def __len__(self) -> int:
        return len(self.columns["time"])


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
# Readers: one per container, created once, reused every tick.


@dataclass
class _Counters:
    """What a reader returns each tick (a subset of CgroupStats)."""

    cpu_usage_ns: int | None = None
    throttled_periods: int | None = None
    memory_current: int | None = None
    memory_peak: int | None = None
    memory_limit: int | None = None
    oom_kills: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ReaderGone(Exception):
    """The container's cgroup or processes are gone."""


def _flat_value(data: bytes, key: bytes) -> int | None:
    # 'key value' lines; the key must start a line. Cheaper than parsing every line.
    at = data.find(key + b" ")
    while at > 0 and data[at - 1] != 10:
        at = data.find(key + b" ", at + 1)
    if at < 0:
        return None
    end = data.find(b"\n", at)
    return int(data[at + len(key) + 1: end if end >= 0 else None])


class _FastCgroupReader:
    """Keeps the few interface files it needs open and re-reads them with pread(fd, n, 0).

    kernfs regenerates a file's content on each read from offset 0, so one pread per file and
    tick is all it costs: no open/close, no path joins, no memory.stat (large) parsing.
    """

    # (key, controller, file, how to parse)
    V1_FILES = (
        ("cpu_usage_ns", "cpuacct", "cpuacct.usage", None),
        ("cpu_stat", "cpu", "cpu.stat", None),
        ("memory_current", "memory", "memory.usage_in_bytes", None),
        ("memory_peak", "memory", "memory.max_usage_in_bytes", None),
        ("memory_limit", "memory", "memory.limit_in_bytes", None),
        ("oom_control", "memory", "memory.oom_control", None),
    )
    V2_FILES = (
        ("cpu_stat", "cpu.stat"),
        ("memory_current", "memory.current"),
        ("memory_peak", "memory.peak"),
        ("memory_limit", "memory.max"),
        ("memory_events", "memory.events"),
    )
    # v1's "no limit" is a huge page-rounded number; treat anything this big as none.
    V1_UNLIMITED = 1 << 60

    # Limits change only when someone runs %cgroup set: re-read them every this many reads.
    LIMIT_EVERY = 10

    def __init__(self, cgroup: Any) -> None:
        self.driver = cgroup.driver
        self.fds: dict[str, int] = {}
        self.reads = 0
        self.limit: int | None = None
        try:
            if self.driver == "v1":
                for key, controller, filename, _ in self.V1_FILES:
                    directory = cgroup.dirs.get(controller)
                    if directory is not None:
                        self._open(key, os.path.join(directory, filename))
            elif self.driver == "v2":
                for key, filename in self.V2_FILES:
                    self._open(key, os.path.join(cgroup.path, filename))
            else:
                raise ValueError(f"no fast reader for driver {self.driver!r}")
        except BaseException:
            self.close()
            raise
        if not self.fds:
            raise ReaderGone("no interface file could be opened")

    def _open(self, key: str, path: str) -> None:
        try:
            self.fds[key] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            pass  # controller not there (or memory.peak before 5.19): reported as None

    def _read(self, key: str) -> bytes | None:
        fd = self.fds.get(key)
        if fd is None:
            return None
        try:
            return os.pread(fd, 4096, 0)
        except OSError as error:  # ENODEV once the group is removed
            raise ReaderGone(str(error)) from error

    def _int(self, key: str) -> int | None:
        data = self._read(key)
        if data is None:
            return None
        data = data.strip()
        if not data or data == b"max":
            return None
        return int(data)

    def read(self) -> _Counters:
        counters = _Counters()
        fresh_limit = self.reads % self.LIMIT_EVERY == 0
        self.reads += 1
        if self.driver == "v1":
            counters.cpu_usage_ns = self._int("cpu_usage_ns")
            stat = self._read("cpu_stat")
            if stat is not None:
                counters.throttled_periods = _flat_value(stat, b"nr_throttled")
            counters.memory_current = self._int("memory_current")
            counters.memory_peak = self._int("memory_peak")
            if fresh_limit:
                limit = self._int("memory_limit")
                self.limit = None if limit is None or limit >= self.V1_UNLIMITED else limit
            counters.memory_limit = self.limit
            control = self._read("oom_control")
            if control is not None:
                counters.oom_kills = _flat_value(control, b"oom_kill")
        else:
            stat = self._read("cpu_stat")
            if stat is not None:
                usage = _flat_value(stat, b"usage_usec")
                counters.cpu_usage_ns = None if usage is None else usage * 1000
                counters.throttled_periods = _flat_value(stat, b"nr_throttled")
            counters.memory_current = self._int("memory_current")
            counters.memory_peak = self._int("memory_peak")
            if fresh_limit:
                self.limit = self._int("memory_limit")
            counters.memory_limit = self.limit
            events = self._read("memory_events")
            if events is not None:
                counters.oom_kills = _flat_value(events, b"oom_kill")
        return counters

    def close(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = {}


class _StatsReader:
    """Any other driver: its own Cgroup.stats() (slower, complete)."""

    def __init__(self, cgroup: Any) -> None:
        self.cgroup = cgroup

    def read(self) -> _Counters:
        try:
            stats: CgroupStats = self.cgroup.stats()
        except (FileNotFoundError, ProcessLookupError, OSError) as error:
            raise ReaderGone(str(error)) from error
        return _Counters(stats.cpu_usage_ns, stats.cpu_throttled_periods, stats.memory_current,
                         stats.memory_peak, stats.memory_limit, stats.oom_kills)

    def close(self) -> None:
        pass


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

    def read(self) -> _Counters:
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
        return _Counters(cpu_usage_ns=self.cpu_total_ns, memory_current=rss,
                         memory_peak=self.peak)

    def close(self) -> None:
        pass


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
            self.monitor._unwatch(self)

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
    driver: the cgroup driver used to open groups (default: nsmagic.cgroups.detect_driver(),
        looked up once, in the sampler thread, on first need).
    """

    def __init__(self, rate: float = DEFAULT_RATE_HZ, keep_seconds: float = KEEP_SECONDS,
                 registry: Registry | None = None, driver: Any = None) -> None:
        self.base_rate = _clamp_rate(rate)
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
        self._readers: dict[str, Any] = {}
        self._last: dict[str, tuple[float, _Counters]] = {}
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

    def watch(self, listener: Callable[[Monitor], None] | None = None,
              rate: float | None = None) -> Watch:
        """Start sampling (the thread starts with the first watch); returns a Watch to close."""
        handle = Watch(self, listener, rate)
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

    def _unwatch(self, handle: Watch) -> None:
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
        """Every container's series, oldest first."""
        with self._lock:
            found = list(self._series.values())
        return [s for s in found if include_exited or s.state != "exited"]

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

    def history(self, name_or_id: str) -> History:
        """Plain lists of one container's samples and events; KeyError when never sampled."""
        series = self.find(name_or_id)
        if series is None:
            raise KeyError(
                f"no samples of a container {name_or_id!r}: only containers that ran while "
                "something watched (a dashboard, or nsmagic.stats.record()) have a history"
            )
        with self._lock:
            data = {c: list(v) for c, v in series.columns.items()}
            data["events"] = [dict(e) for e in series.events]
        info = {"container_id": series.container_id, "name": series.name,
                "label": series.label, "cpus": series.cpus,
                "memory_limit": series.memory_limit, "started_at": series.started_at,
                "ended_at": series.ended_at, "state": series.state, "outcome": series.outcome,
                "source": series.source}
        return History(data, info=info)

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
        next_tick = time.monotonic()
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
                next_tick += 1.0 / self.rate
                now = time.monotonic()
                if next_tick < now:  # fell behind (a slow tick): do not try to catch up
                    next_tick = now
                self._wake.clear()
                if not stop.is_set():
                    self._wake.wait(next_tick - now)
        finally:
            self._close_readers()

    def _close_readers(self) -> None:
        with self._lock:
            readers, self._readers = self._readers, {}
            self._last.clear()
        for reader in readers.values():
            if reader is not None:
                reader.close()

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
                series.state = "running"
                self._sample(record, series)
            elif record.state == "exited" and series.state != "exited":
                self._finish(record, series)
        # Readers are closed here only, in the thread that uses them (an fd closed from
        # another thread could be reused under a pread in flight).
        with self._lock:
            done = [k for k in self._readers
                    if k not in self._series or self._series[k].state == "exited"]
            readers = [self._readers.pop(k) for k in done]
            for key in done:
                self._last.pop(key, None)
        for reader in readers:
            if reader is not None:
                reader.close()
        self._trim()

    def _add_series(self, record: ContainerRecord) -> ContainerSeries:
        maxlen = int(self.keep_seconds * MAX_RATE_HZ) + 1
        series = ContainerSeries(record, maxlen)
        series.add_event(record.started_at, "start", record.label)
        with self._lock:
            self._series[record.container_id] = series
        return series

    def _reader_for(self, record: ContainerRecord, series: ContainerSeries) -> Any:
        if record.container_id in self._readers:
            return self._readers[record.container_id]
        reader = None
        if record.cgroup and record.cgroup_driver in ("v1", "v2"):
            driver = self._get_driver()
            if driver is not None:
                try:
                    cgroup = driver.open(record.cgroup)
                    if getattr(cgroup, "driver", None) in ("v1", "v2"):
                        reader = _FastCgroupReader(cgroup)
                        series.source = f"cgroup {cgroup.driver}"
                    else:
                        reader = _StatsReader(cgroup)
                        series.source = f"cgroup {getattr(cgroup, 'driver', '?')}"
                except (KeyError, OSError, ValueError, ReaderGone):
                    reader = None
        if reader is None and record.pid:
            try:
                reader = _PsutilReader(record.pid)
                series.source = "psutil"
            except Exception:  # noqa: BLE001 - psutil.NoSuchProcess: already gone
                reader = None
        if reader is None:
            series.source = "none"
        with self._lock:
            self._readers[record.container_id] = reader
        return reader

    def _get_driver(self) -> Any:
        if self._driver is None and self._driver_error is None:
            try:
                from nsmagic.cgroups import detect_driver

                self._driver = detect_driver()
            except Exception as error:  # noqa: BLE001 - fall back to psutil
                self._driver_error = str(error)
        return self._driver

    def _sample(self, record: ContainerRecord, series: ContainerSeries) -> None:
        reader = self._reader_for(record, series)
        if reader is None:
            return
        try:
            counters = reader.read()
        except (ReaderGone, OSError, ValueError):
            return  # it is ending; the registry will say how
        now, wall = time.monotonic(), time.time()
        previous = self._last.get(record.container_id)
        self._last[record.container_id] = (now, counters)
        cpu = cpu_limit = throttled = None
        if previous is not None:
            before_t, before = previous
            dt = now - before_t
            if dt > 0 and counters.cpu_usage_ns is not None and before.cpu_usage_ns is not None:
                cpu = max(0.0, (counters.cpu_usage_ns - before.cpu_usage_ns) / (dt * 1e9) * 100)
                cpu = round(cpu, 2)
                if series.cpus:
                    cpu_limit = round(cpu / series.cpus, 2)
            if counters.throttled_periods is not None and before.throttled_periods is not None:
                throttled = max(0, counters.throttled_periods - before.throttled_periods)
        if previous is None:
            throttled = 0 if counters.throttled_periods is not None else None
        if throttled:
            if not series._throttling:
                series.add_event(wall, "throttled", f"{throttled} periods")
            series._throttling = True
        elif throttled == 0:
            series._throttling = False
        # OOM kills: counted from the first sample (a shared --cgroup may have old ones).
        kills = None
        if counters.oom_kills is not None:
            if series._oom_base is None:
                series._oom_base = counters.oom_kills
            kills = counters.oom_kills - series._oom_base
            if kills > series._oom_seen:
                series.add_event(wall, "oom", f"{kills - series._oom_seen} process(es) killed")
                series._oom_seen = kills
        limit = counters.memory_limit if counters.memory_limit is not None else (
            series.memory_limit)
        series.memory_limit = limit
        peak = counters.memory_peak
        if counters.memory_current is not None:
            # Without a kernel peak (v2 before 5.19), the highest value we saw.
            series._peak_seen = max(series._peak_seen, counters.memory_current)
            peak = max(peak or 0, series._peak_seen)
        row = {"time": round(wall, 3), "elapsed": round(wall - series.started_at, 3),
               "cpu_percent": cpu, "cpu_limit_percent": cpu_limit,
               "memory_current": counters.memory_current, "memory_peak": peak,
               "memory_limit": limit, "throttled_periods": throttled, "oom_kills": kills}
        with self._lock:
            series.append(row, self.keep_seconds)

    def _finish(self, record: ContainerRecord, series: ContainerSeries) -> None:
        with self._lock:
            if series.state == "exited":
                return  # the event and the sampler both noticed
            series.state = "exited"
            series.ended_at = record.ended_at or time.time()
            series.outcome = record.outcome
            if record.oom and series._oom_seen == 0:
                kills = record.oom.get("kills") if isinstance(record.oom, dict) else None
                series.add_event(series.ended_at, "oom", record.oom.get("text", "out of memory")
                                 if isinstance(record.oom, dict) else "out of memory")
                series._oom_seen = kills or 1
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
           "Monitor", "Watch", "default_monitor", "threads_named"]

