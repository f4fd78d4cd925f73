"""pid 1 of a container, in both forms: nsmagic-init (the small native program pid 1 becomes
once the payload runs) and the Python pid 1 it replaces where it was not built. Both must
behave the same: reap, forward signals, report how the payload ended, leave nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import nsmagic
from nsmagic.isolation.capabilities import DOCKER_DEFAULT
from nsmagic.runtime.inside import init
from nsmagic.runtime.launcher import ForkServerLauncher

from ..conftest import our_cgroups, running_containers, wait_until

pytestmark = pytest.mark.root


def test_nsmagic_init_is_built_by_the_setup():
    # scripts/setup installs gcc and libc6-dev; the editable install compiles it (setup.py).
    assert init.NATIVE_INIT is not None and os.access(init.NATIVE_INIT, os.X_OK)


@pytest.fixture(params=["native", "python"])
def server(request, monkeypatch):
    """A fork server whose containers' pid 1 is nsmagic-init, or stays Python."""
    monkeypatch.setenv("NSMAGIC_INIT", request.param)
    launcher = ForkServerLauncher()
    launcher.ping()
    launcher.init_kind = request.param
    yield launcher
    launcher.close()


def test_pid_1_is_undumpable_named_and_keeps_no_more_than_it_needs(server):
    code = textwrap.dedent("""
        import time
        time.sleep(0.2)  # a cold container's pid 1 execs nsmagic-init as the payload starts
        fields = dict(line.split(':', 1) for line in open('/proc/1/status'))
        print(open('/proc/1/comm').read().strip(), int(fields['CapEff'], 16),
              fields['NoNewPrivs'].strip())
        try:
            open('/proc/1/environ').read()
            print('environ readable')
        except PermissionError:
            print('environ denied')
    """)
    result = nsmagic.run(code, launcher=server)
    assert result.ok, result.stderr
    first, second, _ = result.stdout.split("\n")
    name, capabilities, no_new_privs = first.split()
    assert name == "nsmagic-init" and no_new_privs == "1"
    if server.init_kind == "native":
        assert int(capabilities) == 1 << 5  # CAP_KILL, to stop what the payload left
    else:
        assert int(capabilities) == sum(1 << cap for cap in DOCKER_DEFAULT.values())
    assert second == "environ denied"  # not dumpable: no ptrace, no /proc/1/mem


@pytest.mark.parametrize("options", [{}, {"userns": True}], ids=["root", "userns"])
def test_exit_status_and_signals_are_reported(server, options):
    assert nsmagic.run("import sys; sys.exit(3)", launcher=server, **options).exit_code == 3
    killed = nsmagic.run("import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
                         launcher=server, **options)
    assert killed.signal == signal.SIGKILL and killed.describe().startswith("killed by")


def test_orphaned_zombies_are_reaped(server):
    code = textwrap.dedent("""
        import os, time
        if os.fork() == 0:
            if os.fork() == 0:
                os._exit(0)
            os._exit(0)
        time.sleep(0.3)
        os.wait()
        states = [open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0]
                  for p in os.listdir('/proc') if p.isdigit()]
        print('zombies:', states.count('Z'))
    """)
    assert nsmagic.run(code, launcher=server).stdout == "zombies: 0\n"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP])
def test_signals_sent_to_the_container_reach_the_payload(server, signum):
    with nsmagic.Container(launcher=server) as container:
        container.start(f"import signal, time\n"
                        f"signal.signal({int(signum)}, lambda *a: (print('got it'), exit(7)))\n"
                        f"print('ready', flush=True)\n"
                        f"time.sleep(30)\n")
        seen = threading.Event()
        threading.Thread(target=lambda: (seen.wait(5), container.send_signal(signum)),
                         daemon=True).start()
        result = container.wait(on_stdout=lambda text: "ready" in text and seen.set())
    assert result.stdout == "ready\ngot it\n" and result.exit_code == 7


def test_a_signal_without_a_handler_in_the_payload_ends_it(server):
    with nsmagic.Container(launcher=server) as container:
        container.start("import time\nprint('ready', flush=True)\ntime.sleep(30)\n")
        seen = threading.Event()
        threading.Thread(target=lambda: (seen.wait(5), container.send_signal(signal.SIGUSR1)),
                         daemon=True).start()
        result = container.wait(on_stdout=lambda text: "ready" in text and seen.set())
    assert result.signal == signal.SIGUSR1


@pytest.mark.parametrize("namespaces", [None, {"uts", "ipc", "mount"}],
                         ids=["pid namespace", "no pid namespace"])
def test_what_the_payload_left_running_is_killed(server, namespaces):
    options = {} if namespaces is None else {"namespaces": namespaces}
    result = nsmagic.run("import subprocess\n"
                         "p = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
                         "print(p.pid)\n", launcher=server, **options)
    assert result.ok, result.stderr
    assert wait_until(lambda: not running_containers(), 5)
    if namespaces is not None:  # the pid is the host's: it must be gone
        assert wait_until(lambda: not os.path.exists(f"/proc/{result.stdout.strip()}"), 5)


def test_the_container_ends_when_its_fork_server_is_killed(server):
    with nsmagic.Container(launcher=server) as container:
        container.start("import time\nprint('up', flush=True)\ntime.sleep(60)")
        seen = threading.Event()
        threading.Thread(target=lambda: (seen.wait(5), os.kill(server.pid, signal.SIGKILL)),
                         daemon=True).start()
        container.wait(on_stdout=lambda text: seen.set(), timeout=30)
        pid_1, group = container.result.pid, container.result.cgroup
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid_1}"), 5)
    assert wait_until(lambda: not running_containers(), 5)
    # Nobody is left to remove the container's cgroup but the notebook side: it did.
    assert group and not [g for g in our_cgroups() if g.endswith(group)]


def test_an_idle_containers_pid_1_holds_almost_no_memory_of_its_own(monkeypatch):
    monkeypatch.setenv("NSMAGIC_INIT", "native")
    launcher = ForkServerLauncher()
    try:
        with nsmagic.Container(launcher=launcher) as container:
            container.start("import time\nprint('up', flush=True)\ntime.sleep(60)")
            seen = threading.Event()
            private = []

            def measure() -> None:
                seen.wait(5)
                exe = f"/proc/{container.result.pid}/exe"
                wait_until(lambda: os.readlink(exe).endswith("/nsmagic-init"), 5)
                with open(f"/proc/{container.result.pid}/smaps_rollup") as handle:
                    private.extend(int(line.split()[1]) for line in handle
                                   if line.startswith("Private_Dirty"))
                container.send_signal(signal.SIGKILL)

            threading.Thread(target=measure, daemon=True).start()
            container.wait(on_stdout=lambda text: seen.set(), timeout=30)
    finally:
        launcher.close()
    # A forked interpreter as pid 1 keeps over a megabyte of private copies.
    assert private and private[0] < 256, f"pid 1 holds {private} kB of its own"


def test_nsmagic_init_is_not_used_when_the_environment_says_python():
    code = ("import nsmagic.runtime.inside.init as i, sys; "
            "sys.exit(0 if i.NATIVE_INIT is None else 1)")
    env = dict(os.environ, NSMAGIC_INIT="python")
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_a_warm_containers_pid_1_is_nsmagic_init_already_while_it_waits(monkeypatch):
    monkeypatch.setenv("NSMAGIC_POOL", "1")
    monkeypatch.setenv("NSMAGIC_INIT", "native")
    launcher = ForkServerLauncher()
    try:
        nsmagic.run("pass", launcher=launcher)  # the pool fills once containers are asked for

        def waiting_pid_1() -> list[int]:
            with open(f"/proc/{launcher.pid}/task/{launcher.pid}/children") as handle:
                children = [int(pid) for pid in handle.read().split()]
            return [pid for pid in children if os.path.exists(f"/proc/{pid}/exe")
                    and os.readlink(f"/proc/{pid}/exe").endswith("/nsmagic-init")]

        assert wait_until(waiting_pid_1, 5)
        warm = waiting_pid_1()[0]
        # Killing the waiting payload process discards the warm container, pid 1 with it.
        with open(f"/proc/{warm}/task/{warm}/children") as handle:
            os.kill(int(handle.read().split()[0]), signal.SIGKILL)
        assert wait_until(lambda: not os.path.exists(f"/proc/{warm}"), 5)
        result = nsmagic.run("print('after')", launcher=launcher)
        assert result.ok and result.stdout == "after\n"
    finally:
        launcher.close()
