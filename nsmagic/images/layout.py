"""OCI image layouts (oci:DIR[:TAG]): index.json and blobs/sha256/, read as a source and written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

from nsmagic.images import digests, files, manifest
from nsmagic.images.errors import ImageError
from nsmagic.images.progress import ProgressCallback, Reporter
from nsmagic.images.reference import LayoutReference
from nsmagic.images.store import Fetch, ImageRecord, Store

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_VERSION = "1.0.0"
CHUNK = 1 << 20


def _read_json(path: str, where: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return manifest.load_json(handle.read(), where)
    except FileNotFoundError:
        raise ImageError(f"{where} is not an OCI image layout: it has no "
                         f"{os.path.basename(path)}") from None


class LayoutSource:
    """An image of an OCI layout, as pull reads it."""

    def __init__(self, reference: LayoutReference) -> None:
        self.reference = reference
        self.label = str(reference)
        if not os.path.isdir(reference.path):
            raise ImageError(f"{self.label} names no directory: expected an OCI image layout "
                             "(the directory skopeo copy or nsmagic export writes)")
        _read_json(os.path.join(reference.path, "oci-layout"), self.label)

    def close(self) -> None:
        pass

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.reference.path, "blobs", "sha256",
                            digests.hex_of(digest, self.label))

    def top(self) -> tuple[bytes, str | None, str | None]:
        index = manifest.parse(
            self._index_bytes(), manifest.OCI_INDEX, f"the index.json of {self.label}")
        if not isinstance(index, manifest.Index):
            raise ImageError(f"the index.json of {self.label} is not an image index")
        entries = list(index.manifests)
        tag = self.reference.tag
        if tag is not None:
            chosen = [e for e in entries if e.annotations.get(REF_NAME) == tag]
            if not chosen:
                raise ImageError(f"{self.label} has no image tagged {tag!r}: it has "
                                 + _tags_of(entries))
        else:
            chosen = entries
            if len(chosen) != 1:
                raise ImageError(f"{self.reference} holds {len(chosen)} images, so a tag is "
                                 f"needed (oci:{self.reference.path}:TAG): it has "
                                 + _tags_of(entries))
        descriptor = chosen[0]
        return self.document(descriptor.digest), descriptor.media_type, descriptor.digest

    def _index_bytes(self) -> bytes:
        try:
            with open(os.path.join(self.reference.path, "index.json"), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise ImageError(f"{self.label} is not an OCI image layout: it has no "
                             "index.json") from None

    def document(self, digest: str) -> bytes:
        try:
            with open(self.blob_path(digest), "rb") as handle:
                return handle.read(manifest.MAX_DOCUMENT + 1)
        except FileNotFoundError:
            raise ImageError(f"{self.label} lacks the blob {digest}: the layout is "
                             "incomplete") from None

    def fetch(self, digest: str) -> Fetch:
        path = self.blob_path(digest)
        if not os.path.exists(path):
            raise ImageError(f"{self.label} lacks the blob {digest}: the layout is incomplete")

        def chunks_from(offset: int) -> tuple[int, Iterable[bytes]]:
            return offset, _file_chunks(path, offset)

        return chunks_from


def _file_chunks(path: str, offset: int) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(CHUNK):
            yield chunk


def _tags_of(entries: list[manifest.Descriptor]) -> str:
    tags = sorted(e.annotations[REF_NAME] for e in entries if REF_NAME in e.annotations)
    untagged = sum(1 for e in entries if REF_NAME not in e.annotations)
    parts = [", ".join(repr(t) for t in tags)] if tags else []
    if untagged:
        parts.append(f"{untagged} untagged")
    return " and ".join(parts) if parts else "no image at all"


def _copy_blob(source: str, directory: str, digest: str, reporter: Reporter) -> None:
    """A store blob copied into a layout under a temporary name, flushed, then renamed: a
    copy (not a hard link), so that editing the layout can never change the store."""
    final = os.path.join(directory, digests.hex_of(digest))
    if os.path.exists(final):
        reporter(os.path.getsize(final), force=True)
        return
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as handle:
            shutil.copyfileobj(handle, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.rename(temporary, final)
    except BaseException:
        files.unlink_quietly(temporary)
        raise
    reporter(os.path.getsize(final), force=True)


def write(store: Store, record: ImageRecord, destination: LayoutReference,
          progress: ProgressCallback | None = None) -> str:
    """Write the image into the layout (adding to what it holds); the manifest digest."""
    image = manifest.parse(store.read_blob(record.manifest), record.manifest_media_type,
                           record.name)
    if not isinstance(image, manifest.Manifest):
        raise ImageError(f"{record.name} is stored as an index, not an image")
    oci = manifest.as_oci(image)
    blobs = os.path.join(destination.path, "blobs", "sha256")
    try:
        os.makedirs(blobs, exist_ok=True)
        layout_file = os.path.join(destination.path, "oci-layout")
        if not os.path.exists(layout_file):
            files.write_atomic(layout_file, json.dumps(
                {"imageLayoutVersion": LAYOUT_VERSION}).encode())
        for descriptor in (oci.config, *oci.layers):
            reporter = Reporter(progress, descriptor.digest, "copy", descriptor.size)
            _copy_blob(store.blob_path(descriptor.digest), blobs, descriptor.digest, reporter)
        manifest_path = os.path.join(blobs, digests.hex_of(oci.digest))
        if not os.path.exists(manifest_path):
            files.write_atomic(manifest_path, oci.raw)
        index_path = os.path.join(destination.path, "index.json")
        if os.path.exists(index_path):
            index = _read_json(index_path, str(destination))
        else:
            index = {"schemaVersion": 2, "mediaType": manifest.OCI_INDEX, "manifests": []}
        entries = [e for e in index.get("manifests", [])
                   if destination.tag is None
                   or (e.get("annotations") or {}).get(REF_NAME) != destination.tag]
        entry: dict[str, Any] = {"mediaType": manifest.OCI_MANIFEST, "digest": oci.digest,
                                 "size": len(oci.raw)}
        if destination.tag is not None:
            entry["annotations"] = {REF_NAME: destination.tag}
        else:
            entries = [e for e in entries if e.get("digest") != oci.digest]
        index["manifests"] = [*entries, entry]
        files.write_atomic(index_path, json.dumps(index, indent=1).encode())
    except OSError as error:
        raise ImageError(f"cannot write the OCI layout {destination}: "
                         f"{error.strerror or error}") from None
    return oci.digest
