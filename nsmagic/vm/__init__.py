"""Boot small qemu guests: measure boot time and footprint, and compare a VM with containers."""

from nsmagic.vm.accel import KvmVerdict, kvm_verdict
from nsmagic.vm.background import VMHandle, start_vm
from nsmagic.vm.compare import baseline, vm_available
from nsmagic.vm.images import GuestImage, build_image, cache_dir, cached_image
from nsmagic.vm.qemu import VMResult, boot, kvm_works, qemu_binary
from nsmagic.vm.report import Baseline

__all__ = [
    "Baseline",
    "GuestImage",
    "KvmVerdict",
    "VMHandle",
    "VMResult",
    "baseline",
    "boot",
    "build_image",
    "cache_dir",
    "cached_image",
    "kvm_verdict",
    "kvm_works",
    "qemu_binary",
    "start_vm",
    "vm_available",
]
