"""A VM as the containers' code paths see it: its own cgroup, a registry record, a ready sample."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from nsmagic.errors import NsmagicError
from nsmagic.vm.memory import MemorySplit, read_split

if TYPE_CHECKING:
    from nsmagic.cgroups.base import Cgroup, CgroupDriver, CgroupStats
    from nsmagic.runtime.registry import ContainerRecord


def cgroup_driver() -> CgroupDriver:
    """The cgroup driver containers use on this host (v2, v1 or rlimit)."""
    from nsmagic.cgroups import detect_driver

    return detect_driver()


def new_vm_group(driver: CgroupDriver) -> Cgroup:
    """A fresh cgroup for one qemu, named nsmagic-<pid>-vm-<id> like the containers' groups."""
    return driver.create(f"vm-{uuid.uuid4().hex[:8]}")


def register_vm() -> ContainerRecord:
    """Add a record named "vm" to the registry, so monitors list the VM beside containers."""
    from nsmagic.cgroups.limits import Limits
    from nsmagic.runtime.registry import REGISTRY, ContainerRecord

    record = ContainerRecord(f"vm-{uuid.uuid4().hex[:12]}", "vm", Limits(), frozenset())
    REGISTRY.add(record)
    return record


class ReadySampler:
    """on_ready for boot(): marks the VM started and samples qemu and its cgroup at the marker."""

    def __init__(self, group: Cgroup, memory_bytes: int, record_id: str, stop: bool) -> None:
        self.group = group
        self.memory_bytes = memory_bytes
        self.record_id = record_id
        self.stop = stop  # True: end the run once sampled (boot() then kills qemu)
        self.split: MemorySplit | None = None
        self.stats: CgroupStats | None = None
        self.pid: int | None = None
        self.ready_at: float | None = None  # time.monotonic() at the marker

    def __call__(self, pid: int) -> bool:
        from nsmagic.runtime.registry import REGISTRY

        self.pid = pid
        self.ready_at = time.monotonic()
        self.split = read_split(pid, self.memory_bytes)
        try:
            self.stats = self.group.stats()
        except (NsmagicError, OSError):
            self.stats = None
        REGISTRY.started(self.record_id, pid, self.group.name, self.group.driver)
        return self.stop
