"""Boot small qemu guests: measure boot time and footprint, and run tests in a cgroup v2 kernel."""

from nsmagic.vm.guest import repo_root, run_in_v2_guest, v2_guest_available
from nsmagic.vm.images import GuestImage, build_image, cache_dir, cached_image
from nsmagic.vm.qemu import VMResult, boot, kvm_works, qemu_binary

__all__ = [
    "GuestImage",
    "VMResult",
    "boot",
    "build_image",
    "cache_dir",
    "cached_image",
    "kvm_works",
    "qemu_binary",
    "repo_root",
    "run_in_v2_guest",
    "v2_guest_available",
]
