"""The workload loops a VM and a container both run, as shell text and as guest kernel words."""

from __future__ import annotations

WORKLOADS = ("none", "cpu", "memory")
# How long a workload runs, and how much a memory workload writes, unless told otherwise.
DEFAULT_WORKLOAD_SECONDS = 3.0
DEFAULT_WORKLOAD_MIB = 64


def workload_script(kind: str, seconds: float, mib: int = DEFAULT_WORKLOAD_MIB) -> str:
    """The /bin/sh text a container runs for a workload: the same loops as the micro guest's init.

    cpu: a busy shell loop for `seconds`; memory: `mib` MiB written into a tmpfs (the
    container's private /tmp, the guest's /tmp), kept for `seconds`.
    """
    if kind == "cpu":
        return f"while :; do :; done &\nsleep {seconds:g}\nkill $!\n"
    if kind == "memory":
        return (
            f"dd if=/dev/zero of=/tmp/fill bs=1048576 count={int(mib)} 2>/dev/null\n"
            f"sleep {seconds:g}\n"
        )
    raise ValueError(f"workload must be 'cpu' or 'memory', not {kind!r}.")


def guest_workload_args(
    kind: str, seconds: float, mib: int = DEFAULT_WORKLOAD_MIB, settle: float = 0.0
) -> str:
    """Kernel command-line words that make the micro guest run a workload after its marker."""
    if kind not in ("cpu", "memory", "idle"):
        raise ValueError(f"guest workload must be 'cpu', 'memory' or 'idle', not {kind!r}.")
    return (
        f"nsmagic_workload={kind} nsmagic_seconds={seconds:g} nsmagic_mib={int(mib)}"
        f" nsmagic_settle={settle:g}"
    )
