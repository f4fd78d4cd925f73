"""The content-addressed image store: blobs by sha256, layers unpacked once, records by name.

Layout under the root (docs/images.md):
    store.json                     which opaque-directory attribute the layers carry
    blobs/sha256/<hex>             blobs as served (manifests, configs, compressed layers)
    layers/sha256/<hex>/rootfs/    a layer unpacked (the key is its diff_id), overlayfs-ready
    layers/sha256/<hex>/layer.json its blob, its measured size, what its unpack skipped
    images/<sha256 of name>.json   a record: name -> manifest, config, layers
    leases/                        images that running containers use (flock-held files)
    locks/                         flock files: one per blob or layer being made, and gc.lock
    tmp/                           temporaries: nothing here is ever trusted
Anything reaches its place only by a rename after it was verified and flushed, so a kill or
a full disk at any moment leaves at most a temporary behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from nsmagic.errors import explain
from nsmagic.images import digests, files
from nsmagic.images.compression import uncompressed
from nsmagic.images.digests import HashingReader
from nsmagic.images.errors import DigestMismatch, ImageError, NoSpace, TransferInterrupted
from nsmagic.images.progress import ProgressCallback, Reporter
from nsmagic.images.unpack import unpack

STORE_ENV = "NSMAGIC_IMAGE_STORE"
ROOT_STORE = "/var/lib/nsmagic/images"
FORMAT = 1
ATTEMPTS = 4  # a download that drops resumes this many times before the pull fails

# fetch(offset) -> (the offset the source starts at, its chunks): a source that ignores a
# Range request starts at 0 again.
Fetch = Callable[[int], tuple[int, Iterable[bytes]]]


def default_root() -> str:
    """NSMAGIC_IMAGE_STORE, else /var/lib/nsmagic/images for root, else the user's data dir."""
    configured = os.environ.get(STORE_ENV)
    if configured:
        return os.path.abspath(configured)
    if os.geteuid() == 0:
        return ROOT_STORE
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data, "nsmagic", "images")


def privileged() -> bool:
    """Root of the initial user namespace: may chown, mknod and set trusted.* attributes."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as handle:
            return handle.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


def opaque_attribute(as_root: bool) -> str:
    """The attribute that makes a directory opaque to overlayfs. Real root's overlay mounts
    read trusted.overlay.*, which only real root may set; an overlay mounted inside a user
    namespace (Linux 5.11+, mount option userxattr) reads user.overlay.*, the only kind an
    unprivileged user may set."""
    return "trusted.overlay.opaque" if as_root else "user.overlay.opaque"


@dataclass(frozen=True)
class LayerEntry:
    """One layer of an image record: its blob as served and its diff_id."""

    digest: str
    diff_id: str
    media_type: str
    size: int


@dataclass(frozen=True)
class ImageRecord:
    """A name in the store and what it points at."""

    name: str
    manifest: str
    manifest_media_type: str
    config: str
    layers: tuple[LayerEntry, ...]
    source: str = ""
    platform: str = ""
    created: float = 0.0

    def blobs(self) -> list[str]:
        """Every blob the image needs: manifest, config, layers."""
        return [self.manifest, self.config, *(layer.digest for layer in self.layers)]

    def to_json(self) -> bytes:
        value = asdict(self)
        return json.dumps(value, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ImageRecord:
        value = json.loads(data)
        value["layers"] = tuple(LayerEntry(**layer) for layer in value["layers"])
        return cls(**value)


@dataclass(frozen=True)
class LayerRecord:
    """A layer unpacked in the store."""

    diff_id: str
    path: str
    blob: str
    rootfs_size: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def rootfs(self) -> str:
        return os.path.join(self.path, "rootfs")


class Store:
    """One store directory; every method is safe with other processes using it at once."""

    def __init__(self, root: str | None = None) -> None:
        self.root = os.path.abspath(root) if root else default_root()
        self._opaque: str | None = None

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    # -- places ---------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def blob_path(self, digest: str) -> str:
        return self.path("blobs", "sha256", digests.hex_of(digest))

    def layer_path(self, diff_id: str) -> str:
        return self.path("layers", "sha256", digests.hex_of(diff_id))

    def record_path(self, name: str) -> str:
        return self.path("images", hashlib.sha256(name.encode()).hexdigest() + ".json")

    def open(self) -> Store:
        """Create the store's directories (once) and read which opaque attribute it uses."""
        if self._opaque is not None:
            return self
        try:
            for directory in ("blobs/sha256", "layers/sha256", "images", "leases", "locks"):
                os.makedirs(self.path(directory), exist_ok=True)
            os.makedirs(self.path("tmp"), mode=0o700, exist_ok=True)
            description = self.path("store.json")
            if not os.path.exists(description):
                as_root = privileged()
                files.write_atomic(description, json.dumps(
                    {"format": FORMAT, "opaque_xattr": opaque_attribute(as_root),
                     "made_by_uid": os.geteuid()}).encode())
            with open(description, "rb") as handle:
                self._opaque = json.load(handle)["opaque_xattr"]
        except PermissionError as error:
            raise ImageError(f"the image store {self.root} is not writable by this user "
                             f"({explain(error)}): set NSMAGIC_IMAGE_STORE to a "
                             "directory of your own") from None
        except OSError as error:
            if files.is_no_space(error):
                raise NoSpace(f"no space left to create the image store {self.root}") from None
            raise
        return self

    @property
    def opaque_xattr(self) -> str:
        """The store's choice, made by whoever created it: its layers are all alike."""
        self.open()
        assert self._opaque is not None
        return self._opaque

    @property
    def userxattr(self) -> bool:
        """Whether overlay mounts of these layers need the userxattr option (a user namespace)."""
        return self.opaque_xattr.startswith("user.")

    # -- locks ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str, shared: bool = False) -> Iterator[None]:
        """An flock on locks/<name>.lock: released by the kernel if this process dies."""
        self.open()
        fd = os.open(self.path("locks", name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def using(self) -> contextlib.AbstractContextManager[None]:
        """Held (shared) while a pull adds blobs no record names yet: prune waits for it."""
        return self.lock("gc", shared=True)

    def collecting(self) -> contextlib.AbstractContextManager[None]:
        """Held (exclusive) by prune and remove: nothing is being added meanwhile."""
        return self.lock("gc")

    # -- blobs ----------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        return os.path.exists(self.blob_path(digest))

    def read_blob(self, digest: str) -> bytes:
        with open(self.blob_path(digest), "rb") as handle:
            return handle.read()

    def put_bytes(self, data: bytes, expected: str | None = None, label: str = "a blob") -> str:
        """Store a small blob (a manifest, a config) held in memory; its digest."""
        digest = digests.of_bytes(data)
        if expected is not None and digest != expected:
            raise DigestMismatch(f"{label} has the digest {digest}, not {expected} as its "
                                 "reference says: discarded")
        path = self.blob_path(digest)
        if not os.path.exists(path):
            self.open()
            try:
                files.write_atomic(path, data)
            except OSError as error:
                if files.is_no_space(error):
                    raise NoSpace(f"no space left in the image store {self.root} for {label}"
                                  ) from None
                raise
        return digest

    def ingest(self, digest: str, size: int | None, fetch: Fetch, label: str,
               progress: ProgressCallback | None = None) -> str:
        """Download a blob into the store unless it is there; verified before it is kept.

        The partial download (tmp/blob-<hex>.partial) is written under the blob's lock, so
        a second process waits and then finds the blob; a partial left by a killed process
        is resumed (the whole blob is hashed again at the end, so nothing in it is trusted
        unverified)."""
        hexdigest = digests.hex_of(digest, label)
        final = self.blob_path(digest)
        reporter = Reporter(progress, digest, "download", size or 0)
        there = Reporter(progress, digest, "exists", size or 0)
        if os.path.exists(final):
            there(size or 0, force=True)
            return final
        with self.lock(f"blob-{hexdigest}"):
            if os.path.exists(final):  # another process brought it meanwhile
                there(size or 0, force=True)
                return final
            partial = self.path("tmp", f"blob-{hexdigest}.partial")
            for attempt in range(ATTEMPTS):
                try:
                    self._download(partial, digest, size, fetch, label, reporter)
                    break
                except TransferInterrupted:
                    if attempt == ATTEMPTS - 1:
                        raise
                    time.sleep(0.2 * (attempt + 1))
                except OSError as error:
                    files.unlink_quietly(partial)
                    if files.is_no_space(error):
                        raise NoSpace(f"no space left in the image store {self.root} while "
                                      f"downloading {label} ({size} bytes); the partial "
                                      "download was removed: free space (image prune) or "
                                      "set NSMAGIC_IMAGE_STORE") from None
                    raise
            os.rename(partial, final)
            files.fsync_dir(os.path.dirname(final))
        return final

    def _download(self, partial: str, digest: str, size: int | None, fetch: Fetch,
                  label: str, reporter: Reporter) -> None:
        hasher = hashlib.sha256()
        done = 0
        if os.path.exists(partial):
            with open(partial, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    hasher.update(chunk)
                    done += len(chunk)
            if size is not None and done > size:
                files.unlink_quietly(partial)
                hasher, done = hashlib.sha256(), 0
        with open(partial, "ab") as handle:
            start, chunks = fetch(done)
            if start != done:  # the source started over: so do we
                handle.truncate(0)
                handle.seek(0)
                hasher, done = hashlib.sha256(), 0
            for chunk in chunks:
                handle.write(chunk)
                hasher.update(chunk)
                done += len(chunk)
                if size is not None and done > size:
                    break
                reporter(done)
            handle.flush()
            os.fsync(handle.fileno())
        if size is not None and done < size:
            raise TransferInterrupted(f"{label} stopped after {done} of {size} bytes")
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest or (size is not None and done != size):
            files.unlink_quietly(partial)
            raise DigestMismatch(f"{label} arrived with the digest {actual} ({done} bytes), "
                                 f"not {digest} ({size} bytes) as its manifest says: the "
                                 "download was discarded")
        reporter(done, force=True)

    # -- layers ---------------------------------------------------------------------------

    def layer(self, diff_id: str) -> LayerRecord | None:
        """The unpacked layer, if the store has it."""
        path = self.layer_path(diff_id)
        try:
            with open(os.path.join(path, "layer.json"), "rb") as handle:
                value = json.load(handle)
        except FileNotFoundError:
            return None
        return LayerRecord(diff_id, path, value["blob"], value["rootfs_size"],
                           tuple(value.get("notes", ())))

    def ensure_layer(self, diff_id: str, blob: str, label: str,
                     progress: ProgressCallback | None = None) -> LayerRecord:
        """Unpack the blob into the layer's directory unless it is there; the uncompressed
        stream must hash to diff_id, or nothing of it is kept."""
        found = self.layer(diff_id)
        if found is not None:
            return found
        hexdigest = digests.hex_of(diff_id, label)
        with self.lock(f"layer-{hexdigest}"):
            found = self.layer(diff_id)
            if found is not None:
                return found
            prefix = f"layer-{hexdigest}."
            for stale in os.listdir(self.path("tmp")):
                if stale.startswith(prefix):  # we hold the lock: its maker is gone
                    files.remove_tree(self.path("tmp", stale))
            work = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.", dir=self.path("tmp"))
            try:
                os.chmod(work, 0o755)
                record = self._unpack(work, diff_id, blob, label, progress)
                final = self.layer_path(diff_id)
                os.rename(work, final)
                files.fsync_dir(os.path.dirname(final))
            except BaseException as error:
                files.remove_tree(work)
                if files.is_no_space(error):
                    raise NoSpace(f"no space left in the image store {self.root} while "
                                  f"unpacking {label}; what was unpacked was removed: free "
                                  "space (image prune) or set NSMAGIC_IMAGE_STORE") from None
                raise
        return LayerRecord(diff_id, final, record.blob, record.rootfs_size, record.notes)

    def _unpack(self, work: str, diff_id: str, blob: str, label: str,
                progress: ProgressCallback | None) -> LayerRecord:
        rootfs = os.path.join(work, "rootfs")
        os.mkdir(rootfs, 0o755)
        blob_path = self.blob_path(blob)
        total = os.path.getsize(blob_path)
        reporter = Reporter(progress, blob, "unpack", total)
        with open(blob_path, "rb") as raw:
            counted = _Counting(raw, reporter)
            hashing = HashingReader(uncompressed(counted, label))  # type: ignore[arg-type]
            stream = io.BufferedReader(hashing, 1 << 20)
            report = unpack(stream, rootfs, privileged=privileged(),
                            opaque_xattr=self.opaque_xattr, label=label)
            stream.read()  # the tar's trailing blocks are part of the diff_id too
            hashing.drain()
        if hashing.digest != diff_id:
            raise DigestMismatch(f"{label} unpacks to content with the digest {hashing.digest}, "
                                 f"not the diff_id {diff_id} its image config names: the "
                                 "unpacked layer was discarded")
        files.syncfs(work)
        size = files.disk_usage(rootfs)
        notes = tuple(report.notes())
        files.write_atomic(os.path.join(work, "layer.json"), json.dumps(
            {"diff_id": diff_id, "blob": blob, "rootfs_size": size, "entries": report.entries,
             "notes": list(notes)}).encode())
        reporter(total, force=True)
        return LayerRecord(diff_id, work, blob, size, notes)

    # -- records --------------------------------------------------------------------------

    def save(self, record: ImageRecord) -> None:
        """Name an image; its blobs and layers must all be in the store already."""
        self.open()
        files.write_atomic(self.record_path(record.name), record.to_json())

    def record(self, name: str) -> ImageRecord | None:
        try:
            with open(self.record_path(name), "rb") as handle:
                return ImageRecord.from_json(handle.read())
        except FileNotFoundError:
            return None

    def records(self) -> list[ImageRecord]:
        """Every named image, by name."""
        found = []
        directory = self.path("images")
        if not os.path.isdir(directory):
            return []
        for entry in sorted(os.listdir(directory)):
            if entry.endswith(".json"):
                try:
                    with open(os.path.join(directory, entry), "rb") as handle:
                        found.append(ImageRecord.from_json(handle.read()))
                except (FileNotFoundError, ValueError, KeyError, TypeError):
                    continue  # a record removed meanwhile, or not ours
        return sorted(found, key=lambda r: r.name)

    def forget(self, name: str) -> bool:
        """Remove a name (not its blobs); whether it was there."""
        try:
            os.unlink(self.record_path(name))
        except FileNotFoundError:
            return False
        files.fsync_dir(self.path("images"))
        return True

    # -- sizes ----------------------------------------------------------------------------

    def blob_size(self, digest: str) -> int:
        """Bytes the blob takes on disk."""
        try:
            return os.lstat(self.blob_path(digest)).st_blocks * 512
        except FileNotFoundError:
            return 0

    def layer_size(self, diff_id: str) -> int:
        """Bytes the unpacked layer takes on disk (measured when it was unpacked: layers are
        never written to afterwards)."""
        layer = self.layer(diff_id)
        if layer is None:
            return 0
        own = sum(files.disk_usage(os.path.join(layer.path, name)) if name != "rootfs" else 0
                  for name in os.listdir(layer.path))
        return layer.rootfs_size + own + os.lstat(layer.path).st_blocks * 512

    def describe(self) -> dict[str, Any]:
        """The store's own facts, for doctor and docs."""
        return {"root": self.root, "opaque_xattr": self.opaque_xattr,
                "userxattr": self.userxattr}


class _Counting(io.RawIOBase):
    """A reader that reports how many bytes of the blob were read."""

    def __init__(self, raw: Any, reporter: Reporter) -> None:
        self._raw = raw
        self._reporter = reporter
        self._done = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001
        size = self._raw.readinto(buffer) or 0
        self._done += size
        self._reporter(self._done)
        return size
