"""The same workload in a VM and in a container, both sampled through their cgroups over time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from nsmagic.errors import NsmagicError
from nsmagic.vm.background import start_vm
from nsmagic.vm.instance import cgroup_driver
from nsmagic.vm.loops import DEFAULT_WORKLOAD_MIB, DEFAULT_WORKLOAD_SECONDS, workload_script

SAMPLE_INTERVAL_S = 0.2

Sample = tuple[float, float, int]  # (s since launch, CPU s, memory bytes)


@dataclass
class WorkloadRun:
    """The same workload in the VM and in a container, sampled through their cgroups."""

    kind: str
    seconds: float
    mib: int
    vm_samples: list[Sample]
    container_samples: list[Sample]
    vm_ok: bool
    container_ok: bool
    vm_ready_s: float | None = None  # when the guest was ready (its workload starts there)

    @staticmethod
    def _peak(samples: list[Sample]) -> int | None:
        return max((s[2] for s in samples), default=None)

    @staticmethod
    def _cpu(samples: list[Sample]) -> float | None:
        return samples[-1][1] - samples[0][1] if len(samples) > 1 else None

    @property
    def vm_workload_cpu_s(self) -> float | None:
        """CPU time of the VM's cgroup from its ready marker on: the workload, not the boot."""
        if self.vm_ready_s is None:
            return None
        return self._cpu([s for s in self.vm_samples if s[0] >= self.vm_ready_s])

    @property
    def container_workload_cpu_s(self) -> float | None:
        """CPU time of the container's cgroup while it ran the workload."""
        return self._cpu(self.container_samples)

    @property
    def vm_peak_bytes(self) -> int | None:
        """Highest cgroup memory of the VM while it booted and ran the workload."""
        return self._peak(self.vm_samples)

    @property
    def container_peak_bytes(self) -> int | None:
        """Highest cgroup memory of the container while it ran the workload."""
        return self._peak(self.container_samples)


def sample_until(stats: Callable, done: Callable[[], bool], started: float) -> list[Sample]:
    """Call stats() (a CgroupStats) every SAMPLE_INTERVAL_S until done(); keep what it ran."""
    samples: list[Sample] = []
    while True:
        running = not done()
        try:
            s = stats()
        except (NsmagicError, OSError, KeyError):
            s = None
        # A sample taken once it ended may read a removed group (zeros): keep only those
        # taken while it ran, and never a counter going backwards.
        if not running:
            return samples
        if s is not None:
            cpu = (s.cpu_usage_ns or 0) / 1e9
            if not samples or cpu >= samples[-1][1]:
                samples.append((time.monotonic() - started, cpu, s.memory_current or 0))
        time.sleep(SAMPLE_INTERVAL_S)


def compare_workload(
    kind: str,
    seconds: float = DEFAULT_WORKLOAD_SECONDS,
    mib: int = DEFAULT_WORKLOAD_MIB,
    memory: str | int = "256M",
    accel: str = "auto",
) -> WorkloadRun:
    """Run the same workload in a VM and in a container, sampling both cgroups over time."""
    from nsmagic.runtime.container import Container

    handle = start_vm(kind, seconds, mib, memory, accel)
    vm_samples = sample_until(handle.stats, lambda: not handle.running, handle.started_at)
    try:
        handle.wait()
    except (NsmagicError, OSError):
        pass
    vm_ok = handle.done_marker_seen

    container = Container()
    started = time.monotonic()
    container.start(workload_script(kind, seconds, mib), kind="shell")
    waiter = threading.Thread(target=container.wait, kwargs={"timeout": seconds + 60}, daemon=True)
    waiter.start()
    driver = cgroup_driver()
    group: list = []

    def stats():  # noqa: ANN202 - a CgroupStats, once the container's cgroup is known
        if not group:
            if not container.result.cgroup:
                raise KeyError("not started yet")
            group.append(driver.open(container.result.cgroup))
        return group[0].stats()

    try:
        container_samples = sample_until(stats, lambda: not waiter.is_alive(), started)
    finally:
        waiter.join(timeout=seconds + 60)
        container.close()
    ready = handle.sampler.ready_at
    return WorkloadRun(
        kind,
        seconds,
        mib,
        vm_samples,
        container_samples,
        vm_ok,
        container.result.ok,
        vm_ready_s=ready - handle.started_at if ready is not None else None,
    )
