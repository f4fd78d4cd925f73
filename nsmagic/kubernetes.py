"""A container's options as Kubernetes manifests: a Job and a Pod that run the same command in
the same image with the same limits (`nsmagic export --kubernetes`).

--cpus and --memory become resources.limits; options Kubernetes has a field for become that
field (--net host: hostNetwork, --read-only: readOnlyRootFilesystem, --user: runAsUser, ...);
an option without a Kubernetes form (--pids, --memory-swap, --cpuset, a volume) becomes a
comment in the manifest saying so and what comes closest. The command follows docker run's
rule, which is Kubernetes's too: the arguments replace the image's Cmd (args:), its
Entrypoint stays.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from nsmagic.cgroups.limits import Limits
from nsmagic.errors import SpecError

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_BINARY = (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10))


@dataclass
class Manifests:
    """The Job and the Pod, and the notes on options without a Kubernetes form."""

    job: dict[str, Any]
    pod: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def yaml(self) -> str:
        """Both manifests as one YAML stream (kubectl apply -f, podman kube play), with the
        notes as comments above each container's resources."""
        header = ("# Written by nsmagic export --kubernetes: the same image, command and "
                  "limits as nsmagic run.\n")
        return header + "---\n".join(_with_notes(to_yaml(document), self.notes)
                                     for document in (self.job, self.pod))


def quantity_of_cpus(cpus: float) -> str:
    """Cores as a Kubernetes quantity: whole cores as a number, else millicores."""
    millicores = max(1, round(cpus * 1000))
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def quantity_of_bytes(size: int) -> str:
    """Bytes as a Kubernetes quantity, with a binary suffix where it is exact."""
    for suffix, factor in _BINARY:
        if size % factor == 0:
            return f"{size // factor}{suffix}"
    return str(size)


def _name(text: str | None) -> str:
    name = (text or "nsmagic").lower()
    name = re.sub(r"[^a-z0-9-]+", "-", name).strip("-")[:63].strip("-") or "nsmagic"
    return name


def manifests(image: str, command: list[str] | None = None, *, name: str | None = None,
              limits: Limits | None = None, env: dict[str, str] | None = None,
              hostname: str | None = None, user: str | None = None, read_only: bool = False,
              net: str | None = None, privileged: bool = False, seccomp: bool = True,
              userns: bool | None = None, namespaces: set[str] | None = None,
              volumes: list[str] | tuple[str, ...] = ()) -> Manifests:
    """A Job and a Pod of the image running command (the image's own Cmd when None)."""
    if not image:
        raise SpecError("a Kubernetes manifest runs an image: give --image REF (an image in "
                        "a registry the cluster reaches)")
    if image.startswith(("oci:", "docker-archive:")):
        raise SpecError(f"a Kubernetes cluster pulls images from a registry, not {image}: "
                        "push it first (nsmagic push REF HOST/NAME:TAG) and give that name")
    image = image.removeprefix("docker://")
    limits = limits or Limits()
    notes: list[str] = []
    label = _name(name)
    container: dict[str, Any] = {"name": label, "image": image}
    if command:
        container["args"] = list(command)
    if env:
        container["env"] = [{"name": key, "value": value} for key, value in env.items()]
    resources: dict[str, str] = {}
    if limits.cpus is not None:
        resources["cpu"] = quantity_of_cpus(limits.cpus)
    if limits.memory is not None:
        resources["memory"] = quantity_of_bytes(limits.memory)
    if resources:
        container["resources"] = {"limits": resources}
    if limits.pids is not None:
        notes.append(f"--pids {limits.pids}: no Kubernetes form for one container (the node's "
                     "kubelet caps processes per pod: podPidsLimit)")
    if limits.memory_swap is not None:
        notes.append(f"--memory-swap {limits.memory_swap}: no Kubernetes form (swap is the "
                     "node's setting: memorySwap.swapBehavior)")
    if limits.cpu_weight is not None:
        notes.append(f"--cpu-weight {limits.cpu_weight}: no exact form (resources.requests.cpu "
                     "sets a pod's share of a busy node)")
    if limits.cpuset is not None:
        notes.append(f"--cpuset {limits.cpuset}: no Kubernetes form (the kubelet's static CPU "
                     "manager gives whole cores to Guaranteed pods)")
    security: dict[str, Any] = {}
    if privileged:
        security["privileged"] = True
    else:
        security["allowPrivilegeEscalation"] = False  # nsmagic sets no_new_privs
        security["seccompProfile"] = {"type": "RuntimeDefault" if seccomp else "Unconfined"}
    if read_only:
        security["readOnlyRootFilesystem"] = True
    if user:
        uid, _, gid = user.partition(":")
        if uid.isdigit() and (not gid or gid.isdigit()):
            security["runAsUser"] = int(uid)
            if gid:
                security["runAsGroup"] = int(gid)
        else:
            notes.append(f"--user {user}: runAsUser takes numbers, so the image's own user "
                         "runs; give --user UID[:GID]")
    container["securityContext"] = security
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if hostname:
        if _DNS_LABEL.fullmatch(hostname):
            pod_spec["hostname"] = hostname
        else:
            notes.append(f"--hostname {hostname}: a pod's hostname must be a DNS label "
                         "(lower-case letters, digits and '-'), so the pod's name is used")
    namespaces = set(namespaces) if namespaces is not None else None
    if net == "host" or (namespaces is not None and "net" not in namespaces):
        pod_spec["hostNetwork"] = True
    elif net in (None, "none"):
        notes.append("--net none: no per-pod form (the pod gets the cluster network; a "
                     "NetworkPolicy denying all traffic comes closest)")
    elif net.startswith("container:"):
        notes.append(f"--net {net}: containers of one pod share a network; put them in one "
                     "pod's containers list")
    if namespaces is not None and "pid" not in namespaces:
        pod_spec["hostPID"] = True
    if namespaces is not None and "ipc" not in namespaces:
        pod_spec["hostIPC"] = True
    if userns:
        pod_spec["hostUsers"] = False  # a user namespace of the pod's own (Kubernetes 1.25+)
    for volume in volumes:
        notes.append(f"--volume {volume}: no portable form (a hostPath volume would tie the "
                     "pod to one node's files)")
    labels = {"app.kubernetes.io/name": label, "app.kubernetes.io/managed-by": "nsmagic"}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": label, "labels": labels},
           "spec": pod_spec}
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": label, "labels": labels},
           "spec": {"backoffLimit": 0,
                    "template": {"metadata": {"labels": labels}, "spec": pod_spec}}}
    return Manifests(job, pod, notes)


# -- YAML ----------------------------------------------------------------------------------

def _scalar(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"  # only empty ones come here
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    # A JSON string is a YAML double-quoted scalar: never mistaken for a number or a bool.
    return json.dumps(str(value))


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML of dicts, lists and scalars (what manifests hold)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(item, indent + 2).rstrip("\n"))
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                inner = to_yaml(item, indent + 2).splitlines()
                lines.append(f"{pad}- {inner[0].lstrip()}")
                lines.extend(inner[1:])
            elif isinstance(item, list) and item:
                lines.append(f"{pad}-")
                lines.append(to_yaml(item, indent + 2).rstrip("\n"))
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(pad + _scalar(value))
    return "\n".join(lines) + "\n"


def _with_notes(text: str, notes: list[str]) -> str:
    """The notes as comments above the container's resources (or its securityContext)."""
    if not notes:
        return text
    lines = text.splitlines()
    anchor = next((i for i, line in enumerate(lines) if line.strip() == "resources:"),
                  next(i for i, line in enumerate(lines) if line.strip() == "securityContext:"))
    indent = lines[anchor][:len(lines[anchor]) - len(lines[anchor].lstrip())]
    comments = [f"{indent}# {note}" for note in notes]
    return "\n".join(lines[:anchor] + comments + lines[anchor:]) + "\n"


def from_keywords(keywords: dict[str, Any], command: list[str] | None,
                  name: str | None = None) -> Manifests:
    """Manifests of the options as nsmagic.runtime.options.keywords_from_args gives them
    (the command line's and the magics' options), without pulling the image."""
    limits = Limits.parse(**{option: keywords.get(option) for option in
                             ("cpus", "memory", "memory_swap", "pids", "cpu_weight", "cpuset")})
    return manifests(keywords.get("image") or "", command, name=name, limits=limits,
                     env=keywords.get("env"), hostname=keywords.get("hostname"),
                     user=keywords.get("user"), read_only=bool(keywords.get("read_only")),
                     net=keywords.get("net"), privileged=bool(keywords.get("privileged")),
                     seccomp=keywords.get("seccomp", True), userns=keywords.get("userns"),
                     namespaces=keywords.get("namespaces"),
                     volumes=keywords.get("volumes") or ())


def write(manifests_: Manifests, path: str) -> None:
    """The YAML stream to path ('-': standard output), replaced whole."""
    import sys

    text = manifests_.yaml()
    if path == "-":
        sys.stdout.write(text)
        return
    from nsmagic.images.files import write_atomic

    write_atomic(os.path.abspath(path), text.encode())
