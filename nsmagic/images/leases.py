"""Leases: while a container runs from an image, prune keeps that image's blobs and layers.

A lease is a file in the store's leases/ directory that its process holds an flock on. The
kernel drops the flock when the process ends, however it ends, so a lease never outlives its
process (or the children it forked, which share the open file); prune treats a lease file
whose flock it can take as stale and removes it.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from typing import Any

from nsmagic.images import files
from nsmagic.images.store import ImageRecord, Store

SUFFIX = ".lease"


class Lease:
    """Keeps one image's content from prune while open; close() is safe twice."""

    def __init__(self, store: Store, record: ImageRecord) -> None:
        self.store = store
        self.record = record
        self.path = ""
        self._fd: int | None = None
        self._pid = os.getpid()

    def open(self) -> Lease:
        directory = self.store.open().path("leases")
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        temporary = os.path.join(directory, f".tmp-{name}")
        content = json.dumps({"pid": os.getpid(), "image": self.record.name,
                              "blobs": self.record.blobs(),
                              "layers": [layer.diff_id for layer in self.record.layers]})
        # Under the shared gc lock, so a prune sees the lease or runs entirely before it.
        with self.store.using():
            fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                os.write(fd, content.encode())
                self.path = os.path.join(directory, name + SUFFIX)
                os.rename(temporary, self.path)
            except BaseException:
                os.close(fd)
                files.unlink_quietly(temporary)
                raise
        self._fd = fd
        return self

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # A forked child closing its copy must not end its parent's lease.
        if os.getpid() == self._pid:
            files.unlink_quietly(self.path)
        os.close(fd)

    def __enter__(self) -> Lease:
        return self if self._fd is not None else self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def live(store: Store, remove_stale: bool = False) -> list[dict[str, Any]]:
    """The leases whose process still holds them; stale ones removed when asked (the caller
    holds the store's collecting() lock)."""
    directory = store.path("leases")
    found = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if name.endswith(SUFFIX):
                    try:
                        found.append(json.loads(os.pread(fd, 1 << 22, 0)))
                    except ValueError:
                        continue
                continue
            if remove_stale:
                files.unlink_quietly(path)
        finally:
            os.close(fd)
    return found
