"""Image references as users write them: Docker's names and skopeo's transports."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from nsmagic.errors import SpecError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"
ACCEPTED = ("NAME[:TAG|@sha256:DIGEST], HOST[:PORT]/NAME[:TAG], docker://NAME, oci:DIR[:TAG] "
            "or docker-archive:FILE[:NAME:TAG]")
# skopeo's other transports: named so that a user who writes one hears it is not read here.
OTHER_TRANSPORTS = ("oci-archive", "dir", "containers-storage", "docker-daemon", "sif",
                    "tarball", "ostree")

# The grammar of github.com/distribution/reference, written out: path components of
# lower-case letters and digits joined by '.', '_', '__' or runs of '-'.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])"
                   r"(?::[0-9]+)?")
_TRANSPORT_LIKE = re.compile(r"([a-z][a-z0-9+.-]*):(//)?")


@dataclass(frozen=True)
class RegistryReference:
    """An image in a registry: docker://HOST/REPOSITORY[:TAG][@DIGEST]."""

    registry: str
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    transport = "docker"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def api_host(self) -> str:
        """Where the registry's API answers (Docker Hub's is not docker.io itself)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def target(self) -> str:
        """What to ask the registry for: the digest if there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def familiar(self) -> str:
        """The short form Docker prints: alpine:3.20 for docker.io/library/alpine:3.20."""
        name = str(self)
        if self.registry == DOCKER_HUB:
            name = name.removeprefix(f"{DOCKER_HUB}/").removeprefix("library/")
        return name


@dataclass(frozen=True)
class LayoutReference:
    """An image in an OCI image layout directory: oci:DIR[:TAG]."""

    path: str
    tag: str | None = None

    transport = "oci"

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


@dataclass(frozen=True)
class ArchiveReference:
    """An image in a docker-archive tar file (docker save): docker-archive:FILE[:NAME:TAG]."""

    path: str
    name: RegistryReference | None = None

    transport = "docker-archive"

    def __str__(self) -> str:
        return f"docker-archive:{self.path}" + (f":{self.name}" if self.name else "")


Reference = RegistryReference | LayoutReference | ArchiveReference


def parse(text: str) -> Reference:
    """A reference from what a user typed; SpecError names it and what is accepted."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"an image reference is needed: expected {ACCEPTED}")
    text = text.strip()
    if text.startswith("docker://"):
        return parse_registry(text.removeprefix("docker://"), original=text)
    if text.startswith("oci:"):
        return _parse_layout(text)
    if text.startswith("docker-archive:"):
        return _parse_archive(text)
    transport = _TRANSPORT_LIKE.match(text)
    if transport and (transport.group(2) or transport.group(1) in OTHER_TRANSPORTS):
        raise SpecError(f"unknown transport {transport.group(1)!r} in image reference "
                        f"{text!r}: expected {ACCEPTED}")
    try:
        return parse_registry(text)
    except SpecError:
        rest = text[transport.end():] if transport else ""
        if transport and rest[:1] in ("/", ".", "~"):
            # "oic:/srv/img" reads as a misspelt transport more than as a host name.
            raise SpecError(f"unknown transport {transport.group(1)!r} in image reference "
                            f"{text!r}: expected {ACCEPTED}") from None
        raise


def parse_registry(text: str, original: str | None = None) -> RegistryReference:
    """A registry reference in Docker's conventions (alpine = docker.io/library/alpine:latest)."""
    shown = original or text
    bad = SpecError(f"{shown!r} is not an image reference: expected {ACCEPTED}")
    digest = None
    if "@" in text:
        text, digest = text.rsplit("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise SpecError(f"the digest of image reference {shown!r} is not sha256: followed "
                            "by 64 lower-case hexadecimal digits")
    tag = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise SpecError(f"the tag of image reference {shown!r} is not valid: expected "
                            "letters, digits, '_', '.' or '-' (at most 128, not starting "
                            "with '.' or '-')")
    first, _, remainder = text.partition("/")
    # Docker's rule: the first component is a registry host only if it looks like one.
    if remainder and ("." in first or ":" in first or first == "localhost"
                      or first.lower() != first):
        if not _HOST.fullmatch(first):
            raise bad
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, text
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _PATH.fullmatch(path) or len(path) > 255:
        raise bad
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return RegistryReference(registry, path, tag, digest)


def _split_path(text: str, prefix: str) -> tuple[str, str | None]:
    # skopeo's rule: the first ':' after the transport ends the path.
    body = text[len(prefix):]
    path, sep, rest = body.partition(":")
    if not path:
        raise SpecError(f"image reference {text!r} names no path: expected "
                        f"{prefix}PATH" + ("[:TAG]" if prefix == "oci:" else "[:NAME:TAG]"))
    return os.path.abspath(os.path.expanduser(path)), (rest if sep else None)


def _parse_layout(text: str) -> LayoutReference:
    path, tag = _split_path(text, "oci:")
    if tag is not None and not tag:
        tag = None
    # The OCI layout's ref.name annotation is freer than a Docker tag; refuse only the
    # characters that would make it ambiguous.
    if tag is not None and not re.fullmatch(r"[A-Za-z0-9_.\-:/@+]+", tag):
        raise SpecError(f"the tag of image reference {text!r} is not valid: expected letters, "
                        "digits and . _ - : / @ +")
    return LayoutReference(path, tag)


def _parse_archive(text: str) -> ArchiveReference:
    path, name = _split_path(text, "docker-archive:")
    return ArchiveReference(path, parse_registry(name, original=text) if name else None)
