"""IPython glue only: the magics parse options, call the nsmagic API and show results."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nsmagic.magics.cgroup import CgroupMagics
from nsmagic.magics.container import ContainerError, ContainerMagics
from nsmagic.magics.dashboard import DashboardMagics
from nsmagic.magics.vm import VMMagics
from nsmagic.runtime.launcher import close_default_launcher

# Every Magics class the extension registers; each is a traitlets Configurable, so
# %config <ClassName>.<option> works for all of them.
MAGIC_CLASSES: list[type] = [ContainerMagics, CgroupMagics, DashboardMagics, VMMagics]
_loaded: dict[int, list[Any]] = {}
_completion_removers: dict[int, Callable[[], None]] = {}


def load(ipython: Any) -> None:
    """Register the magics with this shell (idempotent)."""
    if id(ipython) in _loaded:
        return
    instances = [cls(ipython) for cls in MAGIC_CLASSES]
    for magics in instances:
        ipython.register_magics(magics)
    _loaded[id(ipython)] = instances
    from nsmagic.magics.completion import install

    # Tab completes our options, subcommands and names instead of Python's builtins.
    _completion_removers[id(ipython)] = install(ipython)


def unload(ipython: Any) -> None:
    """Remove our magics and stop our helper processes; IPython has no public unregister."""
    _completion_removers.pop(id(ipython), lambda: None)()
    for magics in _loaded.pop(id(ipython), []):
        # Each magics class may own kernel resources (cgroups, threads): give them back.
        getattr(magics, "close", lambda: None)()
        table = ipython.magics_manager.magics
        for kind, names in magics.magics.items():
            for name in names:
                table[kind].pop(name, None)
        ipython.magics_manager.registry.pop(type(magics).__name__, None)
    from nsmagic.magics.dashboard import shutdown

    shutdown()
    close_default_launcher()


__all__ = ["ContainerError", "ContainerMagics", "MAGIC_CLASSES", "load", "unload"]
