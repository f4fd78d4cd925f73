"""The bundle's README.md: how to run it, what differs from nsmagic, and how each option maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nsmagic.oci.config import OCI_VERSION
from nsmagic.oci.root import LAYERS
from nsmagic.runtime.spec import ContainerSpec

# What the export does with each part of a spec: (nsmagic, OCI config.json, note).
MAPPING = (
    ("namespaces pid/uts/ipc/mount/cgroup/user", "linux.namespaces[].type",
     "same names; nsmagic 'net' is OCI 'network'"),
    ("--net none", "network namespace (runc brings up lo)", "as nsmagic: only lo"),
    ("--net host", "no network namespace", "the host's network"),
    ("--net container:PID", "network namespace with path /proc/PID/ns/net", "joined"),
    ("--net bridge", "network namespace", "no veth/bridge in OCI: only lo (use CNI or a hook)"),
    ("hostname / name / id", "hostname; the container's own /etc/hostname and /etc/hosts",
     "only with a uts namespace (runc refuses otherwise)"),
    ("user namespace", "linux.uidMappings/gidMappings: 0 -> the user (size 1), or as root "
     "a 65536-id block below nsmagic's pool", "the skeleton is owned by that root"),
    ("--cpus C", "linux.resources.cpu.quota = C*100000, period = 100000", "convert.py"),
    ("--cpu-weight W", "linux.resources.cpu.shares = weight_to_shares(W)",
     "runc >= 1.3.2 maps shares back to the same weight on cgroup v2"),
    ("--cpuset L", "linux.resources.cpu.cpus = L", ""),
    ("--memory M", "linux.resources.memory.limit = M", ""),
    ("--memory-swap S", "linux.resources.memory.swap = S (memory+swap; -1 unlimited)",
     "OCI's swap is v1's memsw: the same sum as Docker's --memory-swap"),
    ("--pids N", "linux.resources.pids.limit = N", ""),
    ("--cgroup NAME", "the group's limits at export time", "the group itself is not shared"),
    ("the view of the host's userland", "root.path = rootfs/ (mount points, read-only); a "
     "mount per view directory at the same path", "rootfs/ holds no file of the host"),
    ("its private writable layer", "an overlay per view directory, upper and work on a "
     f"tmpfs (tmpcopyup of rootfs{LAYERS}); a tmpfs on each of the root's own directories",
     "a new entry in / itself is refused (root.readonly)"),
    ("--read-only", "read-only binds of the view's directories; no tmpfs layers", ""),
    ("host secrets under /etc", "an empty read-only file bound over each, a read-only "
     "tmpfs over each directory", "the list is this host's at export time"),
    ("own /etc files", "bind mounts of generated hostname, hosts, resolv.conf, passwd, group",
     "--rootfs: hostname, hosts, resolv.conf"),
    ("masked and read-only kernel paths", "linux.maskedPaths, linux.readonlyPaths",
     "nsmagic.isolation.masks; none with --host-root, as nsmagic"),
    ("/proc of the pid namespace", "mount proc on /proc", ""),
    ("minimal /dev", "tmpfs /dev, devpts (newinstance), /dev/shm 64 MiB, mqueue; "
     "linux.devices null zero full random urandom tty",
     "runc makes the nodes; the device cgroup stands in for nsmagic's nodev"),
    ("device rules (cgroups.devices)", "linux.resources.devices: deny all, then the same "
     "rules (mknod of any node; null zero full random urandom tty console ptmx pts)",
     "kept with --privileged: runc's /dev cannot be nodev"),
    ("fresh read-only sysfs", "mount sysfs on /sys (ro); a bind of the host's with a user "
     "namespace and no network namespace", ""),
    ("own cgroup read-only at /sys/fs/cgroup", "mount cgroup on /sys/fs/cgroup (ro)",
     "runc mounts the container's own groups"),
    ("private /tmp", "mount tmpfs on /tmp (nosuid,nodev,mode=1777)", ""),
    ("--volume H:C[:ro]", "bind mount H on C, options rbind + ro/rw", ""),
    ("--rootfs DIR", "root.path = DIR (or a copy in rootfs/)", "writes reach DIR (or the "
     "copy): OCI has no private layer over the root"),
    ("--host-root", "rootfs/ + prepare-rootfs.sh (rbind /)", "OCI has no 'the host's root'"),
    ("capabilities", "Docker's 14 in bounding, effective and permitted", "none inheritable"),
    ("no_new_privs", "process.noNewPrivileges = true", ""),
    ("seccomp filter", "linux.seccomp = nsmagic.isolation.seccomp.oci_profile()",
     "none with --security-opt seccomp=unconfined or --privileged"),
    ("session keyring", "runc joins a fresh one per container", "nothing in config.json"),
    ("--privileged", "the bounding set's capabilities, noNewPrivileges false, no seccomp",
     "masks and read-only /sys stay, as in nsmagic; the device cgroup too"),
    ("process", "args (the command), env (the container's clean one), cwd, uid 0", ""),
    ("--timeout", "not in OCI", "use `timeout` around `runc run`"),
)

_ROOTS = {
    "view": "`rootfs/` holds only mount points and the merged-/usr links: config.json "
            "mounts the host's directories of nsmagic's view at the same paths, each under "
            "a private writable layer (overlay on a tmpfs; read-only binds with "
            "--read-only), hides the host's secrets in them and binds the container's own "
            f"/etc files. `rootfs{LAYERS}/` is what runc copies onto that tmpfs (its "
            "`tmpcopyup`): an upper and a work directory per view directory, and the /etc "
            "files; /run is covered afterwards, so the container never sees it. "
            "config.json names this bundle's absolute path: export again rather than move "
            "the bundle.",
    "busybox": "`rootfs/` is a minimal root built from Debian's busybox-static "
               "(`/bin/busybox` and a link per applet): not the view of the host nsmagic "
               "shows, but runnable anywhere.",
    "rootfs": "`root.path` is the --rootfs directory itself (not copied).",
    "copy": "`rootfs/` is a copy of the --rootfs directory.",
    "host": "`rootfs/` is empty: `prepare-rootfs.sh up` bind-mounts the host's `/` there "
            "(recursively), because OCI has no way to say \"the host's root\": runc "
            "pivot_root()s into `root.path`, which must be a directory of its own. Unmount "
            "it with `prepare-rootfs.sh down` when done.",
}

_HOST_MOUNTS = {
    False: "Nothing is mounted on the host: runc mounts all of it in the container's own "
           "mount namespace, which ends with the container.",
    True: "prepare-rootfs.sh mounts on the host (under rootfs/ only): run it `down` when "
          "done.",
}


def text(bundle: Path, spec: ContainerSpec, config: dict[str, Any], mode: str,
         notes: list[str]) -> str:
    """README.md for a bundle written at bundle with this config and root mode."""
    container_id = f"nsmagic-{spec.container_id}"
    prepare = "sudo ./prepare-rootfs.sh up\n" if mode == "host" else ""
    cleanup = "sudo ./prepare-rootfs.sh down\n" if mode == "host" else ""
    rows = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in MAPPING)
    note_lines = "\n".join(f"- {n}" for n in notes) or "- none"
    root_path = config["root"]["path"]
    return f"""# OCI bundle exported by nsmagic

Container spec: namespaces {', '.join(sorted(spec.namespaces))}; limits
{config['annotations']['org.nsmagic.limits']}; network {spec.net}; command
`{' '.join(config['process']['args'])}`.

`config.json` follows the OCI runtime specification {OCI_VERSION} (what Debian 12's runc 1.1
implements) and validates against its JSON schema. It gives runc the protections of an
nsmagic container: Docker's capabilities, no_new_privs, nsmagic's seccomp filter, the device
cgroup, masked and read-only kernel paths, a minimal /dev and read-only /sys. It holds the
container's environment, so it is readable by its owner only.

## Root filesystem

{_ROOTS[mode]} (`root.path` = `{root_path}`.)

## Run it

```sh
cd {bundle}
{prepare}sudo runc run {container_id}          # runs process.args; exit status passed through
sudo runc delete -f {container_id}       # if it was interrupted
{cleanup}```

Use another command by editing `process.args`; `runc run --bundle DIR ID` works from
anywhere. A timeout is not part of OCI: wrap it, `timeout 10 runc run ID`.
{_HOST_MOUNTS[mode == "host"]}

## What differs from nsmagic

{note_lines}

## How nsmagic maps to OCI

| nsmagic | config.json | note |
| --- | --- | --- |
{rows}
"""

