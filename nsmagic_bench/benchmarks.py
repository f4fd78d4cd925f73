"""Start-up benchmarks: nsmagic against unshare, bwrap and runc, measured in one run.

`python -m nsmagic bench [--runs N] [--json FILE] [--markdown FILE] [--quick] [--only KEYS]`

Every benchmark is one small function registered in BENCHMARKS with @benchmark. It prepares
what it needs (and says why it cannot, by raising Missing or NotMeasured) and returns a
sampler: a function that starts one thing, waits for it to end, and returns the wall time in
seconds. The runner calls each sampler once per round, in a shuffled order that changes every
round, so the drift of a shared, noisy machine lands on every benchmark alike. Figures are
medians with the p10-p90 spread; ratios are ratios of medians, with the spread of the
per-round ratios next to them.

A second kind of row, registered with @figure, is not a time: it measures once per run, after
the timed rounds and with everything of theirs closed, and returns a value in its own unit
(megabytes of PSS, % of a core). Absolute targets (TARGETS) apply to a timed row's median or to
a figure's value.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SCHEMA = 2
DEFAULT_RUNS = 100
QUICK_RUNS = 3
WARMUP_ROUNDS = 2
# A pause after every sample, outside the timing: the background work a sample leaves behind
# (runc's cgroup removal, the fork server refilling its warm pool) settles before the next.
GAP_S = 0.01
SEED = 8
TIMER = "time.perf_counter"
ANCHOR_METHOD = ("subprocess.run(argv, stdout/stderr=DEVNULL) from the benchmark process, wall "
                 "time with time.perf_counter around the call (includes Python's fork/exec of "
                 "the tool; the 'spawn floor' row shows that fixed cost)")
FIGURE_METHOD = ("measured once per run, after the timed rounds and after everything they "
                 "used was closed, each figure with fork servers and containers of its own, "
                 "all removed before the next figure")
# Figures: idle named containers alive at once for the PSS figure (fewer with --quick, so a
# quick run stays quick), and the sampler's load (as bench/sampler_cost.py).
IDLE_CONTAINERS = 100
QUICK_IDLE_CONTAINERS = 10
SAMPLER_CONTAINERS = 10
SAMPLER_RATE_HZ = 10.0
SAMPLER_SECONDS = 10.0
QUICK_SAMPLER_SECONDS = 3.0
MB = 1_000_000  # figures in MB are 10^6 bytes

Sampler = Callable[[], float]


class Missing(Exception):
    """This benchmark cannot run here (tool absent, not root, ...); the message says why."""


class NotMeasured(Exception):
    """This benchmark has nothing to measure yet; the message says why."""


class SampleFailed(Exception):
    """One sample did not do what it should (non-zero exit, container error)."""


@dataclass(frozen=True)
class Benchmark:
    key: str
    label: str
    group: str  # "anchor", "api", "kernel", "named", "monitor" or "future"
    # kind "time": prepare(ctx) returns a sampler, timed every round.
    # kind "figure": prepare(ctx) measures once (after the rounds) and returns a dict with
    # "value" (in unit), "detail" (one line for the page) and "details" (numbers for the JSON).
    prepare: Callable[[Context], Any]
    kind: str = "time"
    unit: str = "ms"


BENCHMARKS: list[Benchmark] = []


def benchmark(key: str, label: str, group: str) -> Callable[[Callable], Callable]:
    """Register prepare(ctx) -> sampler as one row of the table."""

    def register(prepare: Callable[[Context], Sampler]) -> Callable[[Context], Sampler]:
        BENCHMARKS.append(Benchmark(key, label, group, prepare))
        return prepare

    return register


def figure(key: str, label: str, group: str, unit: str) -> Callable[[Callable], Callable]:
    """Register measure(ctx) -> {"value", "detail", "details"} as one row of the figures."""

    def register(measure: Callable[[Context], dict[str, Any]]
                 ) -> Callable[[Context], dict[str, Any]]:
        BENCHMARKS.append(Benchmark(key, label, group, measure, kind="figure", unit=unit))
        return measure

    return register


@dataclass
class Context:
    """Resources shared between benchmarks (launchers, a kernel, a runc bundle), closed once."""

    quick: bool = False
    shared: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    phases: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def get(self, name: str, make: Callable[[], Any]) -> Any:
        """The shared resource called name, made on first use."""
        if name not in self.shared:
            self.shared[name] = make()
        return self.shared[name]

    def on_close(self, closer: Callable[[], None]) -> None:
        self._closers.append(closer)

    def close(self) -> None:
        while self._closers:
            try:
                self._closers.pop()()
            except Exception as error:  # noqa: BLE001 - clean up the rest regardless
                self.notes.append(f"clean-up failed: {error}")


# -- anchors ---------------------------------------------------------------------------------
def _require_tool(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise Missing(f"{name} not found (Debian package {package})")
    return path


def _check_command(argv: list[str]) -> None:
    """Run argv once; raise Missing with its last stderr line when it fails here."""
    try:
        completed = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                   text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise Missing(f"{os.path.basename(argv[0])} cannot run here: {error}") from error
    if completed.returncode != 0:
        lines = (completed.stderr or completed.stdout).strip().splitlines() or ["no message"]
        raise Missing(f"{os.path.basename(argv[0])} fails here (exit {completed.returncode}): "
                      f"{lines[-1][:200]}")


def _command_sampler(argv: list[str]) -> Sampler:
    def sample() -> float:
        start = time.perf_counter()
        completed = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, check=False)
        elapsed = time.perf_counter() - start
        if completed.returncode != 0:
            raise SampleFailed(f"{argv[0]} exited with status {completed.returncode}")
        return elapsed

    return sample


@benchmark("floor", "spawn floor: /bin/true via subprocess.run", "anchor")
def bench_floor(ctx: Context) -> Sampler:
    argv = [_require_tool("true", "coreutils")]
    _check_command(argv)
    return _command_sampler(argv)


@benchmark("unshare", "unshare --fork --pid --mount-proc --uts --ipc --net --mount true",
           "anchor")
def bench_unshare(ctx: Context) -> Sampler:
    argv = [_require_tool("unshare", "util-linux"), "--fork", "--pid", "--mount-proc", "--uts",
            "--ipc", "--net", "--mount", "true"]
    _check_command(argv)
    return _command_sampler(argv)


@benchmark("bwrap", "bwrap --unshare-all --dev-bind / / --proc /proc true", "anchor")
def bench_bwrap(ctx: Context) -> Sampler:
    argv = [_require_tool("bwrap", "bubblewrap"), "--unshare-all", "--dev-bind", "/", "/",
            "--proc", "/proc", "true"]
    _check_command(argv)
    return _command_sampler(argv)


def build_runc_bundle(directory: str, runc: str, busybox: str) -> str:
    """A minimal OCI bundle in directory: a static busybox and /bin/true; returns its path."""
    bundle = os.path.join(directory, "bundle")
    bin_dir = os.path.join(bundle, "rootfs", "bin")
    os.makedirs(bin_dir)
    shutil.copy2(busybox, os.path.join(bin_dir, "busybox"))
    os.symlink("busybox", os.path.join(bin_dir, "true"))
    subprocess.run([runc, "spec"], cwd=bundle, check=True, capture_output=True)
    config_path = os.path.join(bundle, "config.json")
    with open(config_path) as handle:
        config = json.load(handle)
    config["process"]["args"] = ["/bin/true"]
    config["process"]["terminal"] = False
    with open(config_path, "w") as handle:
        json.dump(config, handle, indent=2)
    return bundle


def _static_busybox() -> str:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(candidate):
            with open(candidate, "rb") as handle:
                head = handle.read(1 << 16)
            # A dynamic executable names its interpreter (ld-linux) near the start.
            if b"ld-linux" not in head:
                return candidate
    raise Missing("no static busybox found (Debian package busybox-static)")


@benchmark("runc", "runc run of a minimal busybox bundle (/bin/true)", "anchor")
def bench_runc(ctx: Context) -> Sampler:
    if os.geteuid() != 0:
        raise Missing("runc runs as root only here, and this is not root")
    runc = _require_tool("runc", "runc")
    busybox = _static_busybox()
    directory = tempfile.mkdtemp(prefix="nsmagic-bench-runc-")
    ctx.on_close(lambda: shutil.rmtree(directory, ignore_errors=True))
    bundle = build_runc_bundle(directory, runc, busybox)
    state = os.path.join(directory, "state")  # runc's own state dir: nothing shared
    counter = iter(range(1 << 30))
    prefix = f"nsmagic-bench-{os.getpid()}"

    def argv_for(container_id: str) -> list[str]:
        return [runc, "--root", state, "run", "--bundle", bundle, container_id]

    def delete(container_id: str) -> None:
        subprocess.run([runc, "--root", state, "delete", "-f", container_id],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)

    first = f"{prefix}-check"
    try:
        _check_command(argv_for(first))
    finally:
        delete(first)

    def sample() -> float:
        container_id = f"{prefix}-{next(counter)}"
        try:
            return _command_sampler(argv_for(container_id))()
        finally:
            delete(container_id)  # untimed; runc run already removed it when all went well

    return sample


# -- ours, through the API -------------------------------------------------------------------
def _pool_module() -> Any | None:
    """nsmagic.runtime.pool when this build has a warm pool knob, else None."""
    try:
        from nsmagic.runtime.server import pool
    except ImportError:
        return None
    return pool if hasattr(pool, "pool_size_from_environment") else None


def _fork_server(ctx: Context, pool_size: int | None, tag: str = "") -> Any:
    """A fork server of our own (not the process-wide one), with NSMAGIC_POOL=pool_size; tag
    gives a row a server of its own instead of the one shared by that pool size."""
    from nsmagic.runtime.launcher import ForkServerLauncher

    def make() -> Any:
        launcher = ForkServerLauncher()
        saved = os.environ.get("NSMAGIC_POOL")
        if pool_size is not None:
            os.environ["NSMAGIC_POOL"] = str(pool_size)
        try:
            launcher.ping()  # starts the server with this environment
        finally:
            if saved is None:
                os.environ.pop("NSMAGIC_POOL", None)
            else:
                os.environ["NSMAGIC_POOL"] = saved
        ctx.on_close(launcher.close)
        return launcher

    return ctx.get(f"forkserver-pool-{pool_size}{'-' + tag if tag else ''}", make)


def _api_sampler(ctx: Context, key: str, launcher: Any, **options: Any) -> Sampler:
    import nsmagic

    phases = ctx.phases.setdefault(key, [])

    def sample() -> float:
        start = time.perf_counter()
        try:
            result = nsmagic.run("pass", launcher=launcher, **options)
        except nsmagic.NsmagicError as error:
            # e.g. rootless, where --pids is RLIMIT_NPROC and counts all of the user's
            # processes: the row says why instead of ending the whole run.
            raise SampleFailed(str(error)) from None
        elapsed = time.perf_counter() - start
        if not result.ok:
            raise SampleFailed(f"nsmagic.run('pass') ended with {result.describe()}")
        phases.append(dict(result.timings))
        return elapsed

    first = sample()  # the check run; also warms the launcher
    del first
    phases.clear()
    return sample


LIMITS = {"cpus": 0.5, "memory": "256M", "pids": 64}


def _pool_size() -> int:
    pool = _pool_module()
    if pool is None:
        raise NotMeasured("this build has no warm pool (nsmagic.runtime.pool)")
    return pool.DEFAULT_POOL_SIZE


@benchmark("api", "nsmagic.run('pass'), fork server, warm pool off", "api")
def bench_api(ctx: Context) -> Sampler:
    return _api_sampler(ctx, "api", _fork_server(ctx, 0))


@benchmark("api_limits", "nsmagic.run('pass', cpus=0.5, memory='256M', pids=64), pool off",
           "api")
def bench_api_limits(ctx: Context) -> Sampler:
    return _api_sampler(ctx, "api_limits", _fork_server(ctx, 0), **LIMITS)


@benchmark("api_pool", "nsmagic.run('pass'), fork server + warm pool (the default)", "api")
def bench_api_pool(ctx: Context) -> Sampler:
    return _api_sampler(ctx, "api_pool", _fork_server(ctx, _pool_size()))


@benchmark("api_limits_pool", "nsmagic.run('pass', the same three limits), warm pool",
           "api")
def bench_api_limits_pool(ctx: Context) -> Sampler:
    return _api_sampler(ctx, "api_limits_pool", _fork_server(ctx, _pool_size()), **LIMITS)


@benchmark("api_userns", "nsmagic.run('pass', userns=True) (the pool never serves it)", "api")
def bench_api_userns(ctx: Context) -> Sampler:
    return _api_sampler(ctx, "api_userns", _fork_server(ctx, 0), userns=True)


@benchmark("api_spawn", "nsmagic.run('pass', launcher=SpawnLauncher()), no fork server",
           "api")
def bench_api_spawn(ctx: Context) -> Sampler:
    from nsmagic.runtime.launcher import SpawnLauncher

    return _api_sampler(ctx, "api_spawn", SpawnLauncher())


# -- ours, through %%container in a real kernel ----------------------------------------------
class KernelSession:
    """A python3 kernel with nsmagic loaded; times execute -> idle round trips."""

    def __init__(self) -> None:
        from jupyter_client.manager import start_new_kernel

        # The kernel's own log (a warning about TCP without encryption) is not ours to print.
        self.manager, self.client = start_new_kernel(kernel_name="python3", startup_timeout=60,
                                                     stderr=subprocess.DEVNULL)
        self.execute("%load_ext nsmagic")

    def execute(self, code: str, timeout: float = 60) -> float:
        """Run code; return the seconds from sending the request to the kernel going idle."""
        start = time.perf_counter()
        msg_id = self.client.execute(code, store_history=False)
        errors: list[str] = []
        while True:
            message = self.client.get_iopub_msg(timeout=timeout)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "status" and content["execution_state"] == "idle":
                break
            if kind == "error":
                errors.append(f"{content['ename']}: {content['evalue']}")
            elif kind == "stream" and content.get("name") == "stderr":
                errors.append(content["text"].strip())
        elapsed = time.perf_counter() - start
        while True:
            reply = self.client.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        if reply["content"]["status"] != "ok" or errors:
            raise SampleFailed(f"cell {code!r} failed in the kernel: {'; '.join(errors)[:300]}")
        return elapsed

    def close(self) -> None:
        # A polite shutdown: the kernel's atexit stops its fork server (and the warm
        # containers) before it exits, so nothing of ours outlives the benchmark.
        try:
            self.client.stop_channels()
        finally:
            self.manager.shutdown_kernel(now=False)


def _kernel(ctx: Context) -> KernelSession:
    if importlib.util.find_spec("jupyter_client") is None:
        raise Missing("jupyter_client is not installed (pip install nsmagic[test])")

    def make() -> KernelSession:
        try:
            session = KernelSession()
        except SampleFailed as error:
            raise Missing(f"%load_ext nsmagic failed in the kernel: {error}") from error
        except Exception as error:  # noqa: BLE001 - no kernel: say why
            raise Missing(f"no python3 kernel could be started: {error}") from error
        ctx.on_close(session.close)
        return session

    return ctx.get("kernel", make)


def _cell_sampler(ctx: Context, code: str) -> Sampler:
    session = _kernel(ctx)
    session.execute(code)  # check, and the first %%container starts the kernel's fork server

    def sample() -> float:
        return session.execute(code)

    return sample


@benchmark("cell_plain", "kernel round trip of a plain cell `pass`", "kernel")
def bench_cell_plain(ctx: Context) -> Sampler:
    return _cell_sampler(ctx, "pass")


@benchmark("cell_container", "kernel round trip of `%%container` + `pass`", "kernel")
def bench_cell_container(ctx: Context) -> Sampler:
    return _cell_sampler(ctx, "%%container\npass")


# -- named containers and the monitor --------------------------------------------------------
def _start_named(name: str, launcher: Any, spec: Any = None) -> Any:
    """MANAGER.start(name, spec or the default spec) on launcher; SampleFailed if it won't run."""
    from nsmagic.errors import NsmagicError
    from nsmagic.runtime.named import MANAGER
    from nsmagic.runtime.spec import ContainerSpec

    try:
        managed = MANAGER.start(name, spec or ContainerSpec.build(name=name), launcher=launcher)
    except NsmagicError as error:
        raise SampleFailed(f"named container {name!r} did not start: {error}") from error
    if managed.done.is_set():
        MANAGER.remove(name, force=True)
        raise SampleFailed(f"named container {name!r} ended at once: "
                           f"{managed.result.describe()}")
    return managed


def _remove_named(names: list[str]) -> list[str]:
    """Remove (killing) every container of names still kept; return the names still kept."""
    from nsmagic.runtime.named import MANAGER

    for name in names:
        if name in MANAGER.names():
            MANAGER.remove(name, force=True)
    kept = set(MANAGER.names())
    return [name for name in names if name in kept]


def _remover(names: list[str]) -> Callable[[], None]:
    """A closer for ctx.on_close: remove names, and fail loudly if any is left."""

    def close() -> None:
        left = _remove_named(names)
        if left:
            raise SampleFailed(f"named containers left after removal: {', '.join(left)}")

    return close


@benchmark("exec_named", "exec into a running named container: managed.exec('pass')",
           "named")
def bench_exec_named(ctx: Context) -> Sampler:
    name = f"bench-exec-{os.getpid()}"
    managed = _start_named(name, _fork_server(ctx, 0, "named"))
    ctx.on_close(_remover([name]))

    def sample() -> float:
        start = time.perf_counter()
        result = managed.exec("pass")
        elapsed = time.perf_counter() - start
        if not result.ok:
            raise SampleFailed(f"exec('pass') in {name!r} ended with exit {result.exit_code}"
                               f"{f', {result.exception}' if result.exception else ''}")
        return elapsed

    sample()  # the check run
    return sample


def _process_tree(pid: int) -> list[int]:
    """pid and every process below it, from /proc/PID/task/TID/children of all its threads."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            threads = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue  # gone
        for tid in threads:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as handle:
                    todo.extend(int(child) for child in handle.read().split())
            except OSError:
                continue
    return found


def _rollup(pid: int) -> dict[str, int] | None:
    """Pss and Rss of a process in bytes, from /proc/PID/smaps_rollup; None once it is gone."""
    values = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("Pss", "Rss"):
                    values[key.lower()] = int(rest.split()[0]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return values if "pss" in values else None


def _gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    """Wait until none of pids exists any more; return those still there after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@figure("idle_pss", f"PSS of one idle named container (pid 1 and its children), "
                    f"{IDLE_CONTAINERS} alive at once", "named", "MB")
def figure_idle_pss(ctx: Context) -> dict[str, Any]:
    if not os.path.exists("/proc/self/smaps_rollup"):
        raise Missing("no /proc/PID/smaps_rollup here (Linux 4.14 or later)")
    count = QUICK_IDLE_CONTAINERS if ctx.quick else IDLE_CONTAINERS
    launcher = _fork_server(ctx, 0, "idle")
    names: list[str] = []
    ctx.on_close(_remover(names))
    began = time.perf_counter()
    kept = []
    for number in range(count):
        names.append(f"bench-idle-{os.getpid()}-{number}")
        kept.append(_start_named(names[-1], launcher))
    start_s = time.perf_counter() - began
    time.sleep(1.0)  # every agent settles into waiting for its first cell
    pss = rss = processes = 0
    for managed in kept:
        if managed.done.is_set():
            raise SampleFailed(f"{managed.name} ended while idle: {managed.result.describe()}")
        for pid in _process_tree(managed.result.pid):
            usage = _rollup(pid)
            if usage is not None:
                pss, rss, processes = pss + usage["pss"], rss + usage.get("rss", 0), processes + 1
    server = _rollup(launcher.pid) or {"pss": 0, "rss": 0}
    # Clean up now, and check: no name kept by the manager, no process of theirs left.
    pids = [pid for managed in kept for pid in _process_tree(managed.result.pid)]
    left = _remove_named(names)
    alive = _gone(pids)
    if left or alive:
        raise SampleFailed(f"clean-up left {len(left)} named containers and {len(alive)} "
                           "processes")
    server_mb = server["pss"] / MB
    ctx.notes.append(f"idle_pss: the fork server that started the {count} containers is not "
                     f"counted in them; its own PSS was {server_mb:.1f} MB")
    quick = f" (--quick; {IDLE_CONTAINERS} in a full run)" if count != IDLE_CONTAINERS else ""
    return {
        "value": pss / count / MB,
        "detail": f"{count} containers{quick}: {processes} processes, started one after the "
                  f"other in {start_s:.1f} s; RSS {rss / count / MB:.1f} MB each; not counted: "
                  f"the fork server, PSS {server_mb:.1f} MB",
        "details": {"containers": count, "processes": processes, "pss_bytes": pss,
                    "rss_bytes": rss, "start_s": start_s, "fork_server_pss_bytes": server["pss"],
                    "fork_server_rss_bytes": server.get("rss", 0), "left_after_cleanup": 0},
    }


def sampler_cost(containers: int = SAMPLER_CONTAINERS, rate: float = SAMPLER_RATE_HZ,
                 seconds: float = SAMPLER_SECONDS, launcher: Any = None) -> dict[str, Any]:
    """What bench/sampler_cost.py measures, as a function: containers sleeping (memory=64M,
    cpus=0.5) sampled by a Monitor at rate Hz for seconds; the sampler thread's CPU time
    (time.thread_time() inside it) per second of its wall time. Same keys as its --json."""
    import threading

    import nsmagic
    from nsmagic.monitor import Monitor
    from nsmagic.runtime.registry import REGISTRY

    hold = seconds + 6
    options: dict[str, Any] = {"memory": "64M", "cpus": 0.5}
    if launcher is not None:
        options["launcher"] = launcher
    threads = [threading.Thread(target=nsmagic.run, args=(f"import time; time.sleep({hold})",),
                                kwargs=options, daemon=True) for _ in range(containers)]
    monitor = Monitor(rate=rate, idle_rate=None)  # the cost at a steady rate
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while True:  # wait until every container runs
            running = [r for r in REGISTRY.records() if r.state == "running"]
            if len(running) >= containers:
                break
            if time.monotonic() > deadline:
                raise SampleFailed(f"only {len(running)} of {containers} containers started")
            time.sleep(0.05)
        with monitor.watch():
            time.sleep(seconds)
            ticks, cpu_s, wall_s = monitor.ticks, monitor.sampler_cpu_s, monitor.sampler_wall_s
            first_s = monitor.first_tick_cpu_s
        sampled = [s for s in monitor.series() if len(s)]
    finally:
        for thread in threads:
            thread.join(hold + 30)
    share = cpu_s / wall_s if wall_s else float("nan")
    steady = (cpu_s - first_s) / wall_s if wall_s else float("nan")
    per_tick_us = cpu_s / ticks * 1e6 if ticks else float("nan")
    return {
        "containers": containers, "sampled": len(sampled), "rate_hz": rate,
        "wall_s": round(wall_s, 3), "ticks": ticks, "sampler_cpu_s": round(cpu_s, 5),
        "cpu_share_of_one_core_percent": round(share * 100, 3),
        "steady_share_percent": round(steady * 100, 3),
        "first_tick_cpu_ms": round(first_s * 1000, 2),
        "cpu_per_tick_us": round(per_tick_us, 1),
        "cpu_per_container_sample_us": round(per_tick_us / max(1, len(sampled)), 1),
        "sources": sorted({s.source for s in sampled}),
        "target_percent": 1.0, "met": share * 100 < 1.0,
    }


@figure("sampler_cpu", f"CPU of the stats sampler thread: {SAMPLER_CONTAINERS} containers at "
                       f"{SAMPLER_RATE_HZ:g} Hz", "monitor", "% of a core")
def figure_sampler_cpu(ctx: Context) -> dict[str, Any]:
    seconds = QUICK_SAMPLER_SECONDS if ctx.quick else SAMPLER_SECONDS
    cost = sampler_cost(seconds=seconds, launcher=_fork_server(ctx, 0, "sampler"))
    if cost["sampled"] != cost["containers"]:
        ctx.notes.append(f"sampler_cpu: {cost['sampled']} containers sampled, not "
                         f"{cost['containers']}")
    return {
        "value": cost["cpu_share_of_one_core_percent"],
        "detail": f"{cost['sampled']} containers ({', '.join(cost['sources'])}) for "
                  f"{cost['wall_s']:.1f} s, {cost['ticks']} ticks, "
                  f"{cost['cpu_per_tick_us']:.0f} us a tick; steady state (without the first "
                  f"tick, {cost['first_tick_cpu_ms']:.1f} ms) {cost['steady_share_percent']:.3f}%",
        "details": {k: v for k, v in cost.items() if k not in ("target_percent", "met")},
    }


# The dashboard's kernel-side cost: a real kernel, `show_dashboard()` with its defaults and 3
# containers; the benchmark then plays the page (what a browser sends when it shows the
# widget: a view, then the heartbeat's steps) while the kernel is idle, and takes the CPU time
# of the sampler and render threads over a fixed window after a warm-up.
DASHBOARD_CONTAINERS = 3
DASHBOARD_SECONDS, QUICK_DASHBOARD_SECONDS = 20.0, 6.0
DASHBOARD_WARMUP_S = 4.0
DASHBOARD_OPEN = """\
import json, resource, threading, time
import nsmagic
from nsmagic.runtime.registry import REGISTRY
from nsmagic.widgets import show_dashboard
PAYLOAD = {payload!r}
def _run(i):
    nsmagic.run(PAYLOAD.format(phase=i / {containers}), cpus=0.5, memory="128M")
_workers = [threading.Thread(target=_run, args=(i,), daemon=True) for i in range({containers})]
for _w in _workers:
    _w.start()
_deadline = time.monotonic() + 30
while len([r for r in REGISTRY.records() if r.state == "running"]) < {containers}:
    assert time.monotonic() < _deadline, "the containers did not start"
    time.sleep(0.05)
_dash = show_dashboard()
_beat = getattr(_dash, "beat", _dash.widget)
def _cpu():
    found = {{t.name: time.clock_gettime(time.pthread_getcpuclockid(t.ident))
             for t in threading.enumerate() if t.name in ("nsmagic-monitor", "nsmagic-dashboard")}}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return found, usage.ru_utime + usage.ru_stime, time.monotonic(), _dash.frames
json.dump({{"heartbeat": _beat.model_id}}, open({out!r}, "w"))
"""
DASHBOARD_START = "_t0, _p0, _w0, _f0 = _cpu()"
DASHBOARD_END = """\
_t1, _p1, _w1, _f1 = _cpu()
_dash.stop()
for _w in _workers:
    _w.join(60)
json.dump({{"threads": {{k: _t1[k] - _t0[k] for k in _t1 if k in _t0}}, "wall_s": _w1 - _w0,
           "process_cpu_s": _p1 - _p0, "frames": _f1 - _f0}}, open({out!r}, "w"))
"""
DASHBOARD_IDLE = "import time; time.sleep({hold})"
# Each container alternates busy and sleeping halves of a 2 s cycle (phases shifted), and
# grows and frees 24 MB: CPU and memory both move all the time.
DASHBOARD_BUSY = """\
import time
time.sleep({{phase}} * 2)
end, blocks = time.monotonic() + {hold}, []
while time.monotonic() < end:
    t = time.monotonic()
    while time.monotonic() - t < 1.0:
        pass
    blocks = [bytearray(24_000_000)] if not blocks else []
    time.sleep(1.0)
"""


def _play_the_page(session: KernelSession, model_id: str, seconds: float) -> None:
    """Send what a page showing the widget sends: its view, then a heartbeat step a second."""
    def update(state: dict[str, Any]) -> None:
        session.client.shell_channel.send(session.client.session.msg("comm_msg", {
            "comm_id": model_id, "data": {"method": "update", "state": state,
                                          "buffer_paths": []}}))

    update({"_view_count": 1})
    deadline, step = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        step += 1
        update({"value": step})


def dashboard_cost(ctx: Context, busy: bool) -> dict[str, Any]:
    """A dashboard in a fresh kernel, shown by a played page; the CPU of its threads."""
    seconds = QUICK_DASHBOARD_SECONDS if ctx.quick else DASHBOARD_SECONDS
    hold = DASHBOARD_WARMUP_S + seconds + 5
    payload = (DASHBOARD_BUSY if busy else DASHBOARD_IDLE).format(hold=hold)
    session = _kernel(ctx)
    with tempfile.TemporaryDirectory(prefix="nsmagic-bench-") as folder:
        out = os.path.join(folder, "dashboard.json")
        session.execute(DASHBOARD_OPEN.format(payload=payload, containers=DASHBOARD_CONTAINERS,
                                              out=out))
        with open(out) as handle:
            model_id = json.load(handle)["heartbeat"]
        _play_the_page(session, model_id, DASHBOARD_WARMUP_S)
        session.execute(DASHBOARD_START)
        _play_the_page(session, model_id, seconds)
        session.execute(DASHBOARD_END.format(out=out), timeout=hold + 90)
        with open(out) as handle:
            measured = json.load(handle)
    threads, wall = measured["threads"], measured["wall_s"]
    share = sum(threads.values()) / wall * 100
    kind = "changing" if busy else "idle (sleeping)"
    return {
        "value": share,
        "detail": f"{DASHBOARD_CONTAINERS} {kind} containers under cpus=0.5, one page showing "
                  f"it, {wall:.0f} s after a {DASHBOARD_WARMUP_S:g} s warm-up: "
                  + ", ".join(f"{name} {cpu / wall * 100:.2f}%" for name, cpu in
                              sorted(threads.items()))
                  + f"; {measured['frames']} frames; the whole kernel process "
                    f"{measured['process_cpu_s'] / wall * 100:.1f}%",
        "details": {"containers": DASHBOARD_CONTAINERS, "busy": busy, **measured},
    }


@figure("dashboard_idle", f"kernel CPU of an open dashboard, {DASHBOARD_CONTAINERS} idle "
                          "containers (sampler + render threads)", "monitor", "% of a core")
def figure_dashboard_idle(ctx: Context) -> dict[str, Any]:
    return dashboard_cost(ctx, busy=False)


@figure("dashboard_busy", f"kernel CPU of an open dashboard, {DASHBOARD_CONTAINERS} changing "
                          "containers (sampler + render threads)", "monitor", "% of a core")
def figure_dashboard_busy(ctx: Context) -> dict[str, Any]:
    return dashboard_cost(ctx, busy=True)


# -- statistics ------------------------------------------------------------------------------
def summarize(samples: list[float]) -> dict[str, float]:
    """Median, p10, p90, p25, p75, min and max of samples (at least one)."""
    ordered = sorted(samples)
    if len(ordered) == 1:
        value = ordered[0]
        return {"median": value, "p10": value, "p90": value, "p25": value, "p75": value,
                "min": value, "max": value}
    deciles = statistics.quantiles(ordered, n=10, method="inclusive")
    quartiles = statistics.quantiles(ordered, n=4, method="inclusive")
    return {"median": statistics.median(ordered), "p10": deciles[0], "p90": deciles[-1],
            "p25": quartiles[0], "p75": quartiles[-1], "min": ordered[0], "max": ordered[-1]}


# What the numbers are compared with: (name, numerator, denominator, target or None).
RATIOS: list[tuple[str, str, str, float | None]] = [
    ("ours+limits / unshare", "api_limits", "unshare", 1.5),
    ("ours+limits / runc", "api_limits", "runc", 0.3),
    ("ours+limits, warm pool / unshare", "api_limits_pool", "unshare", 1.5),
    ("ours+limits, warm pool / runc", "api_limits_pool", "runc", 0.3),
    ("%%container overhead / API run", "cell_overhead", "api_for_kernel", 2.0),
    ("ours (no limits) / unshare", "api", "unshare", None),
    ("ours (no limits) / bwrap", "api", "bwrap", None),
    ("ours, userns / ours", "api_userns", "api", None),
    ("spawn launcher / fork server", "api_spawn", "api", None),
    ("no pool / warm pool", "api", "api_pool", None),
]


# Absolute targets: (name, key, target). A timed row's median in ms, or a figure's value in
# its unit, must be <= target.
TARGETS: list[tuple[str, str, float]] = [
    ("exec into a running named container, median", "exec_named", 1.0),
    ("PSS per idle named container", "idle_pss", 3.0),
    ("stats sampler thread, CPU", "sampler_cpu", 1.0),
    ("open dashboard, idle containers, kernel CPU", "dashboard_idle", 2.0),
    ("open dashboard, changing containers, kernel CPU", "dashboard_busy", 5.0),
]


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """TARGETS against a report's timed medians (ms) and figures (their unit)."""
    checked = []
    for name, key, target in TARGETS:
        entry: dict[str, Any] = {"name": name, "key": key, "target": target}
        timed, measured = report["benchmarks"].get(key), report.get("figures", {}).get(key)
        if timed is not None and timed["status"] == "ok" and timed["samples"]:
            entry.update(unit="ms", value=timed["median"] * 1000)
        elif measured is not None and measured["status"] == "ok":
            entry.update(unit=measured["unit"], value=measured["value"])
        else:
            row = timed or measured
            why = f"{row['status']}: {row['reason']}" if row else "not run"
            entry.update(unit="ms" if timed else (measured or {}).get("unit", ""), value=None,
                         met=None, why=why)
            checked.append(entry)
            continue
        entry["met"] = entry["value"] <= target
        checked.append(entry)
    return checked


def _ratio(numerators: list[float], denominators: list[float]) -> dict[str, Any]:
    pairs = [n / d for n, d in zip(numerators, denominators, strict=False) if d > 0]
    value = statistics.median(numerators) / statistics.median(denominators)
    spread = summarize(pairs) if pairs else {"p10": value, "p90": value}
    return {"value": value, "per_round_p10": spread["p10"], "per_round_p90": spread["p90"]}


def derive(report: dict[str, Any]) -> None:
    """Add the magic's overhead, the ratios and the absolute targets (met or not)."""
    results = report["benchmarks"]

    def samples(key: str) -> list[float] | None:
        entry = results.get(key)
        return entry["samples"] if entry and entry["status"] == "ok" else None

    derived: dict[str, Any] = {}
    plain, cell = samples("cell_plain"), samples("cell_container")
    if plain and cell:
        differences = [c - p for p, c in zip(plain, cell, strict=False)]
        derived["cell_overhead"] = {
            "label": "%%container cell minus plain cell (paired per round)",
            "samples": differences, **summarize(differences)}
    # The kernel uses the process-wide launcher, so its pool follows NSMAGIC_POOL.
    pool = _pool_module()
    kernel_pool = pool.pool_size_from_environment() if pool else 0
    api_key = "api_pool" if kernel_pool > 0 and samples("api_pool") else "api"
    derived["api_for_kernel"] = {"same_as": api_key}
    report["derived"] = derived

    def lookup(key: str) -> list[float] | None:
        if key == "api_for_kernel":
            key = api_key
        if key in derived and "samples" in derived[key]:
            return derived[key]["samples"]
        return samples(key)

    ratios = []
    for name, numerator, denominator, target in RATIOS:
        entry: dict[str, Any] = {"name": name, "numerator": numerator,
                                 "denominator": api_key if denominator == "api_for_kernel"
                                 else denominator, "target": target}
        top, bottom = lookup(numerator), lookup(denominator)
        if not top or not bottom:
            missing = [k for k, v in ((numerator, top), (denominator, bottom)) if not v]
            entry.update(value=None, met=None, why=f"no figure for {', '.join(missing)}")
        else:
            entry.update(_ratio(top, bottom))
            entry["met"] = None if target is None else entry["value"] <= target
        ratios.append(entry)
    report["ratios"] = ratios
    report["targets"] = check_targets(report)


# -- the run ---------------------------------------------------------------------------------
def _pid_1_kind() -> str:
    from nsmagic.runtime.inside.init import NATIVE_INIT

    if NATIVE_INIT is None:
        return "the Python pid 1 (nsmagic-init was not built, or NSMAGIC_INIT=python)"
    return "nsmagic-init, the native program (nsmagic/native/nsmagic-init.c, built by setup.py)"


def machine_info() -> dict[str, Any]:
    """Kernel, CPU, cores, memory, Python, date and the cgroup set-up of this host."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_gib = None
    try:
        with open("/proc/meminfo") as handle:
            kib = int(handle.readline().split()[1])
            memory_gib = round(kib / (1 << 20), 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        from nsmagic.cgroups import describe_host

        host = describe_host()
        cgroup = {"version": host.version, "driver": host.driver,
                  "controllers": list(host.controllers), "reason": host.reason}
    except Exception as error:  # noqa: BLE001 - the machine info must not stop a run
        cgroup = {"version": "unknown", "error": str(error)}
    uname = platform.uname()
    return {"kernel": f"{uname.system} {uname.release}", "machine": uname.machine,
            "cpu_model": cpu, "cores": os.cpu_count(), "memory_gib": memory_gib,
            "python": platform.python_version(), "is_root": os.geteuid() == 0,
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "cgroup": cgroup, "nsmagic_pool_env": os.environ.get("NSMAGIC_POOL")}


def select(only: list[str] | None) -> list[Benchmark]:
    """The registered benchmarks, or those whose key is in only (unknown keys: ValueError)."""
    if not only:
        return list(BENCHMARKS)
    known = {b.key for b in BENCHMARKS}
    unknown = [k for k in only if k not in known]
    if unknown:
        raise ValueError(f"unknown benchmark {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    return [b for b in BENCHMARKS if b.key in only]


def run(runs: int = DEFAULT_RUNS, quick: bool = False, only: list[str] | None = None,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmarks and return the report (see docs/performance.md for its keys)."""
    say = progress or (lambda text: None)
    runs = QUICK_RUNS if quick and runs == DEFAULT_RUNS else runs
    warmup = 1 if quick else WARMUP_ROUNDS
    started = time.perf_counter()
    ctx = Context(quick=quick)
    results: dict[str, dict[str, Any]] = {}
    samplers: dict[str, Sampler] = {}
    chosen = select(only)
    try:
        for bench in (b for b in chosen if b.kind == "time"):
            entry: dict[str, Any] = {"label": bench.label, "group": bench.group,
                                     "status": "ok", "reason": "", "samples": []}
            results[bench.key] = entry
            say(f"preparing {bench.key}")
            prepared = _prepared(bench, ctx, entry)
            if prepared is not None:
                samplers[bench.key] = prepared
        order = list(samplers)
        rng = random.Random(SEED)
        for round_number in range(warmup + runs):
            rng.shuffle(order)
            timed = round_number >= warmup
            say(f"round {round_number + 1 - warmup}/{runs}" if timed
                else f"warm-up {round_number + 1}/{warmup}")
            for key in order:
                if results[key]["status"] != "ok":
                    continue
                try:
                    elapsed = samplers[key]()
                except SampleFailed as why:
                    results[key].update(status="failed", reason=str(why))
                    continue
                if timed:
                    results[key]["samples"].append(elapsed)
                elif key in ctx.phases:
                    ctx.phases[key].clear()
                time.sleep(GAP_S)
    finally:
        ctx.close()
    figures = measure_figures([b for b in chosen if b.kind == "figure"], quick, ctx.notes, say)
    for key, entry in results.items():
        if entry["status"] == "ok" and entry["samples"]:
            entry.update(summarize(entry["samples"]))
        if ctx.phases.get(key):
            entry["phases"] = _phase_medians(ctx.phases[key])
    report = {
        "schema": SCHEMA,
        "machine": machine_info(),
        "method": {"timer": TIMER, "anchors": ANCHOR_METHOD,
                   "api": "nsmagic.run('pass', ...) in the benchmark process, wall time "
                          "around the call (launch to result, cleanup included)",
                   "kernel": "jupyter_client: execute request sent -> status idle received",
                   "runs": runs, "warmup_rounds": warmup, "gap_s": GAP_S,
                   "order": f"every round runs each benchmark once, in an order shuffled "
                            f"per round (random.Random({SEED}))",
                   "spread": "p10-p90 (statistics.quantiles, inclusive)", "quick": quick,
                   "figures": FIGURE_METHOD, "pid_1": _pid_1_kind()},
        "benchmarks": results,
        "figures": figures,
        "notes": ctx.notes,
    }
    derive(report)
    report["duration_s"] = time.perf_counter() - started
    return report


def measure_figures(chosen: list[Benchmark], quick: bool, notes: list[str],
                    say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Measure each figure once, each with a context of its own, closed before the next."""
    figures: dict[str, dict[str, Any]] = {}
    for bench in chosen:
        entry: dict[str, Any] = {"label": bench.label, "group": bench.group,
                                 "unit": bench.unit, "status": "ok", "reason": "",
                                 "value": None, "detail": "", "details": {}}
        figures[bench.key] = entry
        say(f"measuring {bench.key}")
        ctx = Context(quick=quick, notes=notes)
        try:
            measured = _prepared(bench, ctx, entry)
            if measured is not None:
                entry.update(measured)
        finally:
            ctx.close()
    return figures


def _prepared(bench: Benchmark, ctx: Context, entry: dict[str, Any]) -> Any:
    """bench.prepare(ctx), or None with the entry's status and reason saying why not."""
    try:
        return bench.prepare(ctx)
    except Missing as why:
        entry.update(status="missing", reason=str(why))
    except NotMeasured as why:
        entry.update(status="not measured", reason=str(why))
    except SampleFailed as why:
        entry.update(status="failed", reason=str(why))
    return None


def _phase_medians(phases: list[dict[str, float]]) -> dict[str, float]:
    names = sorted({name for sample in phases for name in sample})
    return {name: statistics.median(s[name] for s in phases if name in s) for name in names}


# -- output ----------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _ratio_text(entry: dict[str, Any]) -> tuple[str, str, str]:
    if entry["value"] is None:
        return "-", "-", f"not computed: {entry['why']}"
    value = f"{entry['value']:.2f}"
    spread = f"{entry['per_round_p10']:.2f}-{entry['per_round_p90']:.2f}"
    if entry["target"] is None:
        return value, spread, ""
    value = f"{entry['value']:.3f}"  # near a target, two decimals could round across it
    verdict = "met" if entry["met"] else "NOT met"
    return value, spread, f"target <= {entry['target']:g}: {verdict}"


def _value(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _figure_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(label, value, unit, detail) of every figure."""
    rows = []
    for entry in report.get("figures", {}).values():
        if entry["status"] == "ok":
            rows.append((entry["label"], _value(entry["value"]), entry["unit"], entry["detail"]))
        else:
            rows.append((entry["label"], f"{entry['status']}: {entry['reason']}", "", ""))
    return rows


def _target_text(entry: dict[str, Any]) -> tuple[str, str]:
    if entry["value"] is None:
        return "-", f"not checked: {entry['why']}"
    return _value(entry["value"]), "met" if entry["met"] else "NOT met"


def _rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for key, entry in report["benchmarks"].items():
        if entry["status"] == "ok":
            rows.append((entry["label"], _ms(entry["median"]),
                         f"{_ms(entry['p10'])}-{_ms(entry['p90'])}", str(len(entry["samples"]))))
        else:
            rows.append((entry["label"], f"{entry['status']}: {entry['reason']}", "", ""))
        if key == "cell_container" and "cell_overhead" in report["derived"]:
            over = report["derived"]["cell_overhead"]
            rows.append(("  = %%container overhead over a plain cell", _ms(over["median"]),
                         f"{_ms(over['p10'])}-{_ms(over['p90'])}", str(len(over["samples"]))))
    return rows


def _header(report: dict[str, Any]) -> list[str]:
    m, method = report["machine"], report["method"]
    cg = m["cgroup"]
    return [f"date: {m['date']}",
            f"machine: {m['kernel']}, {m['cpu_model']} ({m['cores']} cores), "
            f"{m['memory_gib']} GiB, Python {m['python']}, "
            f"{'root' if m['is_root'] else 'not root'}, cgroup {cg.get('version')} "
            f"(driver {cg.get('driver')})",
            f"method: {method['runs']} rounds after {method['warmup_rounds']} warm-up, each "
            f"benchmark once per round in shuffled order; wall time ({method['timer']}); "
            f"median and p10-p90 in ms; anchors via subprocess.run"]


def format_table(report: dict[str, Any]) -> str:
    """The plain-text table printed by `nsmagic bench`."""
    lines = _header(report) + [""]
    rows = _rows(report)
    width = max((len(r[0]) for r in rows), default=len("benchmark"))  # --only FIGURES
    lines.append(f"{'benchmark':<{width}}  {'median':>8}  {'p10-p90':>13}  {'n':>3}")
    for label, median, spread, n in rows:
        if spread:
            lines.append(f"{label:<{width}}  {median:>8}  {spread:>13}  {n:>3}")
        else:
            lines.append(f"{label:<{width}}  {median}")
    lines += ["", "ratios (of medians; per-round p10-p90 beside)"]
    name_width = max(len(r["name"]) for r in report["ratios"])
    for entry in report["ratios"]:
        value, spread, verdict = _ratio_text(entry)
        lines.append(f"  {entry['name']:<{name_width}}  {value:>5}  {spread:>11}  {verdict}")
    figures = _figure_rows(report)
    if figures:
        lines += ["", "figures (measured once, after the rounds)"]
        width = max(len(r[0]) for r in figures)
        for label, value, unit, detail in figures:
            lines.append(f"  {label:<{width}}  {value} {unit}" + (f"  ({detail})" if detail
                                                                  else ""))
    if report.get("targets"):
        lines += ["", "absolute targets"]
        width = max(len(t["name"]) for t in report["targets"])
        for entry in report["targets"]:
            value, verdict = _target_text(entry)
            lines.append(f"  {entry['name']:<{width}}  {value:>6} {entry['unit']}  "
                         f"target <= {entry['target']:g}: {verdict}")
    lines += [f"  note: {n}" for n in report["notes"]]
    lines.append(f"\n(total {report['duration_s']:.0f} s)")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def format_markdown(report: dict[str, Any]) -> str:
    """docs/performance.md, regenerated from a run."""
    m = report["machine"]
    out = [
        "# Performance",
        "",
        "<!-- Generated by `python -m nsmagic bench --markdown docs/performance.md`; edit "
        "nsmagic_bench/benchmarks.py, not this page. -->",
        "",
        "How long it takes to start a container and have it end, with nsmagic and with the "
        "usual tools, and what a named container costs once it runs (a cell sent to it, its "
        "memory while idle, the stats sampler watching it), measured in one run on one "
        "machine. Regenerate with:",
        "",
        "```",
        "sudo .venv/bin/python -m nsmagic bench --markdown docs/performance.md "
        "--json bench/results/latest.json",
        "```",
        "",
        f"Measured {m['date']} on {m['kernel']}, {m['cpu_model']} ({m['cores']} cores, "
        f"{m['memory_gib']} GiB), Python {m['python']}, "
        f"{'as root' if m['is_root'] else 'not as root'}, cgroup {m['cgroup'].get('version')} "
        f"(nsmagic driver {m['cgroup'].get('driver')}). The machine is shared and noisy: read "
        "medians and spreads, not single runs.",
        "",
        "| benchmark | median (ms) | p10-p90 (ms) | n |",
        "|---|---:|---:|---:|",
    ]
    for label, median, spread, n in _rows(report):
        out.append(f"| {_cell(label)} | {_cell(median)} | {spread} | {n} |")
    figures = _figure_rows(report)
    if figures:
        out += ["", "## Figures", "",
                "Not times: each is measured once, after the timed rounds (see Method).", "",
                "| figure | value | unit | how |", "|---|---:|---|---|"]
        for label, value, unit, detail in figures:
            out.append(f"| {_cell(label)} | {_cell(value)} | {_cell(unit)} | {_cell(detail)} |")
    out += ["", "## Ratios", "",
            "Ratios of medians; beside them the p10-p90 of the same ratio taken round by round "
            "(both figures of a round were measured seconds apart).", "",
            "| ratio | value | per-round p10-p90 | target |", "|---|---:|---:|---|"]
    for entry in report["ratios"]:
        value, spread, verdict = _ratio_text(entry)
        out.append(f"| {_cell(entry['name'])} | {value} | {spread} | {_cell(verdict)} |")
    if report.get("targets"):
        out += ["", "## Absolute targets", "",
                "Targets on one figure rather than a ratio: a timed row's median, or a figure.",
                "", "| target | value | unit | target | verdict |", "|---|---:|---|---:|---|"]
        for entry in report["targets"]:
            value, verdict = _target_text(entry)
            out.append(f"| {_cell(entry['name'])} | {value} | {_cell(entry['unit'])} | "
                       f"<= {entry['target']:g} | {_cell(verdict)} |")
    phased = {k: e["phases"] for k, e in report["benchmarks"].items() if e.get("phases")}
    if phased:
        out += ["", "## Where nsmagic's time goes", "",
                "Medians of `ContainerResult.timings` (ms since the request): `launch` the "
                "request handed to the launcher, `started` pid 1 reported, `ready` the payload "
                "about to run, `payload_exited` the payload done, `exited` the supervisor "
                "released everything (cgroup removal included), `total` the call returned.", "",
                "| run | launch | started | ready | payload exited | exited | total |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for key, phases in phased.items():
            cells = [_ms(phases[n]) if n in phases else "-" for n in
                     ("launch_s", "started_s", "ready_s", "payload_exited_s", "exited_s",
                      "total_s")]
            out.append(f"| {key} | " + " | ".join(cells) + " |")
    method = report["method"]
    out += ["", "## Reading the numbers", "",
            "- Every row is the wall time from asking to having the answer: for the API, the "
            "request to the fork server, namespaces, cgroup creation and attach, running `pass` "
            "in a forked Python, the report, and the cgroup's removal before `run()` returns.",
            "- The anchors are timed through `subprocess.run`, so each includes the spawn floor "
            "(first row); figures taken with hyperfine are lower by about that much. Subtracting "
            "it would make every ratio against an anchor worse for nsmagic, not better.",
            "- unshare and bwrap create no cgroup at all; runc and nsmagic do. So `ours+limits "
            "/ unshare` compares a limited container with an unlimited one, as the target asks.",
            "- The warm pool is refilled while the fork server is idle. Here every pool run is "
            "separated by the rest of its round, so it always finds a warm container, as a "
            "notebook does when cells are seconds apart; runs fired back to back faster than "
            "the refill get the pool-off figure.",
            "- Exec into a named container is one cell sent to a container that already runs "
            "(no namespace, cgroup or process is created): the request over its socket, `pass` "
            "run by the container's main process (its agent, a forked Python), the reply read "
            "back.",
            "- The idle PSS divides the pages that the containers share with each other and "
            "with the fork server they were forked from among all of them, so it depends on "
            "how many are alive at once; fewer containers (as in `--quick`) read higher. The "
            "fork server itself is not counted in any container; its own PSS is in the notes.",
            "- Ratios and targets that are missed are printed as `NOT met`; nothing is tuned "
            "to pass.",
            "", "## Method", "",
            f"- {method['runs']} rounds after {method['warmup_rounds']} warm-up rounds. "
            f"{method['order'].capitalize()}, so the drift of the machine lands on every "
            f"benchmark alike; {method['gap_s'] * 1000:g} ms pause after every sample "
            "(outside the timing) so that background work left by one sample (runc's cgroup "
            "removal, the fork server refilling its warm pool) does not land on the next.",
            f"- Timer: `{method['timer']}`, wall time, in the benchmark process.",
            f"- Anchors: {method['anchors']}. The same method for every anchor. (hyperfine, "
            "where installed, gives the same figures minus the spawn floor; it is not used "
            "because it cannot interleave with the API runs.)",
            f"- pid 1 of every container: {method.get('pid_1', 'not recorded')}.",
            f"- API: {method['api']}. Each configuration has its own fork server, started "
            "and warmed before timing; `NSMAGIC_POOL` is set to 0 for the no-pool rows and "
            "left at its default for the warm-pool rows.",
            f"- Kernel: {method['kernel']}; one `python3` kernel with `%load_ext nsmagic`, the "
            "overhead is the per-round difference between `%%container` + `pass` and `pass`.",
            "- Named container exec: `MANAGER.start(name, ContainerSpec.build(name=name))` "
            "once (default spec, a fork server of its own with `NSMAGIC_POOL=0`, a name unique "
            "to the run, removed when the run ends); each round times one `managed.exec('pass')`"
            " with `time.perf_counter` around the call.",
            f"- Figures: {method.get('figures', FIGURE_METHOD)}.",
            f"- Idle PSS: {IDLE_CONTAINERS} named containers (default spec; "
            f"{QUICK_IDLE_CONTAINERS} with `--quick`) started one after the other from one "
            "fork server, then 1 s idle; for each, its pid 1 (`result.pid`) and every process "
            "below it (`/proc/PID/task/TID/children`, recursively, every thread), the `Pss:` "
            "line of `/proc/PID/smaps_rollup` summed, divided by the number of containers; "
            "MB = 10^6 bytes. Then all are removed with `MANAGER.remove(name, force=True)` and "
            "the run checks that the manager keeps none of their names and that none of their "
            "processes is left.",
            f"- Sampler CPU: what `bench/sampler_cost.py` measures ({SAMPLER_CONTAINERS} "
            "containers sleeping under `memory='64M', cpus=0.5`, a `Monitor` at "
            f"{SAMPLER_RATE_HZ:g} Hz watching for {SAMPLER_SECONDS:g} s, "
            f"{QUICK_SAMPLER_SECONDS:g} s with `--quick`): the sampler thread's CPU time "
            "(`time.thread_time()` inside it) over its wall time, as % of one core, first tick "
            "included.",
            f"- Dashboard CPU: a fresh kernel opens `show_dashboard()` (its defaults) over "
            f"{DASHBOARD_CONTAINERS} containers under `cpus=0.5` (sleeping, or alternating 1 s "
            "busy and 1 s asleep while freeing and taking 24 MB); the benchmark then sends what "
            "a page showing the widget sends (its view, a heartbeat step a second) while the "
            "kernel is idle, and the figure is the CPU time of the `nsmagic-monitor` and "
            "`nsmagic-dashboard` threads (`pthread_getcpuclockid`) over "
            f"{DASHBOARD_SECONDS:g} s ({QUICK_DASHBOARD_SECONDS:g} s with `--quick`) after a "
            f"{DASHBOARD_WARMUP_S:g} s warm-up, as % of one core.",
            "- Spread: p10-p90. Anchors that cannot run here are listed as missing, with why.",
            "", "## Where the anchors come from", "",
            "The benchmark installs nothing. On Debian 12:", "",
            "| anchor | Debian package |", "|---|---|",
            "| `unshare` | util-linux (essential, always present) |",
            "| `bwrap` | bubblewrap |",
            "| `runc` | runc |",
            "| the static busybox in the runc bundle | busybox-static |",
            "", "`apt-get install bubblewrap runc busybox-static` gives all of them. The runc "
            "bundle is built in a temporary directory for each run: a rootfs holding the "
            "static busybox and a `/bin/true` symlink, `runc spec`, then `process.args = "
            "[\"/bin/true\"]` and `terminal: false`; each run has its own container id and "
            "`runc --root <tmp> delete -f` follows it. runc runs as root only.",
            "", "## JSON", "",
            "`--json FILE` writes everything: `schema`, `machine` (kernel, cpu_model, cores, "
            "memory_gib, python, is_root, date, cgroup, nsmagic_pool_env), `method`, "
            "`benchmarks` (per key: label, group, status `ok` / `missing` / `not measured` / "
            "`failed`, reason, samples in seconds, and for `ok` median, p10, p90, p25, p75, "
            "min, max; API rows also phases), `derived` (cell_overhead with its samples), "
            "`ratios` (name, numerator, denominator, target, value, per_round_p10, "
            "per_round_p90, met), `figures` (per key: label, group, unit, status, reason, value, "
            "detail, and details: the numbers behind it), `targets` (name, key, unit, target, "
            "value, met; why when not checked), `notes` and `duration_s`. Schema 2 added "
            "`figures` and `targets`."]
    return "\n".join(out) + "\n"


def write_outputs(report: dict[str, Any], json_path: str | None,
                  markdown_path: str | None) -> None:
    if json_path:
        directory = os.path.dirname(json_path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(json_path, "w") as handle:
            json.dump(report, handle, indent=1)
            handle.write("\n")
    if markdown_path:
        with open(markdown_path, "w") as handle:
            handle.write(format_markdown(report))


def main(runs: int = DEFAULT_RUNS, quick: bool = False, json_path: str | None = None,
         markdown_path: str | None = None, only: list[str] | None = None) -> int:
    """What `nsmagic bench` does: run, print the table, write the files asked for."""

    def progress(text: str) -> None:
        if sys.stderr.isatty():
            print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)

    report = run(runs=runs, quick=quick, only=only, progress=progress)
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    print(format_table(report))
    write_outputs(report, json_path, markdown_path)
    return 0
