"""docker diff and docker commit for nsmagic's containers: a container's writable layer against
its image, and that layer as a new image layer on top of the image, named in the store.

A container is anything with Container's attributes: `spec.image` and `spec.image_layers`,
`writable_layer` (None for a --read-only one) and `result.root_outside` (the host uid of root
inside a user-namespace container), so images/ needs nothing of the runtime.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from nsmagic.errors import SpecError
from nsmagic.images import configure, containerfile
from nsmagic.images.api import Image, get
from nsmagic.images.diff import RUNTIME_PATHS, Changes, UpperEntry, changes_of, upper_entries
from nsmagic.images.draft import Draft
from nsmagic.images.layerwrite import Item, NewLayer, Owners, write_layer
from nsmagic.images.reference import RegistryReference, parse
from nsmagic.images.store import Store


def _writable(container: Any) -> tuple[str, tuple[str, ...], frozenset[str]]:
    """The container's upper directory, its image's layers and the paths to leave out."""
    spec = container.spec
    name = getattr(spec, "name", None) or "the container"
    if not getattr(spec, "image", None):
        raise SpecError(f"{name} has no image (--image REF): diff and commit compare an "
                        "image container's writable layer with its image")
    layer = getattr(container, "writable_layer", None)
    if layer is None:
        why = ("it is --read-only, so it has no writable layer" if spec.read_only
               else "it has ended, and its writable layer went with it")
        raise SpecError(f"{name} has no writable layer to read: {why}")
    # Volume mount points the runtime made are no change of the container's either.
    targets = {v.split(":")[1].strip("/") for v in getattr(spec, "volumes", ()) or ()
               if isinstance(v, str) and ":" in v}
    return layer.upper, tuple(spec.image_layers), RUNTIME_PATHS | frozenset(targets)


def _owners(container: Any) -> Owners:
    result = getattr(container, "result", None)
    return Owners(getattr(result, "root_outside", None))


def diff(container: Any, store: Store | str | None = None) -> Changes:
    """What the container changed in its image: A/C/D lines, as docker diff prints them."""
    upper, layers, excluded = _writable(container)
    return changes_of(upper_entries(upper, layers, _store(store).opaque_xattr, excluded))


def items_of(entries: Iterable[UpperEntry]) -> list[Item]:
    """The writable layer's entries as a layer's tar entries."""
    return [Item(entry.path, entry.kind, None if entry.kind == "whiteout" else entry.source)
            for entry in entries]


def commit(container: Any, ref: str, *, changes: Sequence[str] = (), message: str = "",
           author: str = "", store: Store | str | None = None) -> Image:
    """The container's writable layer as a new layer on its image, stored as the image ref
    (NAME[:TAG]), runnable at once with --image ref. changes are config instructions
    (ENV, CMD, ENTRYPOINT, WORKDIR, USER, LABEL, EXPOSE), as docker commit --change."""
    name = store_name(ref)
    store = _store(store)
    upper, layers, excluded = _writable(container)
    base = get(container.spec.image, store)
    instructions = parse_changes(changes)
    with store.using():  # prune waits: the new blobs have no record until the end
        entries = upper_entries(upper, layers, store.opaque_xattr, excluded)
        layer = write_layer(store, items_of(entries), f"the writable layer of "
                            f"{getattr(container.spec, 'name', None) or 'a container'}",
                            _owners(container))
        label = getattr(container.spec, "name", None) or container.spec.container_id
        return derive(store, base, name, layer, instructions,
                      created_by=f"nsmagic commit {label}", comment=message, author=author,
                      source=f"commit of container {label}")


def derive(store: Store, base: Image, name: str, layer: NewLayer | None,
           instructions: Sequence[containerfile.Instruction] = (), *, created_by: str,
           comment: str = "", author: str = "", source: str = "") -> Image:
    """base plus a layer and config changes, stored as the image name (the caller holds
    store.using())."""
    draft = Draft.of(base.record, base.config.raw)
    if layer is not None:
        draft.add_layer(layer, created_by, comment)
    for instruction in instructions:
        configure.apply(draft, instruction)
    if author:
        draft.config["author"] = author
    written = draft.write(store)
    record = written.record(name, source)
    store.save(record)
    return Image(store, record)


def parse_changes(changes: Sequence[str]) -> list[containerfile.Instruction]:
    """--change texts as config instructions; SpecError for any other."""
    found = []
    for text in changes:
        instruction = containerfile.instruction_of(text.strip(), 1, f"the change {text!r}") \
            if text.strip() else None
        if instruction is None or instruction.keyword not in containerfile.CONFIG_ONLY:
            raise SpecError(f"the change {text!r} is not one commit applies: expected "
                            + ", ".join(containerfile.CONFIG_ONLY) + " followed by its "
                            "arguments, as in a Containerfile")
        found.append(instruction)
    return found


def store_name(ref: str) -> str:
    """The store's name for an image made here: NAME[:TAG] or HOST[:PORT]/NAME[:TAG]."""
    reference = parse(ref)
    if not isinstance(reference, RegistryReference) or reference.digest:
        raise SpecError(f"{ref!r} cannot name a new image: expected NAME[:TAG] or "
                        "HOST[:PORT]/NAME[:TAG] (export it to oci: or docker-archive: "
                        "afterwards)")
    return str(reference)


def _store(store: Store | str | None) -> Store:
    return store if isinstance(store, Store) else Store(store)


def describe(image: Image) -> str:
    """One line on a new image: its name, ID and layers."""
    return (f"{image.name} (ID {image.id[:19]}, {len(image.record.layers)} layers, "
            f"manifest {image.digest[:19]})")


__all__ = ["commit", "derive", "describe", "diff", "parse_changes", "store_name"]
