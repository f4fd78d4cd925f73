"""A build's RUN: the command in a container of the step's image, its output streamed, and its
writable layer, kept past the container's end, committed as the step's layer.

The one module of images/ that starts containers (through the public Container API), loaded
only by a build with a RUN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nsmagic.images.commit import items_of
from nsmagic.images.diff import upper_entries
from nsmagic.images.layerwrite import NewLayer, Owners, write_layer
from nsmagic.images.store import Store

Output = Callable[[str, str], None]  # (stream, text)


@dataclass
class RunOutcome:
    """How a RUN ended: its layer when it succeeded, else what its container said."""

    layer: NewLayer | None
    how: str


def run(store: Store, image: str, argv: list[str], output: Output, label: str,
        options: dict[str, Any]) -> RunOutcome:
    """Run argv in a container of image (a name of the store) with the container options
    (net, memory, cpus, ...); its changes as a layer of the store."""
    from nsmagic.runtime.container import Container  # the runtime: only a RUN needs it

    container = Container(image=image, **options)
    container.keep_writable_layer = True
    writable = None
    try:
        try:
            for warning in container.result.warnings:
                output("stderr", f"nsmagic: {warning}\n")
            container.start(kind="command", argv=argv)
            result = container.wait(on_stdout=lambda text: output("stdout", text),
                                    on_stderr=lambda text: output("stderr", text))
        finally:
            writable = container.writable_layer  # ours to remove, however the run ended
            container.close()
        if not result.ok:
            return RunOutcome(None, result.describe())
        entries = upper_entries(writable.upper, container.spec.image_layers,
                                store.opaque_xattr)
        layer = write_layer(store, items_of(entries), label, Owners(result.root_outside))
        return RunOutcome(layer, result.describe())
    finally:
        if writable is not None:
            writable.remove()
