"""Run a probe under `runc run` with Docker's defaults (bundle.py), and leave nothing behind.

    from tests.reference.runc import run_probe, runc_available, unavailable_reason
    result = run_probe("cat /proc/self/status", language="sh", userns=False)
    result.exit_code, result.stdout, result.stderr

Each probe gets a bundle in a temporary directory and a container id of its own,
`nsmagic-<pid>-ref-<12 hex>` (the session's leak check finds cgroups and mounts by that
prefix and pid); `runc delete -f` and the removal of the bundle run however the probe ends:
exit, timeout, or Ctrl-C (runc runs in a session of its own, so Ctrl-C reaches only us).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import pytest

from . import bundle

INTERPRETERS = {"sh": "/bin/sh", "python": "/usr/bin/python3"}
# What runc (1.1 and later) logs when it fails to create or start the container.
RUNC_FAILED = 'level=error msg="runc run failed'
# How long the clean-up waits for `runc run` to return once its container is gone.
REAP_SECONDS = 10.0


@dataclass(frozen=True)
class ProbeResult:
    """What the probe's process left: its exit status (128+N for signal N) and output."""

    exit_code: int
    stdout: str
    stderr: str


class RuncFailed(RuntimeError):
    """runc could not start the container: a broken reference, never a refused attack."""


class ProbeTimeout(TimeoutError):
    """The probe ran over its time; the container was killed and deleted."""

    def __init__(self, timeout: float, stdout: str, stderr: str) -> None:
        super().__init__(f"probe ran over {timeout} s under runc (killed)\n"
                         f"stdout: {stdout[-500:]}\nstderr: {stderr[-500:]}")
        self.stdout, self.stderr = stdout, stderr


@cache
def unavailable_reason() -> str:
    """Why run_probe cannot work on this host ("" when it can)."""
    if os.geteuid() != 0:
        return "the runc reference needs root (runc run with cgroups and a device cgroup)"
    runc = shutil.which("runc")
    if runc is None:
        return "no runc binary on PATH (Debian: apt-get install runc; scripts/setup does)"
    try:
        version = subprocess.run([runc, "--version"], capture_output=True, text=True,
                                 timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"runc --version failed: {error}"
    if version.returncode != 0:
        return f"runc --version failed: {version.stderr.strip()}"
    if not os.path.exists("/proc/self/ns/user") or not os.path.isdir("/sys/fs/cgroup"):
        return "this kernel lacks namespaces or cgroups"
    for path in INTERPRETERS.values():
        if not os.access(path, os.X_OK):
            return f"the probes need {path} on the host (the bundle's root is the host's /usr)"
    return ""


def runc_available() -> bool:
    """Whether run_probe can run here; unavailable_reason() says why not."""
    return not unavailable_reason()


requires_runc = pytest.mark.skipif(not runc_available(),
                                   reason=unavailable_reason() or "runc is available")


def _runc() -> str:
    runc = shutil.which("runc")
    assert runc is not None, unavailable_reason()
    return runc


def run_probe(script: str, *, language: Literal["sh", "python"] = "sh", userns: bool = False,
              timeout: float = 30,
              seccomp: Literal["docker", "containers-common", "unconfined"] = "docker",
              relax: Collection[str] = ()) -> ProbeResult:
    """Run script (sh or python source) as root in a default Docker container under runc.

    userns adds a user namespace (root inside is uid 100000 outside, as --userns-remap).
    seccomp is "docker" (Docker's default profile), "containers-common" (podman's) or
    "unconfined"; relax switches off Docker defaults for positive controls: "masked_paths",
    "readonly_paths", "devices" (the device cgroup allows everything).
    """
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    if language not in INTERPRETERS:
        raise ValueError(f"language {language!r}: one of {sorted(INTERPRETERS)}")
    hex_id = uuid.uuid4().hex
    container_id = f"nsmagic-{os.getpid()}-ref-{hex_id[:12]}"
    hostname = hex_id[:12]  # Docker's: the id's first 12 hex digits
    args = [INTERPRETERS[language], "-c", script]
    config = bundle.config(args, hostname=hostname, cgroups_path=container_id, userns=userns,
                           seccomp_profile=seccomp, relax=relax)
    directory = Path(tempfile.mkdtemp(prefix=f"{container_id}-"))
    process: subprocess.Popen[str] | None = None
    try:
        # Searchable by root inside a user namespace (uid 100000 outside).
        directory.chmod(0o755)
        bundle.write(directory, config, hostname, bundle.USERNS_HOST_ID if userns else 0)
        process = subprocess.Popen(
            [_runc(), "run", "--bundle", str(directory), container_id],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _delete(container_id)
            stdout, stderr = process.communicate(timeout=REAP_SECONDS)
            raise ProbeTimeout(timeout, stdout, stderr) from None
        code = process.returncode
        if code == 1 and RUNC_FAILED in stderr:
            raise RuncFailed(stderr.strip())
        return ProbeResult(code if code >= 0 else 128 - code, stdout, stderr)
    finally:
        _delete(container_id)
        if process is not None:
            _reap(process, container_id)
        shutil.rmtree(directory, ignore_errors=True)


def _delete(container_id: str) -> None:
    """runc delete -f: kills the container's processes, removes its cgroups and state."""
    subprocess.run([_runc(), "delete", "-f", container_id], stdin=subprocess.DEVNULL,
                   capture_output=True, timeout=60, check=False)


def _reap(process: subprocess.Popen[str], container_id: str) -> None:
    """Wait for `runc run` to return; kill it if it does not, and delete again (it may have
    been interrupted before the container's state was written)."""
    try:
        process.wait(timeout=REAP_SECONDS)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        _delete(container_id)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()
