"""docker-archive files (docker save, podman save): manifest.json, a config, one tar per layer.

What nsmagic writes is what `podman save` writes: uncompressed layers named by their diff_id,
the config named by its digest, RepoTags in Docker's short form; `docker load` and `podman
load` accept it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

from nsmagic.images import config as image_config
from nsmagic.images import digests, files, manifest
from nsmagic.images.compression import GZIP_MAGIC, ZSTD_MAGIC, uncompressed
from nsmagic.images.errors import DigestMismatch, ImageError
from nsmagic.images.progress import ProgressCallback, Reporter
from nsmagic.images.reference import ArchiveReference, RegistryReference, parse_registry
from nsmagic.images.store import Fetch, ImageRecord, Store

CHUNK = 1 << 20


def _normal(name: str) -> str:
    return posixpath.normpath(name.lstrip("/")).removeprefix("./")


class ArchiveSource:
    """An image of a docker-archive, as pull reads it (its manifest is made in OCI's form)."""

    def __init__(self, reference: ArchiveReference) -> None:
        self.reference = reference
        self.label = str(reference)
        try:
            self._tar = tarfile.open(reference.path, "r:*")
        except FileNotFoundError:
            raise ImageError(f"{self.label} names no file") from None
        except (tarfile.TarError, OSError) as error:
            raise ImageError(f"{self.label} is not a docker-archive (a tar file, as docker "
                             f"save writes): {error}") from None
        self._members = {_normal(m.name): m for m in self._tar.getmembers() if m.isfile()}
        entry = self._choose(self._json("manifest.json", list))
        self.repo_tags = list(entry.get("RepoTags") or [])
        config_data = self._bytes(entry.get("Config"))
        diff_ids = image_config.parse(config_data, f"the config of {self.label}").diff_ids
        layer_names = entry.get("Layers") or []
        if len(layer_names) != len(diff_ids):
            raise ImageError(f"{self.label} lists {len(layer_names)} layers but its config "
                             f"names {len(diff_ids)}")
        self._by_digest: dict[str, tarfile.TarInfo] = {}
        layers = []
        for name, diff_id in zip(layer_names, diff_ids, strict=True):
            member = self._member(name)
            media_type, digest = self._identify(member, diff_id)
            self._by_digest[digest] = member
            layers.append(manifest.Descriptor(media_type, digest, member.size))
        config_digest = digests.of_bytes(config_data)
        self._config = config_data
        self.manifest = manifest.build(
            manifest.Descriptor(manifest.OCI_CONFIG, config_digest, len(config_data)), layers)

    def close(self) -> None:
        self._tar.close()

    def _member(self, name: Any) -> tarfile.TarInfo:
        member = self._members.get(_normal(name)) if isinstance(name, str) else None
        if member is None:
            raise ImageError(f"{self.label} is not a complete docker-archive: it lacks "
                             f"{name!r}, which its manifest.json names")
        return member

    def _bytes(self, name: Any) -> bytes:
        handle = self._tar.extractfile(self._member(name))
        assert handle is not None
        return handle.read(manifest.MAX_DOCUMENT + 1)

    def _json(self, name: str, kind: type) -> Any:
        if name not in self._members:
            raise ImageError(f"{self.label} is not a docker-archive: it has no {name}")
        try:
            value = json.loads(self._bytes(name))
        except ValueError as error:
            raise ImageError(f"the {name} of {self.label} is not JSON ({error})") from None
        if not isinstance(value, kind):
            raise ImageError(f"the {name} of {self.label} is not a JSON {kind.__name__}")
        return value

    def _choose(self, entries: list[Any]) -> dict[str, Any]:
        entries = [e for e in entries if isinstance(e, dict)]
        if self.reference.name is None:
            if len(entries) != 1:
                tags = sorted(t for e in entries for t in e.get("RepoTags") or [])
                raise ImageError(f"{self.label} holds {len(entries)} images, so a name is "
                                 f"needed (docker-archive:{self.reference.path}:NAME:TAG): "
                                 f"it has {', '.join(tags) or 'no names'}")
            return entries[0]
        wanted = str(self.reference.name)
        for entry in entries:
            for tag in entry.get("RepoTags") or []:
                try:
                    if str(parse_registry(tag)) == wanted:
                        return entry
                except ValueError:
                    continue
        raise ImageError(f"{self.label} has no image named {self.reference.name.familiar}")

    def _identify(self, member: tarfile.TarInfo, diff_id: str) -> tuple[str, str]:
        """A layer file's media type and digest: an uncompressed layer's digest is its
        diff_id (checked when it is stored); a compressed one is hashed here."""
        handle = self._tar.extractfile(member)
        assert handle is not None
        magic = handle.read(4)
        if not magic.startswith(GZIP_MAGIC) and magic != ZSTD_MAGIC:
            return manifest.OCI_LAYER, diff_id
        handle.seek(0)
        hasher = hashlib.sha256()
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
        kind = manifest.OCI_LAYER_GZIP if magic.startswith(GZIP_MAGIC) else \
            manifest.OCI_LAYER_ZSTD
        return kind, "sha256:" + hasher.hexdigest()

    def top(self) -> tuple[bytes, str | None, str | None]:
        return self.manifest.raw, manifest.OCI_MANIFEST, None

    def document(self, digest: str) -> bytes:
        raise ImageError(f"{self.label} holds no index")

    def fetch(self, digest: str) -> Fetch:
        if digest == self.manifest.config.digest:
            data = self._config
            return lambda offset: (offset, [data[offset:]])
        member = self._by_digest[digest]

        def chunks_from(offset: int) -> tuple[int, Iterable[bytes]]:
            return offset, self._chunks(member, offset)

        return chunks_from

    def _chunks(self, member: tarfile.TarInfo, offset: int) -> Iterator[bytes]:
        handle = self._tar.extractfile(member)
        assert handle is not None
        handle.seek(offset)
        while chunk := handle.read(CHUNK):
            yield chunk


def repo_tag(name: str) -> str | None:
    """The RepoTags form (Docker's short name) of a stored image's name, if it is one."""
    try:
        reference = parse_registry(name)
    except ValueError:
        return None
    if reference.digest or not reference.tag:
        return None
    return reference.familiar


def write(store: Store, record: ImageRecord, destination: ArchiveReference,
          progress: ProgressCallback | None = None) -> None:
    """Write the image as a docker-archive file (replaced whole, atomically)."""
    image = manifest.parse(store.read_blob(record.manifest), record.manifest_media_type,
                           record.name)
    assert isinstance(image, manifest.Manifest)
    tags: list[str] = []
    name = destination.name
    if isinstance(name, RegistryReference):
        tags = [name.familiar]
    elif repo_tag(record.name):
        tags = [repo_tag(record.name)]  # type: ignore[list-item]
    directory = os.path.dirname(destination.path) or "."
    config_name = digests.hex_of(record.config) + ".json"
    layer_names = [digests.hex_of(layer.diff_id) + ".tar" for layer in record.layers]
    try:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".nsmagic-archive-")
    except OSError as error:
        raise ImageError(f"cannot write {destination}: {error.strerror or error}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _add_bytes(tar, config_name, store.read_blob(record.config))
                written = set()
                for layer, layer_name in zip(record.layers, layer_names, strict=True):
                    if layer_name in written:
                        continue
                    written.add(layer_name)
                    _add_layer(tar, layer_name, store, layer.digest, layer.diff_id, progress)
                _add_bytes(tar, "manifest.json", json.dumps(
                    [{"Config": config_name, "RepoTags": tags, "Layers": layer_names}]).encode())
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.rename(temporary, destination.path)
        files.fsync_dir(directory)
    except BaseException as error:
        files.unlink_quietly(temporary)
        if isinstance(error, OSError) and not isinstance(error, ImageError):
            raise ImageError(f"cannot write {destination}: {error.strerror or error}") from None
        raise


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_layer(tar: tarfile.TarFile, name: str, store: Store, blob: str, diff_id: str,
               progress: ProgressCallback | None) -> None:
    """The layer uncompressed (its size is needed before its bytes: through a temporary
    file), verified against its diff_id on the way."""
    with tempfile.TemporaryFile(dir=store.path("tmp")) as spool:
        hasher = hashlib.sha256()
        with open(store.blob_path(blob), "rb") as raw:
            stream = uncompressed(raw, f"the layer {blob}")
            while chunk := stream.read(CHUNK):
                hasher.update(chunk)
                spool.write(chunk)
        if "sha256:" + hasher.hexdigest() != diff_id:
            raise DigestMismatch(f"the stored layer {blob} no longer matches its diff_id "
                                 f"{diff_id}: pull the image again")
        size = spool.tell()
        spool.seek(0)
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o644
        reporter = Reporter(progress, blob, "copy", size)
        tar.addfile(info, spool)
        reporter(size, force=True)
