"""sha256 digests as OCI writes them (sha256:<hex>), and a reader that hashes what it passes."""

from __future__ import annotations

import hashlib
import io
import re
from typing import BinaryIO

from nsmagic.images.errors import ImageError

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def of_bytes(data: bytes) -> str:
    """The digest of data."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hex_of(digest: str, where: str = "an image") -> str:
    """The hex part of a sha256 digest; ImageError for any other algorithm or a malformed one
    (a digest from a manifest becomes a file name in the store, so it is checked first)."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ImageError(f"{where} names the digest {str(digest)[:80]!r}, expected sha256: "
                         "followed by 64 lower-case hexadecimal digits")
    return digest[len("sha256:"):]


def short(digest: str) -> str:
    """The 12-digit form Docker prints."""
    return digest.removeprefix("sha256:")[:12]


class HashingReader(io.RawIOBase):
    """Reads from another reader and hashes every byte that passes, counting them."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001
        data = self._source.read(len(buffer))
        if not data:
            return 0
        size = len(data)
        buffer[:size] = data
        self._hash.update(data)
        self.count += size
        return size

    def drain(self) -> None:
        """Read to the end (a tar's trailing padding belongs to its digest too)."""
        while self.read(1 << 20):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()
