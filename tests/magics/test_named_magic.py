"""%container start/ls/logs/stats/wait/stop/rm/prune and %%container NAME / --bg / --in /
--out, through a real in-process IPython shell."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import signal
import subprocess
import sys
import textwrap
import warnings

import pytest
from IPython.core.error import UsageError

from nsmagic.isolation import network
from nsmagic.magics.container import ContainerInterrupted
from nsmagic.runtime.named import MANAGER

from ..conftest import IS_ROOT, wait_until
from .interrupting import interrupt_after


@pytest.fixture(autouse=True)
def no_named_containers_left():
    yield
    MANAGER.close_all()


def test_a_named_container_keeps_variables_between_cells(ipython_shell, capsys):
    ipython_shell.run_line_magic("container", "start lab --hostname lab --memory 128M")
    assert "started lab" in capsys.readouterr().out
    assert ipython_shell.run_cell("%%container lab\ntotal = 40").success
    assert ipython_shell.run_cell("%%container lab\ntotal += 2\nimport socket\n"
                                  "print(total, socket.gethostname())").success
    assert capsys.readouterr().out == "42 lab\n"


def test_in_and_out_move_notebook_variables(ipython_shell):
    ipython_shell.user_ns["data"] = [1, 2, 3, 4]
    assert ipython_shell.run_cell("%%container --in data --out result\n"
                                  "result = sum(data)").success
    assert ipython_shell.user_ns["result"] == 10
    ipython_shell.run_line_magic("container", "start keeper")
    assert ipython_shell.run_cell("%%container keeper --in data --out doubled\n"
                                  "doubled = [2 * x for x in data]").success
    assert ipython_shell.user_ns["doubled"] == [2, 4, 6, 8]


def test_out_of_a_lambda_fails_the_cell_clearly(ipython_shell, capsys):
    result = ipython_shell.run_cell("%%container --out f\nf = lambda: 1")
    assert not result.success
    assert "variable 'f' cannot be copied out of the container" in str(result.error_in_exec)


def test_background_cells_return_at_once_and_keep_a_log(ipython_shell, capsys):
    assert ipython_shell.run_cell("%%container --bg --name ticker\nimport time\n"
                                  "for i in range(3):\n    print('tick', i, flush=True)\n"
                                  "    time.sleep(0.2)").success
    assert MANAGER.get("ticker").state == "running"
    ipython_shell.run_line_magic("container", "wait ticker")
    ipython_shell.run_line_magic("container", "logs ticker")
    out = capsys.readouterr().out
    assert "ticker: exit status 0" in out
    assert out.rstrip().endswith("tick 0\ntick 1\ntick 2")


def test_ls_stats_stop_rm(ipython_shell, capsys):
    ipython_shell.run_line_magic("container", "start one --memory 64M")
    table = ipython_shell.run_line_magic("container", "ls")
    text = table.text()
    assert "one" in text and "running" in text and "memory 64 MiB" in text
    assert "<table>" in table._repr_html_()
    stats = ipython_shell.run_line_magic("container", "stats one").text()
    assert "memory " in stats
    ipython_shell.run_line_magic("container", "stop one")
    with pytest.raises(UsageError, match="no container named 'nope'"):
        ipython_shell.run_line_magic("container", "stop nope")
    ipython_shell.run_line_magic("container", "rm one")
    assert "one" not in MANAGER.names()


def test_stats_names_each_figure_in_words_with_its_unit(ipython_shell):
    ipython_shell.run_line_magic("container", "start figures --memory 64M")
    table = ipython_shell.run_line_magic("container", "stats figures")
    rows = dict(table.rows)
    assert re.fullmatch(r"\d+\.\d{3} s", rows["cpu usage"]), rows
    if os.geteuid() == 0:  # rootless: per-process figures (rlimits), no cgroup limit to show
        assert rows["memory limit"] == "64 MiB"
    assert re.fullmatch(r"[\d.]+ (B|KiB|MiB)", rows["memory"]), rows
    # No field name with its unit suffix next to a converted value ("cpu_usage_ns 0.067 s").
    assert not [name for name in rows if "_" in name], rows
    assert "cpu usage" in table.text() and "cpu usage" in table._repr_html_()


def test_an_empty_ls_says_how_to_start_a_container(ipython_shell):
    assert not MANAGER.names()
    table = ipython_shell.run_line_magic("container", "ls")
    sentence = "no containers: start one with %container start NAME"
    assert table.text() == sentence
    assert sentence in table._repr_html_() and "<th" not in table._repr_html_()
    assert ipython_shell.run_cell("%container ls").success


@pytest.mark.parametrize(("line", "message"), [
    ("", "needs a subcommand"),
    ("frobnicate", "does not know 'frobnicate'"),
    ("start", "usage: %container start NAME"),
    ("start bad/name", "is not valid"),
    ("start ../up", "is not valid"),
    ("logs", "usage: %container logs"),
    ("wait ghost", "no container named 'ghost'"),
    ("start x --memory 12Q", "--memory must be a size"),
    ("start x --net wifi", "--net must be none, bridge, host or container:NAME"),
])
def test_bad_lifecycle_commands_are_one_line_usage_errors(ipython_shell, line, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        ipython_shell.run_line_magic("container", line)
    assert "x" not in MANAGER.names()


def test_duplicate_names_and_unknown_cell_targets_are_refused(ipython_shell):
    ipython_shell.run_line_magic("container", "start twin")
    with pytest.raises(UsageError, match="exists already"):
        ipython_shell.run_line_magic("container", "start twin")
    with pytest.raises(UsageError, match="does not know 'nobody_here'"):
        ipython_shell.run_cell_magic("container", "nobody_here", "pass")


@pytest.mark.skipif(not IS_ROOT, reason="bridges need root")
def test_prune_after_the_owner_and_its_server_are_killed(ipython_shell, capsys):
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import time, nsmagic
        from nsmagic.runtime.named import MANAGER
        from nsmagic.runtime.launcher import default_launcher
        spec = nsmagic.ContainerSpec.build(net="bridge",
                                           limits=nsmagic.Limits.parse(memory="64M"))
        box = MANAGER.start("orphan", spec)
        print(default_launcher().pid, box.result.cgroup, flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    server_pid, cgroup = owner.stdout.readline().split()
    # Kill the kernel-side process and its fork server at once: nothing can clean up now.
    os.kill(int(server_pid), signal.SIGKILL)
    owner.kill()
    owner.wait()
    bridge = f"{network.BRIDGE_PREFIX}{server_pid}"
    assert bridge in network.our_links()
    ipython_shell.run_line_magic("container", "prune")
    out = capsys.readouterr().out
    assert f"removed orphaned bridge {bridge}" in out
    assert f"removed orphaned cgroup {cgroup}" in out
    assert bridge not in network.our_links()
    assert wait_until(lambda: not [n for n in network.our_links() if n.startswith("nsmv")], 5)


@pytest.mark.skipif(not IS_ROOT, reason="bridges need root")
def test_prune_works_inside_a_running_event_loop_as_in_a_kernel(ipython_shell, capsys):
    # An IPython kernel runs every cell inside an asyncio event loop; pyroute2's synchronous
    # API must still work there (it used to fail: "This event loop is already running").
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = network.Bridge(dead.pid, f"10.254.{dead.pid % 250}.0/24")

    async def cell() -> list:
        orphan.ensure()
        attachment = orphan.attach("c0ffee0123456789")
        assert attachment.host_ifname in network.our_links()
        orphan.detach(attachment)
        found = network.bridges()
        ipython_shell.run_line_magic("container", "prune")
        return found

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            found = asyncio.run(cell())
        finally:
            network.delete_link(orphan.name)
        gc.collect()  # a coroutine never awaited warns when it is collected
    assert network.BridgeInfo(orphan.name, dead.pid) in found
    out = capsys.readouterr().out
    assert f"removed orphaned bridge {orphan.name}" in out, out
    assert "not checked" not in out
    assert not [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert orphan.name not in network.our_links()


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="an OOM kill needs a real memory cgroup")
def test_an_oom_kill_in_a_named_container_fails_the_cell_as_ls_says_it(ipython_shell, capsys):
    ipython_shell.run_line_magic("container", "start hungry --memory 128M --memory-swap 128M")
    failed = ipython_shell.run_cell("%%container hungry\nb = b'x' * (400 << 20)")
    message = str(failed.error_in_exec)
    assert re.fullmatch(r"killed: out of memory, limit 128 MiB, peak [\d.]+ MiB; "
                        r"container 'hungry' has ended", message), message
    row = ipython_shell.run_line_magic("container", "ls").rows[0]
    assert row[1] == f"exited ({message.split(';')[0]})"
    assert f"ContainerError: {message}" in capsys.readouterr().out
    ipython_shell.run_line_magic("container", "rm hungry")  # ended: no -f needed


def test_ctrl_c_of_a_named_containers_cell_is_one_line_and_the_container_runs_on(
        ipython_shell, capsys):
    ipython_shell.run_line_magic("container", "start calm")
    capsys.readouterr()
    with interrupt_after(0.5):
        result = ipython_shell.run_cell("%%container calm\nkept = 7\nimport time\n"
                                        "while True: time.sleep(0.1)")
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    shown = capsys.readouterr()
    assert re.fullmatch(r"interrupted: the cell stopped after 0\.\d s; container 'calm' runs "
                        r"on\n", shown.out + shown.err), shown
    assert ipython_shell.run_cell("%%container calm\nprint(kept)").success
    assert capsys.readouterr().out == "7\n"


def test_ctrl_c_of_a_cell_that_will_not_stop_kills_its_container_and_says_so(ipython_shell):
    ipython_shell.run_line_magic("container", "start deaf")
    with interrupt_after(0.3), pytest.raises(ContainerInterrupted) as interrupted:
        ipython_shell.run_cell_magic("container", "deaf", "import signal, time\n"
                                     "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                     "while True: time.sleep(0.1)")
    assert re.fullmatch(r"interrupted: the cell would not stop, so container 'deaf' was "
                        r"killed after 1\.\d s", str(interrupted.value))
    assert MANAGER.get("deaf").state == "exited"


def test_ctrl_c_of_wait_is_one_line(ipython_shell):
    ipython_shell.run_line_magic("container", "start waited")
    with interrupt_after(0.3), pytest.raises(ContainerInterrupted,
                                             match="stopped waiting; 'waited' runs on"):
        ipython_shell.run_line_magic("container", "wait waited")
    assert MANAGER.get("waited").state == "running"
