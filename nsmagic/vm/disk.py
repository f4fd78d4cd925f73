"""What the baseline's program needs on disk, measured in bytes on disk: the files the VM boots,
the container image of the same program (nsmagic.images' size, shared and unique), and two
images on one base, which the store holds once."""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nsmagic.cgroups.limits import format_size
from nsmagic.errors import NsmagicError
from nsmagic.images import api
from nsmagic.images.lower import LowerView
from nsmagic.vm.images import GuestImage
from nsmagic.vm.program_images import busybox_image, images_on_one_base

SHELL_PROGRAM = "the shell loop (busybox)"


def file_bytes(path: str | Path) -> int:
    """Bytes a file takes on disk (its allocated blocks), as du counts them."""
    return os.lstat(path).st_blocks * 512


def merged_root_bytes(layers: list[str], opaque_xattr: str) -> int:
    """Bytes on disk of the tree stacked layers show: each path once, from the top layer that
    has it; whited-out and hidden paths not at all (the root a container of them sees)."""
    view = LowerView(layers, opaque_xattr)
    seen: set[tuple[int, int]] = set()
    total = 0
    pending = [""]
    while pending:
        relative = pending.pop()
        info = view.lookup(relative)
        if info is None:
            continue
        if (info.st_dev, info.st_ino) not in seen:  # a hard link is one file on disk
            seen.add((info.st_dev, info.st_ino))
            total += info.st_blocks * 512
        if stat.S_ISDIR(info.st_mode):
            prefix = f"{relative}/" if relative else ""
            pending.extend(prefix + name for name in view.children(relative))
    return total


@dataclass(frozen=True)
class DiskPart:
    """One part of the VM's disk: what it is, the files it is, their bytes on disk."""

    what: str
    paths: tuple[str, ...]
    bytes: int


@dataclass(frozen=True)
class ImageSize:
    """An image of a store as images() measures it, with its blobs and layers apart."""

    name: str
    store: str
    size: int  # every byte on disk it needs: blobs + unpacked layers
    shared: int  # the part of size another image of the store needs too
    blobs: int  # manifest, config and compressed layers (what a registry serves)
    unpacked: int  # its layers' unpacked trees (what a container's root is stacked from)
    layers: int

    @property
    def unique(self) -> int:
        """Bytes only this image needs: what removing it would free."""
        return self.size - self.shared


def image_size(image: api.Image) -> ImageSize:
    """The image's sizes from nsmagic.images.images() of its store."""
    info = next(i for i in api.images(image.store) if i.name == image.name)
    store, record = image.store, image.record
    blobs = sum(store.blob_size(d) for d in dict.fromkeys(record.blobs()))
    diff_ids = dict.fromkeys(layer.diff_id for layer in record.layers)
    unpacked = sum(store.layer_size(d) for d in diff_ids)
    return ImageSize(image.name, store.root, info.size, info.shared, blobs, unpacked,
                     len(diff_ids))  # fmt: skip


@dataclass(frozen=True)
class SharedBase:
    """Images with layers in common, as one store holds them: everything once."""

    images: tuple[ImageSize, ...]
    base_layers: tuple[str, ...]  # the diff_ids they all have
    base_bytes: int  # those layers' blobs and unpacked trees, on disk once
    stored_bytes: int  # every blob and layer of all of them, each counted once

    @property
    def sum_of_sizes(self) -> int:
        """The images' sizes added up: what they would take with nothing stored once."""
        return sum(i.size for i in self.images)


def shared_base(images: list[api.Image]) -> SharedBase:
    """What the images (of one store) have in common, and what the store holds for them all."""
    store = images[0].store
    common = set.intersection(*({e.diff_id for e in i.record.layers} for i in images))
    base = [e for e in images[0].record.layers if e.diff_id in common]
    blobs = {d for i in images for d in i.record.blobs()}
    layers = {e.diff_id for i in images for e in i.record.layers}
    return SharedBase(
        images=tuple(image_size(i) for i in images),
        base_layers=tuple(e.diff_id for e in base),
        base_bytes=sum(store.blob_size(e.digest) + store.layer_size(e.diff_id) for e in base),
        stored_bytes=sum(store.blob_size(d) for d in blobs)
        + sum(store.layer_size(d) for d in layers),
    )


@dataclass
class DiskFigures:
    """The disk side of the comparison, every figure measured (bytes on disk)."""

    program: str
    vm: list[DiskPart] = field(default_factory=list)  # empty: no VM here
    image: ImageSize | None = None  # the container image of the same program
    base: SharedBase | None = None  # two images on one base
    notes: list[str] = field(default_factory=list)

    @property
    def vm_bytes(self) -> int | None:
        """The VM's disk for the program, or None where no VM could be measured."""
        return sum(p.bytes for p in self.vm) if self.vm else None

    def sentence(self) -> str:
        """The course's sentence: image against VM, and a base stored once."""
        said = []
        if self.image is not None:
            said.append(f"the container image of {self.program} is {format_size(self.image.size)}")
        if self.vm_bytes is not None:
            parts = ", ".join(f"{p.what.split(' (')[0]} {format_size(p.bytes)}" for p in self.vm)
            said.append(f"the VM needs {format_size(self.vm_bytes)} ({parts})")
        text = ", ".join(said)
        if self.base is not None:
            b = self.base
            names = " + ".join(f"{i.name.rsplit('/', 1)[-1]} {format_size(i.size)}"
                               for i in b.images)
            text += (f"{'; ' if text else ''}two images on one base store it once: "
                     f"{format_size(b.base_bytes)} shared ({names} take "
                     f"{format_size(b.stored_bytes)} together, not "
                     f"{format_size(b.sum_of_sizes)})")
        if not text:
            return ""
        return f"Measured on disk: {text}."

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON, unique sizes included."""
        def image(i: ImageSize) -> dict[str, Any]:
            return {**asdict(i), "unique": i.unique}

        return {
            "program": self.program,
            "vm_bytes": self.vm_bytes,
            "vm": [asdict(p) for p in self.vm],
            "image": image(self.image) if self.image else None,
            "base": None if self.base is None else {
                "images": [image(i) for i in self.base.images],
                "base_layers": list(self.base.base_layers),
                "base_bytes": self.base.base_bytes,
                "stored_bytes": self.base.stored_bytes,
                "sum_of_sizes": self.base.sum_of_sizes,
            },
            "sentence": self.sentence(),
            "notes": self.notes,
        }


def _vm_parts(guest: GuestImage, named: api.Image | None) -> list[DiskPart]:
    parts = [
        DiskPart("kernel (vmlinuz)", (str(guest.kernel),), file_bytes(guest.kernel)),
        DiskPart("initramfs (its root: init + busybox)", (str(guest.initramfs),),
                 file_bytes(guest.initramfs)),
    ]  # fmt: skip
    if named is not None:
        layers = named.layer_dirs()
        parts.append(DiskPart(f"root filesystem ({named.name}'s files, merged)", tuple(layers),
                              merged_root_bytes(layers, named.store.opaque_xattr)))
    return parts


def measure_disk(
    guest: GuestImage | None,
    busybox_version: str | None,
    named: api.Image | None = None,
    *,
    cache: Path | None = None,
) -> DiskFigures:
    """The disk figures of the baseline's program: the shell loop, whose image is busybox of
    busybox_version (the guest's), or the program of the named image. guest: the VM image
    booted (None: no VM here). What cannot be built here is said in a note, not guessed."""
    out = DiskFigures(f"the program of {named.name}" if named else SHELL_PROGRAM)
    if guest is not None:
        out.vm = _vm_parts(guest, named)
    try:
        if named is not None:
            out.image = image_size(named)
        elif busybox_version:
            out.image = image_size(busybox_image(busybox_version, cache=cache))
    except (NsmagicError, OSError) as exc:
        out.notes.append(f"the container image could not be built here: {exc}")
    try:
        out.base = shared_base(images_on_one_base(cache=cache))
    except (NsmagicError, OSError) as exc:
        out.notes.append(f"the two images on one base could not be built here: {exc}")
    return out
