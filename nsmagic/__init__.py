"""nsmagic: run notebook cells in real Linux namespaces and cgroups."""

from __future__ import annotations

import importlib
from typing import Any

# What `import nsmagic` offers, imported on first use: the fork server imports this package
# too, and every module it holds is memory that each container's processes map and copy.
_EXPORTS = {
    "stats": "nsmagic.stats",
    "images": "nsmagic.images",
    "Limits": "nsmagic.cgroups.limits",
    "CapabilityError": "nsmagic.errors",
    "ContainerSetupError": "nsmagic.errors",
    "NsmagicError": "nsmagic.errors",
    "SpecError": "nsmagic.errors",
    "Container": "nsmagic.runtime.container",
    "ContainerResult": "nsmagic.runtime.container",
    "run": "nsmagic.runtime.container",
    "ContainerSpec": "nsmagic.runtime.spec",
}

__version__ = "0.1.0"
__all__ = ["CapabilityError", "Container", "ContainerResult", "ContainerSetupError",
           "ContainerSpec", "Limits", "NsmagicError", "SpecError", "images", "run", "stats",
           "load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """%load_ext nsmagic."""
    from nsmagic.magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """%unload_ext nsmagic."""
    from nsmagic.magics import unload

    unload(ipython)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'nsmagic' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name == f"nsmagic.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
