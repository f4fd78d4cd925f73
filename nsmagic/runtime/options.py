"""The one policy layer every front end passes through (the magics, the command line and
nsmagic.run): the container options declared once, read from a parsed command line or from
keywords, validated into a ContainerSpec, with the host's tier applied -- where nothing can be
isolated, a plain child process labelled NOT isolated, or one sentence refusing the isolation
that was asked for."""

from __future__ import annotations

import argparse
import functools
import os
from dataclasses import dataclass, field
from typing import Any

from nsmagic.cgroups.limits import Limits
from nsmagic.errors import SpecError
from nsmagic.runtime.registry import REGISTRY
from nsmagic.runtime.spec import DEFAULT_NAMESPACES, ContainerSpec, ImageRoot

SWITCHABLE = ("pid", "uts", "ipc", "net", "mount")
LIMIT_OPTIONS = ("cpus", "memory", "memory_swap", "pids", "cpu_weight", "cpuset")


@dataclass(frozen=True)
class Option:
    """One command-line option of a container, as argparse takes it."""

    flags: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)


def _no_namespace_options() -> list[Option]:
    options = [Option((f"--no-{name}",), {"action": "store_true",
                                           "help": f"no {name.upper()} namespace of its own"})
               for name in SWITCHABLE]
    options.append(Option(("--no-cgroupns",), {"action": "store_true",
                                                "help": "no cgroup namespace of its own"}))
    return options


# The options of a container wherever it starts: %%container, %container start, nsmagic run
# and nsmagic export. Front ends add their own (cells, output, timeouts) beside these.
CONTAINER_OPTIONS: tuple[Option, ...] = (
    Option(("--hostname",), {"help": "host name inside the container (UTS namespace)"}),
    *_no_namespace_options(),
    Option(("--userns",), {"action": "store_true", "default": None,
                           "help": "map root inside to an unprivileged user outside "
                                   "(automatic when not root)"}),
    Option(("--no-userns",), {"action": "store_true", "help": "no user namespace (needs root)"}),
    Option(("--cpus",), {"help": "CPU quota in cores, e.g. 0.5"}),
    Option(("--memory",), {"help": "memory limit, e.g. 256M, 1.5G, 1GiB or bytes"}),
    Option(("--memory-swap",), {"help": "memory plus swap limit (as Docker's), or -1 for no "
                                        "limit"}),
    Option(("--pids",), {"help": "most processes at once, e.g. 64"}),
    Option(("--cpu-weight",), {"help": "relative CPU weight 1-10000 (100 is the default)"}),
    Option(("--cpuset",), {"help": "CPUs the container may use, e.g. 0 or 0-1"}),
    Option(("--net",), {"metavar": "MODE",
                        "help": "none (own namespace, only lo; the default), bridge (a veth on "
                                "nsmagic's bridge: containers reach each other), host, or "
                                "container:NAME (share that container's network)"}),
    Option(("--read-only",), {"action": "store_true",
                              "help": "the container's root read-only"}),
    Option(("--overlay",), {"action": "store_true",
                            "help": "a writable root whose changes vanish with the container"}),
    Option(("--image",), {"metavar": "REF",
                          "help": "an image's layers as the container's root (pulled if "
                                  "needed): NAME[:TAG], HOST[:PORT]/NAME[:TAG], oci:DIR[:TAG] "
                                  "or docker-archive:FILE"}),
    Option(("--user", "-u"), {"metavar": "NAME[:GROUP]",
                              "help": "the user the code runs as inside (an image's own by "
                                      "default)"}),
    Option(("--rootfs",), {"metavar": "DIR", "help": "DIR as the container's root"}),
    Option(("--host-root",), {"action": "store_true",
                              "help": "the host's own root, read-write (NOT isolated from "
                                      "the host's files: use only when you mean it)"}),
    Option(("--volume", "-v"), {"action": "append", "default": [],
                                "metavar": "HOST:CONTAINER[:ro]",
                                "help": "bind-mount a host path (repeatable); '.' shares "
                                        "the notebook's folder at its own path and starts "
                                        "there"}),
    Option(("--env", "-e"), {"action": "append", "default": [], "metavar": "KEY=VALUE",
                             "help": "set an environment variable inside (repeatable); "
                                     "KEY alone passes the notebook's own value"}),
    Option(("--security-opt",), {"action": "append", "default": [], "metavar": "OPTION",
                                 "help": "seccomp=unconfined turns the seccomp filter off "
                                         "(as Docker's)"}),
    Option(("--privileged",), {"action": "store_true",
                               "help": "keep every capability and allow privilege gains (NOT "
                                       "isolated from the host kernel's administration: use "
                                       "only when you mean it)"}),
)


def add_container_options(parser: argparse.ArgumentParser) -> None:
    """Declare CONTAINER_OPTIONS on an argparse parser (the command line's)."""
    for option in CONTAINER_OPTIONS:
        parser.add_argument(*option.flags, **option.settings)


def keywords_from_args(args: Any, defaults: dict[str, str | None] | None = None
                       ) -> dict[str, Any]:
    """The keywords of build_spec() from parsed CONTAINER_OPTIONS; defaults fill limit
    options that were not given at all (an empty value is given, and invalid)."""
    defaults = defaults or {}
    if args.userns and args.no_userns:
        raise SpecError("--userns and --no-userns contradict each other; give one.")
    namespaces = set(DEFAULT_NAMESPACES)
    for name in SWITCHABLE:
        if getattr(args, f"no_{name}", False):
            namespaces.discard(name)
    if getattr(args, "no_cgroupns", False):
        namespaces.discard("cgroup")
    volumes, cwd = volumes_from(args.volume)
    keywords: dict[str, Any] = {
        "namespaces": namespaces,
        "userns": True if args.userns else (False if args.no_userns else None),
        "hostname": args.hostname, "env": environment_from(args.env), "net": args.net,
        "read_only": args.read_only, "overlay": args.overlay, "rootfs": args.rootfs,
        "host_root": args.host_root, "volumes": volumes, "privileged": args.privileged,
        "seccomp": seccomp_from(args.security_opt), "image": args.image, "user": args.user,
    }
    if cwd is not None:
        keywords["cwd"] = cwd
    for name in LIMIT_OPTIONS:
        value = getattr(args, name, None)
        keywords[name] = defaults.get(name) if value is None else value
    return keywords


def environment_from(items: list[str]) -> dict[str, str]:
    """--env KEY=VALUE items as a dict; KEY alone passes the notebook's value of KEY (or
    nothing, where it has none, as Docker does)."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key or "\0" in item or not key.replace("_", "a").isalnum():
            raise SpecError(f"--env takes KEY=VALUE or KEY (a variable name; no NUL "
                            f"characters), not {item!r}.")
        if sep:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    return env


def volumes_from(items: list[str]) -> tuple[list[str], str | None]:
    """--volume items, with '.' (the notebook's folder at its own path, read-write) made
    explicit; and the working directory it implies, if any."""
    volumes, cwd = [], None
    for item in items:
        if item in (".", ".:ro"):
            here = os.getcwd()
            volumes.append(f"{here}:{here}" + (":ro" if item.endswith(":ro") else ""))
            cwd = here
        else:
            volumes.append(item)
    return volumes, cwd


def seccomp_from(items: list[str]) -> bool:
    """--security-opt items: whether the default seccomp filter applies."""
    seccomp = True
    for item in items:
        if item == "seccomp=unconfined":
            seccomp = False
        elif item not in ("seccomp=default", "no-new-privileges", "no-new-privileges:true"):
            raise SpecError(f"--security-opt takes seccomp=unconfined, seccomp=default or "
                            f"no-new-privileges (always on here), not {item!r}.")
    return seccomp


def network_to_share(net: str | None) -> int | None:
    """For --net container:NAME, a pidfd of that container's pid 1, the caller's to close;
    None for every other mode. NAME is a running container of this process (a named
    container in a notebook), or, outside one, the pid of a process in the container."""
    if not net or not net.startswith("container:"):
        return None
    wanted = net.split(":", 1)[1]
    record = REGISTRY.running(wanted)
    pidfd = record.pidfd_of() if record is not None and record.pidfd_of else None
    if pidfd is not None:
        return os.dup(pidfd)
    if wanted.isdigit():
        try:
            return os.pidfd_open(int(wanted))
        except OSError as error:
            raise SpecError(f"--net {net}: there is no process {wanted} to share a network "
                            f"with ({error.strerror}).") from None
    raise SpecError(f"--net {net}: there is no running container named {wanted!r} to share "
                    "a network with (%container ls lists them).")


@dataclass
class Resolved:
    """A validated spec and the notes a front end shows with it."""

    spec: ContainerSpec
    notes: list[str] = field(default_factory=list)


def build_spec(**options: Any) -> Resolved:
    """Validate keyword options (those of ContainerSpec.build, with limits as a Limits or as
    cpus=/memory=/...) into a spec, applying the host's tier; SpecError in one sentence."""
    limit_words = {k: options.pop(k) for k in LIMIT_OPTIONS if k in options}
    given = {k: v for k, v in limit_words.items() if v is not None}
    if given:
        if options.get("limits") is not None:
            raise SpecError("give limits either as a Limits or as cpus=, memory=, ..., not "
                            "both.")
        options["limits"] = Limits.parse(**given)
    notes: list[str] = []
    if not can_isolate():
        notes.append(_not_isolated(options))
    if options.get("cgroup") is not None:
        notes += _use_named_group(options)
    if isinstance(options.get("image"), str):
        options["image"], image_notes = image_root(options["image"])
        notes += image_notes
    spec = ContainerSpec.build(**options)
    if spec.privileged:
        notes.append("PRIVILEGED container: root inside keeps every capability (it can "
                     "mount, load kernel modules, change the host's clock), no_new_privs "
                     "is off and there is no seccomp filter.")
    elif not spec.seccomp:
        notes.append("NO SECCOMP FILTER (seccomp=unconfined): every system call is open to "
                     "the container, keyctl, bpf and perf_event_open included.")
    if spec.host_root and spec.namespaces:
        notes.append("HOST ROOT: the container sees the host's own files and can change "
                     "every one its user may" + (" (it shares the host's mount namespace)"
                                                 if "mount" not in spec.namespaces else "")
                     + ".")
    return Resolved(spec, notes)


def image_root(reference: str, progress: Any = None) -> tuple[ImageRoot, list[str]]:
    """What a container takes from an image (pulled first if the store lacks it): its
    layers and config; and notes (what unpacking skipped, another platform)."""
    from nsmagic import images

    try:
        try:
            image = images.get(reference)
        except images.ImageError:
            image = images.pull(reference, progress)  # (also repairs a damaged one)
        config = image.config
        layers = tuple(image.layer_dirs())
    except images.ImageError as error:
        raise SpecError(f"--image {reference}: {error}") from None
    root = ImageRoot(name=image.name, layers=layers,
                     userxattr=image.userxattr, env=config.environment,
                     working_dir=config.working_dir, user=config.user)
    return root, list(image.notes)


def _not_isolated(options: dict[str, Any]) -> str:
    """The honest fallback where nothing can be isolated (a hosted notebook without user
    namespaces): a plain child process, said so on every run; isolation that was asked for
    explicitly is refused instead."""
    asked = [flag for flag, wanted in (
        ("--hostname", options.get("hostname")),
        ("--net", options.get("net") not in (None, "host", "none")),
        ("--read-only", options.get("read_only")), ("--overlay", options.get("overlay")),
        ("--rootfs", options.get("rootfs")), ("--volume", options.get("volumes")),
        ("--image", options.get("image")),
        ("--userns", options.get("userns")),
    ) if wanted]
    if asked:
        raise SpecError(f"this host allows no namespaces, so {', '.join(asked)} cannot apply "
                        "(see nsmagic doctor).")
    options.update(namespaces=set(), userns=False, net="host")
    limits = options.get("limits")
    return ("NOT isolated: this host allows no namespaces (no root, no user namespaces; see "
            "nsmagic doctor), so the code runs as a plain child process"
            + (", its limits as per-process rlimits" if limits and not limits.is_empty()
               else "") + ".")


def _use_named_group(options: dict[str, Any]) -> list[str]:
    """--cgroup NAME: the group's own limits apply (limit options are refused by the spec)."""
    from nsmagic.runtime import groups

    limits = options.get("limits")
    if limits is not None and not limits.is_empty():
        return []  # ContainerSpec.build says why not
    name = options["cgroup"]
    keywords, notes = groups.container_options(name)
    if "limits" in keywords:  # an rlimit group: its limits travel with the container
        options.pop("cgroup")
    options.update(keywords)
    return notes


@functools.lru_cache(maxsize=1)
def can_isolate() -> bool:
    """False where this host allows no namespaces at all (tier 'none' of nsmagic doctor).

    Root is assumed able to (a failure then says which step); otherwise the capability
    probe runs once per process.
    """
    if os.geteuid() == 0:
        return True
    from nsmagic import host

    try:
        return host.probe().tier != "none"
    except Exception:  # noqa: BLE001 - the container start will say what fails
        return True
