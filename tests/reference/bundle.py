"""An OCI bundle equivalent to what `docker run` gives a default container, rooted in the
host's userland read-only.

Docker's defaults as Docker 20.10 (Debian 12's docker.io) builds the spec (moby's
oci/defaults.go and daemon/oci_linux.go), with the exceptions the docstrings name:

- process: uid 0, cwd /, env PATH and HOSTNAME only (TERM=xterm comes only with -t; HOME is
  added by runc from /etc/passwd), Docker's 14 capabilities in the bounding, effective and
  permitted sets, none inheritable (Docker >= 20.10.14), noNewPrivileges *false* (Docker's
  default: setuid binaries work unless --security-opt no-new-privileges), oomScoreAdj 0;
- namespaces pid, ipc, uts, mount, network (only lo: as --network none, the default bridge has
  no OCI form), cgroup only on a cgroup v2 host (Docker's default cgroupns is "host" on v1),
  user with --userns-remap's usual range 0 -> 100000, 65536 ids;
- mounts proc, /dev tmpfs, devpts, sysfs ro, cgroup ro (rw under userns-remap, as Docker),
  mqueue, /dev/shm 64 MiB; maskedPaths and readonlyPaths; the device cgroup deny-all plus
  Docker's and runc's allow-lists; net.ipv4 sysctls ip_unprivileged_port_start=0 and (not
  under userns) ping_group_range; the seccomp profile of seccomp.py;
- hostname: the first 12 hex digits of the container id, as Docker's;
- root: a fresh directory (writable, thrown away) with the host's /usr (and the merged-/usr
  links or read-only binds of /bin, /lib, /lib64, /sbin) and a generated /etc, nothing else
  of the host. AppArmor: none (Docker applies docker-default only where AppArmor is enabled).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from . import seccomp

# moby oci/caps/defaults.go, in its order.
DOCKER_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Docker's lists (DESIGN.md section 8). /sys/devices/virtual/powercap is newer than 20.10
# (later Docker releases mask it); kept, as today's Docker does.
MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
SHM_SIZE = 64 << 20  # Docker's default --shm-size
USERNS_HOST_ID, USERNS_SIZE = 100000, 65536  # dockremap's usual /etc/subuid range
SECCOMP_PROFILES = ("docker", "containers-common", "unconfined")
# What a positive control may switch off (besides the seccomp profile).
RELAXABLE = frozenset({"masked_paths", "readonly_paths", "devices"})
# The host's userland, as Debian's merged /usr has it: /usr, and the rest links into it.
HOST_USERLAND = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")


def _device_rule(kind: str, major: int | None, minor: int | None, access: str = "rwm",
                 allow: bool = True) -> dict[str, Any]:
    rule: dict[str, Any] = {"allow": allow, "type": kind, "access": access}
    if major is not None:
        rule["major"] = major
    if minor is not None:
        rule["minor"] = minor
    return rule


# Docker's list (deny everything, allow zero, null, urandom, random, tty, console, deny fuse),
# then what runc 1.1 appends to every container (mknod of any node; null, random, full, tty,
# zero, urandom; the pts and ptmx). None is a wildcard.
DEVICE_CGROUP = (
    {"allow": False, "access": "rwm"},
    _device_rule("c", 1, 5), _device_rule("c", 1, 3), _device_rule("c", 1, 9),
    _device_rule("c", 1, 8), _device_rule("c", 5, 0), _device_rule("c", 5, 1),
    _device_rule("c", 10, 229, allow=False),
    _device_rule("c", None, None, "m"), _device_rule("b", None, None, "m"),
    _device_rule("c", 1, 3), _device_rule("c", 1, 8), _device_rule("c", 1, 7),
    _device_rule("c", 5, 0), _device_rule("c", 1, 5), _device_rule("c", 1, 9),
    _device_rule("c", 136, None), _device_rule("c", 5, 2),
)
# The nodes runc creates in /dev for every container (Docker lists none itself); /dev/ptmx is
# runc's link to pts/ptmx, /dev/console exists only with a terminal.
DEVICE_NODES = (("/dev/null", 1, 3), ("/dev/zero", 1, 5), ("/dev/full", 1, 7),
                ("/dev/random", 1, 8), ("/dev/urandom", 1, 9), ("/dev/tty", 5, 0))


def _mounts(userns: bool) -> list[dict[str, Any]]:
    cgroup_options = ["nosuid", "noexec", "nodev"] + ([] if userns else ["ro"])
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                     "gid=5"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": cgroup_options},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={SHM_SIZE}"]},
    ]
    for name in HOST_USERLAND:
        host = Path("/") / name
        if host.is_dir() and not host.is_symlink():
            # The image's userland: read-only, so a probe cannot change the host's.
            mounts.append({"destination": f"/{name}", "type": "bind", "source": str(host),
                           "options": ["rbind", "ro"]})
    return mounts


def _namespaces(userns: bool) -> list[dict[str, str]]:
    kinds = ["pid", "ipc", "uts", "mount", "network"]
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        kinds.append("cgroup")  # Docker's default cgroupns is "private" on cgroup v2 only
    if userns:
        kinds.append("user")
    return [{"type": kind} for kind in kinds]


def _sysctls(userns: bool) -> dict[str, str]:
    # Docker adds these to every container with a network namespace of its own, when the
    # kernel has them; ping_group_range not under userns-remap.
    wanted = {"net.ipv4.ip_unprivileged_port_start": "0"}
    if not userns:
        wanted["net.ipv4.ping_group_range"] = "0 2147483647"
    return {key: value for key, value in wanted.items()
            if os.path.exists("/proc/sys/" + key.replace(".", "/"))}


def seccomp_section(profile: str) -> dict[str, Any] | None:
    """linux.seccomp for a profile name of SECCOMP_PROFILES (None: unconfined)."""
    if profile == "unconfined":
        return None
    source = (seccomp.docker_profile() if profile == "docker"
              else seccomp.containers_common_profile())
    return seccomp.to_oci(source, frozenset(DOCKER_CAPABILITIES))


def config(args: list[str], *, hostname: str, cgroups_path: str, userns: bool = False,
           seccomp_profile: str = "docker", relax: Collection[str] = ()) -> dict[str, Any]:
    """config.json for a default `docker run` of args, less what relax names."""
    if seccomp_profile not in SECCOMP_PROFILES:
        raise ValueError(f"seccomp profile {seccomp_profile!r}: one of {SECCOMP_PROFILES}")
    unknown = set(relax) - RELAXABLE
    if unknown:
        raise ValueError(f"cannot relax {sorted(unknown)}: only {sorted(RELAXABLE)}")
    capabilities = list(DOCKER_CAPABILITIES)
    linux: dict[str, Any] = {
        "namespaces": _namespaces(userns),
        # Relative: runc puts it under runc's own cgroup, so it stays in its owner's
        # accounting (Docker's /docker/<id> is at the hierarchy's root).
        "cgroupsPath": cgroups_path,
        "resources": {"devices": ([{"allow": True, "access": "rwm"}] if "devices" in relax
                                  else [dict(rule) for rule in DEVICE_CGROUP])},
        "devices": [{"path": path, "type": "c", "major": major, "minor": minor,
                     "fileMode": 0o666, "uid": 0, "gid": 0}
                    for path, major, minor in DEVICE_NODES],
        "maskedPaths": [] if "masked_paths" in relax else list(MASKED_PATHS),
        "readonlyPaths": [] if "readonly_paths" in relax else list(READONLY_PATHS),
        "sysctl": _sysctls(userns),
    }
    if userns:
        linux["uidMappings"] = [{"containerID": 0, "hostID": USERNS_HOST_ID,
                                 "size": USERNS_SIZE}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": USERNS_HOST_ID,
                                 "size": USERNS_SIZE}]
    section = seccomp_section(seccomp_profile)
    if section is not None:
        linux["seccomp"] = section
    return {
        "ociVersion": "1.0.2",  # what Debian 12's runc 1.1 implements
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": [f"PATH={PATH}", f"HOSTNAME={hostname}"],
            "cwd": "/",
            "capabilities": {"bounding": capabilities, "effective": capabilities,
                             "permitted": capabilities, "inheritable": []},
            # Docker's default is false; nsmagic sets it (stricter), Docker needs
            # --security-opt no-new-privileges for that.
            "noNewPrivileges": False,
            "oomScoreAdj": 0,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": hostname,
        "mounts": _mounts(userns),
        "linux": linux,
    }


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)


def make_rootfs(root: Path, hostname: str, owner: int = 0) -> None:
    """The image: mount points, the host's merged-/usr links, and an /etc written here (no
    shadow, no host accounts). owner is root's uid outside (userns-remap chowns the image)."""
    root.mkdir(mode=0o755)
    for name in ("dev", "proc", "sys", "etc", "tmp", "root"):
        (root / name).mkdir()
    (root / "tmp").chmod(0o1777)
    (root / "root").chmod(0o700)
    for name in HOST_USERLAND:
        host = Path("/") / name
        if host.is_symlink():
            os.symlink(os.readlink(host), root / name)
        elif host.is_dir():
            (root / name).mkdir()
    etc = root / "etc"
    _write(etc / "passwd", "root:x:0:0:root:/root:/bin/sh\n"
                           "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    _write(etc / "group", "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n")
    _write(etc / "hostname", f"{hostname}\n")
    _write(etc / "hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    _write(etc / "resolv.conf", "# no network but lo, as docker run --network none\n")
    if owner:
        for path in [root, *root.rglob("*")]:
            os.lchown(path, owner, owner)


def write(bundle: Path, cfg: dict[str, Any], hostname: str, owner: int = 0) -> None:
    """Write config.json and rootfs/ into the (existing, empty) bundle directory."""
    make_rootfs(bundle / "rootfs", hostname, owner)
    _write(bundle / "config.json", json.dumps(cfg), 0o600)
