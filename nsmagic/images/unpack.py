"""A layer's tar unpacked into its own directory, OCI whiteouts as overlayfs whiteouts.

Each layer is unpacked alone into a fresh directory, so a legitimate layer never needs to go
through a symbolic link it made itself: every entry whose path does, or whose path leaves the
directory, makes the layer unsafe and nothing of it is kept. Ownership, device nodes and
extended attributes are applied only by a privileged unpacker (real root); an unprivileged one
keeps its own ownership and skips what it cannot create, and says so.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO

from nsmagic.images.errors import ImageError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
# aufs's own bookkeeping (.wh..wh.plnk, .wh..wh.aufs): never part of the image (Docker skips it).
AUFS_META = ".wh..wh."
# A layer must not set overlayfs's own attributes: they would make a directory opaque or
# redirect a lookup in the stacked root behind the image author's declared changes.
OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
PAX_XATTR = "SCHILY.xattr."
COPY_CHUNK = 1 << 20


class UnsafeLayer(ImageError):
    """A layer entry would land outside its directory, or goes through a symbolic link."""


@dataclass
class UnpackReport:
    """What an unpack created and what it could not."""

    entries: int = 0
    skipped_devices: list[str] = field(default_factory=list)
    skipped_xattrs: set[str] = field(default_factory=set)

    def notes(self) -> list[str]:
        """The skips, one sentence each."""
        found = []
        if self.skipped_devices:
            names = ", ".join("/" + name for name in self.skipped_devices[:5])
            more = " and more" if len(self.skipped_devices) > 5 else ""
            found.append(f"{len(self.skipped_devices)} device node(s) skipped ({names}{more}): "
                         "only root can create them; a container gets its own /dev anyway")
        if self.skipped_xattrs:
            found.append("extended attributes skipped (" + ", ".join(sorted(self.skipped_xattrs))
                         + "): an unprivileged user can set user.* attributes only")
        return found


@dataclass
class _Directory:
    mode: int
    uid: int
    gid: int
    mtime: float
    xattrs: dict[str, bytes]


class _Unpacker:
    def __init__(self, dest: str, privileged: bool, opaque_xattr: str, label: str) -> None:
        self.dest = dest
        self.privileged = privileged
        self.opaque_xattr = opaque_xattr
        self.label = label
        self.report = UnpackReport()
        self.safe_dirs: set[str] = {""}
        self.directories: dict[str, _Directory] = {}

    # -- paths ----------------------------------------------------------------------------

    def unsafe(self, name: str, why: str) -> UnsafeLayer:
        return UnsafeLayer(f"{self.label} is not a safe image layer: its entry {name!r} {why}")

    def clean(self, name: str) -> str:
        """The entry's path relative to the layer's root; leading '/' stripped as tar and
        Docker do, '..' refused wherever it would climb above the root."""
        parts: list[str] = []
        for part in name.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise self.unsafe(name, "climbs out of the layer with '..'")
                parts.pop()
            else:
                parts.append(part)
        return "/".join(parts)

    def full(self, relative: str) -> str:
        return os.path.join(self.dest, relative) if relative else self.dest

    def parent_ready(self, name: str, relative: str, link_target: str | None = None) -> None:
        """Every directory above relative exists as a real directory of this layer."""
        parent = os.path.dirname(relative)
        missing = []
        while parent not in self.safe_dirs:
            missing.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(missing):
            path = self.full(directory)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                if link_target is not None:  # a link's target is never created
                    raise self.unsafe(name, f"is a hard link to {link_target!r}, which is "
                                      "not a file of this layer") from None
                os.mkdir(path, 0o755)
            else:
                if stat.S_ISLNK(info.st_mode):
                    raise self.unsafe(name, f"goes through the symbolic link {directory!r}")
                if not stat.S_ISDIR(info.st_mode):
                    raise self.unsafe(name, f"goes through {directory!r}, which is not a "
                                      "directory")
            self.safe_dirs.add(directory)

    def make_room(self, relative: str, for_directory: bool) -> None:
        """A later entry replaces an earlier one of the same name (tar's rule), except that
        a directory merges into a directory."""
        path = self.full(relative)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            if for_directory:
                return
            from nsmagic.images.files import remove_tree

            remove_tree(path)
            prefix = relative + "/"
            self.safe_dirs = {d for d in self.safe_dirs if d != relative
                              and not d.startswith(prefix)}
            self.directories = {d: v for d, v in self.directories.items()
                                if d != relative and not d.startswith(prefix)}
        else:
            os.unlink(path)

    # -- attributes -----------------------------------------------------------------------

    def xattrs_of(self, member: tarfile.TarInfo) -> dict[str, bytes]:
        found = {}
        for key, value in member.pax_headers.items():
            if not key.startswith(PAX_XATTR):
                continue
            name = key[len(PAX_XATTR):]
            if name.startswith(OVERLAY_XATTRS):
                continue
            if not self.privileged and not name.startswith("user."):
                self.report.skipped_xattrs.add(name)
                continue
            found[name] = value.encode("utf-8", "surrogateescape")
        return found

    def set_xattrs(self, target: int | str, xattrs: dict[str, bytes]) -> None:
        for name, value in xattrs.items():
            try:
                if isinstance(target, int):
                    os.setxattr(target, name, value)
                else:
                    os.setxattr(target, name, value, follow_symlinks=False)
            except OSError as error:
                if error.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
                self.report.skipped_xattrs.add(name)

    # -- entries --------------------------------------------------------------------------

    def entry(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        relative = self.clean(member.name)
        if not relative:
            if member.isdir():
                self.directories[""] = self.directory_attributes(member)
            return
        self.parent_ready(member.name, relative)
        base = os.path.basename(relative)
        parent = os.path.dirname(relative)
        if base == OPAQUE:
            self.set_opaque(parent)
            return
        if base.startswith(AUFS_META):
            return
        if base.startswith(WHITEOUT):
            hidden = base[len(WHITEOUT):]
            if hidden in ("", ".", ".."):
                raise self.unsafe(member.name, "is a whiteout of no name")
            self.whiteout(os.path.join(parent, hidden) if parent else hidden)
            return
        self.report.entries += 1
        path = self.full(relative)
        if member.isdir():
            self.make_room(relative, for_directory=True)
            if not os.path.isdir(path):
                os.mkdir(path, 0o700)  # owner-writable until its own mode is applied last
            self.safe_dirs.add(relative)
            self.directories[relative] = self.directory_attributes(member)
            return
        self.make_room(relative, for_directory=False)
        if member.isreg():
            self.regular_file(archive, member, path)
        elif member.issym():
            os.symlink(member.linkname, path)
            if self.privileged:
                os.lchown(path, member.uid, member.gid)
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
        elif member.islnk():
            target = self.clean(member.linkname)
            if not target:
                raise self.unsafe(member.name, "is a hard link to the layer's root")
            self.parent_ready(member.name, target, link_target=member.linkname)
            target_path = self.full(target)
            if not os.path.lexists(target_path) or os.path.isdir(target_path):
                raise self.unsafe(member.name, f"is a hard link to {member.linkname!r}, which "
                                  "is not a file of this layer")
            os.link(target_path, path, follow_symlinks=False)
        elif member.ischr() or member.isblk():
            if not self.privileged:
                self.report.skipped_devices.append(relative)
                return
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
            self.apply_attributes(path, member)
        elif member.isfifo():
            os.mkfifo(path, 0o600)
            self.apply_attributes(path, member)
        else:
            raise self.unsafe(member.name, f"has the tar type {member.type!r}, which no image "
                              "layer uses")

    def regular_file(self, archive: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            source = archive.extractfile(member)
            if source is not None:
                while chunk := source.read(COPY_CHUNK):
                    _write_all(fd, chunk)
            self.apply_attributes(fd, member)
        finally:
            os.close(fd)

    def apply_attributes(self, target: int | str, member: tarfile.TarInfo) -> None:
        # chown before chmod: chown clears the set-user-ID and set-group-ID bits.
        # target is a descriptor, or the path of a node just made in this private directory.
        if self.privileged:
            os.chown(target, member.uid, member.gid)
        os.chmod(target, member.mode & 0o7777)
        self.set_xattrs(target, self.xattrs_of(member))
        os.utime(target, (member.mtime, member.mtime))

    def directory_attributes(self, member: tarfile.TarInfo) -> _Directory:
        return _Directory(member.mode & 0o7777, member.uid, member.gid, member.mtime,
                          self.xattrs_of(member))

    def set_opaque(self, relative: str) -> None:
        # The directory of this layer hides every lower layer's entries of the same path.
        path = self.full(relative)
        if not os.path.isdir(path):
            os.mkdir(path, 0o755)
            self.safe_dirs.add(relative)
        os.setxattr(path, self.opaque_xattr, b"y", follow_symlinks=False)

    def whiteout(self, relative: str) -> None:
        # overlayfs's whiteout: a character device 0/0, which an unprivileged user may create
        # too (Linux 5.8+).
        self.make_room(relative, for_directory=False)
        path = self.full(relative)
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        except PermissionError:
            raise ImageError(f"{self.label} deletes {relative!r} but this kernel does not let "
                             "this user create an overlayfs whiteout (a 0/0 character device; "
                             "Linux 5.8 and later allow it)") from None

    def finish(self) -> None:
        """Directories' own attributes last, deepest first: creating their entries changed
        their times, and a read-only directory would have refused its entries."""
        for relative in sorted(self.directories, key=lambda d: d.count("/") + (d != ""),
                               reverse=True):
            attributes = self.directories[relative]
            path = self.full(relative)
            if self.privileged:
                os.chown(path, attributes.uid, attributes.gid, follow_symlinks=False)
            os.chmod(path, attributes.mode if self.privileged or relative
                     else attributes.mode | 0o700)
            self.set_xattrs(path, attributes.xattrs)
            os.utime(path, (attributes.mtime, attributes.mtime), follow_symlinks=False)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def unpack(stream: BinaryIO, dest: str, *, privileged: bool, opaque_xattr: str,
           label: str) -> UnpackReport:
    """Unpack the tar stream into the empty directory dest; label names the layer in errors."""
    unpacker = _Unpacker(dest, privileged, opaque_xattr, label)
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=COPY_CHUNK) as archive:
            for member in archive:
                unpacker.entry(archive, member)
    except tarfile.TarError as error:
        raise ImageError(f"{label} is not a tar archive an image layer can be: {error}") from None
    unpacker.finish()
    return unpacker.report
