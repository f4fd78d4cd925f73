"""nsmagic: run notebook cells in real Linux namespaces and cgroups."""

from __future__ import annotations

from typing import Any

from nsmagic import stats
from nsmagic.cgroups.limits import Limits
from nsmagic.errors import CapabilityError, ContainerSetupError, NsmagicError, SpecError
from nsmagic.runtime.container import Container, ContainerResult, run
from nsmagic.runtime.spec import ContainerSpec

__version__ = "0.1.0"
__all__ = ["CapabilityError", "Container", "ContainerResult", "ContainerSetupError",
           "ContainerSpec", "Limits", "NsmagicError", "SpecError", "run", "stats",
           "load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """%load_ext nsmagic."""
    from nsmagic.magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """%unload_ext nsmagic."""
    from nsmagic.magics import unload

    unload(ipython)
