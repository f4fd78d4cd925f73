"""An image being made (by commit or by a build step) from a base: its config document and its
layers, then written as a config blob, an OCI manifest and, last, a record.

The config is the base's whole document, so everything a runtime honours carries over, with
each new layer's diff_id appended to rootfs.diff_ids and a history entry per change, as
Docker's and buildah's commits write them.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nsmagic.images import digests
from nsmagic.images import platform as platforms
from nsmagic.images.layerwrite import NewLayer
from nsmagic.images.manifest import OCI_CONFIG, OCI_MANIFEST, TO_OCI, Descriptor, build
from nsmagic.images.store import ImageRecord, LayerEntry, Store


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Draft:
    """A config document and the layers it describes, lowest first."""

    config: dict[str, Any]
    layers: list[LayerEntry]
    platform: str

    @classmethod
    def of(cls, record: ImageRecord, config: dict[str, Any]) -> Draft:
        """A draft on top of an image of the store (its record and its config's document)."""
        document = copy.deepcopy(config)
        history = document.setdefault("history", [])
        # Tools pair history entries with layers: a base without them gets one per layer.
        missing = len(record.layers) - sum(1 for h in history if not h.get("empty_layer"))
        for _ in range(max(0, missing)):
            history.append({"created_by": "", "comment": "a layer of the base image (it "
                            "had no history entry)"})
        layers = [LayerEntry(entry.digest, entry.diff_id,
                             TO_OCI.get(entry.media_type, entry.media_type), entry.size)
                  for entry in record.layers]
        return cls(document, layers, record.platform)

    @classmethod
    def scratch(cls) -> Draft:
        """An empty image (FROM scratch) for this machine's platform."""
        host = platforms.host()
        document = {"architecture": host["architecture"], "os": host["os"],
                    "config": {}, "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
        if host.get("variant"):
            document["variant"] = host["variant"]
        return cls(document, [], platforms.describe(host))

    @property
    def settings(self) -> dict[str, Any]:
        """The part a runtime honours (Env, Cmd, WorkingDir, ...), created if missing."""
        value = self.config.get("config")
        if not isinstance(value, dict):
            value = self.config["config"] = {}
        return value

    def add_layer(self, layer: NewLayer, created_by: str, comment: str = "") -> None:
        rootfs = self.config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        rootfs.setdefault("diff_ids", []).append(layer.diff_id)
        self.layers.append(LayerEntry(layer.digest, layer.diff_id, layer.media_type,
                                      layer.size))
        self._history(created_by, comment, empty=False)

    def note_change(self, created_by: str, comment: str = "") -> None:
        """A history entry of a change to the config alone (no layer)."""
        self._history(created_by, comment, empty=True)

    def _history(self, created_by: str, comment: str, empty: bool) -> None:
        created = _now()
        entry: dict[str, Any] = {"created": created, "created_by": created_by}
        if comment:
            entry["comment"] = comment
        if empty:
            entry["empty_layer"] = True
        self.config.setdefault("history", []).append(entry)
        self.config["created"] = created

    def write(self, store: Store) -> Written:
        """The config and manifest blobs in the store (the caller holds store.using())."""
        config = json.dumps(self.config, separators=(",", ":"), sort_keys=True).encode()
        config_digest = store.put_bytes(config, label="a new image config")
        layers = [Descriptor(layer.media_type, layer.digest, layer.size)
                  for layer in self.layers]
        manifest = build(Descriptor(OCI_CONFIG, config_digest, len(config)), layers)
        store.put_bytes(manifest.raw, label="a new image manifest")
        return Written(config, manifest.raw, tuple(self.layers), self.platform)


@dataclass(frozen=True)
class Written:
    """An image whose blobs are in the store, named or not (a build step's)."""

    config: bytes
    manifest: bytes
    layers: tuple[LayerEntry, ...]
    platform: str

    @property
    def id(self) -> str:
        return digests.of_bytes(self.config)

    @property
    def digest(self) -> str:
        return digests.of_bytes(self.manifest)

    def record(self, name: str, source: str) -> ImageRecord:
        return ImageRecord(name=name, manifest=self.digest, manifest_media_type=OCI_MANIFEST,
                           config=self.id, layers=self.layers, source=source,
                           platform=self.platform, created=time.time())

    def draft(self) -> Draft:
        return Draft(json.loads(self.config), list(self.layers), self.platform)

    def restore(self, store: Store) -> bool:
        """Whether the image is whole in the store again: its config and manifest put back
        (prune removes those of unnamed images), its layers' blobs and trees still there."""
        for layer in self.layers:
            if not store.has_blob(layer.digest) or store.layer(layer.diff_id) is None:
                return False
        store.put_bytes(self.config, label="a cached image config")
        store.put_bytes(self.manifest, label="a cached image manifest")
        return True

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config.decode(), "manifest": self.manifest.decode(),
                "platform": self.platform,
                "layers": [{"digest": e.digest, "diff_id": e.diff_id,
                            "media_type": e.media_type, "size": e.size} for e in self.layers]}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Written:
        return cls(value["config"].encode(), value["manifest"].encode(),
                   tuple(LayerEntry(**layer) for layer in value["layers"]), value["platform"])
