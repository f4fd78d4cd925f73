"""Export a ContainerSpec as an OCI runtime bundle (config.json + root filesystem + README).

The bundle follows the OCI runtime specification 1.0.2, the version Debian 12's runc 1.1.5
implements (`runc --version` says "spec: 1.0.2-dev"); the tests check every config it writes
against that release's JSON schemas (tests/oci_schema.py).

How each part of a spec maps (docs in the bundle's README.md and in the table of MAPPING):

- namespaces: pid, uts, ipc, mount, cgroup, user as they are; nsmagic's "net" is OCI's
  "network"; --net host means no network namespace, --net container:<pid> a namespace
  *path* (/proc/<pid>/ns/net), --net bridge a fresh namespace (the veth on nsmagic's bridge
  has no OCI equivalent: the bundle's container has only lo, and the README says so).
- the root: `--rootfs DIR` is referenced (root.path = DIR, absolute) or copied into the
  bundle; nsmagic's default, the host's own root, cannot be an OCI root.path (runc
  pivot_root()s into it and needs a directory of its own), so the bundle's rootfs/ is an empty
  directory that prepare-rootfs.sh fills with a recursive bind mount of / (an overlay of / for
  --overlay, every mount remounted read-only for --read-only), or, with host_root="busybox",
  a minimal root made of Debian's busybox-static (what the tests use: nothing to mount).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nsmagic.cgroups.convert import CPU_PERIOD_US, cpus_to_quota, weight_to_shares
from nsmagic.cgroups.limits import Limits
from nsmagic.errors import SpecError
from nsmagic.runtime.spec import ContainerSpec

OCI_VERSION = "1.0.2"
BUSYBOX = "/bin/busybox"  # Debian's busybox-static: one static binary, no libraries needed
HOST_ROOT_MODES = ("bind", "busybox")

# nsmagic namespace name -> OCI linux.namespaces type.
NAMESPACE_TYPES = {"pid": "pid", "uts": "uts", "ipc": "ipc", "net": "network",
                   "mount": "mount", "user": "user", "cgroup": "cgroup"}
# Docker's default capability set (moby oci/caps/defaults.go), in its order.
DOCKER_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)
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
ROOTFS_DIR = "rootfs"

# What the export does with each part of a spec: (nsmagic, OCI config.json, note).
MAPPING = (
    ("namespaces pid/uts/ipc/mount/cgroup/user", "linux.namespaces[].type",
     "same names; nsmagic 'net' is OCI 'network'"),
    ("--net none", "network namespace (runc brings up lo)", "as nsmagic: only lo"),
    ("--net host", "no network namespace", "the host's network"),
    ("--net container:PID", "network namespace with path /proc/PID/ns/net", "joined"),
    ("--net bridge", "network namespace", "no veth/bridge in OCI: only lo (use CNI or a hook)"),
    ("hostname / name / id", "hostname", "only with a uts namespace (runc refuses otherwise)"),
    ("user namespace", "linux.uidMappings/gidMappings 0 -> uid_outside, size 1",
     "as the supervisor writes them"),
    ("--cpus C", "linux.resources.cpu.quota = C*100000, period = 100000", "convert.py"),
    ("--cpu-weight W", "linux.resources.cpu.shares = weight_to_shares(W)",
     "runc >= 1.3.2 maps shares back to the same weight on cgroup v2"),
    ("--cpuset L", "linux.resources.cpu.cpus = L", ""),
    ("--memory M", "linux.resources.memory.limit = M", ""),
    ("--memory-swap S", "linux.resources.memory.swap = S (memory+swap; -1 unlimited)",
     "OCI's swap is v1's memsw: the same sum as Docker's --memory-swap"),
    ("--pids N", "linux.resources.pids.limit = N", ""),
    ("--cgroup NAME", "the group's limits at export time", "the group itself is not shared"),
    ("/proc of the pid namespace", "mount proc on /proc", ""),
    ("private /tmp", "mount tmpfs on /tmp (nosuid,nodev,mode=1777)", ""),
    ("own cgroup read-only at /sys/fs/cgroup", "mount cgroup on /sys/fs/cgroup (ro)",
     "runc mounts the container's own groups"),
    ("host /sys", "mount sysfs on /sys (ro); a bind of /sys with a user namespace and no "
     "network namespace (sysfs cannot be mounted there)", ""),
    ("host /dev", "tmpfs /dev + devpts, shm, mqueue; runc adds the default devices",
     "a minimal /dev, as nsmagic --rootfs"),
    ("--volume H:C[:ro]", "bind mount H on C, options rbind + ro/rw", ""),
    ("--read-only", "root.readonly = true", "bind mode: prepare-rootfs.sh also remounts "
     "every mount under rootfs/ read-only (runc makes only the root mount read-only)"),
    ("--overlay", "rootfs/ = overlay of / (prepare-rootfs.sh)", "upper layer in the bundle"),
    ("--rootfs DIR", "root.path = DIR (or a copy in rootfs/)", ""),
    ("host root (default)", "rootfs/ + prepare-rootfs.sh (rbind /), or busybox-static",
     "OCI has no 'use the host root'"),
    ("security", "noNewPrivileges, Docker's default capabilities, devices deny-all",
     "runc allows its default device list"),
    ("--privileged", "the bounding set's capabilities, noNewPrivileges false", ""),
    ("process", "args (the command), env, cwd, uid 0, terminal false", ""),
    ("--timeout", "not in OCI", "use `timeout` around `runc run`"),
)


@dataclass
class Bundle:
    """What export() wrote: the config and the notes on what could not be carried over."""

    path: Path
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def config_for(spec: ContainerSpec, args: list[str] | None = None, root_path: str = ROOTFS_DIR,
               limits: Limits | None = None) -> tuple[dict[str, Any], list[str]]:
    """The OCI config.json for spec, and notes on what the bundle does differently."""
    notes: list[str] = []
    namespaces = spec.namespaces
    process: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": list(args) if args else ["/bin/sh"],
        "env": [f"{k}={v}" for k, v in sorted(spec.env.items())],
        "cwd": spec.cwd or "/",
        "capabilities": {kind: list(DOCKER_CAPABILITIES)
                         for kind in ("bounding", "effective", "permitted")},
        "noNewPrivileges": True,
    }
    if getattr(spec, "privileged", False):
        process["capabilities"] = {kind: _bounding_capabilities()
                                   for kind in ("bounding", "effective", "permitted")}
        process["noNewPrivileges"] = False
        notes.append("--privileged: every capability this host's bounding set has (as "
                     "nsmagic keeps them), and no noNewPrivileges.")
    if not any(e.startswith("PATH=") for e in process["env"]):
        process["env"].insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                                 "/sbin:/bin")
    linux: dict[str, Any] = {
        "namespaces": _namespaces(spec, notes),
        "resources": _resources(limits if limits is not None else spec.limits),
    }
    if "user" in namespaces:
        uid = spec.uid_outside if spec.uid_outside is not None else 65534
        gid = spec.gid_outside if spec.gid_outside is not None else 65534
        linux["uidMappings"] = [{"containerID": 0, "hostID": uid, "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": gid, "size": 1}]
    config: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": root_path, "readonly": bool(spec.read_only)},
        "mounts": _mounts(spec),
        "linux": linux,
        "annotations": {
            "org.nsmagic.container-id": spec.container_id,
            "org.nsmagic.net": spec.net,
            "org.nsmagic.limits": (limits or spec.limits).describe(),
        },
    }
    if "uts" in namespaces:
        config["hostname"] = spec.effective_hostname
    if "user" in namespaces:
        notes.append(f"user namespace: root inside is uid {linux['uidMappings'][0]['hostID']} "
                     "outside, so the root directory and every directory above it must be "
                     "searchable by that uid (a bundle under a 0700 directory fails with "
                     "'permission denied').")
    if "mount" not in namespaces:
        notes.append("the spec has no mount namespace: the config lists none, but runc "
                     "always needs one (it refuses to run this bundle).")
    if spec.name:
        config["annotations"]["org.nsmagic.name"] = spec.name
    return config, notes


def _bounding_capabilities() -> list[str]:
    """The capabilities of this process's bounding set: what --privileged keeps (runc fails
    with EPERM on one outside it)."""
    try:
        with open("/proc/self/status") as handle:
            line = next(x for x in handle if x.startswith("CapBnd:"))
        mask = int(line.split()[1], 16)
    except (OSError, StopIteration, ValueError):
        return list(ALL_CAPABILITIES)
    return [name for bit, name in enumerate(ALL_CAPABILITIES) if mask >> bit & 1]


def _namespaces(spec: ContainerSpec, notes: list[str]) -> list[dict[str, str]]:
    entries = [{"type": NAMESPACE_TYPES[n]} for n in
               ("pid", "net", "ipc", "uts", "mount", "user", "cgroup") if n in spec.namespaces]
    if spec.net.startswith("container:"):
        pid = spec.net.split(":", 1)[1]
        entries.insert(1, {"type": "network", "path": f"/proc/{pid}/ns/net"})
        notes.append(f"--net {spec.net}: the network namespace is a path, /proc/{pid}/ns/net; "
                     "it must still exist when the bundle runs.")
    elif spec.net == "bridge":
        notes.append("--net bridge: OCI has no bridge; the container gets its own network "
                     "namespace with only lo (attach it with a CNI plugin or a hook).")
    return entries


def _resources(limits: Limits) -> dict[str, Any]:
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    cpu: dict[str, Any] = {}
    if limits.cpus is not None:
        cpu["quota"] = cpus_to_quota(limits.cpus)
        cpu["period"] = CPU_PERIOD_US
    if limits.cpu_weight is not None:
        cpu["shares"] = weight_to_shares(limits.cpu_weight)
    if limits.cpuset is not None:
        cpu["cpus"] = limits.cpuset
    if cpu:
        resources["cpu"] = cpu
    memory: dict[str, Any] = {}
    if limits.memory is not None:
        memory["limit"] = limits.memory
    if limits.memory_swap is not None:
        memory["swap"] = limits.memory_swap  # memory + swap on both sides; -1 = unlimited
    if memory:
        resources["memory"] = memory
    if limits.pids is not None:
        resources["pids"] = {"limit": limits.pids}
    return resources


def _mounts(spec: ContainerSpec) -> list[dict[str, Any]]:
    if "mount" not in spec.namespaces:
        return []
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
    ]
    if "user" in spec.namespaces and "net" not in spec.namespaces:
        # The kernel refuses a sysfs mount in a user namespace that does not own the network
        # namespace (as `runc spec --rootless` does it): bind the host's instead.
        mounts.append({"destination": "/sys", "type": "none", "source": "/sys",
                       "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
    else:
        mounts.append({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                       "options": ["nosuid", "noexec", "nodev", "ro"]})
        mounts.append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                       "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]})
    if spec.private_tmp:
        mounts.append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "mode=1777"]})
    for volume in spec.volumes:
        mounts.append({"destination": volume.container, "type": "bind",
                       "source": volume.host,
                       "options": ["rbind", "ro" if volume.read_only else "rw"]})
    return mounts


# -- the bundle on disk ------------------------------------------------------------------------
def export(spec: ContainerSpec, directory: str | os.PathLike[str],
           args: list[str] | None = None, host_root: str = "bind",
           copy_rootfs: bool = False) -> Path:
    """Write an OCI runtime bundle for spec into directory; returns the directory.

    args: the command (process.args); default /bin/sh. host_root: for specs that show the
    host's root (no --rootfs), "bind" (rootfs/ is filled by the bundle's prepare-rootfs.sh
    with a bind mount of /) or "busybox" (a minimal root from Debian's busybox-static).
    copy_rootfs: for --rootfs DIR, copy DIR into the bundle instead of referencing it.
    """
    return write_bundle(spec, directory, args, host_root, copy_rootfs).path


def write_bundle(spec: ContainerSpec, directory: str | os.PathLike[str],
                 args: list[str] | None = None, host_root: str = "bind",
                 copy_rootfs: bool = False) -> Bundle:
    """export(), returning the config and the notes as well."""
    if host_root not in HOST_ROOT_MODES:
        raise SpecError(f"host_root must be one of {', '.join(HOST_ROOT_MODES)}, "
                        f"not {host_root!r}.")
    bundle = Path(directory).absolute()
    _check_target(bundle)
    bundle.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if spec.rootfs is not None:
        if copy_rootfs:
            root_path, mode = ROOTFS_DIR, "copy"
            shutil.copytree(spec.rootfs, bundle / ROOTFS_DIR, symlinks=True,
                            dirs_exist_ok=True)
            if spec.overlay:
                notes.append("--overlay with a copied rootfs: changes stay in the copy.")
        else:
            root_path, mode = spec.rootfs, "reference"
            if spec.overlay:
                notes.append("--overlay with --rootfs: the bundle writes into the rootfs "
                             "directory itself (runc has no throw-away root); copy it first.")
    elif host_root == "busybox":
        root_path, mode = ROOTFS_DIR, "busybox"
        _busybox_rootfs(bundle / ROOTFS_DIR)
        notes.append("the root is a minimal busybox-static system, not the host's root "
                     "nsmagic shows: commands of the host are not there.")
    else:
        root_path, mode = ROOTFS_DIR, "bind"
        (bundle / ROOTFS_DIR).mkdir(exist_ok=True)
        _write(bundle / "prepare-rootfs.sh", _prepare_script(spec), 0o755)
    limits = _limits_of(spec, notes)
    config, config_notes = config_for(spec, args, root_path, limits)
    notes = config_notes + notes
    _write(bundle / "config.json", json.dumps(config, indent=2) + "\n", 0o600)
    _write(bundle / "README.md", _readme(bundle, spec, config, mode, notes), 0o644)
    return Bundle(bundle, config, notes)


def _check_target(bundle: Path) -> None:
    """Refuse a directory that is not empty and not a bundle, or whose rootfs is mounted."""
    if not bundle.exists():
        return
    if not bundle.is_dir():
        raise SpecError(f"--oci {str(bundle)!r} exists and is not a directory.")
    if any(bundle.iterdir()) and not (bundle / "config.json").exists():
        raise SpecError(f"--oci {str(bundle)!r} is not empty and not an OCI bundle: give "
                        "a new or empty directory.")
    prefix = str(bundle) + "/"
    with open("/proc/self/mountinfo") as handle:
        mounted = [line.split()[4] for line in handle]
    if any(point == str(bundle) or point.startswith(prefix) for point in mounted):
        raise SpecError(f"--oci {str(bundle)!r} has mounts inside (a prepared rootfs?): run "
                        "its prepare-rootfs.sh down first.")


def _limits_of(spec: ContainerSpec, notes: list[str]) -> Limits:
    if spec.cgroup is None:
        return spec.limits
    try:
        from nsmagic.runtime import groups

        limits = groups.get(spec.cgroup).limits()
    except (SpecError, OSError, KeyError) as error:
        notes.append(f"--cgroup {spec.cgroup}: its limits could not be read ({error}).")
        return spec.limits
    notes.append(f"--cgroup {spec.cgroup}: the bundle has a group of its own with that "
                 f"group's limits now ({limits.describe()}).")
    return limits


def _write(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)


def _busybox_rootfs(root: Path) -> None:
    """A minimal root: busybox-static with a link per applet, /etc/passwd and mount points."""
    if not os.path.isfile(BUSYBOX):
        raise SpecError(f"host_root='busybox' needs {BUSYBOX} (Debian: apt-get install "
                        "busybox-static).")
    for name in ("bin", "dev", "etc", "proc", "root", "sys", "tmp", "usr/bin", "usr/sbin",
                 "sbin", "var"):
        (root / name).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    target = root / "bin" / "busybox"
    shutil.copy2(BUSYBOX, target)
    os.chmod(target, 0o755)
    applets = subprocess.run([BUSYBOX, "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        link = root / applet
        if applet == "bin/busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/bin/busybox", link)
    _write(root / "etc" / "passwd", "root:x:0:0:root:/root:/bin/sh\n"
           "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n", 0o644)
    _write(root / "etc" / "group", "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n", 0o644)


def _prepare_script(spec: ContainerSpec) -> str:
    if spec.overlay:
        build = (
            '  mkdir -p overlay/upper overlay/work\n'
            '  # One overlay with / as its lower layer (the host\'s other mounts are not part\n'
            '  # of it, as with any overlay of /); writes go to overlay/upper.\n'
            '  mount -t overlay overlay -o lowerdir=/,upperdir="$PWD/overlay/upper",'
            'workdir="$PWD/overlay/work" rootfs\n'
        )
    else:
        build = (
            '  # Every mount of the host, as an nsmagic container sees it.\n'
            '  mount --rbind / rootfs\n'
            '  mount --make-rslave rootfs\n'
        )
    if spec.read_only:
        build += (
            '  # root.readonly covers only the root mount under runc; make every mount\n'
            '  # under rootfs/ read-only (per-mount flag: the host\'s own mounts stay rw).\n'
            '  findmnt -R -n -r -o TARGET "$PWD/rootfs" | while read -r point; do\n'
            '    mount -o remount,bind,ro "$(printf "%b" "$point")" 2>/dev/null || true\n'
            '  done\n'
        )
    return (
        "#!/bin/sh\n"
        "# Fill rootfs/ with the host's root, as nsmagic containers see it (an OCI root.path\n"
        "# must be a directory of its own: runc pivot_root()s into it).\n"
        "#   ./prepare-rootfs.sh up     before `runc run` (as root)\n"
        "#   ./prepare-rootfs.sh down   afterwards: unmount everything under rootfs/\n"
        "set -eu\n"
        'cd "$(dirname "$0")"\n'
        'case "${1:-up}" in\n'
        "up)\n"
        "  if mountpoint -q rootfs; then echo 'rootfs/ is prepared already'; exit 0; fi\n"
        f"{build}"
        "  ;;\n"
        "down)\n"
        "  if mountpoint -q rootfs; then umount -R rootfs; fi\n"
        "  ;;\n"
        "*) echo \"usage: $0 up|down\" >&2; exit 2 ;;\n"
        "esac\n"
    )


def _readme(bundle: Path, spec: ContainerSpec, config: dict[str, Any], mode: str,
            notes: list[str]) -> str:
    container_id = f"nsmagic-{spec.container_id}"
    root = {
        "bind": "`rootfs/` is empty: `prepare-rootfs.sh up` bind-mounts the host's `/` there "
                "(recursively; an overlay of `/` for --overlay; every mount read-only for "
                "--read-only), because OCI has no way to say \"the host's root\": runc "
                "pivot_root()s into `root.path`, which must be a directory of its own. "
                "Unmount it with `prepare-rootfs.sh down` when done.",
        "busybox": "`rootfs/` is a minimal root built from Debian's busybox-static "
                   "(`/bin/busybox` and a link per applet): not the host's root that nsmagic "
                   "containers see, but runnable anywhere without mounts.",
        "reference": f"`root.path` is the --rootfs directory itself, `{spec.rootfs}` (not "
                     "copied).",
        "copy": f"`rootfs/` is a copy of the --rootfs directory `{spec.rootfs}`.",
    }[mode]
    prepare = "sudo ./prepare-rootfs.sh up\n" if mode == "bind" else ""
    cleanup = "sudo ./prepare-rootfs.sh down\n" if mode == "bind" else ""
    rows = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in MAPPING)
    note_lines = "\n".join(f"- {n}" for n in notes) or "- none"
    return f"""# OCI bundle exported by nsmagic

Container spec: namespaces {', '.join(sorted(spec.namespaces))}; limits
{config['annotations']['org.nsmagic.limits']}; network {spec.net}; command
`{' '.join(config['process']['args'])}`.

`config.json` follows the OCI runtime specification {OCI_VERSION} (what Debian 12's runc 1.1
implements) and validates against its JSON schema. It holds the environment nsmagic would
give the container (the host's, less the notebook server's), so it is readable by its owner
only.

## Root filesystem

{root}

## Run it

```sh
cd {bundle}
{prepare}sudo runc run {container_id}          # runs process.args; exit status passed through
sudo runc delete -f {container_id}       # if it was interrupted
{cleanup}```

Use another command by editing `process.args`; `runc run --bundle DIR ID` works from
anywhere. A timeout is not part of OCI: wrap it, `timeout 10 runc run ID`.

## What differs from nsmagic

{note_lines}

## How nsmagic options map to OCI

| nsmagic | config.json | note |
| --- | --- | --- |
{rows}
"""
