"""Manifests and indexes (OCI and Docker v2 schema 2): descriptors read, checked and converted."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from nsmagic.images import digests
from nsmagic.images.errors import ImageError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
LAYERS = (OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER,
          "application/vnd.docker.image.rootfs.diff.tar")
# Docker types and their OCI twins: an OCI layout gets OCI types (umoci requires them), the
# blobs stay byte for byte the same.
TO_OCI = {DOCKER_MANIFEST: OCI_MANIFEST, DOCKER_LIST: OCI_INDEX, DOCKER_CONFIG: OCI_CONFIG,
          DOCKER_LAYER: OCI_LAYER_GZIP, "application/vnd.docker.image.rootfs.diff.tar": OCI_LAYER}
MAX_DOCUMENT = 4 << 20  # distribution's own limit for a manifest


@dataclass(frozen=True)
class Descriptor:
    """What points at a blob: its type, digest and size (and, in an index, its platform)."""

    media_type: str
    digest: str
    size: int
    platform: dict[str, Any] | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                                 "size": self.size}
        if self.platform:
            found["platform"] = self.platform
        if self.annotations:
            found["annotations"] = dict(self.annotations)
        return found


@dataclass(frozen=True)
class Manifest:
    """One image: its config and its layers, lowest first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    raw: bytes

    @property
    def digest(self) -> str:
        return digests.of_bytes(self.raw)


@dataclass(frozen=True)
class Index:
    """Several manifests, one per platform (an OCI index or a Docker manifest list)."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    raw: bytes


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ImageError(f"{where} has a descriptor that is not a JSON object")
    media_type = value.get("mediaType")
    digest = value.get("digest")
    size = value.get("size")
    if not isinstance(media_type, str) or not isinstance(size, int) or size < 0:
        raise ImageError(f"{where} has a descriptor without a mediaType and a size")
    digests.hex_of(digest, where)
    annotations = value.get("annotations") or {}
    platform = value.get("platform")
    return Descriptor(media_type, digest, size, platform if isinstance(platform, dict) else None,
                      annotations if isinstance(annotations, dict) else {})


def load_json(data: bytes, where: str) -> dict[str, Any]:
    """A JSON object, or ImageError naming where it came from."""
    if len(data) > MAX_DOCUMENT:
        raise ImageError(f"{where} is {len(data)} bytes, more than a manifest may be (4 MiB)")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError) as error:
        raise ImageError(f"{where} is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise ImageError(f"{where} is JSON but not an object")
    return value


def parse(data: bytes, media_type: str | None, where: str) -> Manifest | Index:
    """A manifest or an index from its bytes; media_type is what the transport said, the
    document's own mediaType wins when it has one."""
    document = load_json(data, where)
    kind = document.get("mediaType") or media_type
    if kind is None:
        kind = OCI_INDEX if "manifests" in document else OCI_MANIFEST
    if kind in DOCKER_SCHEMA1 or document.get("schemaVersion") == 1:
        raise ImageError(f"{where} is a Docker schema 1 manifest, which nsmagic does not read "
                         "(registries have served schema 2 since 2016): push the image again "
                         "with a current tool")
    if kind in INDEXES:
        entries = document.get("manifests")
        if not isinstance(entries, list):
            raise ImageError(f"{where} is an index without a manifests list")
        return Index(kind, tuple(_descriptor(e, where) for e in entries), data)
    if kind not in MANIFESTS:
        raise ImageError(f"{where} has the media type {kind!r}, expected an image manifest "
                         f"or index ({ACCEPT})")
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise ImageError(f"{where} is a manifest without a layers list")
    return Manifest(kind, _descriptor(document.get("config"), where),
                    tuple(_descriptor(layer, where) for layer in layers), data)


def build(config: Descriptor, layers: list[Descriptor] | tuple[Descriptor, ...],
          media_type: str = OCI_MANIFEST, annotations: dict[str, str] | None = None) -> Manifest:
    """A new manifest's canonical bytes."""
    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type,
                                "config": config.to_json(),
                                "layers": [layer.to_json() for layer in layers]}
    if annotations:
        document["annotations"] = annotations
    raw = json.dumps(document, separators=(",", ":")).encode()
    return Manifest(media_type, config, tuple(layers), raw)


def as_oci(manifest: Manifest) -> Manifest:
    """The same image with OCI media types (the manifest itself as is when it already has
    them); blobs are unchanged, so only the manifest's digest changes."""
    if manifest.media_type == OCI_MANIFEST:
        return manifest
    config = Descriptor(TO_OCI.get(manifest.config.media_type, manifest.config.media_type),
                        manifest.config.digest, manifest.config.size)
    layers = [Descriptor(TO_OCI.get(layer.media_type, layer.media_type), layer.digest,
                         layer.size, annotations=layer.annotations)
              for layer in manifest.layers]
    return build(config, layers)


def check_layers(manifest: Manifest, where: str) -> None:
    """Every layer is a tar layer nsmagic can unpack."""
    for layer in manifest.layers:
        if layer.media_type == DOCKER_FOREIGN_LAYER or "nondistributable" in layer.media_type:
            raise ImageError(f"{where} has a foreign layer ({layer.media_type}), a Windows "
                             "base layer that no registry serves: it cannot run on Linux")
        if layer.media_type not in LAYERS:
            raise ImageError(f"{where} has a layer of type {layer.media_type!r}, expected a "
                             "tar layer (" + ", ".join(LAYERS[:4]) + ")")
