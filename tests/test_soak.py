"""Soak: many container lifecycles of every kind, one after another and from several threads
at once, then nothing may be left: no process, mount, cgroup, network link, file descriptor
or thread of ours.

NSMAGIC_SOAK=N sets how many lifecycles run (default 600: about 40 s as root on the 2-core
test machine; 1,000 took 62 s). For a long run: NSMAGIC_SOAK=5000 pytest -s
tests/test_soak.py (about 5 minutes here; -s shows the tally per kind).

The kinds, in rotation: normal exit, an exception, Ctrl-C sent to the container
(send_signal(SIGINT)), Ctrl-C in the waiting thread (pthread_kill of the main thread during
wait(): the path that escalates to SIGTERM and SIGKILL if the payload does not stop), an
OOM kill (memory=32M, 200 MB written; root), a fork bomb under pids=16 (rootless: 64 over
the user's tasks, as RLIMIT_NPROC counts them all), kill -9 of pid 1 from outside, a batch
of concurrent starts from 4 threads, and (root) a --net bridge container."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest

import nsmagic
from nsmagic.isolation.network import BRIDGE_PREFIX, PEER_PREFIX, VETH_PREFIX, our_links
from nsmagic.runtime.launcher import close_default_launcher, default_launcher

from .conftest import (
    IS_ROOT,
    our_cgroups,
    our_mounts,
    our_processes,
    running_containers,
    wait_until,
)

SOAK = int(os.environ.get("NSMAGIC_SOAK", "600"))
WAIT_S = 30  # no single lifecycle may take longer: a hang fails instead of blocking the suite
LOOP = "import time\nprint('up', flush=True)\nfor _ in range(600):\n    time.sleep(0.05)\n"
FORK_BOMB = """
import os, time
me = os.getpid()
failed = 0
deadline = time.monotonic() + 5  # a loaded machine forks slowly: until refused, or 5 s
while time.monotonic() < deadline and not failed:
    try:
        os.fork()          # parent and child both go on forking
    except OSError:
        failed += 1
        time.sleep(0.01)
if os.getpid() != me:
    time.sleep(30)         # children keep their pid slot until the container ends
    os._exit(0)
print('refused', failed > 0)
"""


def _when_running(container: nsmagic.Container, action  # noqa: ANN001
                  ) -> tuple[threading.Thread, threading.Event]:
    """Call action() from a thread once the payload has printed (set the event returned
    from on_stdout) and pid 1 is known."""
    seen = threading.Event()

    def go():
        if wait_until(lambda: container.result.pid is not None and seen.is_set(), WAIT_S):
            time.sleep(0.02)
            action()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, seen


def normal(i: int) -> None:
    result = nsmagic.run(f"print({i})")
    assert result.ok and result.stdout == f"{i}\n", result.describe()


def exception(i: int) -> None:
    result = nsmagic.run(f"raise ValueError({i})")
    assert result.exception is not None and result.exception.type == "ValueError"


def interrupt_by_signal(i: int) -> None:
    with nsmagic.Container() as container:
        container.start(LOOP)
        thread, seen = _when_running(container, lambda: container.send_signal(signal.SIGINT))
        result = container.wait(on_stdout=lambda _: seen.set(), timeout=WAIT_S)
    thread.join()
    assert result.exception is not None and result.exception.type == "KeyboardInterrupt"


def interrupt_in_wait(i: int) -> None:
    main = threading.main_thread().ident
    with nsmagic.Container() as container:
        container.start(LOOP)
        thread, seen = _when_running(container, lambda: signal.pthread_kill(main, signal.SIGINT))
        with pytest.raises(KeyboardInterrupt):
            container.wait(on_stdout=lambda _: seen.set(), timeout=WAIT_S)
    thread.join()
    assert container.result.interrupted


def oom(i: int) -> None:
    result = nsmagic.run("data = b'x' * (200 << 20)\nprint('survived')", memory="32M")
    assert result.oom is not None and "out of memory" in result.describe(), result.describe()
    assert "survived" not in result.stdout


def tasks_of_this_user() -> int:
    """Threads of every process of our real uid: what RLIMIT_NPROC counts."""
    total = 0
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except (OSError, ValueError):
            continue
        if int(fields.get("Uid", "-1 ").split()[0]) == os.getuid():
            total += int(fields["Threads"])
    return total


def fork_bomb(i: int) -> None:
    # Rootless, pids is RLIMIT_NPROC, which counts every task of the same real user on the
    # machine (documented in cgroups/rlimit.py): give it headroom over what runs already.
    pids = 16 if IS_ROOT else tasks_of_this_user() + 64
    result = nsmagic.run(FORK_BOMB, pids=str(pids))
    assert result.ok and result.stdout == "refused True\n", (result.describe(), result.stdout)


def kill_pid_1(i: int) -> None:
    with nsmagic.Container() as container:
        container.start(LOOP)
        thread, seen = _when_running(
            container, lambda: os.kill(container.result.pid, signal.SIGKILL))
        result = container.wait(on_stdout=lambda _: seen.set(), timeout=WAIT_S)
    thread.join()
    assert not result.ok and result.signal == signal.SIGKILL, result.describe()


def concurrent(i: int, width: int = 4) -> None:
    outputs: list[str] = []
    errors: list[BaseException] = []

    def one(n: int) -> None:
        try:
            outputs.append(nsmagic.run(f"print({n})").stdout)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=one, args=(i * 10 + n,)) for n in range(width)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert not errors, errors
    assert sorted(outputs) == sorted(f"{i * 10 + n}\n" for n in range(width))


BRIDGED: list[str] = []


def bridge(i: int) -> None:
    container = nsmagic.Container(net="bridge")
    BRIDGED.append(container.spec.container_id)
    with container:
        result = container.run("import socket\nprint(socket.if_nameindex()[-1][1])",
                               timeout=WAIT_S)
    assert result.ok and result.stdout == "eth0\n" and result.address


KINDS = [normal, exception, interrupt_by_signal, normal, interrupt_in_wait, fork_bomb,
         kill_pid_1, exception, concurrent]
if IS_ROOT:
    KINDS += [oom, bridge]


def nsmagic_kinds(targets: dict[str, str]) -> Counter:
    """The kinds of descriptor nsmagic opens (sockets, pipes, pidfds), counted by target: a
    socket's or pipe's target names its inode, so a new one shows as new."""
    return Counter(t for t in targets.values()
                   if t.startswith(("socket:", "pipe:", "anon_inode:[pidfd]")))


def fd_targets() -> dict[str, str]:
    """What each of our descriptors is (for a failure message that says which one)."""
    targets = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return targets


def test_soak_leaves_nothing_behind():
    # Start the fork server (and let its warm pool fill) before counting what we hold.
    nsmagic.run("pass")
    time.sleep(0.3)
    threads = threading.active_count()
    held_before = fd_targets()
    done = {kind.__name__: 0 for kind in KINDS}
    began = time.monotonic()
    count = 0
    i = 0
    while count < SOAK:
        kind = KINDS[i % len(KINDS)]
        kind(i)
        done[kind.__name__] += 1
        count += 4 if kind is concurrent else 1
        i += 1
    elapsed = time.monotonic() - began
    print(f"\nsoak: {count} lifecycles in {elapsed:.1f} s: {done}")

    # While the fork server still runs: no container left, nothing held by this process.
    assert wait_until(lambda: not running_containers(), 10), running_containers()
    assert not our_mounts(), our_mounts()
    assert wait_until(lambda: threading.active_count() <= threads, 5), threading.enumerate()
    held_now = nsmagic_kinds(fd_targets()) - nsmagic_kinds(held_before)
    assert not held_now, held_now
    ours = [f"{prefix}{cid[:8]}" for cid in BRIDGED for prefix in (VETH_PREFIX, PEER_PREFIX)]
    assert wait_until(lambda: not set(ours) & set(our_links()), 10), our_links()

    # Closing the fork server releases the rest: warm containers, their cgroups, the bridge.
    server = default_launcher().pid
    control = default_launcher().control_fd
    control_inode = os.fstat(control).st_ino
    close_default_launcher()
    assert wait_until(lambda: not our_processes(), 10), our_processes()
    mine = f"nsmagic-{os.getpid()}-"
    assert wait_until(lambda: not [c for c in our_cgroups() if mine in c], 10), \
        sorted(our_cgroups())
    assert wait_until(lambda: f"{BRIDGE_PREFIX}{server}"[:15] not in our_links(), 10)
    # Nothing the soak opened is still open, and the fork server's control socket is closed.
    # (Counting every descriptor misleads: an earlier test's kernel client, with its zmq
    # eventfds, may close or open some of its own meanwhile.)
    held_after = fd_targets()
    left = nsmagic_kinds(held_after) - nsmagic_kinds(held_before)
    assert not left, left
    assert held_before.get(str(control)) == f"socket:[{control_inode}]"
    assert f"socket:[{control_inode}]" not in held_after.values()


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="warm containers are prepared for root only")
def test_closing_a_container_at_once_does_not_crash_the_fork_server():
    for _ in range(3):
        nsmagic.run("pass")
        time.sleep(0.2)  # the pool warms while nothing runs
    server = default_launcher().pid
    for _ in range(10):
        nsmagic.Container().start("pass").close()
    time.sleep(0.5)
    with open(f"/proc/{server}/stat") as handle:
        state = handle.read().rsplit(")", 1)[1].split()[0]
    assert state != "Z" and default_launcher().pid == server
    assert nsmagic.run("print('still serving')").stdout == "still serving\n"
