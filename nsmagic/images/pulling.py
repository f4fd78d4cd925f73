"""A pull: from a source (a registry, an OCI layout, a docker-archive) into the store, verified.

The order makes an interruption harmless: every blob and layer is verified and renamed into
place first; the image record, which is what makes an image exist, is written last.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from nsmagic.images import config as image_config
from nsmagic.images import digests, manifest, platform
from nsmagic.images.errors import DigestMismatch, ImageError
from nsmagic.images.progress import ProgressCallback
from nsmagic.images.store import Fetch, ImageRecord, LayerEntry, Store

PARALLEL_LAYERS = 3  # as Docker's max-concurrent-downloads


class Source(Protocol):
    """Where an image comes from."""

    label: str

    def top(self) -> tuple[bytes, str | None, str | None]:
        """The manifest or index the reference names: bytes, media type, expected digest."""

    def document(self, digest: str) -> bytes:
        """A manifest an index points at."""

    def fetch(self, digest: str) -> Fetch:
        """A blob's bytes from an offset."""

    def close(self) -> None: ...


def _verified(data: bytes, expected: str | None, what: str) -> bytes:
    if expected is not None and digests.of_bytes(data) != expected:
        raise DigestMismatch(f"{what} has the digest {digests.of_bytes(data)}, not {expected}: "
                             "discarded")
    return data


def resolve(source: Source, wanted: dict[str, str]) -> manifest.Manifest:
    """The source's manifest for the wanted platform."""
    data, media_type, expected = source.top()
    document = manifest.parse(_verified(data, expected, f"the manifest of {source.label}"),
                              media_type, f"the manifest of {source.label}")
    if isinstance(document, manifest.Index):
        chosen = platform.choose(document, wanted, source.label)
        data = _verified(source.document(chosen.digest), chosen.digest,
                         f"the manifest {chosen.digest} of {source.label}")
        document = manifest.parse(data, chosen.media_type, f"the manifest of {source.label}")
        if isinstance(document, manifest.Index):
            raise ImageError(f"{source.label} is an index of indexes, which no image tool "
                             "writes for a platform")
    manifest.check_layers(document, f"the manifest of {source.label}")
    return document


def pull_into(store: Store, source: Source, name: str, wanted: dict[str, str] | None = None,
              progress: ProgressCallback | None = None) -> ImageRecord:
    """Bring the image into the store and name it; the record written."""
    wanted = wanted or platform.host()
    with store.using():
        image = resolve(source, wanted)
        store.put_bytes(image.raw, label=f"the manifest of {source.label}")
        config_label = f"the config {image.config.digest} of {source.label}"
        store.ingest(image.config.digest, image.config.size, source.fetch(image.config.digest),
                     config_label)
        config = image_config.parse(store.read_blob(image.config.digest), config_label)
        if len(config.diff_ids) != len(image.layers):
            raise ImageError(f"{source.label} is not a consistent image: its manifest has "
                             f"{len(image.layers)} layers, its config {len(config.diff_ids)}")

        def bring(layer: manifest.Descriptor, diff_id: str) -> None:
            label = f"the layer {layer.digest} of {source.label}"
            store.ingest(layer.digest, layer.size, source.fetch(layer.digest), label, progress)
            store.ensure_layer(diff_id, layer.digest, label, progress)

        pairs = list(zip(image.layers, config.diff_ids, strict=True))
        with ThreadPoolExecutor(PARALLEL_LAYERS, thread_name_prefix="nsmagic-pull") as pool:
            futures = [pool.submit(bring, layer, diff_id) for layer, diff_id in pairs]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                # A failure or a Ctrl-C: layers not started yet are not started at all.
                for future in futures:
                    future.cancel()
                raise
        record = ImageRecord(
            name=name, manifest=image.digest, manifest_media_type=image.media_type,
            config=image.config.digest,
            layers=tuple(LayerEntry(layer.digest, diff_id, layer.media_type, layer.size)
                         for layer, diff_id in pairs),
            source=source.label, platform=platform.describe(
                {"os": config.os, "architecture": config.architecture,
                 "variant": config.raw.get("variant")}),
            created=time.time())
        store.save(record)
    return record
