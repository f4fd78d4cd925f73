"""A micro VM running a workload in the background, in its own cgroup, for monitors to sample."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from nsmagic.cgroups.limits import parse_size
from nsmagic.errors import NsmagicError
from nsmagic.vm.instance import ReadySampler, cgroup_driver, new_vm_group, register_vm
from nsmagic.vm.loops import DEFAULT_WORKLOAD_MIB, DEFAULT_WORKLOAD_SECONDS, guest_workload_args

if TYPE_CHECKING:
    from nsmagic.cgroups.base import CgroupStats
    from nsmagic.vm.qemu import VMResult


class VMHandle:
    """A micro VM running a workload in the background, in its own cgroup (see start_vm)."""

    def __init__(
        self,
        kind: str,
        seconds: float,
        mib: int,
        memory: str | int,
        accel: str,
        machine: str = "microvm",
        settle: float = 0.0,
    ) -> None:
        self.kind, self.seconds, self.mib = kind, seconds, mib
        self.memory_bytes = parse_size(memory, "memory")
        self.group = new_vm_group(cgroup_driver())
        self.cgroup_name: str = self.group.name  # what a monitor samples (driver.open(name))
        self.cgroup_driver: str = self.group.driver
        self.record = register_vm()
        self.record_id = self.record.container_id
        self.result: VMResult | None = None
        self.error: BaseException | None = None
        self.started_at = time.monotonic()
        self.sampler = ReadySampler(self.group, self.memory_bytes, self.record_id, stop=False)
        args = guest_workload_args(kind, seconds, mib, settle)
        self._thread = threading.Thread(
            target=self._run,
            args=(args, machine, accel, 120.0 + seconds + settle),
            name="nsmagic-vm-workload",
            daemon=True,
        )
        self._thread.start()

    def _run(self, kernel_args: str, machine: str, accel: str, timeout: float) -> None:
        from nsmagic.runtime.registry import REGISTRY
        from nsmagic.vm.qemu import boot

        outcome = "not booted"
        try:
            self.result = boot(
                "micro",
                memory=self.memory_bytes,
                machine=machine,
                accel=accel,
                timeout=timeout,
                kernel_args=kernel_args,
                cgroup=self.group,
                on_ready=self.sampler,
            )
            outcome = "workload done" if self.done_marker_seen else "stopped"
        except BaseException as exc:  # noqa: BLE001 - handed to wait()
            self.error = exc
            outcome = f"failed: {exc}"
        finally:
            REGISTRY.exited(self.record_id, outcome, None)
            try:
                self.group.remove()
            except (NsmagicError, OSError) as exc:
                self.error = self.error or exc

    @property
    def done_marker_seen(self) -> bool:
        """The guest said its workload finished."""
        from nsmagic.vm.images import WORKLOAD_DONE_MARKER

        return bool(self.result and WORKLOAD_DONE_MARKER in self.result.console)

    @property
    def running(self) -> bool:
        """qemu is still running (or starting)."""
        return self._thread.is_alive()

    def stats(self) -> CgroupStats:
        """Sample the VM's cgroup now (Cgroup.stats(), the containers' code path)."""
        return self.group.stats()

    def stop(self) -> None:
        """Kill qemu (everything in the VM's cgroup); wait() then returns soon."""
        try:
            self.group.kill()
        except (NsmagicError, OSError):
            pass

    def wait(self, timeout: float | None = None) -> VMResult | None:
        """Wait for the guest to finish; Ctrl-C stops it. Returns the VMResult."""
        try:
            self._thread.join(timeout)
        except KeyboardInterrupt:
            self.stop()
            self._thread.join(10)
            raise
        if self.error is not None:
            raise self.error
        return self.result


def start_vm(
    kind: str = "cpu",
    seconds: float = DEFAULT_WORKLOAD_SECONDS,
    mib: int = DEFAULT_WORKLOAD_MIB,
    memory: str | int = "256M",
    accel: str = "auto",
    settle: float = 0.0,
) -> VMHandle:
    """Boot the micro guest in the background running a workload ('cpu', 'memory', 'idle').

    The VM sits in its own cgroup (handle.cgroup_name, same driver as containers) and in
    nsmagic.runtime.registry.REGISTRY as a record named "vm", so a monitor samples it next to
    the containers. It powers off after `seconds`; handle.stop() ends it sooner.
    """
    return VMHandle(kind, seconds, mib, memory, accel, settle=settle)
