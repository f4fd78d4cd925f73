"""A new layer written into the store: a tar with OCI whiteouts, gzip-compressed, its diff_id
and digest computed as it is written, then unpacked by the store like any pulled layer.

The blob goes to tmp/ first and is renamed into blobs/ only once complete and flushed; the
unpacked layer comes from that very blob (Store.ensure_layer checks its diff_id again), so a
committed or built layer is exactly what a registry, skopeo or podman later receives.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from nsmagic.images import files
from nsmagic.images.errors import ImageError, NoSpace
from nsmagic.images.manifest import OCI_LAYER_GZIP
from nsmagic.images.store import Store
from nsmagic.images.unpack import OPAQUE, WHITEOUT

OVERFLOW_ID = 65534  # what an id without a mapping shows as (the kernel's overflow id)
ID_RANGE = 65536  # a user-namespace container's range (nsmagic.isolation.idmaps)
KEPT_ATTRIBUTE_PREFIXES = ("user.", "security.capability")
CHUNK = 1 << 20
EPOCH = 0


@dataclass(frozen=True)
class Owners:
    """Host ids of a writable layer's files as the container saw them: root_outside is the
    host uid (and gid) of root inside a user-namespace container, None without one."""

    root_outside: int | None = None

    def inside(self, host_id: int) -> int:
        if self.root_outside is None:
            return host_id
        offset = host_id - self.root_outside
        return offset if 0 <= offset < ID_RANGE else OVERFLOW_ID


@dataclass(frozen=True)
class Item:
    """One tar entry of a new layer. kind: "entry" (source's file as it is, at path),
    "whiteout" (path was deleted), "opaque" (the directory at path replaces the lower one:
    its entry, then .wh..wh..opq), "directory" (a new directory of this mode, no source)."""

    path: str
    kind: str = "entry"
    source: str | None = None
    uid: int | None = None  # overrides (COPY --chown, a fixed root:root)
    gid: int | None = None
    mode: int | None = None


@dataclass(frozen=True)
class NewLayer:
    """A layer now in the store."""

    digest: str
    diff_id: str
    size: int
    media_type: str = OCI_LAYER_GZIP


class _Sink:
    """What tarfile writes to: hashed (the diff_id), compressed, hashed again (the digest)."""

    def __init__(self, out) -> None:  # noqa: ANN001
        self.out = out
        self.uncompressed = hashlib.sha256()
        self.compressed = hashlib.sha256()
        self.size = 0
        self.zip = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: a gzip header and trailer

    def write(self, data: bytes) -> int:
        self.uncompressed.update(data)
        self._emit(self.zip.compress(data))
        return len(data)

    def _emit(self, data: bytes) -> None:
        if data:
            self.compressed.update(data)
            self.out.write(data)
            self.size += len(data)

    def close(self) -> None:
        self._emit(self.zip.flush())


def _attributes(source: str) -> dict[str, str]:
    """The extended attributes worth keeping: file capabilities and user.* (never
    overlayfs's own), as tar's SCHILY.xattr PAX headers."""
    found = {}
    try:
        names = os.listxattr(source, follow_symlinks=False)
    except OSError:
        return found
    for name in names:
        if not name.startswith(KEPT_ATTRIBUTE_PREFIXES) or name.startswith("user.overlay."):
            continue
        try:
            value = os.getxattr(source, name, follow_symlinks=False)
        except OSError:
            continue
        found[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    return found


class _Writer:
    def __init__(self, tar: tarfile.TarFile, owners: Owners, label: str) -> None:
        self.tar = tar
        self.owners = owners
        self.label = label
        self.links: dict[tuple[int, int], str] = {}

    def add(self, item: Item) -> None:
        if item.kind == "whiteout":
            parent, name = os.path.split(item.path)
            self._plain(os.path.join(parent, WHITEOUT + name), tarfile.REGTYPE, 0o644)
            return
        if item.kind == "directory":
            self._plain(item.path, tarfile.DIRTYPE, item.mode if item.mode is not None
                        else 0o755, item.uid or 0, item.gid or 0)
            return
        assert item.source is not None
        self._entry(item)
        if item.kind == "opaque":
            self._plain(os.path.join(item.path, OPAQUE), tarfile.REGTYPE, 0o644)

    def _plain(self, name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.mtime = EPOCH
        self.tar.addfile(info)

    def _entry(self, item: Item) -> None:
        source = item.source
        assert source is not None
        meta = os.lstat(source)
        info = tarfile.TarInfo(item.path)
        info.mode = item.mode if item.mode is not None else stat.S_IMODE(meta.st_mode)
        info.uid = item.uid if item.uid is not None else self.owners.inside(meta.st_uid)
        info.gid = item.gid if item.gid is not None else self.owners.inside(meta.st_gid)
        info.mtime = int(meta.st_mtime)
        info.uname = info.gname = ""
        attributes = _attributes(source)
        if attributes:
            try:
                for value in attributes.values():
                    value.encode("utf-8")
            except UnicodeEncodeError:
                attributes["hdrcharset"] = "BINARY"  # binary values (file capabilities)
            info.pax_headers = attributes
        mode = meta.st_mode
        if stat.S_ISREG(mode):
            key = (meta.st_dev, meta.st_ino)
            if meta.st_nlink > 1 and key in self.links:
                info.type = tarfile.LNKTYPE
                info.linkname = self.links[key]
                self.tar.addfile(info)
                return
            if meta.st_nlink > 1:
                self.links[key] = item.path
            info.type = tarfile.REGTYPE
            info.size = meta.st_size
            try:
                with open(source, "rb") as handle:
                    self.tar.addfile(info, handle)
            except PermissionError:
                raise ImageError(f"{self.label}: /{item.path} cannot be read by this user, so "
                                 "it cannot go into the layer") from None
        elif stat.S_ISDIR(mode):
            info.type = tarfile.DIRTYPE
            self.tar.addfile(info)
        elif stat.S_ISLNK(mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(source)
            self.tar.addfile(info)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(meta.st_rdev), os.minor(meta.st_rdev)
            self.tar.addfile(info)
        elif stat.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
            self.tar.addfile(info)


def write_layer(store: Store, items: Iterable[Item], label: str,
                owners: Owners | None = None) -> NewLayer:
    """The items as a gzip-compressed layer blob in the store, unpacked there too."""
    store.open()
    fd, temporary = tempfile.mkstemp(dir=store.path("tmp"), prefix="new-layer-",
                                     suffix=f".{os.getpid()}")
    try:
        with os.fdopen(fd, "wb") as out:
            sink = _Sink(out)
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                              bufsize=CHUNK) as tar:
                writer = _Writer(tar, owners or Owners(), label)
                for item in items:
                    writer.add(item)
            sink.close()
            out.flush()
            os.fsync(out.fileno())
        digest = "sha256:" + sink.compressed.hexdigest()
        diff_id = "sha256:" + sink.uncompressed.hexdigest()
        final = store.blob_path(digest)
        if os.path.exists(final):
            files.unlink_quietly(temporary)
        else:
            os.chmod(temporary, 0o644)
            os.rename(temporary, final)
            files.fsync_dir(os.path.dirname(final))
    except BaseException as error:
        files.unlink_quietly(temporary)
        if files.is_no_space(error):
            raise NoSpace(f"no space left in the image store {store.root} for {label}; what "
                          "was written was removed: free space (image prune) or set "
                          "NSMAGIC_IMAGE_STORE") from None
        raise
    store.ensure_layer(diff_id, digest, label)
    return NewLayer(digest, diff_id, sink.size)
