"""qemu's console as it arrives: the guest's markers become boot stages, sampled on the spot."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable

import psutil

from nsmagic.vm.images import EXIT_MARKER, INIT_MARKER, READY_MARKER

# Called with qemu's pid the moment the ready marker arrives (from the console thread); a true
# return value ends the run there (qemu is killed), e.g. once an idle guest has been sampled.
ReadyCallback = Callable[[int], "bool | None"]
# Called with a stage's name and the seconds since qemu's launch, as each stage is reached:
# "launched", "init" (the guest's init runs), "ready" (its marker), "sampled" (on_ready
# returned), "stopped" (qemu is gone). Runs on the console thread for the guest's stages.
StageCallback = Callable[[str, float], None]

READY_RE = re.compile(rf"{READY_MARKER} uptime=([0-9.]+)")
INIT_RE = re.compile(rf"{INIT_MARKER}\r?\n")
EXIT_RE = re.compile(rf"{EXIT_MARKER} status=(\d+)")
FAIL_RE = re.compile(r"NSMAGIC-FAIL ([^\r\n]*)")
# A broken KVM either says so or (as on the machine this was written on) spins silently in
# the kernel with the guest paused; both must end the attempt, not the timeout only.
KVM_ERROR_RE = re.compile(r"KVM internal error|failed to initialize kvm|Could not access KVM")


class ConsoleReader(threading.Thread):
    """Drains qemu's output, reports the guest's stages and samples qemu at the ready marker."""

    def __init__(
        self,
        proc: subprocess.Popen,
        started: float,
        on_ready: ReadyCallback | None = None,
        on_stage: StageCallback | None = None,
    ) -> None:
        super().__init__(daemon=True, name="nsmagic-vm-console")
        self.proc = proc
        self.started = started
        self.on_ready = on_ready
        self.on_stage = on_stage
        self.stop_requested = threading.Event()
        self.chunks: list[bytes] = []
        self.init_at: float | None = None
        self.ready_at: float | None = None
        self.uptime: float | None = None
        self.rss: int | None = None
        self.pss: int | None = None
        self.cpu: float | None = None
        self.kvm_error = threading.Event()
        self.exited = threading.Event()

    def text(self) -> str:
        """Everything qemu and the guest printed so far."""
        return b"".join(self.chunks).decode(errors="replace")

    def stage(self, name: str, at: float) -> None:
        """Report a stage; a failing progress display must not hang the boot."""
        if self.on_stage is None:
            return
        try:
            self.on_stage(name, at)
        except Exception:  # noqa: BLE001 - progress is a courtesy, the boot is the job
            self.on_stage = None

    def _sample(self) -> None:
        try:
            qemu = psutil.Process(self.proc.pid)
            mem = qemu.memory_full_info()
            cpu = qemu.cpu_times()
            self.rss, self.pss = mem.rss, getattr(mem, "pss", None)
            self.cpu = cpu.user + cpu.system
        except (psutil.Error, OSError):
            pass

    def _call_on_ready(self) -> None:
        if self.on_ready is None:
            return
        try:
            if self.on_ready(self.proc.pid):
                self.stop_requested.set()
        except Exception:  # noqa: BLE001 - a failing sampler must not hang the boot
            self.stop_requested.set()
        self.stage("sampled", time.monotonic() - self.started)

    def _look(self, tail: str, now: float) -> None:
        """Find the markers in the newest text (with some overlap: one can straddle chunks)."""
        if self.init_at is None and INIT_RE.search(tail):
            self.init_at = now - self.started
            self.stage("init", self.init_at)
        if self.ready_at is None:
            match = READY_RE.search(tail)
            if match and tail[match.end() :].find("\n") >= 0:
                self.ready_at = now - self.started
                self._sample()
                self.uptime = float(match.group(1))
                self.stage("ready", self.ready_at)
                self._call_on_ready()
            elif match is None and READY_MARKER not in tail and KVM_ERROR_RE.search(tail):
                self.kvm_error.set()

    def run(self) -> None:
        fd = self.proc.stdout.fileno()
        tail = ""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.chunks.append(chunk)
            tail = (tail + chunk.decode(errors="replace"))[-4096:]
            self._look(tail, time.monotonic())
        self.exited.set()


def qemu_messages(console: str) -> str:
    """The lines qemu printed about itself (not the guest's): for a log, never for people."""
    return "\n".join(
        line for line in console.splitlines() if line.startswith("qemu-system")
    )


def kvm_failure(console: str, returncode: int | None, timed_out: bool) -> str:
    """Why a guest did not boot with KVM, in words (qemu's own text stays in its log)."""
    if re.search(r"Could not access KVM|failed to initialize kvm", console):
        return "qemu could not open KVM"
    if "KVM internal error" in console:
        return "KVM stopped the guest with an internal error"
    if timed_out:
        # qemu pauses the guest instead of exiting when KVM cannot run it (nested hosts).
        return "qemu hung with the guest paused, as on nested hosts without VMX/SVM"
    if (returncode is not None and returncode < 0) or "Assertion" in console:
        return (
            "qemu stopped at once while it set up the virtual CPU: a KVM without full"
            " hardware virtualisation, such as a nested or paravirtualised one"
        )
    return f"qemu exited (status {returncode}) before the guest was ready"
