"""The bundle on disk: config.json, the root filesystem it names, and a README."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nsmagic.cgroups.limits import Limits
from nsmagic.errors import SpecError
from nsmagic.oci import readme
from nsmagic.oci.config import assemble, root_ids
from nsmagic.oci.root import plan
from nsmagic.runtime.spec import ContainerSpec


@dataclass
class Bundle:
    """What export() wrote: the config and the notes on what could not be carried over."""

    path: Path
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def export(spec: ContainerSpec, directory: str | os.PathLike[str],
           args: list[str] | None = None, bundle_root: str = "bind",
           copy_rootfs: bool = False) -> Path:
    """Write an OCI runtime bundle for spec into directory; returns the directory.

    args: the command (process.args); default /bin/sh. bundle_root: "bind" (the root nsmagic
    shows, built from the host's directories) or "busybox" (a minimal busybox-static root).
    copy_rootfs: for --rootfs DIR, copy DIR into the bundle instead of referencing it.
    """
    return write_bundle(spec, directory, args, bundle_root, copy_rootfs).path


def write_bundle(spec: ContainerSpec, directory: str | os.PathLike[str],
                 args: list[str] | None = None, bundle_root: str = "bind",
                 copy_rootfs: bool = False) -> Bundle:
    """export(), returning the config and the notes as well."""
    bundle = Path(directory).absolute()
    root = plan(spec, bundle, bundle_root, copy_rootfs, root_ids(spec))
    _check_target(bundle)
    limit_notes: list[str] = []
    limits = _limits_of(spec, limit_notes)
    config, notes = assemble(spec, args, root, limits)
    notes += limit_notes
    bundle.mkdir(parents=True, exist_ok=True)
    root.write(bundle, spec)
    _write(bundle / "config.json", json.dumps(config, indent=2) + "\n", 0o600)
    _write(bundle / "README.md", readme.text(bundle, spec, config, root.mode, notes), 0o644)
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
