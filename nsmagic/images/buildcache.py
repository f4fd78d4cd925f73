"""The build cache: each step's image, keyed by its parent image's ID and its instruction's
text (and, for COPY, the digest of what it copies), as Docker's build cache keys steps.

An entry (build-cache/<key>.json in the store, written atomically) holds the step image's
config and manifest bytes and its layers. prune removes the blobs of images no record names,
so an entry puts its config and manifest back when it is used, and is a miss (and removed)
once a layer of it is gone.
"""

from __future__ import annotations

import hashlib
import json
import os

from nsmagic.images import files
from nsmagic.images.draft import Written
from nsmagic.images.store import Store


def key(parent_id: str, instruction: str, content: str = "") -> str:
    """The cache key of a step (hex)."""
    return hashlib.sha256(json.dumps([parent_id, instruction, content]).encode()).hexdigest()


class BuildCache:
    """The step images of earlier builds in one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.directory = store.open().path("build-cache")

    def _path(self, step_key: str) -> str:
        return os.path.join(self.directory, f"{step_key}.json")

    def get(self, step_key: str) -> Written | None:
        """The step's image if an earlier build made it and the store still has its layers."""
        try:
            with open(self._path(step_key), "rb") as handle:
                written = Written.from_json(json.load(handle))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        if not written.restore(self.store):
            files.unlink_quietly(self._path(step_key))
            return None
        return written

    def put(self, step_key: str, written: Written) -> None:
        os.makedirs(self.directory, exist_ok=True)
        files.write_atomic(self._path(step_key), json.dumps(written.to_json()).encode())

    def clear(self) -> int:
        """Remove every entry; how many there were."""
        names = os.listdir(self.directory) if os.path.isdir(self.directory) else []
        for name in names:
            files.unlink_quietly(os.path.join(self.directory, name))
        return len(names)
