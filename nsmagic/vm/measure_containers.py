"""Containers measured like the VM: start times, CPU, PSS of their own processes, cgroup memory."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from nsmagic.errors import NsmagicError
from nsmagic.vm.instance import cgroup_driver
from nsmagic.vm.memory import process_memory

if TYPE_CHECKING:
    from nsmagic.runtime.container import Container

# Container starts are a few milliseconds: more of them make the median steadier, at no cost.
CONTAINER_STARTS_PER_RUN = 5
# The fork server's helper that forks each container's first process names itself so (see
# docs/architecture.md, "Processes of one container"): part of the fork server, shared like it.
FORK_HELPER_NAME = "nsmagic-forker"


@dataclass
class ContainerRun:
    """Container figures from one round: starts of nsmagic.run('pass') and one idle container."""

    start_total_s: list[float]  # nsmagic.run("pass") end to end
    start_ready_s: list[float]  # to the "ready" event (pid 1 set up, payload about to run)
    start_cpu_s: list[float]  # the container cgroup's CPU time over a whole run("pass")
    # The idle Python container's own processes: pid 1 and its main process (the payload),
    # plus, without a fork server, the helper started for it alone.
    idle_pss_bytes: int | None = None
    idle_rss_bytes: int | None = None
    idle_init_pss_bytes: int | None = None  # pid 1 alone: the runtime's part of the container
    idle_cgroup_memory_bytes: int | None = None
    # The kernel's fork server and its fork helper: shared by all its containers, so charged
    # to none of them. None when containers start from a helper of their own (spawn).
    fork_server_pss_bytes: int | None = None
    cgroup_driver: str | None = None


def measure_containers(starts: int = CONTAINER_STARTS_PER_RUN) -> ContainerRun:
    """Start nsmagic.run('pass') `starts` times, then one idle Python container, and measure."""
    from nsmagic.runtime.container import Container, run

    totals, readies, cpus = [], [], []
    driver_name = None
    for _ in range(starts):
        result = run("pass")
        if not result.ok:
            raise NsmagicError(f"a container running 'pass' failed: {result.describe()}")
        totals.append(result.timings["total_s"])
        if "ready_s" in result.timings:
            readies.append(result.timings["ready_s"])
        if result.stats and result.stats.get("cpu_usage_ns") is not None:
            cpus.append(result.stats["cpu_usage_ns"] / 1e9)
        driver_name = result.cgroup_driver
    out = ContainerRun(totals, readies, cpus, cgroup_driver=driver_name)
    _measure_idle_container(Container(), out)
    return out


def _fork_server_pid() -> int | None:
    """The pid of this kernel's fork server, or None when containers start without one."""
    from nsmagic.runtime.launcher import default_launcher

    return getattr(default_launcher(), "pid", None)


def _wait_for_main_process(container: Container, timeout: float = 10.0) -> psutil.Process | None:
    """The container's pid 1 once it is ready and has forked its main process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = container.result.pid
        if pid and "ready_s" in container.result.timings:
            try:
                init = psutil.Process(pid)
                if init.children():
                    return init
            except psutil.Error:
                pass
        time.sleep(0.01)
    return None


def container_processes(
    init: psutil.Process,
) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """(what a container is charged, what all containers share), from its pid 1.

    A container is charged its own processes: pid 1 and its main process (with anything
    they started). pid 1's parent is the kernel's fork server, which with its fork helper
    serves every container and so is shared; with the spawn launcher it is instead a helper
    started for this container alone, and charged to it.
    """
    own = [init, *init.children(recursive=True)]
    try:
        parent = init.parent()
    except psutil.Error:
        parent = None
    if parent is None:
        return own, []
    if parent.pid != _fork_server_pid():
        return [*own, parent], []
    helpers = []
    for child in parent.children():
        try:
            if child.name() == FORK_HELPER_NAME:
                helpers.append((child.create_time(), child.pid, child))
        except psutil.Error:
            pass
    # The helper is the oldest: a container the helper has just forked (a warm one for the
    # pool) bears its name until it renames itself, and is no part of what is shared.
    return own, [parent, min(helpers)[2]] if helpers else [parent]


def _measure_idle_container(container: Container, out: ContainerRun) -> None:
    """An idle Python cell: PSS of its own processes, of the shared fork server, and its cgroup."""
    waiter = threading.Thread(target=container.wait, kwargs={"timeout": 30}, daemon=True)
    container.start("import time\ntime.sleep(30)\n")
    waiter.start()
    try:
        init = _wait_for_main_process(container)
        if init is None:
            return
        time.sleep(0.2)  # let the payload settle into its sleep
        own, shared = container_processes(init)
        if shared:
            out.fork_server_pss_bytes, _ = process_memory(shared)
        out.idle_init_pss_bytes, _ = process_memory([init])
        out.idle_pss_bytes, out.idle_rss_bytes = process_memory(own)
        if container.result.cgroup and container.result.cgroup_driver != "rlimit":
            try:
                stats = cgroup_driver().open(container.result.cgroup).stats()
                out.idle_cgroup_memory_bytes = stats.memory_current
            except (KeyError, NsmagicError, OSError):
                pass
    finally:
        container.send_signal(9)
        waiter.join(timeout=10)
        container.close()
