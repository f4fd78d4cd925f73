"""config.json for a ContainerSpec: namespaces, id maps, limits, the process, the mounts and
the protections, in the OCI runtime specification's terms."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nsmagic.cgroups.convert import CPU_PERIOD_US, cpus_to_quota, weight_to_shares
from nsmagic.cgroups.limits import Limits
from nsmagic.isolation import idmaps
from nsmagic.oci import protections
from nsmagic.oci.root import RootPlan, plan
from nsmagic.runtime.spec import ContainerSpec

# The release Debian 12's runc 1.1 implements (`runc --version`: "spec: 1.0.2-dev").
OCI_VERSION = "1.0.2"
# nsmagic namespace name -> OCI linux.namespaces type.
NAMESPACE_TYPES = {"pid": "pid", "uts": "uts", "ipc": "ipc", "net": "network",
                   "mount": "mount", "user": "user", "cgroup": "cgroup"}
# Root of a bundle's user namespace when nsmagic runs as root: the block of ids just below
# nsmagic's pool, shared by every exported bundle (as Docker's userns-remap shares one
# range), so a bundle's root is never a real user's or a running nsmagic container's.
BUNDLE_ID_BASE = idmaps.POOL_START - idmaps.RANGE_SIZE


def config_for(spec: ContainerSpec, args: list[str] | None = None,
               directory: str | os.PathLike[str] = ".", bundle_root: str = "bind",
               limits: Limits | None = None, copy_rootfs: bool = False
               ) -> tuple[dict[str, Any], list[str]]:
    """The OCI config.json for spec as a bundle in directory (whose absolute path the root's
    mounts name), and notes on what the bundle does differently from nsmagic."""
    bundle = Path(directory).absolute()
    return assemble(spec, args, plan(spec, bundle, bundle_root, copy_rootfs, root_ids(spec)),
                    limits)


def root_ids(spec: ContainerSpec) -> tuple[int, int] | None:
    """The host uid and gid of root inside, with a user namespace."""
    if "user" not in spec.namespaces:
        return None
    if spec.uid_outside is not None:
        return spec.uid_outside, spec.gid_outside if spec.gid_outside is not None \
            else spec.uid_outside
    return BUNDLE_ID_BASE, BUNDLE_ID_BASE


def assemble(spec: ContainerSpec, args: list[str] | None, root: RootPlan,
             limits: Limits | None = None) -> tuple[dict[str, Any], list[str]]:
    """config.json for spec with this root, and the notes: the root's, then the config's."""
    limits = limits if limits is not None else spec.limits
    notes = list(root.notes)
    process: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": list(args) if args else ["/bin/sh"],
        # The container's environment, clean as nsmagic's (spec.env holds nothing else).
        "env": [f"{k}={v}" for k, v in spec.env.items()],
        "cwd": root.cwd or spec.cwd or "/",
        **protections.process_security(spec),
    }
    linux: dict[str, Any] = {
        "namespaces": _namespaces(spec, notes),
        "resources": _resources(limits),
        **protections.linux_security(spec),
    }
    ids = root_ids(spec)
    if ids is not None:
        size = 1 if spec.uid_outside is not None else idmaps.RANGE_SIZE
        linux["uidMappings"] = [{"containerID": 0, "hostID": ids[0], "size": size}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": ids[1], "size": size}]
    config: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": root.path, "readonly": root.readonly},
        "mounts": _mounts(spec, root),
        "linux": linux,
        "annotations": {
            "org.nsmagic.container-id": spec.container_id,
            "org.nsmagic.net": spec.net,
            "org.nsmagic.limits": limits.describe(),
            "org.nsmagic.root": root.mode,
        },
    }
    if "uts" in spec.namespaces:
        config["hostname"] = spec.effective_hostname
    if ids is not None:
        notes.append(f"user namespace: root inside is uid {ids[0]} outside, so the "
                          "bundle directory and every directory above it must be "
                          "searchable by that uid (a bundle under a 0700 directory fails "
                          "with 'permission denied').")
    if "mount" not in spec.namespaces:
        notes.append("the spec has no mount namespace: the config lists none, but runc "
                          "always needs one (it refuses to run this bundle).")
    if spec.privileged:
        notes.append("--privileged: every capability this host's bounding set has (as "
                          "nsmagic keeps them), no noNewPrivileges and no seccomp filter.")
    elif not spec.seccomp:
        notes.append("--security-opt seccomp=unconfined: no linux.seccomp.")
    if spec.name:
        config["annotations"]["org.nsmagic.name"] = spec.name
    return config, notes


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
    resources: dict[str, Any] = {"devices": protections.device_rules()}
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


def _mounts(spec: ContainerSpec, root: RootPlan) -> list[dict[str, Any]]:
    """The kernel's file systems, then the root's own mounts, /tmp and the volumes."""
    if "mount" not in spec.namespaces:
        return []
    mounts = protections.kernel_mounts(spec) + root.mounts
    if spec.private_tmp:
        mounts.append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "mode=1777"]})
    for volume in spec.volumes:
        mounts.append({"destination": volume.container, "type": "bind",
                       "source": volume.host,
                       "options": ["rbind", "ro" if volume.read_only else "rw"]})
    return mounts
