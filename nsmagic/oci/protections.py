"""What runc must enforce so that a bundle's container is protected as an nsmagic container
is: capabilities, no_new_privs, the seccomp filter, the device cgroup and nodes, the masked
and read-only kernel paths, and the kernel file systems mounted as nsmagic mounts them."""

from __future__ import annotations

from typing import Any

from nsmagic.cgroups import devices
from nsmagic.cgroups.limits import parse_size
from nsmagic.isolation import capabilities, dev, masks, seccomp
from nsmagic.runtime.spec import ContainerSpec

# The capabilities nsmagic keeps (capabilities.DOCKER_DEFAULT), in Docker's order
# (moby oci/caps/defaults.go), so a bundle reads like one of Docker's.
_DOCKER_ORDER = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID",
                 "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL",
                 "AUDIT_WRITE")
DOCKER_CAPABILITIES = tuple(f"CAP_{name}" for name in _DOCKER_ORDER
                            if name in capabilities.DOCKER_DEFAULT)
# Every capability by number (linux/capability.h), for --privileged.
ALL_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
# The character devices of nsmagic's /dev (dev.DEVICES) by their fixed numbers
# (Documentation/admin-guide/devices.txt); runc creates the same six in every container.
DEVICE_NUMBERS = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
                  "urandom": (1, 9), "tty": (5, 0)}
SHM_BYTES = parse_size(dev.SHM_SIZE)  # Docker's default --shm-size, as nsmagic's


def process_security(spec: ContainerSpec) -> dict[str, Any]:
    """process.capabilities and noNewPrivileges: Docker's set and no privilege gains, or,
    for --privileged, every capability this host's bounding set has."""
    names = bounding_capabilities() if spec.privileged else list(DOCKER_CAPABILITIES)
    # No inheritable or ambient capabilities (runc's default when they are not listed), as
    # nsmagic clears the ambient set before the payload.
    return {"capabilities": {kind: list(names) for kind in ("bounding", "effective",
                                                            "permitted")},
            "noNewPrivileges": not spec.privileged}


def bounding_capabilities() -> list[str]:
    """The capabilities of this process's bounding set: what --privileged keeps (runc fails
    with EPERM on one outside it)."""
    try:
        with open("/proc/self/status") as handle:
            line = next(x for x in handle if x.startswith("CapBnd:"))
        mask = int(line.split()[1], 16)
    except (OSError, StopIteration, ValueError):
        return list(ALL_CAPABILITIES)
    return [name for bit, name in enumerate(ALL_CAPABILITIES) if mask >> bit & 1]


def linux_security(spec: ContainerSpec) -> dict[str, Any]:
    """The linux.* protections: masked and read-only paths, device nodes, seccomp."""
    section: dict[str, Any] = {"devices": device_nodes()}
    if not spec.host_root:
        # --host-root is nsmagic's unprotected world: its /proc is not masked either.
        section["maskedPaths"] = list(masks.MASKED_PATHS)
        section["readonlyPaths"] = list(masks.READONLY_PATHS)
    if spec.seccomp and not spec.privileged:
        section["seccomp"] = seccomp.oci_profile()
    return section


def device_nodes() -> list[dict[str, Any]]:
    """linux.devices: the nodes of nsmagic's minimal /dev."""
    return [{"path": f"/dev/{name}", "type": "c", "major": DEVICE_NUMBERS[name][0],
             "minor": DEVICE_NUMBERS[name][1], "fileMode": 0o666, "uid": 0, "gid": 0}
            for name in dev.DEVICES]


def device_rules() -> list[dict[str, Any]]:
    """linux.resources.devices: deny every device, then nsmagic's own device rules (Docker's
    default). Kept with --privileged, where nsmagic gives its rules up: its /dev is still
    nodev there, and runc's /dev cannot be (runc makes its nodes in it), so the device
    cgroup is what keeps a node made inside from opening."""
    rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    for allowed in devices.CONTAINER_DEVICES:
        rule: dict[str, Any] = {"allow": True, "type": allowed.kind, "access": allowed.access}
        if allowed.major is not None:
            rule["major"] = allowed.major
        if allowed.minor is not None:
            rule["minor"] = allowed.minor
        rules.append(rule)
    return rules


def kernel_mounts(spec: ContainerSpec) -> list[dict[str, Any]]:
    """/proc, the minimal /dev, a read-only sysfs and the container's own cgroup read-only,
    as nsmagic mounts them (runc fills /dev with linux.devices and the usual links)."""
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        # Not nodev (nsmagic's /dev is): runc creates its nodes here, and the device cgroup
        # keeps any other node from opening.
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={SHM_BYTES}"]},
    ]
    if "ipc" in spec.namespaces:
        mounts.append({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                       "options": ["nosuid", "noexec", "nodev"]})
    if "user" in spec.namespaces and "net" not in spec.namespaces:
        # The kernel refuses a sysfs mount in a user namespace that does not own the network
        # namespace (nsmagic binds the host's then too, as `runc spec --rootless` does).
        mounts.append({"destination": "/sys", "type": "none", "source": "/sys",
                       "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
    else:
        mounts.append({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                       "options": ["nosuid", "noexec", "nodev", "ro"]})
        # runc shows only the container's own groups there, as nsmagic does.
        mounts.append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                       "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]})
    return mounts
