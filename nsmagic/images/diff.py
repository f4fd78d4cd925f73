"""What a container changed: its writable layer (overlayfs's upper directory) against its image.

The upper directory holds overlayfs's own format: files and directories the container made or
copied up to change, 0/0 character devices where it deleted something of the image, and an
opaque attribute on a directory it replaced whole. The runtime's own mount points there
(/.nsmagic, /proc, /dev, /sys, /tmp and the bound /etc/hostname, /etc/hosts, /etc/resolv.conf)
are no change of the user's, and are left out, as Docker leaves out its init layer.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from nsmagic.images.lower import LowerView, is_opaque, is_whiteout

# Mount points the runtime makes in every image container (and what is below them).
RUNTIME_PATHS = frozenset({".nsmagic", "proc", "dev", "sys", "tmp", "etc/hostname",
                           "etc/hosts", "etc/resolv.conf"})
OVERLAY_ATTRIBUTES = ("trusted.overlay.opaque", "user.overlay.opaque")
# overlayfs features that would make the upper directory depend on the lower layers' data.
UNSUPPORTED_ATTRIBUTES = ("overlay.redirect", "overlay.metacopy")


@dataclass(frozen=True)
class Change:
    """One line of docker diff: kind A (added), C (changed) or D (deleted), and the path."""

    kind: str
    path: str

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


@dataclass
class UpperEntry:
    """One entry of the writable layer that belongs in a committed layer."""

    path: str  # relative to the root, no leading '/'
    source: str  # its file in the upper directory
    kind: str  # "entry", "whiteout" (a deletion) or "opaque" (a directory replaced whole)
    change: str  # A, C or D
    hidden: list[str] = field(default_factory=list)  # lower paths an opaque directory hides


class Changes(list):
    """The changes, in path order; prints as docker diff does."""

    def __str__(self) -> str:
        return "\n".join(str(change) for change in self)

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # noqa: ANN001
        printer.text(str(self) if self else "(no changes)")


class _Walker:
    def __init__(self, upper: str, lower: LowerView, excluded: frozenset[str]) -> None:
        self.upper = upper
        self.lower = lower
        self.excluded = excluded
        self.entries: list[UpperEntry] = []

    def is_excluded(self, relative: str) -> bool:
        parts = relative.split("/")
        return any("/".join(parts[:i]) in self.excluded for i in range(1, len(parts) + 1))

    def walk(self, relative: str, hiding: bool) -> tuple[bool, bool]:
        """Add the directory's entries; (whether any was added, whether any runtime mount
        point was found in it). hiding: an opaque directory above hides the lower layers."""
        directory = os.path.join(self.upper, relative) if relative else self.upper
        names = sorted(os.listdir(directory))
        # Whiteouts before their sibling entries, as the OCI image spec asks of a layer.
        infos = {name: os.lstat(os.path.join(directory, name)) for name in names}
        names.sort(key=lambda name: (not is_whiteout(infos[name]), name))
        added = found_runtime = False
        for name in names:
            path = f"{relative}/{name}" if relative else name
            if self.is_excluded(path):
                found_runtime = True
                continue
            info = infos[name]
            source = os.path.join(directory, name)
            _refuse_unsupported(source, path)
            below = self.lower.lookup(path)
            if is_whiteout(info):
                if below is not None and not hiding:
                    self.entries.append(UpperEntry(path, source, "whiteout", "D"))
                    added = True
                continue
            if stat.S_ISSOCK(info.st_mode):
                continue  # a socket is no file an image can hold (Docker skips them too)
            if stat.S_ISDIR(info.st_mode):
                added |= self.directory(path, source, info, below, hiding)
                continue
            self.entries.append(UpperEntry(path, source, "entry", "A" if below is None else "C"))
            added = True
        return added, found_runtime

    def directory(self, path: str, source: str, info: os.stat_result,
                  below: os.stat_result | None, hiding: bool) -> bool:
        was_directory = below is not None and stat.S_ISDIR(below.st_mode)
        opaque = was_directory and is_opaque(source, OVERLAY_ATTRIBUTES)
        entry = UpperEntry(path, source, "opaque" if opaque else "entry",
                           "C" if below is not None else "A")
        position = len(self.entries)
        self.entries.append(entry)
        inner_added, inner_runtime = self.walk(path, hiding or opaque)
        if (opaque or hiding) and was_directory:
            present = set(os.listdir(source))
            entry.hidden = [f"{path}/{name}" for name in self.lower.children(path)
                            if name not in present and not self.is_excluded(f"{path}/{name}")]
        if opaque or hiding or inner_added or entry.hidden:
            return True
        if was_directory and _same_metadata(info, below):
            del self.entries[position]  # copied up only for what changed below it
            return False
        if not was_directory and inner_runtime:
            del self.entries[position]  # made by the runtime for its mount points
            return False
        return True


def _same_metadata(info: os.stat_result, other: os.stat_result | None) -> bool:
    # Times are not compared: making a mount point in a directory changes its mtime.
    return other is not None and (info.st_mode, info.st_uid, info.st_gid) == (
        other.st_mode, other.st_uid, other.st_gid)


def _refuse_unsupported(source: str, path: str) -> None:
    from nsmagic.images.errors import ImageError

    try:
        names = os.listxattr(source, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if name.endswith(UNSUPPORTED_ATTRIBUTES):
            raise ImageError(f"/{path} in the writable layer carries {name} (overlayfs's "
                             "redirect_dir or metacopy feature), so its content lives in the "
                             "image's layers: nsmagic mounts without these features; commit "
                             "a container started by nsmagic")


def upper_entries(upper: str, layers: list[str] | tuple[str, ...], opaque_xattr: str,
                  excluded: frozenset[str] = RUNTIME_PATHS) -> list[UpperEntry]:
    """The writable layer's entries that are the container's changes, parents first."""
    walker = _Walker(upper, LowerView(layers, opaque_xattr), excluded)
    walker.walk("", False)
    return walker.entries


def changes_of(entries: list[UpperEntry]) -> Changes:
    """The A/C/D lines of the entries, in path order (docker diff's)."""
    found = []
    for entry in entries:
        found.append(Change(entry.change, "/" + entry.path))
        found.extend(Change("D", "/" + hidden) for hidden in entry.hidden)
    return Changes(sorted(found, key=lambda change: change.path))


def diff(upper: str, layers: list[str] | tuple[str, ...], opaque_xattr: str,
         excluded: frozenset[str] = RUNTIME_PATHS) -> Changes:
    """What the writable layer upper changed in the image of these layers (lowest first)."""
    return changes_of(upper_entries(upper, layers, opaque_xattr, excluded))
