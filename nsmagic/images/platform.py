"""The host's platform in OCI's words, and the manifest of an index that suits it."""

from __future__ import annotations

import os
import platform as _platform
from typing import Any

from nsmagic.errors import SpecError
from nsmagic.images.errors import ImageError
from nsmagic.images.manifest import Descriptor, Index

# uname -m -> (GOARCH, variant), as OCI's platform.architecture uses Go's names.
_ARCHITECTURES = {"x86_64": ("amd64", None), "amd64": ("amd64", None),
                  "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"),
                  "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "i686": ("386", None),
                  "i386": ("386", None), "ppc64le": ("ppc64le", None),
                  "s390x": ("s390x", None), "riscv64": ("riscv64", None)}


def host() -> dict[str, str]:
    """This machine's platform: {'os': 'linux', 'architecture': 'amd64'} here."""
    machine = _platform.machine()
    architecture, variant = _ARCHITECTURES.get(machine, (machine, None))
    found = {"os": "linux", "architecture": architecture}
    if variant:
        found["variant"] = variant
    return found


def parse(text: str | None) -> dict[str, str]:
    """OS/ARCH[/VARIANT] (Docker's --platform), or the host's when text is None."""
    if text is None:
        text = os.environ.get("NSMAGIC_PLATFORM")
        if not text:
            return host()
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise SpecError(f"the platform {text!r} is not valid: expected OS/ARCH[/VARIANT] "
                        "such as linux/amd64 or linux/arm64/v8")
    found = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        found["variant"] = parts[2]
    return found


def describe(value: dict[str, Any] | None) -> str:
    """linux/arm64/v8 from a platform object."""
    if not value:
        return "unknown"
    return "/".join(str(value[k]) for k in ("os", "architecture", "variant") if value.get(k))


def choose(index: Index, wanted: dict[str, str], where: str) -> Descriptor:
    """The index's manifest for the wanted platform (a variant matches when the entry names
    none, as containerd's matcher has it); ImageError lists what the index offers."""
    candidates = []
    for entry in index.manifests:
        offered = entry.platform or {}
        if offered.get("os") != wanted["os"] or offered.get("architecture") != \
                wanted["architecture"]:
            continue
        variant = offered.get("variant")
        if wanted.get("variant") and variant and variant != wanted["variant"]:
            continue
        # An exact variant match ranks before an entry that names none.
        candidates.append((variant != wanted.get("variant"), entry))
    if not candidates:
        offered = sorted({describe(e.platform) for e in index.manifests})
        raise ImageError(f"{where} has no image for {describe(wanted)}: it offers "
                         + (", ".join(offered) if offered else "no platform at all"))
    candidates.sort(key=lambda item: item[0])
    return candidates[0][1]
