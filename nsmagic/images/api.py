"""The public functions of nsmagic.images: pull, push, export, list, remove, prune, lease."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from functools import cached_property

from nsmagic.errors import SpecError
from nsmagic.images import archive, files, layout, leases, writable
from nsmagic.images import config as image_config
from nsmagic.images import platform as platforms
from nsmagic.images.errors import ImageError
from nsmagic.images.progress import ProgressCallback, Reporter
from nsmagic.images.pulling import pull_into
from nsmagic.images.reference import (
    LayoutReference,
    Reference,
    RegistryReference,
    parse,
)
from nsmagic.images.store import ImageRecord, Store


@dataclass(frozen=True)
class LayerInfo:
    """One layer of an image as it is on disk: its blob and its unpacked directory."""

    diff_id: str
    digest: str
    size: int
    images: int  # how many images of the store use it


@dataclass(frozen=True)
class ImageInfo:
    """One image of the store, measured: size is every byte on disk it needs, shared the
    part of it other images need too (unique = size - shared)."""

    name: str
    id: str
    digest: str
    size: int
    shared: int
    layers: tuple[LayerInfo, ...]
    platform: str
    created: float
    source: str = ""

    @property
    def unique(self) -> int:
        return self.size - self.shared


class Image:
    """An image in the store, ready for a runtime to stack its layers."""

    def __init__(self, store: Store, record: ImageRecord) -> None:
        self.store = store
        self.record = record

    def __repr__(self) -> str:
        return f"<Image {self.name} {self.id[:19]} {len(self.record.layers)} layers>"

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def digest(self) -> str:
        """The manifest's digest (what a registry knows the image by)."""
        return self.record.manifest

    @property
    def id(self) -> str:
        """The config's digest (what Docker calls the image ID)."""
        return self.record.config

    @cached_property
    def config(self) -> image_config.ImageConfig:
        """Env, WorkingDir, User, Entrypoint, Cmd, Labels (and the whole document as raw)."""
        return image_config.parse(self.store.read_blob(self.record.config), self.name)

    def layer_dirs(self) -> list[str]:
        """The unpacked layers, lowest first (overlayfs's lowerdir wants them reversed)."""
        found = []
        for layer in self.record.layers:
            record = self.store.layer(layer.diff_id)
            if record is None:
                raise ImageError(f"the layer {layer.diff_id} of {self.name} is missing from "
                                 f"the store {self.store.root}: pull the image again")
            found.append(record.rootfs)
        return found

    @property
    def userxattr(self) -> bool:
        """Whether the layers' opaque directories use user.overlay.* (mount with userxattr)."""
        return self.store.userxattr

    @property
    def notes(self) -> list[str]:
        """What unpacking the layers skipped, and a platform that is not this machine's."""
        found = []
        for layer in self.record.layers:
            record = self.store.layer(layer.diff_id)
            if record is not None:
                found.extend(f"layer {layer.diff_id[7:19]}: {note}" for note in record.notes)
        host = platforms.describe(platforms.host())
        if self.record.platform and not host.startswith(self.record.platform.split("/v")[0]):
            found.append(f"{self.name} is built for {self.record.platform}, not for this "
                         f"machine's {host}: its programs may not run")
        return found

    @property
    def size(self) -> int:
        """Bytes on disk of everything the image needs (blobs and unpacked layers)."""
        return _measure(self.store, self.record, Counter())[0]

    def lease(self) -> leases.Lease:
        """Hold while a container runs from this image: prune keeps its content."""
        return leases.Lease(self.store, self.record)


def _store(store: Store | str | None) -> Store:
    return store if isinstance(store, Store) else Store(store)


def _reference(ref: str | Reference) -> Reference:
    return parse(ref) if isinstance(ref, str) else ref


def _find(store: Store, reference: Reference) -> ImageRecord | None:
    found = store.record(str(reference))
    if found is not None:
        return found
    if isinstance(reference, RegistryReference) and reference.digest:
        for record in store.records():
            if record.manifest == reference.digest and record.name.startswith(
                    f"{reference.registry}/{reference.repository}"):
                return record
    return None


def _source(reference: Reference):  # noqa: ANN202 - one of the Source classes
    if isinstance(reference, RegistryReference):
        from nsmagic.images.registry import RegistrySource  # requests: loaded when needed

        return RegistrySource(reference)
    if isinstance(reference, LayoutReference):
        return layout.LayoutSource(reference)
    return archive.ArchiveSource(reference)


def pull(ref: str | Reference, progress: ProgressCallback | None = None, *,
         platform: str | None = None, store: Store | str | None = None) -> Image:
    """Bring an image into the store (from a registry, an OCI layout or a docker-archive);
    what is there already is not fetched again. progress gets a Progress per layer."""
    reference = _reference(ref)
    wanted = platforms.parse(platform)
    store = _store(store)
    source = _source(reference)
    try:
        record = pull_into(store, source, str(reference), wanted, progress)
    finally:
        source.close()
    return Image(store, record)


def get(ref: str | Reference, store: Store | str | None = None) -> Image:
    """An image already in the store (no network); ImageError if it is not there."""
    store = _store(store)
    reference = _reference(ref)
    record = _find(store, reference)
    if record is None:
        raise ImageError(f"{ref} is not in the image store {store.root}: pull it first")
    return Image(store, record)


def push(ref: str | Reference, dest: str | Reference | None = None,
         progress: ProgressCallback | None = None, *,
         store: Store | str | None = None) -> str:
    """Send an image of the store to a registry (dest, or the registry its name says); the
    digest of the manifest pushed."""
    image = get(ref, store)
    destination = _reference(dest) if dest is not None else _reference(image.name)
    if not isinstance(destination, RegistryReference):
        raise SpecError(f"push sends images to a registry, and {destination} is not one: use "
                        "export for oci: and docker-archive: destinations")
    data = image.store.read_blob(image.digest)
    if destination.digest and destination.digest != image.digest:
        raise SpecError(f"{destination} names the digest {destination.digest}, but the image "
                        f"{image.name} has the digest {image.digest}")
    from nsmagic.images.registry import RegistryClient  # requests: loaded when needed

    with RegistryClient(destination, push=True) as client:
        for digest, size in [(image.id, os.path.getsize(image.store.blob_path(image.id))),
                             *((layer.digest, layer.size) for layer in image.record.layers)]:
            reporter = Reporter(progress, digest, "upload", size)
            if client.has_blob(digest):
                reporter(size, force=True)
                continue
            with open(image.store.blob_path(digest), "rb") as handle:
                client.upload_blob(digest, handle, size, reporter)
        client.put_manifest(destination.tag or image.digest, data,
                            image.record.manifest_media_type)
    return image.digest


def export(ref: str | Reference, dest: str | Reference,
           progress: ProgressCallback | None = None, *,
           store: Store | str | None = None) -> str:
    """Write an image of the store to oci:DIR[:TAG] or docker-archive:FILE[:NAME:TAG] (or a
    registry, as push); the manifest digest the destination knows it by."""
    image = get(ref, store)
    destination = _reference(dest)
    if isinstance(destination, RegistryReference):
        return push(image.name, destination, progress, store=image.store)
    with image.store.using():
        if isinstance(destination, LayoutReference):
            return layout.write(image.store, image.record, destination, progress)
        archive.write(image.store, image.record, destination, progress)
        return image.digest


def _measure(store: Store, record: ImageRecord, users: Counter) -> tuple[int, int,
                                                                        list[LayerInfo]]:
    """(size, shared, layers) of one image; users counts the images using each blob/layer."""
    size = shared = 0
    layers = []
    seen = set()
    for digest in (record.manifest, record.config):
        if digest not in seen:
            seen.add(digest)
            bytes_ = store.blob_size(digest)
            size += bytes_
            shared += bytes_ if users[digest] > 1 else 0
    for layer in record.layers:
        if layer.diff_id in seen:
            continue
        seen.add(layer.diff_id)
        bytes_ = store.blob_size(layer.digest) + store.layer_size(layer.diff_id)
        size += bytes_
        if users[layer.diff_id] > 1:
            shared += bytes_
        layers.append(LayerInfo(layer.diff_id, layer.digest, bytes_, users[layer.diff_id]))
    return size, shared, layers


def images(store: Store | str | None = None) -> list[ImageInfo]:
    """Every image of the store with its size on disk, the part shared with other images,
    and its layers (all measured in bytes on disk)."""
    store = _store(store)
    records = store.records()
    users: Counter = Counter()
    for record in records:
        users.update({record.manifest, record.config,
                      *(layer.diff_id for layer in record.layers)})
    found = []
    for record in records:
        size, shared, layers = _measure(store, record, users)
        found.append(ImageInfo(record.name, record.config, record.manifest, size, shared,
                               tuple(layers), record.platform, record.created, record.source))
    return found


def _collect(store: Store, only: set[str] | None = None) -> list[str]:
    """Remove blobs and layers no image record and no live lease uses (of only, if given),
    and every temporary (the caller holds collecting(): nothing is being added)."""
    kept_blobs: set[str] = set()
    kept_layers: set[str] = set()
    for record in store.records():
        kept_blobs.update(record.blobs())
        kept_layers.update(layer.diff_id for layer in record.layers)
    for lease in leases.live(store, remove_stale=True):
        kept_blobs.update(lease.get("blobs", []))
        kept_layers.update(lease.get("layers", []))
    removed = []
    for kind, directory, kept in (("layer", store.path("layers", "sha256"), kept_layers),
                                  ("blob", store.path("blobs", "sha256"), kept_blobs)):
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            digest = f"sha256:{name}"
            if digest in kept or (only is not None and digest not in only):
                continue
            files.remove_any(os.path.join(directory, name))
            files.unlink_quietly(store.path("locks", f"{kind}-{name}.lock"))
            removed.append(f"{kind} {digest}")
    if only is None:
        temporaries = store.path("tmp")
        for name in sorted(os.listdir(temporaries)) if os.path.isdir(temporaries) else []:
            files.remove_any(os.path.join(temporaries, name))
            removed.append(f"temporary {name}")
    return removed


def remove(ref: str | Reference, store: Store | str | None = None) -> list[str]:
    """Remove an image's name, and its blobs and layers no other image (nor a running
    container) uses; what was removed."""
    store = _store(store)
    reference = _reference(ref)
    with store.collecting():
        record = _find(store, reference)
        if record is None:
            raise ImageError(f"{ref} is not in the image store {store.root}, so there is "
                             "nothing to remove")
        store.forget(record.name)
        removed = [f"image {record.name}"]
        removed += _collect(store, set(record.blobs()) | {e.diff_id for e in record.layers})
    return removed


def prune(store: Store | str | None = None) -> list[str]:
    """Remove every blob and layer no image and no running container uses, and what
    interrupted pulls left; what was removed."""
    store = _store(store)
    if not os.path.isdir(store.root):
        return []
    with store.collecting():
        return _collect(store) + [f"writable layer {path} (its container has ended)"
                                  for path in writable.stale(store)]


def lease(image: Image | str, store: Store | str | None = None) -> leases.Lease:
    """A context manager the runtime holds while a container runs from image."""
    found = image if isinstance(image, Image) else get(image, store)
    return found.lease()


__all__ = ["Image", "ImageInfo", "LayerInfo", "export", "get", "images", "lease", "prune",
           "pull", "push", "remove"]
