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

A heavy row (a loop of 200 starts, a pull) is sampled in every Nth round only (every=N), and a
sampler that measures several rows at once (a loop's median and p90) returns them as a dict
keyed by row, its companion rows (also=). Rows of an option (--images) run only when asked for.
With --v2, a few rows run again inside the cgroup v2 test guest (tests/vm/guest.py).
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import itertools
import json
import os
import platform
import random
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

SCHEMA = 3
DEFAULT_RUNS = 100
QUICK_RUNS = 3
WARMUP_ROUNDS = 2
# A pause after every sample, outside the timing: the background work a sample leaves behind
# (runc's cgroup removal, the fork server refilling its warm pool) settles before the next.
GAP_S = 0.01
# After a heavy row's sample (hundreds of starts), the pool it emptied refills: a longer pause.
HEAVY_GAP_S = 0.2
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

# A sampler returns the seconds of one sample, or {row key: seconds} for a row and its companions.
Sampler = Callable[[], float | dict[str, float]]


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
    group: str  # "anchor", "api", "kernel", "named", "monitor", "images" or "future"
    # kind "time": prepare(ctx) returns a sampler, timed every round.
    # kind "figure": prepare(ctx) measures once (after the rounds) and returns a dict with
    # "value" (in unit), "detail" (one line for the page) and "details" (numbers for the JSON).
    prepare: Callable[[Context], Any]
    kind: str = "time"
    unit: str = "ms"
    every: int = 1  # sampled in every Nth timed round only (never in the warm-up)
    # Companion rows (key, label) that the same sampler measures: it returns {key: seconds}.
    also: tuple[tuple[str, str], ...] = ()
    option: str | None = None  # run only when this option (--images) or its key is asked for

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key, *(key for key, _ in self.also))


BENCHMARKS: list[Benchmark] = []


def benchmark(key: str, label: str, group: str, *, every: int = 1,
              also: tuple[tuple[str, str], ...] = (), option: str | None = None
              ) -> Callable[[Callable], Callable]:
    """Register prepare(ctx) -> sampler as one row of the table (and its companions)."""

    def register(prepare: Callable[[Context], Sampler]) -> Callable[[Context], Sampler]:
        BENCHMARKS.append(Benchmark(key, label, group, prepare, every=every, also=also,
                                    option=option))
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
    # What a row moves per sample (a pull's bytes), for its throughput: {key: {name: bytes}}.
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)
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


def _oci_bundle(ctx: Context) -> str:
    """The busybox bundle, built once per run (runc spec writes its config.json)."""
    runc = _require_tool("runc", "runc")  # its `spec` writes the config crun reads as well
    busybox = _static_busybox()

    def make() -> str:
        directory = tempfile.mkdtemp(prefix="nsmagic-bench-oci-")
        ctx.on_close(lambda: shutil.rmtree(directory, ignore_errors=True))
        return build_runc_bundle(directory, runc, busybox)

    return ctx.get("oci-bundle", make)


def _oci_runtime_sampler(ctx: Context, runtime: str) -> Sampler:
    """`RUNTIME run` of the busybox bundle, a container id per run, `delete -f` after it."""
    bundle = _oci_bundle(ctx)
    state = tempfile.mkdtemp(prefix=f"nsmagic-bench-{os.path.basename(runtime)}-state-")
    ctx.on_close(lambda: shutil.rmtree(state, ignore_errors=True))  # its own: nothing shared
    counter = iter(range(1 << 30))
    prefix = f"nsmagic-bench-{os.getpid()}"

    def argv_for(container_id: str) -> list[str]:
        return [runtime, "--root", state, "run", "--bundle", bundle, container_id]

    def delete(container_id: str) -> None:
        subprocess.run([runtime, "--root", state, "delete", "-f", container_id],
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
            delete(container_id)  # untimed; `run` already removed it when all went well

    return sample


@benchmark("runc", "runc run of a minimal busybox bundle (/bin/true)", "anchor")
def bench_runc(ctx: Context) -> Sampler:
    if os.geteuid() != 0:
        raise Missing("runc runs as root only here, and this is not root")
    return _oci_runtime_sampler(ctx, _require_tool("runc", "runc"))


# crun's README (containers/crun, "Performance"): 100 containers running /bin/true one after
# the other took 1.69 s with crun (3.34 s with runc) on its author's machine.
CRUN_PUBLISHED_MS = 16.9


def _hybrid_cgroups() -> bool:
    try:
        from nsmagic.cgroups import describe_host

        return describe_host().version == "hybrid"
    except Exception:  # noqa: BLE001 - only a note depends on it
        return False


@benchmark("crun", "crun run of the same busybox bundle (/bin/true)", "anchor")
def bench_crun(ctx: Context) -> Sampler:
    # crun refuses hosts whose cgroups are hybrid (v1 controllers beside a cgroup2 mount):
    # then the target is its published figure (TARGETS), and the row says why it is missing.
    hybrid = (f"; crun refuses this host's hybrid cgroups anyway (\"cgroups in hybrid mode not "
              f"supported\"), so its published {CRUN_PUBLISHED_MS:g} ms is the target instead"
              if _hybrid_cgroups() else "")
    if os.geteuid() != 0:
        raise Missing(f"crun runs as root only in this benchmark, and this is not root{hybrid}")
    try:
        crun = _require_tool("crun", "crun")
    except Missing as why:
        raise Missing(f"{why}{hybrid}") from None
    return _oci_runtime_sampler(ctx, crun)


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


def _api_sampler(ctx: Context, key: str | None, launcher: Any,
                 **options: Any) -> Callable[[], float]:
    """One nsmagic.run (source 'pass' unless options say otherwise) per sample; its phases
    are kept under key (None: not kept, as for a loop's starts)."""
    import nsmagic

    phases = ctx.phases.setdefault(key, []) if key else None
    call = {"source": "pass", **options}
    what = f"nsmagic.run({call['source']!r})" if "argv" not in call else \
        f"nsmagic.run(argv={list(call['argv'])!r})"

    def sample() -> float:
        start = time.perf_counter()
        try:
            result = nsmagic.run(launcher=launcher, **call)
        except nsmagic.NsmagicError as error:
            # e.g. rootless, where --pids is RLIMIT_NPROC and counts all of the user's
            # processes: the row says why instead of ending the whole run.
            raise SampleFailed(str(error)) from None
        elapsed = time.perf_counter() - start
        if not result.ok:
            raise SampleFailed(f"{what} ended with {result.describe()}")
        if phases is not None:
            phases.append(dict(result.timings))
        return elapsed

    first = sample()  # the check run; also warms the launcher
    del first
    if phases is not None:
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


@benchmark("api_host_root", "nsmagic.run('pass', host_root=True): the host's root as it is, "
           "no view; pool off", "api")
def bench_api_host_root(ctx: Context) -> Sampler:
    # The hardened default (a read-only view of the host's userland, secrets masked, its own
    # writable layer) against the old root. The pool never serves host_root, so both rows
    # are pool off: the same path apart from the root.
    return _api_sampler(ctx, "api_host_root", _fork_server(ctx, 0), host_root=True)


@benchmark("api_no_seccomp", "nsmagic.run('pass', seccomp=False): no seccomp filter; pool off",
           "api")
def bench_api_no_seccomp(ctx: Context) -> Sampler:
    return _api_sampler(ctx, "api_no_seccomp", _fork_server(ctx, 0), seccomp=False)


# -- ours, sustained and concurrent ----------------------------------------------------------
# A resource experiment starts containers in a loop, faster than the pool refills: one sample
# is a whole loop of starts, and the row is each loop's median start (its p90 a companion).
SUSTAINED_STARTS = 200
SUSTAINED_EVERY = 10
CONCURRENT_THREADS = 4
CONCURRENT_STARTS = 10  # per thread; the sequential half makes as many starts in one thread
CONCURRENT_EVERY = 10


@benchmark("sustained", f"{SUSTAINED_STARTS} starts back to back (the three limits, warm pool "
                        "on): each loop's median start", "api", every=SUSTAINED_EVERY,
           also=(("sustained_p90", "  the same loops: each loop's p90 start"),))
def bench_sustained(ctx: Context) -> Sampler:
    start = _api_sampler(ctx, "sustained", _fork_server(ctx, _pool_size(), "sustained"),
                         **LIMITS)

    def sample() -> dict[str, float]:
        loop = summarize([start() for _ in range(SUSTAINED_STARTS)])
        return {"sustained": loop["median"], "sustained_p90": loop["p90"]}

    return sample


@benchmark("concurrent", f"{CONCURRENT_THREADS} threads starting {CONCURRENT_STARTS} "
                         "containers each at once (limits, warm pool): wall time per start",
           "api", every=CONCURRENT_EVERY,
           also=(("concurrent_seq", f"  the same {CONCURRENT_THREADS * CONCURRENT_STARTS} "
                                    "starts one after the other: wall time per start"),))
def bench_concurrent(ctx: Context) -> Sampler:
    start = _api_sampler(ctx, None, _fork_server(ctx, _pool_size(), "concurrent"), **LIMITS)
    total = CONCURRENT_THREADS * CONCURRENT_STARTS
    sequential_first = itertools.cycle((True, False))  # neither half always after the other

    def sequential() -> float:
        began = time.perf_counter()
        for _ in range(total):
            start()
        return (time.perf_counter() - began) / total

    def concurrent() -> float:
        errors: list[SampleFailed] = []

        def starter() -> None:
            try:
                for _ in range(CONCURRENT_STARTS):
                    start()
            except SampleFailed as error:
                errors.append(error)

        threads = [threading.Thread(target=starter, daemon=True)
                   for _ in range(CONCURRENT_THREADS)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        if errors:
            raise errors[0]
        return elapsed / total

    def sample() -> dict[str, float]:
        if next(sequential_first):
            seq = sequential()
            time.sleep(HEAVY_GAP_S)  # the pool the first half emptied refills
            both = {"concurrent_seq": seq, "concurrent": concurrent()}
        else:
            conc = concurrent()
            time.sleep(HEAVY_GAP_S)
            both = {"concurrent": conc, "concurrent_seq": sequential()}
        return both

    return sample


# -- ours, with an image ---------------------------------------------------------------------
IMAGE_TRUE = ["/bin/true"]
IMAGE_PYTHON = ["/usr/bin/python3", "-S", "-c", "pass"]


def _builders() -> Any:
    """tests/images/builders.py, the test images' builder (this benchmark lives beside it)."""
    try:
        from tests.images import builders
    except ImportError as error:
        raise Missing(f"the test image builders (tests/images/builders.py) cannot be imported "
                      f"here: {error}") from None
    return builders


def _image_store(ctx: Context) -> str:
    """A temporary image store of this run: NSMAGIC_IMAGE_STORE points at it until the run
    closes (nsmagic.run(image=REF) looks the reference up in the default store)."""

    def make() -> str:
        from nsmagic.images.files import remove_any

        directory = tempfile.mkdtemp(prefix="nsmagic-bench-images-")
        ctx.on_close(lambda: remove_any(directory))
        saved = os.environ.get("NSMAGIC_IMAGE_STORE")
        os.environ["NSMAGIC_IMAGE_STORE"] = os.path.join(directory, "store")

        def restore() -> None:
            if saved is None:
                os.environ.pop("NSMAGIC_IMAGE_STORE", None)
            else:
                os.environ["NSMAGIC_IMAGE_STORE"] = saved

        ctx.on_close(restore)  # closers run last-first: restored before the folder goes
        return directory

    return ctx.get("image-store", make)


def _busybox_layout(ctx: Context) -> str:
    """An OCI layout (tag 1) of one busybox layer from Debian's busybox-static; nothing is
    downloaded."""
    if _static_busybox() != "/bin/busybox":
        raise Missing("the busybox image is built from /bin/busybox, which is not the static "
                      "one here (Debian package busybox-static)")
    builders = _builders()

    def make() -> str:
        layout = os.path.join(_image_store(ctx), "busybox-layout")
        builders.write_layout(layout, "1", [builders.busybox_layer()])
        return layout

    return ctx.get("busybox-layout", make)


def _python_layout(ctx: Context) -> str:
    """The Debian python3.11 image of the tests (tag 3.11), built once into their cache."""
    builders = _builders()

    def make() -> str:
        try:
            return builders.python_layout()
        except (subprocess.CalledProcessError, OSError) as error:
            raise Missing(f"the python image could not be built from Debian packages "
                          f"(tests/images/builders.py): {error}") from None

    return ctx.get("python-layout", make)


def _stored_image(ctx: Context, layout: str, tag: str) -> str:
    """The image of an OCI layout, pulled into the run's store; its reference."""
    from nsmagic import images

    _image_store(ctx)
    reference = f"oci:{layout}:{tag}"
    try:
        images.pull(reference)
    except images.ImageError as error:
        raise SampleFailed(f"{reference} could not be pulled: {error}") from None
    return reference


@benchmark("api_true", "nsmagic.run(argv=['/bin/true']): the default root (the host's view); "
                       "pool off", "api")
def bench_api_true(ctx: Context) -> Sampler:
    # The command that the image rows run, in the default root: what --image adds is the
    # difference (image containers are never served by the pool, so neither row is).
    return _api_sampler(ctx, "api_true", _fork_server(ctx, 0), kind="command", argv=IMAGE_TRUE)


@benchmark("api_image", "the same with image= a local busybox image (/bin/true in it); "
                        "pool off", "api")
def bench_api_image(ctx: Context) -> Sampler:
    reference = _stored_image(ctx, _busybox_layout(ctx), "1")
    # The reference, as a user gives it: each start looks it up in the store.
    return _api_sampler(ctx, "api_image", _fork_server(ctx, 0), kind="command",
                        argv=IMAGE_TRUE, image=reference)


# -- images, against podman, skopeo and umoci (--images) -------------------------------------
IMAGES_OPTION = "images"
PODMAN_EVERY = 2
PULL_EVERY = 5
PYTHON_TAG = "3.11"


def _podman(ctx: Context) -> dict[str, Any]:
    """podman as root with a store of this run (overlay, else vfs), cgroupfs (this host may
    be hybrid v1) and limits below the host's (podman's defaults may be above them, and runc
    may not raise a limit); the busybox and python images pulled into it from their layouts."""
    if os.geteuid() != 0:
        raise Missing("podman runs as root in this benchmark, and this is not root")
    podman = _require_tool("podman", "podman")
    busybox = _busybox_layout(ctx)
    # podman names an oci: image after its path, and a path through ~/.cache is no valid
    # name: it pulls the python layout through a link of plain names.
    python = os.path.join(_image_store(ctx), "python-layout")
    if not os.path.islink(python):
        os.symlink(_python_layout(ctx), python)

    def make() -> dict[str, Any]:
        root = tempfile.mkdtemp(prefix="nsmagic-bench-podman-")
        runroot = f"/tmp/nsmagic-bench-podrun-{os.getpid()}"  # podman wants it short
        # Registered first, so removed last: after `system reset`, which makes them again.
        ctx.on_close(lambda: shutil.rmtree(root, ignore_errors=True))
        ctx.on_close(lambda: shutil.rmtree(runroot, ignore_errors=True))
        files = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 4096)
        processes = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
        tried = []
        for driver in ("overlay", "vfs"):
            base = [podman, "--root", os.path.join(root, driver), "--runroot", runroot,
                    "--storage-driver", driver, "--cgroup-manager", "cgroupfs",
                    "--events-backend", "file"]

            def reset(base: list[str] = base) -> None:
                subprocess.run([*base, "system", "reset", "--force"], capture_output=True,
                               check=False, timeout=120)

            ctx.on_close(reset)
            ids = {}
            for name, layout, tag in (("busybox", busybox, "1"),
                                      ("python", python, PYTHON_TAG)):
                pulled = subprocess.run([*base, "pull", "-q", f"oci:{layout}:{tag}"],
                                        capture_output=True, text=True, check=False,
                                        timeout=300)
                if pulled.returncode != 0:
                    tried.append(f"{driver}: {pulled.stderr.strip()[-200:]}")
                    break
                ids[name] = pulled.stdout.split()[-1]
            if len(ids) == 2:
                break
        else:
            raise Missing(f"podman could not pull the test images: {'; '.join(tried)}")
        run = [*base, "run", "--rm", "--network", "none", "--ulimit", f"nofile={files}:{files}",
               "--ulimit", f"nproc={processes}:{processes}"]
        info = subprocess.run([*base, "info", "--format", "{{.Host.OCIRuntime.Name}}"],
                              capture_output=True, text=True, check=False, timeout=60)
        ctx.notes.append(f"podman: OCI runtime {info.stdout.strip() or 'unknown'}, storage "
                         f"driver {driver}, cgroup manager cgroupfs, --network none")
        return {"run": run, "ids": ids}

    return ctx.get("podman", make)


def _podman_sampler(ctx: Context, image: str, argv: list[str]) -> Sampler:
    podman = _podman(ctx)
    command = [*podman["run"], podman["ids"][image], *argv]
    _check_command(command)
    return _command_sampler(command)


@benchmark("podman_busybox", "podman run --rm of the same busybox image (/bin/true)", "images",
           every=PODMAN_EVERY, option=IMAGES_OPTION)
def bench_podman_busybox(ctx: Context) -> Sampler:
    return _podman_sampler(ctx, "busybox", IMAGE_TRUE)


@benchmark("api_image_python", "nsmagic.run(argv=python3 -S -c pass, image= the Debian python "
                               "image); pool off", "images", every=PODMAN_EVERY,
           option=IMAGES_OPTION)
def bench_api_image_python(ctx: Context) -> Sampler:
    reference = _stored_image(ctx, _python_layout(ctx), PYTHON_TAG)
    return _api_sampler(ctx, "api_image_python", _fork_server(ctx, 0), kind="command",
                        argv=IMAGE_PYTHON, image=reference)


@benchmark("podman_python", "podman run --rm of the same python image (python3 -S -c pass)",
           "images", every=PODMAN_EVERY, option=IMAGES_OPTION)
def bench_podman_python(ctx: Context) -> Sampler:
    return _podman_sampler(ctx, "python", IMAGE_PYTHON)


def _registry(ctx: Context) -> str:
    """Debian's docker-registry on 127.0.0.1 (as the image tests start it), holding the python
    image (copied in by skopeo); the image's reference there."""
    _require_tool("docker-registry", "docker-registry")
    skopeo = _require_tool("skopeo", "skopeo")
    layout = _python_layout(ctx)

    def make() -> str:
        try:
            from tests.images.registry_server import Registry
        except ImportError as error:
            raise Missing(f"tests/images/registry_server.py cannot be imported: {error}") \
                from None
        try:
            registry = Registry()
        except RuntimeError as error:
            raise Missing(str(error)) from None
        ctx.on_close(registry.stop)
        reference = f"{registry.host}/bench/python:{PYTHON_TAG}"
        _check_command([skopeo, "--insecure-policy", "copy", "--dest-tls-verify=false",
                        f"oci:{layout}:{PYTHON_TAG}", f"docker://{reference}"])
        return reference

    return ctx.get("registry", make)


def _scratch(ctx: Context) -> str:
    """A folder of this run for what pulls write (removed after each sample and at the end)."""

    def make() -> str:
        from nsmagic.images.files import remove_any

        directory = tempfile.mkdtemp(prefix="nsmagic-bench-pull-")
        ctx.on_close(lambda: remove_any(directory))
        return directory

    return ctx.get("pull-scratch", make)


@benchmark("pull_nsmagic", "nsmagic pull of the python image from a local registry into an "
                           "empty store, layers unpacked", "images", every=PULL_EVERY,
           option=IMAGES_OPTION)
def bench_pull_nsmagic(ctx: Context) -> Sampler:
    from nsmagic import images
    from nsmagic.images.files import remove_any

    reference, scratch = _registry(ctx), _scratch(ctx)
    counter = itertools.count()

    def pull() -> tuple[float, Any]:
        store = os.path.join(scratch, f"store-{next(counter)}")
        start = time.perf_counter()
        try:
            image = images.pull(reference, store=store)
        except images.ImageError as error:
            raise SampleFailed(f"nsmagic pull {reference}: {error}") from None
        return time.perf_counter() - start, image

    _, image = pull()  # the check run: and what the image weighs, for the throughput
    record, store = image.record, image.store
    blobs = sum(store.blob_size(d) for d in (record.manifest, record.config))
    blobs += sum(layer.size for layer in record.layers)
    unpacked = sum(store.layer_size(layer.diff_id) for layer in record.layers)
    ctx.sizes["pull_nsmagic"] = {"blob_bytes": blobs, "unpacked_bytes": unpacked}
    ctx.sizes["pull_tools"] = {"blob_bytes": blobs}
    remove_any(store.root)

    def sample() -> float:
        elapsed, pulled = pull()
        remove_any(pulled.store.root)  # untimed: the next pull starts from an empty store
        return elapsed

    return sample


@benchmark("pull_tools", "skopeo copy (the registry to an OCI layout) + umoci unpack of the "
                         "same image", "images", every=PULL_EVERY, option=IMAGES_OPTION,
           also=(("pull_skopeo", "  of which skopeo copy"),
                 ("pull_umoci", "  of which umoci unpack")))
def bench_pull_tools(ctx: Context) -> Sampler:
    skopeo = _require_tool("skopeo", "skopeo")
    umoci = _require_tool("umoci", "umoci")
    if os.geteuid() != 0:
        raise Missing("umoci unpack runs as root in this benchmark, and this is not root")
    reference, scratch = _registry(ctx), _scratch(ctx)
    counter = itertools.count()

    def sample() -> dict[str, float]:
        number = next(counter)
        layout = os.path.join(scratch, f"layout-{number}")
        bundle = os.path.join(scratch, f"bundle-{number}")
        copy = [skopeo, "--insecure-policy", "copy", "--src-tls-verify=false",
                f"docker://{reference}", f"oci:{layout}:{PYTHON_TAG}"]
        unpack = [umoci, "unpack", "--image", f"{layout}:{PYTHON_TAG}", bundle]
        try:
            copied = _command_sampler(copy)()
            unpacked = _command_sampler(unpack)()
        finally:
            shutil.rmtree(layout, ignore_errors=True)  # untimed
            shutil.rmtree(bundle, ignore_errors=True)
        return {"pull_tools": copied + unpacked, "pull_skopeo": copied, "pull_umoci": unpacked}

    sample()  # the check run
    return sample


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


class Ratio(NamedTuple):
    """numerator's median / denominator's median; met when <= target (>= with at_least)."""

    name: str
    numerator: str
    denominator: str
    target: float | None = None
    at_least: bool = False


# What the numbers are compared with. The targets are issue 19's (start-up against unshare(1)
# and the runtimes, measured in the same run) and the magic's own.
RATIOS: list[Ratio] = [
    Ratio("ours+limits / unshare", "api_limits", "unshare", 1.5),
    Ratio("ours+limits / runc", "api_limits", "runc", 0.15),
    Ratio("ours+limits, warm pool / unshare", "api_limits_pool", "unshare", 1.2),
    Ratio("ours+limits, warm pool / runc", "api_limits_pool", "runc", 0.15),
    Ratio("sustained loop, median start / unshare", "sustained", "unshare", 1.5),
    Ratio("sustained loop, p90 start / unshare", "sustained_p90", "unshare", 2.5),
    # Times per start, so that sequential / concurrent is the concurrent rate over the
    # sequential rate (starts per second).
    Ratio(f"{CONCURRENT_THREADS} threads at once: start rate / sequential rate",
          "concurrent_seq", "concurrent", 2.0, at_least=True),
    Ratio("ours, userns / unshare", "api_userns", "unshare", 1.5),
    Ratio("ours, hardened root / host root (both pool off)", "api", "api_host_root", 1.2),
    Ratio("ours, --image busybox / default root (both pool off)", "api_image", "api_true",
          1.2),
    Ratio("%%container overhead / API run", "cell_overhead", "api_for_kernel", 2.0),
    Ratio("ours (no limits) / unshare", "api", "unshare"),
    Ratio("ours (no limits) / bwrap", "api", "bwrap"),
    Ratio("ours, userns / ours", "api_userns", "api"),
    Ratio("ours / ours, seccomp off (the filter's cost)", "api", "api_no_seccomp"),
    Ratio("spawn launcher / fork server", "api_spawn", "api"),
    Ratio("no pool / warm pool", "api", "api_pool"),
    Ratio("--image busybox / podman run --rm", "api_image", "podman_busybox"),
    Ratio("--image python / podman run --rm", "api_image_python", "podman_python"),
    # A time ratio: the throughput ratio (MB/s) is its inverse.
    Ratio("nsmagic pull+unpack / skopeo copy + umoci unpack", "pull_nsmagic", "pull_tools"),
]


class Difference(NamedTuple):
    """minuend - subtrahend, paired per round, shown under the row after."""

    key: str
    label: str  # in the JSON
    row_label: str  # in the tables
    minuend: str
    subtrahend: str
    after: str


DIFFERENCES: list[Difference] = [
    Difference("cell_overhead", "%%container cell minus plain cell (paired per round)",
               "  = %%container overhead over a plain cell", "cell_container", "cell_plain",
               "cell_container"),
    Difference("hardened_cost", "default (hardened) root minus host root (paired per round)",
               "  = what the hardened root costs over the host's", "api", "api_host_root",
               "api_host_root"),
    Difference("seccomp_cost", "default minus seccomp=False (paired per round)",
               "  = what the seccomp filter costs", "api", "api_no_seccomp", "api_no_seccomp"),
    Difference("image_cost", "busybox image minus default root, /bin/true (paired per round)",
               "  = what the image root costs over the default", "api_image", "api_true",
               "api_image"),
]


# Absolute targets: (name, key, target). A timed row's median in ms, or a figure's value in
# its unit, must be <= target.
TARGETS: list[tuple[str, str, float]] = [
    (f"cold start with limits, median, below crun's published {CRUN_PUBLISHED_MS:g} ms",
     "api_limits", CRUN_PUBLISHED_MS),
    (f"warm start with limits, median, below crun's published {CRUN_PUBLISHED_MS:g} ms",
     "api_limits_pool", CRUN_PUBLISHED_MS),
    ("exec into a running named container, median", "exec_named", 1.0),
    ("PSS per idle named container", "idle_pss", 3.0),
    ("stats sampler thread, CPU", "sampler_cpu", 0.5),
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


Series = dict[int, float]  # timed round number -> sample


def _ratio(numerators: Series, denominators: Series) -> dict[str, Any]:
    # Medians of each row's own samples; the spread from the rounds both were sampled in.
    pairs = [numerators[r] / denominators[r] for r in numerators
             if r in denominators and denominators[r] > 0]
    value = statistics.median(numerators.values()) / statistics.median(denominators.values())
    spread = summarize(pairs) if pairs else {"p10": value, "p90": value}
    return {"value": value, "per_round_p10": spread["p10"], "per_round_p90": spread["p90"]}


def derive(report: dict[str, Any]) -> None:
    """Add the paired differences, the ratios and the absolute targets (met or not)."""
    results = report["benchmarks"]

    def series(key: str) -> Series | None:
        entry = results.get(key) or report.get("derived", {}).get(key)
        if not entry or entry.get("status", "ok") != "ok" or not entry.get("samples"):
            return None
        return dict(zip(entry["rounds"], entry["samples"], strict=True))

    derived: dict[str, Any] = {}
    report["derived"] = derived
    for difference in DIFFERENCES:
        high, low = series(difference.minuend), series(difference.subtrahend)
        rounds = [r for r in (high or {}) if r in (low or {})]
        if rounds:
            values = [high[r] - low[r] for r in rounds]
            derived[difference.key] = {"label": difference.label, "samples": values,
                                       "rounds": rounds, **summarize(values)}
    # The kernel uses the process-wide launcher, so its pool follows NSMAGIC_POOL.
    pool = _pool_module()
    kernel_pool = pool.pool_size_from_environment() if pool else 0
    api_key = "api_pool" if kernel_pool > 0 and series("api_pool") else "api"
    derived["api_for_kernel"] = {"same_as": api_key}

    ratios = []
    for ratio in RATIOS:
        denominator = api_key if ratio.denominator == "api_for_kernel" else ratio.denominator
        entry: dict[str, Any] = {"name": ratio.name, "numerator": ratio.numerator,
                                 "denominator": denominator, "target": ratio.target,
                                 "direction": ">=" if ratio.at_least else "<="}
        top, bottom = series(ratio.numerator), series(denominator)
        if not top or not bottom:
            missing = [k for k, v in ((ratio.numerator, top), (denominator, bottom)) if not v]
            entry.update(value=None, met=None, why=f"no figure for {', '.join(missing)}")
        else:
            entry.update(_ratio(top, bottom))
            if ratio.target is None:
                entry["met"] = None
            elif ratio.at_least:
                entry["met"] = entry["value"] >= ratio.target
            else:
                entry["met"] = entry["value"] <= ratio.target
        ratios.append(entry)
    report["ratios"] = ratios
    report["targets"] = check_targets(report)


# -- the run ---------------------------------------------------------------------------------
def _pid_1_kind() -> str:
    from nsmagic.runtime.inside.init import NATIVE_INIT

    if NATIVE_INIT is None:
        return "the Python pid 1 (nsmagic-init was not built, or NSMAGIC_INIT=python)"
    return "nsmagic-init, the native program (nsmagic/native/nsmagic-init.c, built by setup.py)"


def _os_release() -> str:
    try:
        with open("/etc/os-release") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "unknown"


def _checkout() -> str:
    """The commit of the checkout nsmagic runs from, and whether its files differ from it."""
    import nsmagic

    root = os.path.dirname(os.path.dirname(os.path.abspath(nsmagic.__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True)
        changed = subprocess.run(["git", "-C", root, "status", "--porcelain",
                                  "--untracked-files=no"], capture_output=True, text=True,
                                 timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return f"nsmagic {getattr(nsmagic, '__version__', '?')}, not a git checkout"
    dirty = " with local changes" if changed.stdout.strip() else ""
    return f"nsmagic {nsmagic.__version__}, commit {head.stdout.strip()}{dirty}"


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """OS, kernel, CPU (and whether it is a VM's), cores, memory, Python, date, the checkout,
    the load and the cgroup set-up of this host."""
    cpu, virtual = "unknown", False
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and cpu == "unknown":
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    virtual = "hypervisor" in line.split(":", 1)[1].split()
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
    return {"os": _os_release(), "kernel": f"{uname.system} {uname.release}",
            "machine": uname.machine, "virtual_machine": virtual,
            "cpu_model": cpu, "cores": os.cpu_count(), "memory_gib": memory_gib,
            "python": platform.python_version(), "is_root": os.geteuid() == 0,
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "checkout": _checkout(), "load_1min_end": _load(),
            "cgroup": cgroup, "nsmagic_pool_env": os.environ.get("NSMAGIC_POOL")}


OPTIONS = (IMAGES_OPTION,)  # the options that add rows (--images)


def select(only: list[str] | None, options: tuple[str, ...] = ()) -> list[Benchmark]:
    """The registered benchmarks (those of an option only if it is in options), or those
    with a key (or a companion's key) in only; unknown keys: ValueError."""
    if not only:
        return [b for b in BENCHMARKS if b.option is None or b.option in options]
    known = {key: b.key for b in BENCHMARKS for key in b.keys}
    unknown = [k for k in only if k not in known]
    if unknown:
        raise ValueError(f"unknown benchmark {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    wanted = {known[k] for k in only}
    return [b for b in BENCHMARKS if b.key in wanted]


def run(runs: int = DEFAULT_RUNS, quick: bool = False, only: list[str] | None = None,
        progress: Callable[[str], None] | None = None, images: bool = False,
        v2: bool = False) -> dict[str, Any]:
    """Run the benchmarks and return the report (see docs/performance.md for its keys)."""
    say = progress or (lambda text: None)
    runs = QUICK_RUNS if quick and runs == DEFAULT_RUNS else runs
    warmup = 1 if quick else WARMUP_ROUNDS
    started = time.perf_counter()
    load_start = _load()
    ctx = Context(quick=quick)
    results: dict[str, dict[str, Any]] = {}
    samplers: dict[str, Sampler] = {}
    chosen = select(only, (IMAGES_OPTION,) if images else ())
    timed_rows = {b.key: b for b in chosen if b.kind == "time"}
    try:
        for bench in timed_rows.values():
            labels = {bench.key: bench.label, **dict(bench.also)}
            for key, label in labels.items():
                results[key] = {"label": label, "group": bench.group, "status": "ok",
                                "reason": "", "samples": [], "rounds": [],
                                "every": bench.every}
                if key != bench.key:
                    results[key]["of"] = bench.key
            say(f"preparing {bench.key}")
            prepared = _prepared(bench, ctx, results[bench.key])
            for companion, _ in bench.also:  # a companion shares its row's fate
                results[companion].update(status=results[bench.key]["status"],
                                       reason=results[bench.key]["reason"])
            if prepared is not None:
                samplers[bench.key] = prepared
        order = list(samplers)
        rng = random.Random(SEED)
        for round_number in range(warmup + runs):
            rng.shuffle(order)
            timed = round_number >= warmup
            index = round_number - warmup
            say(f"round {index + 1}/{runs}" if timed
                else f"warm-up {round_number + 1}/{warmup}")
            for key in order:
                bench = timed_rows[key]
                if results[key]["status"] != "ok":
                    continue
                if bench.every > 1 and (not timed or index % bench.every):
                    continue  # a heavy row: every Nth round (its check run warmed it up)
                try:
                    measured = samplers[key]()
                except SampleFailed as why:
                    for row in bench.keys:
                        results[row].update(status="failed", reason=str(why))
                    continue
                values = measured if isinstance(measured, dict) else {key: measured}
                if timed:
                    for row, seconds in values.items():
                        results[row]["samples"].append(seconds)
                        results[row]["rounds"].append(index)
                elif key in ctx.phases:
                    ctx.phases[key].clear()
                time.sleep(HEAVY_GAP_S if bench.every > 1 else GAP_S)
    finally:
        ctx.close()
    figures = measure_figures([b for b in chosen if b.kind == "figure"], quick, ctx.notes, say)
    for key, entry in results.items():
        if entry["status"] == "ok" and entry["samples"]:
            entry.update(summarize(entry["samples"]))
        if ctx.phases.get(key):
            entry["phases"] = _phase_medians(ctx.phases[key])
        if key in ctx.sizes:
            entry.update(ctx.sizes[key])
    guest = run_v2_guest(quick, runs, say) if v2 else None
    report = {
        "schema": SCHEMA,
        "machine": {**machine_info(), "load_1min_start": load_start},
        "method": {"timer": TIMER, "anchors": ANCHOR_METHOD,
                   "api": "nsmagic.run('pass', ...) in the benchmark process, wall time "
                          "around the call (launch to result, cleanup included)",
                   "kernel": "jupyter_client: execute request sent -> status idle received",
                   "runs": runs, "warmup_rounds": warmup, "gap_s": GAP_S,
                   "heavy_gap_s": HEAVY_GAP_S,
                   "order": f"every round runs each benchmark once, in an order shuffled "
                            f"per round (random.Random({SEED}))",
                   "spread": "p10-p90 (statistics.quantiles, inclusive)", "quick": quick,
                   "options": {"images": images, "v2": v2},
                   "figures": FIGURE_METHOD, "pid_1": _pid_1_kind()},
        "benchmarks": results,
        "figures": figures,
        "notes": ctx.notes,
    }
    derive(report)
    if guest is not None:
        report["v2_guest"] = guest
    report["duration_s"] = time.perf_counter() - started
    return report


# -- the same rows on cgroup v2, in the test guest (--v2) ------------------------------------
# A real v2 kernel under qemu (tests/vm/guest.py) with the host's userland over 9p: the
# benchmark runs there on a few rows, and its ratios are against unshare(1) in the same guest.
# Under TCG everything is emulated (30-40x slower here): 50 rounds of three rows, about a
# minute with the boot.
V2_KEYS = ("unshare", "api_limits", "api_limits_pool")
V2_RUNS, QUICK_V2_RUNS = 50, 3
V2_TIMEOUT_S = 900.0
V2_JSON = "/tmp/nsmagic-bench-v2.json"  # the guest's own tmpfs


def run_v2_guest(quick: bool, runs: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Boot the cgroup v2 guest once, run `nsmagic bench --only V2_KEYS` in it, and return
    its rows and ratios (status missing or failed, with why, when it cannot)."""
    guest_runs = QUICK_V2_RUNS if quick else min(runs, V2_RUNS)
    entry: dict[str, Any] = {"label": "cgroup v2, in a guest", "status": "ok", "reason": "",
                             "keys": list(V2_KEYS), "runs": guest_runs}
    say("booting the cgroup v2 guest")
    try:
        from tests.vm.guest import repo_root, run_in_v2_guest, v2_guest_available
    except ImportError as error:
        return {**entry, "status": "missing",
                "reason": f"tests/vm/guest.py cannot be imported here: {error}"}
    available, why = v2_guest_available()
    if not available:
        return {**entry, "status": "missing", "reason": why}
    command = [sys.executable, "-m", "nsmagic", "bench", "--only", ",".join(V2_KEYS),
               "--runs", str(guest_runs), "--json", V2_JSON]
    if quick:
        command.append("--quick")
    # Only the JSON comes back on stdout; the table goes nowhere.
    script = f"{shlex.join(command)} > /dev/null && cat {V2_JSON}"
    began = time.perf_counter()
    result = run_in_v2_guest(script, cwd=str(repo_root()), timeout=V2_TIMEOUT_S)
    entry.update(wall_s=time.perf_counter() - began, vm=result.summary(), accel=result.accel)
    entry["label"] = ("cgroup v2, in an emulated guest (TCG)" if result.emulated
                      else "cgroup v2, in a guest (KVM)")
    if not result.ok:
        tail = (result.stderr.strip() or result.failure or "").splitlines()[-3:]
        return {**entry, "status": "failed",
                "reason": f"{result.summary()}: {' / '.join(tail)[:400]}"}
    try:
        inner = json.loads(result.stdout)
    except ValueError:
        return {**entry, "status": "failed",
                "reason": f"the guest's benchmark printed no JSON: {result.stdout[-200:]!r}"}
    entry.update(machine=inner["machine"], benchmarks=inner["benchmarks"],
                 ratios=[r for r in inner["ratios"] if r["value"] is not None],
                 notes=inner["notes"], guest_duration_s=inner["duration_s"])
    return entry


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
    return value, spread, f"target {entry.get('direction', '<=')} {entry['target']:g}: {verdict}"


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
    """(label, median, spread, n) of every timed row, with the paired differences and the
    throughputs under the rows they belong to."""
    rows = []
    after: dict[str, list[Difference]] = {}
    for difference in DIFFERENCES:
        after.setdefault(difference.after, []).append(difference)
    for key, entry in report["benchmarks"].items():
        if entry["status"] == "ok":
            rows.append((entry["label"], _ms(entry["median"]),
                         f"{_ms(entry['p10'])}-{_ms(entry['p90'])}", str(len(entry["samples"]))))
            if entry.get("blob_bytes"):
                unpacked = (f"; {entry['unpacked_bytes'] / MB:.1f} MB unpacked"
                            if entry.get("unpacked_bytes") else "")
                rows.append((f"  = {entry['blob_bytes'] / entry['median'] / MB:.1f} MB/s "
                             f"({entry['blob_bytes'] / MB:.1f} MB of compressed blobs"
                             f"{unpacked})", "", "", ""))
        else:
            rows.append((entry["label"], f"{entry['status']}: {entry['reason']}", "", ""))
        for difference in after.get(key, []):
            over = report["derived"].get(difference.key)
            if over:
                rows.append((difference.row_label, _ms(over["median"]),
                             f"{_ms(over['p10'])}-{_ms(over['p90'])}", str(len(over["samples"]))))
    return rows


def _header(report: dict[str, Any]) -> list[str]:
    m, method = report["machine"], report["method"]
    cg = m["cgroup"]
    vm = ", a virtual machine" if m.get("virtual_machine") else ""
    return [f"date: {m['date']}",
            f"machine: {m.get('os', 'unknown OS')}, {m['kernel']} ({m.get('machine', '?')}{vm})"
            f", {m['cpu_model']} ({m['cores']} cores), {m['memory_gib']} GiB, Python "
            f"{m['python']}, {'root' if m['is_root'] else 'not root'}, cgroup "
            f"{cg.get('version')} (driver {cg.get('driver')})",
            f"load: {_load_text(m)}; {m.get('checkout', 'checkout unknown')}",
            f"method: {method['runs']} rounds after {method['warmup_rounds']} warm-up, each "
            f"benchmark once per round in shuffled order (heavy rows every Nth round); wall "
            f"time ({method['timer']}); median and p10-p90 in ms; anchors via subprocess.run"]


def _load_text(machine: dict[str, Any]) -> str:
    return (f"1-minute load average {machine.get('load_1min_start')} at the start, "
            f"{machine.get('load_1min_end')} at the end ({machine['cores']} cores)")


def _guest_lines(guest: dict[str, Any]) -> list[str]:
    """The v2 guest's section of the plain-text table."""
    lines = ["", f"{guest['label']}: {', '.join(guest['keys'])}, {guest['runs']} rounds"]
    if guest["status"] != "ok":
        return [*lines, f"  {guest['status']}: {guest['reason']}"]
    inner = guest["machine"]
    lines.append(f"  guest: {inner['kernel']}, cgroup {inner['cgroup'].get('version')} "
                 f"(driver {inner['cgroup'].get('driver')}); {guest['vm']}; "
                 f"{guest['wall_s']:.0f} s in all")
    for label, median, spread, n in _rows({"benchmarks": guest["benchmarks"], "derived": {}}):
        lines.append(f"  {label:<64}  {median:>8}  {spread:>13}  {n:>3}")
    for entry in guest["ratios"]:
        value, spread, verdict = _ratio_text(entry)
        lines.append(f"  {entry['name']:<34}  {value:>5}  {spread:>11}  {verdict}")
    return lines


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
    if report.get("v2_guest"):
        lines += _guest_lines(report["v2_guest"])
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
        f"Measured {m['date']} on {m.get('os', 'an unknown OS')}, {m['kernel']} "
        f"({m.get('machine', '?')}{', a virtual machine' if m.get('virtual_machine') else ''})"
        f", {m['cpu_model']} ({m['cores']} cores, "
        f"{m['memory_gib']} GiB), Python {m['python']}, "
        f"{'as root' if m['is_root'] else 'not as root'}, cgroup {m['cgroup'].get('version')} "
        f"(nsmagic driver {m['cgroup'].get('driver')}); {m.get('checkout', 'checkout unknown')}"
        f"; {_load_text(m)}. The machine is shared and noisy: read medians and spreads, not "
        "single runs.",
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
            "(both figures of a round were measured seconds apart; a heavy row's only in the "
            "rounds it ran in).", "",
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
    guest = report.get("v2_guest")
    if guest:
        out += ["", f"## {guest['label']}", "",
                f"`--v2`: the rows {', '.join(f'`{k}`' for k in guest['keys'])} run again, "
                f"{guest['runs']} rounds, inside the cgroup v2 test guest (tests/vm/guest.py: "
                "a v2 kernel under qemu with the host's userland over 9p); the ratios are "
                "against unshare(1) in the same guest, with the same targets."]
        if guest["status"] != "ok":
            out += ["", f"{guest['status']}: {_cell(guest['reason'])}"]
        else:
            inner = guest["machine"]
            out += ["", f"Guest: {inner['kernel']}, cgroup {inner['cgroup'].get('version')} "
                        f"(driver {inner['cgroup'].get('driver')}); {guest['vm']}; "
                        f"{guest['wall_s']:.0f} s in all, boot included.", "",
                    "| benchmark | median (ms) | p10-p90 (ms) | n |", "|---|---:|---:|---:|"]
            for label, median, spread, n in _rows({"benchmarks": guest["benchmarks"],
                                                   "derived": {}}):
                out.append(f"| {_cell(label)} | {_cell(median)} | {spread} | {n} |")
            out += ["", "| ratio | value | per-round p10-p90 | target |", "|---|---:|---:|---|"]
            for entry in guest["ratios"]:
                value, spread, verdict = _ratio_text(entry)
                out.append(f"| {_cell(entry['name'])} | {value} | {spread} | "
                           f"{_cell(verdict)} |")
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
            "- The sustained loop fires its starts back to back, so the warm pool empties and "
            "most starts take the cold path while the pool refills: its median and p90 are "
            "those of each loop's starts (then the median over the loops), against unshare(1)'s "
            "median of the same run. The concurrent row is the wall time of all the threads' "
            "starts divided by their number, and its companion the same number of starts one "
            "after the other on the same fork server: their ratio is the rate of the one over "
            "the rate of the other.",
            "- The hardened root, seccomp and image rows are pool off, as is the row each is "
            "compared with: the pool serves only the default profile, and a pair must take the "
            "same path apart from what is compared. The differences under them are paired per "
            "round.",
            f"- crun refuses hybrid cgroup hosts (\"cgroups in hybrid mode not supported\"); "
            f"where it cannot run, the absolute targets use its README's figure instead: 100 "
            f"`/bin/true` containers in 1.69 s, {CRUN_PUBLISHED_MS:g} ms each, on its author's "
            "machine (runc: 3.34 s there).",
            "- Ratios and targets that are missed are printed as `NOT met`; nothing is tuned "
            "to pass.",
            "", "## Method", "",
            f"- {method['runs']} rounds after {method['warmup_rounds']} warm-up rounds. "
            f"{method['order'][:1].upper()}{method['order'][1:]}, so the drift of the "
            f"machine lands on every benchmark alike; {method['gap_s'] * 1000:g} ms pause "
            f"after every sample ({method.get('heavy_gap_s', HEAVY_GAP_S) * 1000:g} ms after "
            "a heavy row's; outside the timing) so that background work left by one sample "
            "(runc's cgroup removal, the fork server refilling its warm pool) does not land on "
            "the next.",
            f"- Heavy rows: the sustained loop ({SUSTAINED_STARTS} starts) in one round of "
            f"{SUSTAINED_EVERY} and the concurrent starts in one of {CONCURRENT_EVERY}; with "
            f"`--images`, the podman and python-image rows in one of {PODMAN_EVERY} and the "
            f"pulls in one of {PULL_EVERY}. A heavy row is never sampled in the warm-up (its "
            "check run warms it) and its per-round ratios pair it with the rounds it ran in. "
            "Each heavy row has a fork server of its own.",
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
            f"- Sustained: one sample is a loop of {SUSTAINED_STARTS} `nsmagic.run('pass', "
            "cpus=0.5, memory='256M', pids=64)` back to back (default pool), each start timed "
            "with `time.perf_counter` around the call; the row is the loop's median start, its "
            "companion the loop's p90.",
            f"- Concurrent: {CONCURRENT_THREADS} threads each make {CONCURRENT_STARTS} of the "
            "same starts at once on one fork server (default pool), the wall time from the "
            "first thread's start to the last one's end divided by the starts; the sequential "
            "companion makes as many one after the other; which half goes first alternates.",
            "- Hardened root: `host_root=True` (the host's root as it is: the old default) and "
            "`seccomp=False` against the default start, all pool off.",
            "- Images: a busybox image (one layer of Debian's busybox-static and its applet "
            "links, built by tests/images/builders.py; nothing downloaded) pulled from its OCI "
            "layout into a store of the run (`NSMAGIC_IMAGE_STORE`, a temporary folder); "
            "`nsmagic.run(kind='command', argv=['/bin/true'], image=REF)` against the same "
            "command in the default root, both pool off; REF is looked up in the store at "
            "every start, as a user's `--image` is.",
            "- `--images`: the Debian python3.11 image of the tests (two layers from `apt-get "
            "download`, cached in `~/.cache/nsmagic`) served by Debian's docker-registry on "
            "127.0.0.1 (copied in by skopeo before timing). A pull sample is "
            "`nsmagic.images.pull(REF, store=an empty folder)` (layers fetched, verified and "
            "unpacked), against `skopeo copy docker://REF oci:DIR:TAG` then `umoci unpack "
            "--image DIR:TAG BUNDLE` (both timed through subprocess.run); the throughput is "
            "the image's compressed blobs (manifest, config, layers) over the median time. "
            "podman runs as root with a store of the run (overlay, else vfs), "
            "`--cgroup-manager cgroupfs`, `--network none` and ulimits at most the host's, "
            "`podman run --rm IMAGE-ID` of the same busybox and python images (pulled from "
            "their layouts before timing); the nsmagic rows run the same commands.",
            f"- `--v2`: the rows {', '.join(V2_KEYS)} run again inside the cgroup v2 test "
            "guest (tests/vm/guest.py's run_in_v2_guest: a Debian v2 kernel under qemu, TCG "
            f"where KVM fails, the host's root read-only over 9p), {V2_RUNS} rounds "
            f"({QUICK_V2_RUNS} with `--quick`, at most `--runs`), as `python -m nsmagic bench "
            "--only ... --json` there; under TCG every figure is emulated (here 30-40 times "
            "the host's), so only the ratios within the guest mean something.",
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
            "| the static busybox in the runc bundle and the busybox image | busybox-static |",
            "| `crun` (refuses hybrid cgroup hosts) | crun |",
            "| `podman`, `skopeo`, `umoci` (`--images`) | podman, skopeo, umoci |",
            "| the local registry (`--images`) | docker-registry |",
            "| the cgroup v2 guest (`--v2`) | qemu-system-x86, linux-image-amd64 (fetched "
            "by the guest's image builder) |",
            "", "`apt-get install bubblewrap runc busybox-static` gives the default anchors. "
            "The runc "
            "bundle is built in a temporary directory for each run: a rootfs holding the "
            "static busybox and a `/bin/true` symlink, `runc spec`, then `process.args = "
            "[\"/bin/true\"]` and `terminal: false`; each run has its own container id and "
            "`runc --root <tmp> delete -f` follows it (crun, where it runs, gets the same "
            "bundle). runc runs as root only.",
            "", "## JSON", "",
            "`--json FILE` writes everything: `schema`, `machine` (os, kernel, machine, "
            "virtual_machine, cpu_model, cores, memory_gib, python, is_root, date, checkout, "
            "load_1min_start, load_1min_end, cgroup, nsmagic_pool_env), `method`, "
            "`benchmarks` (per key: label, group, status `ok` / `missing` / `not measured` / "
            "`failed`, reason, samples in seconds, rounds (the timed round of each sample), "
            "every, `of` for a companion row, and for `ok` median, p10, p90, p25, p75, "
            "min, max; API rows also phases; pull rows blob_bytes and unpacked_bytes), "
            "`derived` (the paired differences: cell_overhead, hardened_cost, seccomp_cost, "
            "image_cost, with their samples and rounds), "
            "`ratios` (name, numerator, denominator, target, direction, value, per_round_p10, "
            "per_round_p90, met), `figures` (per key: label, group, unit, status, reason, value, "
            "detail, and details: the numbers behind it), `targets` (name, key, unit, target, "
            "value, met; why when not checked), `v2_guest` (with `--v2`: label, status, reason, "
            "keys, runs, vm, accel, the guest's machine, benchmarks, ratios and notes), `notes` "
            "and `duration_s`. Schema 2 added `figures` and `targets`; schema 3 rounds, every, "
            "companion rows, direction and v2_guest."]
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
         markdown_path: str | None = None, only: list[str] | None = None,
         images: bool = False, v2: bool = False) -> int:
    """What `nsmagic bench` does: run, print the table, write the files asked for."""

    def progress(text: str) -> None:
        if sys.stderr.isatty():
            print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)

    report = run(runs=runs, quick=quick, only=only, progress=progress, images=images, v2=v2)
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    print(format_table(report))
    write_outputs(report, json_path, markdown_path)
    return 0
