"""ContainerSpec and Payload: what a container is, validated once before anything is created."""

from __future__ import annotations

import os
import re
import socket
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from nsmagic.cgroups.limits import Limits
from nsmagic.errors import SpecError
from nsmagic.isolation.mounts import MountOptions, Volume
from nsmagic.isolation.namespaces import NAMESPACE_FLAGS
from nsmagic.isolation.users import parse as parse_user

# Docker's default set of namespaces, plus cgroup; user is decided by who runs the kernel.
DEFAULT_NAMESPACES = frozenset({"pid", "uts", "ipc", "net", "mount", "cgroup"})
ALL_NAMESPACES = frozenset(NAMESPACE_FLAGS)
_HOSTNAME_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# Docker's PATH for a container whose image sets none.
DOCKER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def validate_hostname(hostname: str) -> str:
    """Return hostname if it is a valid RFC 1123 host name of at most 64 characters."""
    if not hostname or len(hostname) > 64 or not all(
        _HOSTNAME_LABEL.match(label) for label in hostname.split(".")
    ):
        raise SpecError(
            f"--hostname {hostname!r} is not a valid host name: use letters, digits and "
            "hyphens (dots between labels), at most 64 characters, not starting or ending "
            "with a hyphen."
        )
    return hostname


def validate_name(name: str, what: str = "container name") -> str:
    """Return name if it can name a container or cgroup (no slashes, no '..', no spaces)."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise SpecError(
            f"{what} {name!r} is not valid: use 1-63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (no slashes or '..')."
        )
    return name


def container_environment(spec: ContainerSpec, extra: dict[str, str] | None = None,
                          image_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a container starts with, as Docker's: PATH (the notebook's Python
    environment first), HOSTNAME, HOME, TERM and LANG where the host sets them, and the
    --env variables; never the rest of the notebook's environment (its secrets included).
    In an image: the image's Env instead of PATH, TERM and LANG."""
    python_bin = os.path.dirname(sys.executable)
    path = DOCKER_PATH if python_bin in DOCKER_PATH.split(":") else f"{python_bin}:{DOCKER_PATH}"
    isolated = "user" in spec.namespaces or "mount" in spec.namespaces
    env = {"PATH": DOCKER_PATH if image_env is not None else path,
           "HOSTNAME": spec.effective_hostname if "uts" in spec.namespaces
           else socket.gethostname(),
           "HOME": "/root" if isolated else os.environ.get("HOME", "/")}
    if image_env is None:
        env.update({k: os.environ[k] for k in ("TERM", "LANG") if k in os.environ})
    else:
        env.update(image_env)
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class ImageRoot:
    """What a spec takes from an image (resolved by the options layer): its name, its
    unpacked layers (lowest first) and its config's Env, WorkingDir and User."""

    name: str
    layers: tuple[str, ...]
    userxattr: bool = False
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str = ""
    user: str = ""


@dataclass(frozen=True)
class ContainerSpec:
    """How a container is isolated and limited; immutable once validated."""

    namespaces: frozenset[str] = DEFAULT_NAMESPACES
    hostname: str | None = None
    limits: Limits = field(default_factory=Limits)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    mount_proc: bool = True
    private_tmp: bool = True
    read_only: bool = False  # no writable layer: the root read-only
    overlay: bool = False  # the private writable layer, which every root has by default
    rootfs: str | None = None
    host_root: bool = False  # the host's root as it is, read-write (loudly)
    image: str | None = None  # the image's name (its layers below are the root)
    image_layers: tuple[str, ...] = ()  # unpacked layer directories, lowest first
    image_userxattr: bool = False  # the layers keep overlayfs attributes in user.* xattrs
    image_upper: str | None = None  # the writable layer's directory (upper/, work/) on disk
    user: str | None = None  # NAME[:GROUP] or UID[:GID] the payload runs as (an image's)
    volumes: tuple[Volume, ...] = ()
    # Who root inside is on the host (user namespace only): the caller itself when it is not
    # root; as root None, and the fork server gives the container a range of its own.
    uid_outside: int | None = None
    gid_outside: int | None = None
    name: str | None = None
    cgroup: str | None = None  # run in this existing nsmagic cgroup instead of a fresh one
    net: str = "none"  # none (own namespace, lo), bridge, host, or container:NAME (shared)
    privileged: bool = False  # keep every capability and allow privilege gains (loudly)
    seccomp: bool = True  # the default seccomp filter (--security-opt seccomp=unconfined: off)
    container_id: str = field(default_factory=lambda: os.urandom(6).hex())

    def mount_options(self) -> MountOptions:
        """The mount namespace's shape, for the isolation layer."""
        root = "host" if self.host_root else ("image" if self.image else self.rootfs or "view")
        return MountOptions(root=root, layers=self.image_layers,
                            userxattr=self.image_userxattr, upper=self.image_upper,
                            read_only=self.read_only,
                            proc=self.mount_proc,
                            private_tmp=self.private_tmp, volumes=self.volumes,
                            own_network="net" in self.namespaces,
                            ipc_namespace="ipc" in self.namespaces)

    @property
    def effective_hostname(self) -> str:
        """The host name inside: the one asked for, else the name, else the id (as Docker)."""
        return self.hostname or self.name or self.container_id

    @classmethod
    def build(
        cls,
        namespaces: set[str] | frozenset[str] | None = None,
        userns: bool | None = None,
        hostname: str | None = None,
        limits: Limits | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        name: str | None = None,
        cgroup: str | None = None,
        read_only: bool = False,
        overlay: bool = False,
        rootfs: str | None = None,
        volumes: list[str] | tuple[Volume, ...] = (),
        net: str | None = None,
        privileged: bool = False,
        host_root: bool = False,
        seccomp: bool = True,
        image: ImageRoot | None = None,
        user: str | None = None,
        is_root: bool | None = None,
    ) -> ContainerSpec:
        """Validate options into a spec; userns=None means 'only when not root'."""
        chosen = set(DEFAULT_NAMESPACES if namespaces is None else namespaces)
        net = net or ("none" if "net" in chosen else "host")
        if net == "host":
            chosen.discard("net")
        elif net in ("none", "bridge"):
            chosen.add("net")
        elif net.startswith("container:") and net.split(":", 1)[1]:
            chosen.discard("net")  # joined (through the other container's pidfd), not created
        else:
            raise SpecError(f"--net must be none, bridge, host or container:NAME, not {net!r}.")
        unknown = chosen - ALL_NAMESPACES
        if unknown:
            raise SpecError(
                f"unknown namespace {sorted(unknown)[0]!r}: choose from "
                f"{', '.join(sorted(ALL_NAMESPACES))}."
            )
        is_root = os.geteuid() == 0 if is_root is None else is_root
        if userns is None:
            userns = "user" in chosen or not is_root
        if userns:
            chosen.add("user")
        else:
            chosen.discard("user")
            if not is_root and chosen:
                raise SpecError(
                    "creating namespaces needs root or a user namespace: drop --no-userns "
                    "(or run the kernel as root)."
                )
        if net == "bridge" and not is_root:
            raise SpecError("--net bridge needs root (a veth pair on the host needs "
                            "CAP_NET_ADMIN there): use --net none here.")
        if hostname is not None:
            validate_hostname(hostname)
            if "uts" not in chosen:
                raise SpecError("--hostname needs a private UTS namespace: drop --no-uts.")
        if name is not None:
            validate_name(name)
        if cgroup is not None:
            validate_name(cgroup, "cgroup name")
            if limits is not None and not limits.is_empty():
                raise SpecError(
                    "--cgroup runs in an existing group, whose limits are changed with "
                    "%cgroup set: drop the limit options."
                )
        volume_list = tuple(v if isinstance(v, Volume) else parse_volume(v) for v in volumes)
        if (read_only or overlay or rootfs or volume_list or host_root) \
                and "mount" not in chosen:
            raise SpecError("--read-only, --overlay, --rootfs, --host-root and --volume need "
                            "a private mount namespace: drop --no-mount.")
        if read_only and overlay:
            raise SpecError("--read-only and --overlay contradict each other: the overlay "
                            "is a writable layer; give one.")
        if host_root and (read_only or overlay or rootfs):
            raise SpecError("--host-root shows the host's own root, read-write: it takes no "
                            "--read-only, --overlay or --rootfs.")
        if image is not None and (rootfs or host_root):
            raise SpecError("--image gives the container its root: it takes no --rootfs or "
                            "--host-root.")
        if image is not None and "mount" not in chosen:
            raise SpecError("--image needs a private mount namespace: drop --no-mount.")
        if user is not None:
            parse_user(user)
        if rootfs is not None:
            rootfs = os.path.abspath(rootfs)
            if not os.path.isdir(rootfs):
                raise SpecError(f"--rootfs {rootfs!r} is not a directory.")
        spec = cls(
            namespaces=frozenset(chosen),
            hostname=hostname,
            limits=limits or Limits(),
            env=env or {},
            # Docker's default: /. With the host's root, where the notebook is.
            cwd=cwd or (os.getcwd() if host_root or "mount" not in chosen else "/"),
            mount_proc="pid" in chosen and "mount" in chosen,
            private_tmp="mount" in chosen,
            name=name,
            cgroup=cgroup,
            net=net,
            privileged=privileged,
            seccomp=seccomp and not privileged,
            read_only=read_only,
            overlay=overlay,
            rootfs=rootfs,
            host_root=host_root or "mount" not in chosen,
            volumes=volume_list,
            user=user if user is not None else (image.user or None if image else None),
        )
        if image is not None:
            spec = replace(spec, image=image.name, image_layers=tuple(image.layers),
                           image_userxattr=image.userxattr,
                           cwd=cwd or image.working_dir or "/")
        spec = replace(spec, env=container_environment(spec, env, image.env if image else None))
        if userns:
            spec = replace(spec, uid_outside=None if is_root else os.geteuid(),
                           gid_outside=None if is_root else os.getegid())
        return spec

    def to_wire(self, private: bool = True) -> dict[str, Any]:
        """JSON-safe form; private=False leaves out what only the container's own main
        process may hold (its environment and working directory), for the fork server."""
        data = asdict(self)
        data["namespaces"] = sorted(self.namespaces)
        if not private:
            data["env"], data["cwd"] = {}, "/"
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ContainerSpec:
        """Inverse of to_wire."""
        data = dict(data)
        data["namespaces"] = frozenset(data["namespaces"])
        data["limits"] = Limits(**data["limits"])
        data["volumes"] = tuple(Volume(**v) for v in data.get("volumes", ()))
        data["image_layers"] = tuple(data.get("image_layers", ()))
        return cls(**data)


def warm_profile() -> ContainerSpec:
    """The spec warm containers are prepared for: Docker's default namespaces, as root."""
    return ContainerSpec(namespaces=DEFAULT_NAMESPACES, mount_proc=True, private_tmp=True)


def matches_warm_profile(spec: ContainerSpec) -> bool:
    """True when a warm container can serve this spec exactly as a cold one would."""
    profile = warm_profile()
    return (os.geteuid() == 0 and spec.namespaces == profile.namespaces and spec.net == "none"
            and not spec.privileged  # warm processes have dropped their bounding set
            and spec.seccomp == profile.seccomp
            and spec.mount_proc == profile.mount_proc
            and spec.private_tmp == profile.private_tmp and spec.cgroup is None
            and spec.mount_options() == profile.mount_options())


def parse_volume(text: str) -> Volume:
    """HOST:CONTAINER[:ro|rw] -> Volume; both paths absolute, the host one existing."""
    parts = str(text).split(":")
    mode = "rw"
    if len(parts) == 3:
        mode = parts.pop()
    if len(parts) != 2 or mode not in ("ro", "rw") or not all(parts):
        raise SpecError(f"--volume takes HOST:CONTAINER or HOST:CONTAINER:ro, not {text!r}.")
    host, container = parts
    if not (os.path.isabs(host) and os.path.isabs(container)):
        raise SpecError(f"--volume {text!r}: both paths must be absolute.")
    if ".." in container.split("/"):
        raise SpecError(f"--volume {text!r}: the container path must not contain '..'.")
    if os.path.normpath(container).split("/")[1] in ("proc", "sys", "dev") or container == "/":
        raise SpecError(f"--volume {text!r}: give HOST:CONTAINER[:ro] with a container path "
                        "other than / and outside /proc, /sys and /dev (the kernel's own view "
                        "of the container lives there).")
    if not os.path.exists(host):
        raise SpecError(f"--volume {text!r}: the host path {host!r} does not exist.")
    return Volume(os.path.normpath(host), os.path.normpath(container), mode == "ro")


@dataclass(frozen=True)
class Payload:
    """What runs inside: Python source, a shell script, or an agent serving many cells."""

    kind: str  # "python", "shell", "command" or "agent"
    source: str = ""
    argv: tuple[str, ...] = ()  # kind "command": the program and its arguments
    filename: str = "<container>"
    first_line: int = 1  # line number of source's first line, so tracebacks match the cell
    shell: str = "/bin/sh"
    inputs: bool = False  # variables arrive on the data socket before the code runs
    outputs: tuple[str, ...] = ()  # variables sent back on the data socket afterwards

    def __post_init__(self) -> None:
        if self.kind not in ("python", "shell", "command", "agent"):
            raise SpecError(f"payload kind must be 'python', 'shell', 'command' or 'agent', "
                            f"not {self.kind!r}.")
        if self.kind in ("shell", "command") and (self.inputs or self.outputs):
            raise SpecError("--in and --out move Python variables: they need a Python cell.")
        if self.kind == "command" and not self.argv:
            raise SpecError("a command payload needs the program to run.")

    def to_wire(self) -> dict[str, Any]:
        """JSON-safe form sent to the launcher."""
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Payload:
        """Inverse of to_wire."""
        return cls(**{**data, "outputs": tuple(data.get("outputs", ())),
                      "argv": tuple(data.get("argv", ()))})
