"""Guest images (kernel + busybox initramfs) built from Debian packages only, cached by version."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nsmagic.errors import CapabilityError
from nsmagic.vm import debs

FLAVOURS = ("v2", "micro")

# The kernel package behind each flavour: the cloud kernel boots fastest but has no 9p, so
# the cgroup v2 test guest uses the generic kernel, whose 9p and virtio drivers are modules.
KERNEL_METAPACKAGES = {"v2": "linux-image-amd64", "micro": "linux-image-cloud-amd64"}
BUSYBOX_PACKAGE = "busybox-static"

# Load order matters: insmod does not resolve dependencies (there is no modules.dep in the
# package, depmod runs at install time), so each module comes after the ones it needs.
V2_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "netfs",
    "fscache",
    "9pnet",
    "9pnet_virtio",
    "9p",
    "overlay",  # a container's private writable layer
)

READY_MARKER = "NSMAGIC-READY"
INIT_MARKER = "NSMAGIC-INIT"  # the micro guest's init runs: the kernel has booted
EXIT_MARKER = "NSMAGIC-EXIT"
# Where the per-run host folder is mounted inside the chroot; /run is a guest tmpfs, so the
# mount point can be created although the host root is read-only.
RESULTS_MOUNT = "/run/vm-results"
RESULTS_TAG = "vmresults"
HOSTROOT_TAG = "hostroot"

_APPLETS = ("sh", "mount", "umount", "insmod", "mkdir", "chroot", "cat", "sync", "poweroff",
            "switch_root")
# The micro guest's workloads need a few more; the v2 image keeps its list (and so its cache).
_EXTRA_APPLETS = {"micro": ("sleep", "kill", "dd")}


def _applets(flavour: str) -> tuple[str, ...]:
    return _APPLETS + _EXTRA_APPLETS.get(flavour, ())


# The micro guest's optional workload after the ready marker, chosen on the kernel command line
# (the kernel hands unknown name=value parameters to init as environment variables):
# nsmagic_workload=cpu|memory|idle, nsmagic_seconds, nsmagic_mib, nsmagic_settle (an idle pause
# before the workload, so the host can sample the idle guest first). Without them the guest
# powers off at once, as it always did. The loops are the ones nsmagic.vm.loops gives a
# container, so that both sides do the same work.
WORKLOAD_DONE_MARKER = "NSMAGIC-WORKLOAD-DONE"
MICRO_WORKLOADS = ("cpu", "memory", "idle")

# Kernel messages go to the same serial console; the marker line therefore carries its own
# prefix so that the host can find it even when a printk lands in the middle of a line.
_MICRO_INIT = f"""#!/bin/sh
export PATH=/bin
echo "{INIT_MARKER}"
mount -t proc proc /proc
read up idle < /proc/uptime
echo "{READY_MARKER} uptime=$up"
if [ -n "$nsmagic_workload" ]; then
    # A background job's stdin is /dev/null, which only devtmpfs provides here.
    mount -t devtmpfs devtmpfs /dev
    sleep "${{nsmagic_settle:-0}}"
    case "$nsmagic_workload" in
    cpu)
        while :; do :; done &
        sleep "${{nsmagic_seconds:-5}}"
        kill $!
        ;;
    memory)
        mount -t tmpfs -o size=$((${{nsmagic_mib:-64}} + 1))m tmpfs /tmp
        dd if=/dev/zero of=/tmp/fill bs=1048576 count="${{nsmagic_mib:-64}}" 2>/dev/null
        sleep "${{nsmagic_seconds:-5}}"
        ;;
    *)
        sleep "${{nsmagic_seconds:-5}}"
        ;;
    esac
    echo "{WORKLOAD_DONE_MARKER}"
fi
poweroff -f
echo o > /proc/sysrq-trigger
"""

# The command comes as a script in the results share rather than on the kernel command line:
# the command line is limited in length and quoting, and the kernel hands unknown parameters
# to init as environment variables.
_V2_INIT = f"""#!/bin/sh
export PATH=/bin
fail() {{
    echo "NSMAGIC-FAIL $*"
    poweroff -f
    echo o > /proc/sysrq-trigger
}}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {" ".join(V2_MODULES)}; do
    insmod /lib/modules/$m.ko || fail "insmod $m"
done
mkdir -p /newroot
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose {HOSTROOT_TAG} /newroot \\
    || fail "mount host root"
mount -t proc proc /newroot/proc || fail "mount proc"
mount -t sysfs sysfs /newroot/sys || fail "mount sysfs"
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup || fail "mount cgroup2"
mount -t devtmpfs devtmpfs /newroot/dev || fail "mount dev"
mkdir -p /newroot/dev/shm /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
for d in /tmp /run /var/tmp; do
    mount -t tmpfs -o mode=1777 tmpfs /newroot$d || fail "mount tmpfs on $d"
done
mkdir -p /newroot{RESULTS_MOUNT}
have_results=0
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 {RESULTS_TAG} \\
        /newroot{RESULTS_MOUNT} 2>/dev/null; then
    have_results=1
fi
read up idle < /proc/uptime
echo "{READY_MARKER} uptime=$up"
if [ $have_results = 1 ] && [ -f /newroot{RESULTS_MOUNT}/cmd.sh ]; then
    # switch_root, not chroot: the kernel refuses user namespaces to a chrooted process, and
    # the tests run rootless containers in here too. The host root becomes the namespace's
    # root; the runner script then powers the guest off itself.
    cat > /newroot{RESULTS_MOUNT}/runner.sh <<RUNNER
/bin/sh {RESULTS_MOUNT}/cmd.sh </dev/null >{RESULTS_MOUNT}/stdout 2>{RESULTS_MOUNT}/stderr
rc=\\$?
echo \\$rc > {RESULTS_MOUNT}/status
echo "{EXIT_MARKER} status=\\$rc"
sync
echo o > /proc/sysrq-trigger
RUNNER
    exec switch_root /newroot /bin/sh {RESULTS_MOUNT}/runner.sh
fi
sync
poweroff -f
echo o > /proc/sysrq-trigger
"""

# Bump when the recipe changes in a way the init text does not show, so caches are rebuilt.
_RECIPE_REVISION = "2"


@dataclass(frozen=True)
class GuestImage:
    """A bootable kernel + initramfs pair and where it came from."""

    flavour: str
    kernel: Path
    initramfs: Path
    kernel_package: str
    kernel_version: str
    busybox_version: str

    @property
    def kernel_bytes(self) -> int:
        """Size of the compressed kernel image (vmlinuz)."""
        return self.kernel.stat().st_size

    @property
    def initramfs_bytes(self) -> int:
        """Size of the gzip-compressed initramfs."""
        return self.initramfs.stat().st_size


def cache_dir() -> Path:
    """The folder images are cached in: $NSMAGIC_CACHE/vm, else ~/.cache/nsmagic/vm."""
    root = os.environ.get("NSMAGIC_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "nsmagic"
    return base / "vm"


def resolve_versions(flavour: str, *, cache: Path | None = None) -> dict[str, str]:
    """Name and version of the kernel and busybox packages a flavour would be built from,
    remembered until the apt lists change."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}, not {flavour!r}.")
    memo = (Path(cache) if cache else cache_dir()) / "resolved.json"
    return debs.memoised(memo, flavour, lambda: _resolve_versions(flavour))


def _resolve_versions(flavour: str) -> dict[str, str]:
    # The metapackage only depends on the versioned package that holds the files.
    _, kernel_package = debs.resolve(KERNEL_METAPACKAGES[flavour])
    if not kernel_package:
        raise CapabilityError(f"{KERNEL_METAPACKAGES[flavour]} depends on no kernel package.")
    kernel_version, _ = debs.candidate(kernel_package)
    busybox_version, _ = debs.resolve(BUSYBOX_PACKAGE)
    return {
        "kernel_package": kernel_package,
        "kernel_version": kernel_version,
        "busybox_version": busybox_version,
    }


class _Cpio:
    """A newc cpio archive written in memory: the format the kernel unpacks as initramfs."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        encoded = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._ino += 1
        self._buf.write(header + encoded)
        self._buf.write(b"\0" * (-(len(header) + len(encoded)) % 4))
        self._buf.write(data)
        self._buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._buf.getvalue()


def _init_script(flavour: str) -> str:
    return _V2_INIT if flavour == "v2" else _MICRO_INIT


def _recipe_hash(flavour: str) -> str:
    text = _init_script(flavour) + " ".join(_applets(flavour)) + _RECIPE_REVISION
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _build_initramfs(flavour: str, busybox: bytes, modules: dict[str, bytes]) -> bytes:
    cpio = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "newroot", "lib", "lib/modules"):
        cpio.dir(d)
    cpio.file("bin/busybox", busybox, 0o755)
    for applet in _applets(flavour):
        cpio.symlink(f"bin/{applet}", "busybox")
    for name, data in modules.items():
        cpio.file(f"lib/modules/{name}.ko", data)
    cpio.file("init", _init_script(flavour).encode(), 0o755)
    # Level 6 is the kernel's own default trade-off; unpacking a few MB is milliseconds.
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


def _modules_from(files: dict[str, bytes]) -> dict[str, bytes]:
    """Pick the V2_MODULES out of extracted files, decompressing .ko.xz (busybox cannot)."""
    by_name: dict[str, bytes] = {}
    for path, data in files.items():
        base = path.rsplit("/", 1)[-1]
        for suffix, decode in ((".ko", None), (".ko.xz", lzma.decompress)):
            if base.endswith(suffix):
                name = base[: -len(suffix)]
                by_name[name] = decode(data) if decode else data
    missing = [m for m in V2_MODULES if m not in by_name]
    if missing:
        raise CapabilityError(f"the kernel package lacks the modules {', '.join(missing)}.")
    return {m: by_name[m] for m in V2_MODULES}


def build_image(flavour: str = "v2", *, cache: Path | None = None) -> GuestImage:
    """Build (or find in the cache) the guest image of a flavour: 'v2' or 'micro'.

    Idempotent and safe to call from several processes at once: a lock file serialises the
    builds, and a finished image is moved into place in one rename.
    """
    cache = Path(cache) if cache else cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    versions = resolve_versions(flavour, cache=cache)
    key = (
        "-".join(
            [
                flavour,
                versions["kernel_package"],
                versions["kernel_version"],
                "busybox",
                versions["busybox_version"],
                _recipe_hash(flavour),
            ]
        )
        .replace(":", "_")
        .replace("+", "_")
    )
    target = cache / "images" / key
    image = GuestImage(
        flavour=flavour,
        kernel=target / "vmlinuz",
        initramfs=target / "initramfs.img",
        kernel_package=versions["kernel_package"],
        kernel_version=versions["kernel_version"],
        busybox_version=versions["busybox_version"],
    )
    if (target / "manifest.json").exists():
        return image
    with open(cache / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "manifest.json").exists():  # another process built it while we waited
            return image
        kernel_deb = debs.download(
            versions["kernel_package"], versions["kernel_version"], cache / "debs"
        )
        busybox_deb = debs.download(BUSYBOX_PACKAGE, versions["busybox_version"], cache / "debs")
        wanted_modules = {f"{m}.ko" for m in V2_MODULES} | {f"{m}.ko.xz" for m in V2_MODULES}

        def wanted(path: str) -> bool:
            base = path.rsplit("/", 1)[-1]
            if path.startswith("boot/vmlinuz-"):
                return True
            return flavour == "v2" and path.startswith("lib/modules/") and base in wanted_modules

        files = debs.extract(kernel_deb, wanted)
        kernels = [data for path, data in files.items() if path.startswith("boot/vmlinuz-")]
        if len(kernels) != 1:
            raise CapabilityError(f"{kernel_deb.name} holds {len(kernels)} kernels, not one.")
        busybox = debs.extract(busybox_deb, lambda p: p == "bin/busybox").get("bin/busybox")
        if not busybox:
            raise CapabilityError(f"{busybox_deb.name} holds no bin/busybox.")
        modules = _modules_from(files) if flavour == "v2" else {}
        initramfs = _build_initramfs(flavour, busybox, modules)

        (cache / "images").mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache / "images"))
        try:
            staging.chmod(0o755)  # mkdtemp makes it private; a shared cache must stay readable
            (staging / "vmlinuz").write_bytes(kernels[0])
            (staging / "initramfs.img").write_bytes(initramfs)
            manifest = dict(versions, flavour=flavour, modules=list(modules))
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
            if target.exists():  # a half-built folder from an interrupted older recipe
                shutil.rmtree(target)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return image


def cached_image(flavour: str, *, cache: Path | None = None) -> GuestImage | None:
    """The newest already-built image of a flavour, without asking apt; None if none is built."""
    cache = Path(cache) if cache else cache_dir()
    builds = sorted(
        (cache / "images").glob(f"{flavour}-*/manifest.json"), key=lambda p: p.stat().st_mtime
    )
    builds = [p for p in builds if p.parent.name.endswith(_recipe_hash(flavour))]
    if not builds:
        return None
    manifest = json.loads(builds[-1].read_text())
    folder = builds[-1].parent
    return GuestImage(
        flavour=flavour,
        kernel=folder / "vmlinuz",
        initramfs=folder / "initramfs.img",
        kernel_package=manifest["kernel_package"],
        kernel_version=manifest["kernel_version"],
        busybox_version=manifest["busybox_version"],
    )
