"""Test harness: run a command inside a real cgroup v2 kernel that sees the host's root read-only.

Used by tests/vm/test_vm.py (which runs the cgroup_v2 tests there) and scripts/vm-shell; it is
no part of the installed package, which keeps only what boots a guest (nsmagic.vm.qemu).
"""

from __future__ import annotations

import shlex
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from nsmagic.errors import CapabilityError
from nsmagic.vm.images import RESULTS_MOUNT, build_image
from nsmagic.vm.qemu import VMResult, boot, kvm_works, qemu_binary

# Paths the guest covers with its own tmpfs (or kernel filesystems): host files there are
# invisible inside, so a repository or interpreter living there cannot be run.
HIDDEN_IN_GUEST = ("/tmp", "/run", "/var/tmp", "/proc", "/sys", "/dev")

# The host root is read-only in the guest: Python must not try to write __pycache__, and
# HOME/TMPDIR point at the guest's tmpfs. Unbuffered output so that a command killed at the
# timeout still leaves what it printed in the results share.
GUEST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "LANG": "C.UTF-8",
}


def repo_root() -> Path:
    """The checkout nsmagic is imported from (the folder holding the nsmagic package)."""
    import nsmagic

    return Path(nsmagic.__file__).resolve().parent.parent


def guest_script(
    command: str | Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | Path = "/",
) -> str:
    """The shell script the guest runs: environment, working folder, then the command.

    A string is shell text (pipes, several lines); a sequence is one argv, quoted.
    """
    text = command if isinstance(command, str) else shlex.join([str(a) for a in command])
    lines = ["# written by tests/vm/guest.py: run by the guest init inside the host root"]
    for key, value in {**GUEST_ENV, **(env or {})}.items():
        lines.append(f"export {key}={shlex.quote(str(value))}")
    lines.append(f"cd {shlex.quote(str(cwd))} || exit 126")
    lines.append(text)
    return "\n".join(lines) + "\n"


def run_in_v2_guest(
    command: str | Sequence[str],
    *,
    timeout: float = 600.0,
    memory: str | int = "768M",
    env: Mapping[str, str] | None = None,
    cwd: str | Path = "/",
    smp: int = 1,
    accel: str = "auto",
) -> VMResult:
    """Run a command as root in the root cgroup of a cgroup v2 guest kernel; return its result.

    The guest sees the host's / read-only (9p), fresh tmpfs on /tmp, /run and /var/tmp, and
    cgroup2 at /sys/fs/cgroup. The command's stdout, stderr and exit status come back through
    a second, writable 9p share of a host temp folder (mounted at /run/vm-results), not the
    serial console, where kernel messages would interleave. exit_status is None when the
    command did not finish (see timed_out, failure and console).
    """
    return boot(
        "v2",
        memory=memory,
        accel=accel,
        smp=smp,
        timeout=timeout,
        script=guest_script(command, env, cwd),
    )


_available: tuple[bool, str] | None = None
_available_lock = threading.Lock()


def v2_guest_available() -> tuple[bool, str]:
    """(True, what will be used) when run_in_v2_guest can work here, else (False, why not).

    Builds (or finds) the image, which may download Debian packages the first time; the
    answer is remembered for the process.
    """
    global _available
    with _available_lock:
        if _available is None:
            _available = _check_available()
        return _available


def _check_available() -> tuple[bool, str]:
    if sys.platform != "linux":
        return False, "the v2 guest needs a Linux host"
    qemu = qemu_binary()
    if not qemu:
        return False, "qemu-system-x86_64 is not installed (Debian package qemu-system-x86)"
    for what, path in (("the nsmagic checkout", repo_root()), ("Python", Path(sys.prefix))):
        hidden = [h for h in HIDDEN_IN_GUEST if path == Path(h) or Path(h) in path.parents]
        if hidden:
            return False, (
                f"{what} lives under {hidden[0]} ({path}), which the guest covers with its own"
                " filesystem, so it would not be visible inside"
            )
    try:
        image = build_image("v2")
    except CapabilityError as exc:
        return False, f"cannot build the v2 guest image: {exc}"
    kvm, why = kvm_works()
    accel = "KVM" if kvm else f"TCG, emulated ({why})"
    return True, (
        f"{image.kernel_package} {image.kernel_version} under {qemu} with {accel};"
        f" results through 9p at {RESULTS_MOUNT}"
    )
