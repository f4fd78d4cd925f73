"""Errors of a registry, the store or an image file (a user's mistake is a SpecError)."""

from __future__ import annotations

from nsmagic.errors import NsmagicError


class ImageError(NsmagicError):
    """A registry, the store or an image file failed; the message is one sentence naming the
    reference and what went wrong."""


class DigestMismatch(ImageError):
    """Content did not hash to the digest that named it; the bad copy was discarded."""


class NoSpace(ImageError):
    """The store's file system is full; what was half-written was removed."""


class TransferInterrupted(ImageError):
    """A download stopped half-way (a dropped connection); it resumes where it stopped."""
