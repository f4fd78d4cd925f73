"""A layer blob as its tar stream, whatever its compression (gzip, zstd, none), by its magic."""

from __future__ import annotations

import io
import zlib
from typing import BinaryIO

from nsmagic.images.errors import ImageError

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _Gunzip(io.RawIOBase):
    """gzip decompressed with zlib in large chunks (gzip.GzipFile reads 8 KiB at a time),
    bounded output per call, concatenated members read as one stream, as gzip(1) does."""

    def __init__(self, source: BinaryIO, label: str) -> None:
        self._source = source
        self._label = label
        self._inflate = zlib.decompressobj(31)
        self._pending = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def _more(self) -> bytes:
        inflate = self._inflate
        try:
            if inflate.unconsumed_tail:
                return inflate.decompress(inflate.unconsumed_tail, CHUNK)
            if inflate.eof:
                rest = inflate.unused_data or self._source.read(CHUNK)
                if not rest.startswith(GZIP_MAGIC):
                    self._done = True  # trailing padding after the last member
                    return b""
                self._inflate = zlib.decompressobj(31)
                return self._inflate.decompress(rest, CHUNK)
            chunk = self._source.read(CHUNK)
            if not chunk:
                raise ImageError(f"{self._label} ends in the middle of its gzip stream")
            return inflate.decompress(chunk, CHUNK)
        except zlib.error as error:
            raise ImageError(f"{self._label} is not valid gzip data ({error})") from None

    def readinto(self, buffer) -> int:  # noqa: ANN001
        while not self._pending and not self._done:
            self._pending = self._more()
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _zstd(source: BinaryIO, label: str) -> BinaryIO:
    try:
        import zstandard  # optional: few images use zstd, and the stdlib has it only from 3.14
    except ImportError:
        raise ImageError(f"{label} is compressed with zstd: install the zstandard package "
                         "(pip install zstandard) to unpack it") from None
    return zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)


def uncompressed(source: BinaryIO, label: str) -> BinaryIO:
    """A buffered reader of source's uncompressed bytes."""
    buffered = source if isinstance(source, io.BufferedReader) else io.BufferedReader(
        source, CHUNK)  # type: ignore[arg-type]
    magic = buffered.peek(4)[:4]
    if magic.startswith(GZIP_MAGIC):
        raw: BinaryIO = _Gunzip(buffered, label)  # type: ignore[assignment]
    elif magic == ZSTD_MAGIC:
        raw = _zstd(buffered, label)
    else:
        return buffered
    return io.BufferedReader(raw, CHUNK)  # type: ignore[arg-type]
