"""What of the host a default container sees: a read-only view of just what its Python needs
(the OS userland, the interpreter, nsmagic and its virtual environment), and which of those
files are the host's secrets, masked inside.

Computed once, in the fork server before it forks anything (walking /etc takes tens of
milliseconds), so every container inherits the answer.
"""

from __future__ import annotations

import functools
import os
import stat
import sys
from dataclasses import dataclass

# The OS userland, where the host has it. On a merged-/usr system (Debian 12) /bin, /sbin
# and /lib* are symbolic links into /usr, recreated as links.
USERLAND = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# Directories a root filesystem has; the container gets them empty (its own).
EMPTY_DIRECTORIES = {"/dev": 0o755, "/proc": 0o555, "/sys": 0o555, "/tmp": 0o1777,
                     "/run": 0o755, "/var": 0o755, "/var/tmp": 0o1777, "/root": 0o700,
                     "/home": 0o755, "/mnt": 0o755, "/opt": 0o755, "/srv": 0o755,
                     "/media": 0o755}
# The package whose code containers run: shown alone, not the folder it sits in.
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class HostView:
    """The host paths a container sees, each at the same path inside."""

    directories: tuple[str, ...]  # shown read-only, each its own mount
    links: tuple[tuple[str, str], ...]  # (path, target): symbolic links recreated
    masked: tuple[str, ...]  # inside those: hidden (empty file or empty directory)


@functools.lru_cache(maxsize=1)
def host_view() -> HostView:
    """The view of this host for this process's interpreter (computed once per process)."""
    directories: list[str] = []
    links: list[tuple[str, str]] = []
    for path in USERLAND:
        if os.path.islink(path):
            links.append((path, os.readlink(path)))
        elif os.path.isdir(path):
            directories.append(path)
    for path in _python_paths():
        if not any(_within(path, shown) for shown in directories):
            directories.append(path)
    directories = _outermost(directories)
    masked = [m for d in directories for m in _secrets_under(d)] if "/etc" in directories \
        else []
    return HostView(tuple(directories), tuple(links), tuple(sorted(masked)))


def package_directory() -> str:
    """nsmagic's own package directory on the host."""
    return _PACKAGE


def _python_paths() -> list[str]:
    """The directories the interpreter imports from and runs from: its prefixes, the
    directories on sys.path (nsmagic's own folder as just the package), its executable's."""
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix,
                  os.path.dirname(os.path.realpath(sys.executable)), _PACKAGE]
    checkout = os.path.realpath(os.path.dirname(_PACKAGE))
    for entry in sys.path:
        if entry and os.path.isdir(entry) and os.path.realpath(entry) != checkout:
            candidates.append(entry)  # (the checkout of an editable install: nsmagic only)
    found = []
    for path in (os.path.realpath(p) for p in candidates):
        if _may_show(path) and os.path.isdir(path) and path not in found:
            found.append(path)
    return found


def _may_show(path: str) -> bool:
    """An interpreter's folder is shown wherever it is (a venv in a home directory, a conda
    under /srv): just that folder. Never a home directory itself, nor anything under /tmp
    (containers get a private one), /proc, /sys or /dev."""
    if path in ("/", "/root", "/home") or os.path.dirname(path) == "/home":
        return False
    return not any(_within(path, d) for d in ("/tmp", "/proc", "/sys", "/dev"))


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _outermost(paths: list[str]) -> list[str]:
    """Drop paths inside another of the list (they are shown through it)."""
    return [p for p in paths if not any(p != q and _within(p, q) for q in paths)]


def _secrets_under(directory: str) -> list[str]:
    """Files nobody but their owner (or group) may read, and directories nobody else may
    list: /etc/shadow, /etc/ssl/private, ssh host keys and the like. Root inside the
    container would read them (it is their owner, or holds CAP_DAC_OVERRIDE)."""
    if directory != "/etc":
        return []
    secrets = []
    for parent, subdirectories, files in os.walk(directory):
        kept = []
        for name in subdirectories:
            path = os.path.join(parent, name)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode) and mode & 0o005 != 0o005:
                secrets.append(path)
            else:
                kept.append(name)
        subdirectories[:] = kept
        for name in files:
            path = os.path.join(parent, name)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if stat.S_ISREG(mode) and not mode & 0o004:
                secrets.append(path)
    return secrets
