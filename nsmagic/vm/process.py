"""Run one qemu command line to its end or its timeout; qemu never outlives the call."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING

from nsmagic.vm.console import FAIL_RE, ConsoleReader, ReadyCallback, StageCallback, kvm_failure

if TYPE_CHECKING:
    from nsmagic.cgroups.base import Cgroup
    from nsmagic.vm.launch import VMResult

# With a cgroup, qemu is started through this gate: the shell waits for one line on its stdin
# (a pipe), which the host writes only after it has moved the shell into the cgroup; the shell
# then execs qemu (same pid) with stdin from /dev/null, as without the gate, so qemu is
# accounted in the group from its first instruction.
CGROUP_GATE = ["/bin/sh", "-c", 'read _; exec "$@" </dev/null', "nsmagic-vm-gate"]

_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL qemu's whole process group and reap it; safe to call twice."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:
            proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process in D state
        pass
    with _live_lock:
        _live.discard(proc)


@atexit.register
def _kill_all() -> None:
    # For interpreter exit while another thread is still inside boot().
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        _kill(proc)


def deathsig_prefix() -> list[str]:
    """The command that makes qemu die with its Python (empty where setpriv is missing)."""
    # setpriv execs qemu with PR_SET_PDEATHSIG, so qemu dies even when Python is SIGKILLed
    # and no finally block runs; done in a helper rather than a preexec_fn because forking
    # a threaded interpreter (an IPython kernel) must not run Python code in the child.
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def _spawn(argv: list[str], gated: bool) -> subprocess.Popen:
    """Start qemu; a Ctrl-C landing inside Popen is held back until the process is recorded."""
    # Otherwise an interrupt after the fork, before we hold the process, would leave a qemu
    # nobody kills. (Masking SIGINT in this thread is not enough: the kernel then hands it to
    # another thread, and Python still raises it here.)
    deferred: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    # Only the main thread may set handlers, and one installed from C cannot be put back.
    masked = threading.current_thread() is threading.main_thread() and previous is not None
    if masked:
        signal.signal(signal.SIGINT, lambda signum, _frame: deferred.append(signum))
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if gated else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own process group, so that the kill reaches anything qemu may spawn and a
            # Ctrl-C in a terminal reaches us (who then kill qemu), not qemu behind our back.
            start_new_session=True,
        )
        with _live_lock:
            _live.add(proc)
    finally:
        if masked:
            signal.signal(signal.SIGINT, previous)
    if deferred:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            _kill(proc)
            raise KeyboardInterrupt
    return proc


def run_qemu(
    argv: list[str],
    timeout: float,
    result: VMResult,
    cgroup: Cgroup | None = None,
    on_ready: ReadyCallback | None = None,
    on_stage: StageCallback | None = None,
) -> None:
    """Run qemu to its end or the timeout, filling in the console and the figures."""
    proc: subprocess.Popen | None = None
    reader: ConsoleReader | None = None
    started = time.monotonic()
    try:
        proc = _spawn(argv, gated=cgroup is not None)
        if cgroup is not None:
            cgroup.attach(proc.pid)  # still the gate's shell: qemu is not running yet
            proc.stdin.write(b"go\n")
            proc.stdin.close()
        reader = ConsoleReader(proc, started, on_ready, on_stage)
        reader.start()
        reader.stage("launched", time.monotonic() - started)
        deadline = started + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result.timed_out = True
                break
            try:
                proc.wait(timeout=min(remaining, 0.05))
                break
            except subprocess.TimeoutExpired:
                if reader.kvm_error.is_set() or reader.stop_requested.is_set():
                    break
    finally:
        if proc is not None:
            _kill(proc)
            result.qemu_returncode = proc.returncode
        result.total_wall_s = time.monotonic() - started
        if reader is not None:
            reader.exited.wait(timeout=5)
        if proc is not None and proc.stdout:
            proc.stdout.close()

    result.console = reader.text()
    result.ready = reader.ready_at is not None
    result.init_wall_s = reader.init_at
    result.boot_wall_s = reader.ready_at
    result.guest_uptime_s = reader.uptime
    result.qemu_rss_bytes, result.qemu_pss_bytes = reader.rss, reader.pss
    result.qemu_cpu_s = reader.cpu
    if fail := FAIL_RE.search(result.console):
        result.failure = fail.group(1).strip()
    elif result.accel == "kvm" and not result.ready:
        result.failure = kvm_failure(result.console, proc.returncode, result.timed_out)
    reader.stage("stopped", result.total_wall_s)
