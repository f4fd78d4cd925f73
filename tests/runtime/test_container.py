"""The Container API: output streams live, failures are reported precisely, Ctrl-C and the
death of the owning process leave nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import nsmagic
from nsmagic.errors import ContainerSetupError, SpecError
from nsmagic.runtime.launcher import ForkServerLauncher, SpawnLauncher

from ..conftest import our_processes, parent_of, running_containers, wait_until


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_output_arrives_while_the_container_runs_not_at_the_end():
    arrivals: list[tuple[float, str]] = []
    with nsmagic.Container() as container:
        container.start("import time\nfor i in range(3):\n    print(i)\n    time.sleep(0.4)\n")
        container.wait(on_stdout=lambda text: arrivals.append((time.monotonic(), text)))
    assert "".join(text for _, text in arrivals) == "0\n1\n2\n"
    assert len(arrivals) == 3
    # Spaced like the sleeps, so each line was delivered as it was printed.
    assert arrivals[-1][0] - arrivals[0][0] > 0.6


def test_stdout_and_stderr_are_kept_apart():
    result = nsmagic.run("import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert (result.stdout, result.stderr) == ("out\n", "err\n")


def test_non_utf8_output_is_replaced_not_fatal():
    result = nsmagic.run("import os\nos.write(1, b'caf\\xc3\\xa9 \\xff\\n')")
    assert result.stdout == "café \ufffd\n"


def test_an_exception_comes_back_with_its_type_and_line_numbers_of_the_cell():
    result = nsmagic.run("x = 1\n\ndef f():\n    raise KeyError('missing')\nf()\n")
    assert not result.ok
    assert result.exception.type == "KeyError"
    assert result.exception.message == "'missing'"
    text = "".join(result.exception.traceback)
    assert 'line 5, in <module>' in text and 'line 4, in f' in text
    assert "raise KeyError('missing')" in text
    assert "nsmagic" not in text  # our own frames are not the user's business


def test_line_numbers_follow_first_line():
    with nsmagic.Container() as container:
        container.start("1/0", filename="Cell In[7]", first_line=2)
        result = container.wait()
    assert 'File "Cell In[7]", line 2' in "".join(result.exception.traceback)


def test_exit_status_and_signals_are_reported():
    assert nsmagic.run("raise SystemExit(3)").exit_code == 3
    assert nsmagic.run("exit 4", kind="shell").exit_code == 4
    killed = nsmagic.run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert killed.signal == signal.SIGKILL
    assert killed.describe() == "killed by signal 9 (SIGKILL)"


def test_shell_payload_runs_as_a_script():
    result = nsmagic.run("echo hello from $(hostname)\nexit 0", kind="shell", hostname="box")
    assert result.stdout == "hello from box\n" and result.ok


def test_pid_1_reaps_orphaned_zombies():
    code = textwrap.dedent("""
        import os, time
        if os.fork() == 0:          # a child whose own child becomes an orphan
            if os.fork() == 0:
                os._exit(0)
            os._exit(0)
        time.sleep(0.3)             # the orphan exits; pid 1 must reap it
        os.wait()
        states = []
        for pid in os.listdir('/proc'):
            if pid.isdigit():
                states.append(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[0])
        print('zombies:', states.count('Z'))
    """)
    assert nsmagic.run(code).stdout == "zombies: 0\n"


def test_pid_1_forwards_sigterm_to_the_payload():
    with nsmagic.Container() as container:
        container.start("import signal, time\n"
                        "signal.signal(signal.SIGTERM, lambda *a: (print('got term'), exit(7)))\n"
                        "print('ready', flush=True)\n"
                        "time.sleep(30)\n")
        seen = threading.Event()
        threading.Thread(target=lambda: (seen.wait(5), container.send_signal(signal.SIGTERM)),
                         daemon=True).start()
        result = container.wait(on_stdout=lambda text: "ready" in text and seen.set())
    assert result.stdout == "ready\ngot term\n" and result.exit_code == 7


def test_processes_left_running_die_with_the_container():
    result = nsmagic.run("import subprocess\n"
                         "p = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
                         "print(p.pid)\n")
    assert result.ok
    assert wait_until(lambda: not running_containers())


def test_ctrl_c_stops_the_container_within_a_second_and_leaves_nothing():
    started = threading.Event()
    pid_box: list[int] = []
    main_thread = threading.main_thread().ident

    def interrupt_when_running():
        started.wait(5)
        time.sleep(0.2)
        signal.pthread_kill(main_thread, signal.SIGINT)

    threading.Thread(target=interrupt_when_running, daemon=True).start()
    with nsmagic.Container() as container:
        container.start("import time\nprint('running', flush=True)\n"
                        "while True:\n    time.sleep(0.05)\n")
        began = None
        with pytest.raises(KeyboardInterrupt):
            def on_out(text):
                pid_box.append(container.result.pid)
                started.set()
            began = time.monotonic()
            container.wait(on_stdout=on_out)
        stopped = time.monotonic() - began
    assert container.result.interrupted
    assert stopped < 1.5 + 0.2
    assert not alive(pid_box[0])
    assert "KeyboardInterrupt" in "".join(container.result.exception.traceback)


def test_ctrl_c_escalates_when_the_payload_ignores_sigint_and_sigterm():
    with nsmagic.Container() as container:
        container.start("import signal, time\n"
                        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                        "print('stubborn', flush=True)\ntime.sleep(60)\n")
        main_thread = threading.main_thread().ident
        with pytest.raises(KeyboardInterrupt):
            container.wait(on_stdout=lambda _: threading.Timer(
                0.1, signal.pthread_kill, (main_thread, signal.SIGINT)).start())
        began = time.monotonic()
    assert time.monotonic() - began < 1.0
    assert not alive(container.result.pid)


def test_timeout_kills_the_container():
    with nsmagic.Container() as container:
        container.start("import time\ntime.sleep(60)")
        with pytest.raises(TimeoutError):
            container.wait(timeout=0.5)
        pid = container.result.pid
    assert wait_until(lambda: not alive(pid), 2)


def test_the_container_dies_when_the_process_that_owns_it_is_killed(tmp_path):
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import nsmagic, sys
            c = nsmagic.Container()
            c.start("import time\\nprint('up', flush=True)\\ntime.sleep(60)")
            c.wait(on_stdout=lambda t: (print(c.result.pid, flush=True)))
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    pid1 = int(owner.stdout.readline())
    assert alive(pid1)
    owner.kill()
    owner.wait()
    assert wait_until(lambda: not alive(pid1), 5), "container outlived its owner"
    assert wait_until(lambda: not running_containers(), 5)


def test_bad_options_are_rejected_before_anything_starts():
    with pytest.raises(SpecError, match="unknown namespace 'time'"):
        nsmagic.Container(namespaces={"pid", "time"})
    with pytest.raises(SpecError, match="--hostname needs a private UTS namespace"):
        nsmagic.Container(namespaces={"pid"}, hostname="x")
    with pytest.raises(SpecError, match="not a valid host name"):
        nsmagic.Container(hostname="bad_name!")


def test_a_failing_setup_step_is_named_and_leaves_nothing(tmp_path):
    # A root directory whose /proc is a symbolic link cannot take the container's own.
    (tmp_path / "proc").symlink_to("/etc")
    with pytest.raises(ContainerSetupError,
                       match="could not be created while setting up inside the container: "
                             f"{tmp_path}/proc is a symbolic link"):
        nsmagic.Container(rootfs=str(tmp_path)).run("pass")
    assert wait_until(lambda: not running_containers(), 5)


@pytest.mark.parametrize("launcher_class", [SpawnLauncher, ForkServerLauncher])
def test_both_launchers_give_identical_results(launcher_class):
    launcher = launcher_class()
    try:
        code = ("import os, socket\nprint(os.getpid(), os.getppid(), socket.gethostname())\n"
                "print(sorted(p for p in os.listdir('/proc') if p.isdigit()))\nraise SystemExit(5)")
        result = nsmagic.run(code, hostname="same", launcher=launcher)
    finally:
        launcher.close()
    assert result.stdout == "2 1 same\n['1', '2']\n"
    assert result.exit_code == 5


def test_many_containers_in_parallel_threads():
    results = []

    def one(i):
        results.append(nsmagic.run(f"print({i})").stdout)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [f"{i}\n" for i in range(8)]
    assert os.path.exists("/proc/self")


@pytest.mark.skipif(os.geteuid() != 0, reason="warm containers are prepared for root only")
def test_warm_and_cold_containers_are_the_same_container(monkeypatch):
    from nsmagic.runtime.launcher import ForkServerLauncher

    code = ("import os, socket\nprint(os.getpid(), os.getppid(), socket.gethostname())\n"
            "print(sorted(p for p in os.listdir('/proc') if p.isdigit()))\n"
            "print(os.listdir('/tmp'), open('/proc/self/cgroup').read().split()[-1])")
    outputs = {}
    for pool_size in ("0", "2"):
        monkeypatch.setenv("NSMAGIC_POOL", pool_size)
        launcher = ForkServerLauncher()
        try:
            nsmagic.run("pass", launcher=launcher)  # starts the server, which then warms up
            server_pid = launcher.pid
            results = []
            for _ in range(3):
                time.sleep(0.2)  # warming happens while no container runs
                results.append(nsmagic.run(code, hostname="same", memory="64M",
                                           launcher=launcher))
        finally:
            launcher.close()
        outputs[pool_size] = {r.stdout for r in results}
        # Closing the server discards its warm containers with it.
        assert wait_until(lambda pid=server_pid: not alive(pid), 5)
        assert all(r.ok for r in results)
        warm = [r.cgroup.split("-")[-1].startswith("w") for r in results]
        assert warm == ([False] * 3 if pool_size == "0" else [True] * 3)
    assert outputs["0"] == outputs["2"] == {"2 1 same\n['1', '2']\n[] 0::/\n"}
    assert wait_until(lambda: not [p for p in our_processes() if "warm" in p
                                   and parent_of(int(p.split()[0])) == server_pid], 5)


def test_the_default_launcher_falls_back_to_a_helper_per_container(monkeypatch):
    from nsmagic.runtime import launcher as launchers

    def broken_ping(self):
        raise RuntimeError("the nsmagic fork server exited at start-up")

    monkeypatch.setattr(launchers.ForkServerLauncher, "ping", broken_ping)
    chosen = launchers._fork_server_or_fallback()
    assert isinstance(chosen, launchers.SpawnLauncher)
    result = nsmagic.run("import os; print(os.getpid())", launcher=chosen)
    assert result.stdout == "2\n"
