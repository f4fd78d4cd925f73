"""An image's unpacked layers seen as one read-only tree, as overlayfs stacks them.

A path is looked up from the top layer down: a 0/0 character device (a whiteout) hides it, an
opaque directory hides everything the layers below hold under it, and a layer whose entry on
the way is not a directory hides the rest. diff compares a container's writable layer with
this view; COPY and WORKDIR ask it whether a directory is there already.
"""

from __future__ import annotations

import os
import stat


def is_whiteout(info: os.stat_result) -> bool:
    """overlayfs's whiteout: a character device with device number 0/0."""
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


def is_opaque(path: str, attributes: tuple[str, ...]) -> bool:
    """Whether the directory hides what lower layers hold under it ("y": kernels since 6.7
    also write "x", which means "may hold whiteouts", not opaque)."""
    for name in attributes:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue  # not set, or trusted.* not readable by this user
    return False


class LowerView:
    """The stacked layers (directories, lowest first) as the container saw them at start."""

    def __init__(self, layers: list[str] | tuple[str, ...], opaque_xattr: str) -> None:
        self.layers = list(layers)
        self.attributes = (opaque_xattr,)

    def lookup(self, relative: str) -> os.stat_result | None:
        """lstat of the path as the stacked layers show it; None if it is not there."""
        return self.find(relative)[0]

    def find(self, relative: str) -> tuple[os.stat_result | None, str | None]:
        """lstat of the path and the layer file that provides it."""
        parts = [p for p in relative.split("/") if p]
        if not parts:
            return (os.lstat(self.layers[-1]), self.layers[-1]) if self.layers else (None, None)
        for layer in reversed(self.layers):
            path = layer
            hidden_below = False
            for index, part in enumerate(parts):
                path = os.path.join(path, part)
                try:
                    info = os.lstat(path)
                except (FileNotFoundError, NotADirectoryError):
                    break
                if is_whiteout(info):
                    return None, None
                if index == len(parts) - 1:
                    return info, path
                if not stat.S_ISDIR(info.st_mode):
                    return None, None  # a file of this layer stands where a directory was
                if is_opaque(path, self.attributes):
                    hidden_below = True
            if hidden_below:
                return None, None
        return None, None

    def is_directory(self, relative: str) -> bool:
        info = self.lookup(relative)
        return info is not None and stat.S_ISDIR(info.st_mode)

    def children(self, relative: str) -> list[str]:
        """The names the directory shows, sorted."""
        candidates: set[str] = set()
        for layer in self.layers:
            try:
                candidates.update(os.listdir(os.path.join(layer, relative)))
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
        prefix = f"{relative}/" if relative else ""
        return sorted(name for name in candidates
                      if self.lookup(prefix + name) is not None)

    def read(self, relative: str, limit: int = 1 << 20) -> bytes | None:
        """A small file's content (an /etc/passwd), following no link; None if absent."""
        info, path = self.find(relative)
        if info is None or path is None or not stat.S_ISREG(info.st_mode):
            return None
        with open(path, "rb") as handle:
            return handle.read(limit)
