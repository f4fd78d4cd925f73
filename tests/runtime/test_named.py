"""Named containers keep state from cell to cell, stay isolated from each other, move
variables in and out, and talk over nsmagic's bridge."""

from __future__ import annotations

import os
import socket
import time

import pytest

import nsmagic
from nsmagic import ContainerSpec, SpecError
from nsmagic.isolation import network
from nsmagic.runtime.named import ContainerManager
from nsmagic.runtime.transfer import TransferError

from ..conftest import IS_ROOT, running_containers, wait_until


@pytest.fixture
def manager():
    manager = ContainerManager()
    yield manager
    manager.close_all()
    assert wait_until(lambda: not running_containers(), 5)


def out_of(managed, source, **options):
    chunks = []
    result = managed.exec(source, on_stdout=chunks.append, **options)
    assert result.ok, result.exception
    return "".join(chunks), result


def test_state_persists_from_cell_to_cell(manager):
    box = manager.start("box", ContainerSpec.build(hostname="box"))
    out_of(box, "import socket\ncount = 1\nserver = socket.socket(); server.bind(('127.0.0.1', 0))")
    out, _ = out_of(box, "count += 1\nprint(count, server.getsockname()[0], socket.gethostname())")
    assert out == "2 127.0.0.1 box\n"


def test_two_named_containers_are_isolated_from_each_other(manager):
    first = manager.start("first", ContainerSpec.build(hostname="one"))
    second = manager.start("second", ContainerSpec.build(hostname="two"))
    out_of(first, "open('/tmp/mine', 'w').write('1')\nimport ctypes\n"
                  "libc = ctypes.CDLL('libc.so.6')\nq = libc.msgget(0x4e53, 0o1600)")
    code = ("import os, socket, ctypes\nlibc = ctypes.CDLL('libc.so.6')\n"
            "print(socket.gethostname(), os.getpid(), os.path.exists('/tmp/mine'),"
            " libc.msgget(0x4e53, 0), sorted(p for p in os.listdir('/proc') if p.isdigit()))")
    out, _ = out_of(second, code)
    assert out == "two 2 False -1 ['1', '2']\n"
    assert first.result.pid != second.result.pid


def test_variables_round_trip(manager):
    box = manager.start("vars", ContainerSpec.build())
    data = {"n": 3, "xs": [1, 2.5, "three"], "d": {"a": (1, 2), "b": {4, 5}}, "raw": b"\x00"}
    _, result = out_of(box, "copied = {'n': n * 2, 'xs': xs[::-1], 'd': d, 'raw': raw}",
                       inputs=data, outputs=("copied",))
    assert result.outputs["copied"] == {"n": 6, "xs": ["three", 2.5, 1],
                                        "d": {"a": (1, 2), "b": {4, 5}}, "raw": b"\x00"}


def test_a_lambda_gets_a_clear_error_both_ways(manager):
    with pytest.raises(TransferError, match="variable 'f' cannot be copied into the container"):
        nsmagic.run("pass", inputs={"f": lambda: 1})
    box = manager.start("lam", ContainerSpec.build())
    result = box.exec("g = lambda: 1", outputs=("g",))
    assert "variable 'g' cannot be copied out of the container" in result.output_errors["g"]


def test_unpickling_from_a_container_allows_plain_data_only(manager):
    # A container could send a pickle that runs code when loaded; the notebook refuses it.
    box = manager.start("evil", ContainerSpec.build())
    result = box.exec("import os\nclass Evil:\n    def __reduce__(self):\n"
                      "        return (os.system, ('touch /var/tmp/nsmagic-pwned',))\n"
                      "e = Evil()", outputs=("e",))
    assert not result.outputs
    assert not os.path.exists("/var/tmp/nsmagic-pwned")


def test_exceptions_and_interrupt_leave_the_named_container_alive(manager):
    box = manager.start("sturdy", ContainerSpec.build())
    result = box.exec("1/0")
    assert result.exception.type == "ZeroDivisionError"
    out, _ = out_of(box, "print('still here')")
    assert out == "still here\n"


def test_background_run_keeps_a_log_and_can_be_waited_for(manager):
    job = manager.run_background(ContainerSpec.build(), "import time\nfor i in range(3):\n"
                                 "    print(i, flush=True)\n    time.sleep(0.1)", name="job")
    assert job.state == "running"
    assert job.wait(10).ok
    assert job.logs() == "0\n1\n2\n"
    with pytest.raises(SpecError, match="exists already"):
        manager.run_background(ContainerSpec.build(), "pass", name="job")


def test_stop_and_remove(manager):
    box = manager.start("stopme", ContainerSpec.build())
    pid = box.result.pid
    box.stop()
    assert box.state == "exited"
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid}/status"), 5)
    with pytest.raises(SpecError, match="has exited"):
        box.exec("pass")
    manager.remove("stopme")
    with pytest.raises(SpecError, match="no container named 'stopme'"):
        manager.get("stopme")


@pytest.mark.skipif(not IS_ROOT, reason="veth pairs on the host need root")
def test_bridge_lets_containers_and_the_notebook_reach_a_server_and_none_does_not(manager):
    server = manager.start("echo", ContainerSpec.build(net="bridge"))
    out_of(server, "import socket, threading\nsrv = socket.socket()\n"
                   "srv.bind(('0.0.0.0', 7007)); srv.listen()\n"
                   "def serve():\n    while True:\n        c, _ = srv.accept()\n"
                   "        c.sendall(c.recv(64).upper()); c.close()\n"
                   "threading.Thread(target=serve, daemon=True).start()")
    address = server.result.address
    assert address.startswith("10.213.")
    client = manager.start("client", ContainerSpec.build(net="bridge"))
    out, _ = out_of(client, "import socket\nc = socket.create_connection((target, 7007), 3)\n"
                            "c.sendall(b'over the bridge'); print(c.recv(64))",
                    inputs={"target": address})
    assert out == "b'OVER THE BRIDGE'\n"
    with socket.create_connection((address, 7007), timeout=3) as conn:  # from the notebook
        conn.sendall(b"notebook")
        assert conn.recv(64) == b"NOTEBOOK"
    isolated = nsmagic.run("import socket\ntry:\n"
                           "    socket.create_connection((target, 7007), timeout=1)\n"
                           "    print('reached')\nexcept OSError as e:\n    print('refused')",
                           inputs={"target": address})
    assert isolated.stdout == "refused\n"
    shared = nsmagic.run("import socket\nc = socket.create_connection(('127.0.0.1', 7007), 3)\n"
                         "c.sendall(b'shared'); print(c.recv(64))",
                         net=f"container:{server.result.pid}")
    assert shared.stdout == "b'SHARED'\n"


@pytest.mark.skipif(not IS_ROOT, reason="veth pairs on the host need root")
def test_no_veth_or_bridge_outlives_its_containers(manager):
    box = manager.start("net1", ContainerSpec.build(net="bridge"))
    assert any(name.startswith("nsmv") for name in network.our_links())
    box.stop()
    manager.close_all()
    mine = f"{network.BRIDGE_PREFIX}"
    assert wait_until(lambda: not [n for n in network.our_links()
                                   if n.startswith((network.VETH_PREFIX, mine))
                                   and _owned_by_this_session(n)], 5)


def _owned_by_this_session(ifname: str) -> bool:
    from nsmagic.runtime.launcher import default_launcher

    pid = getattr(default_launcher(), "pid", None)
    return ifname.startswith("nsmv") or ifname == f"{network.BRIDGE_PREFIX}{pid}"


def test_exec_into_a_running_container_is_a_message_not_a_start(manager):
    box = manager.start("fast", ContainerSpec.build())
    pid = box.result.pid
    for _ in range(20):
        box.exec("pass")
    assert box.result.pid == pid  # the same container served every cell
    began = time.perf_counter()
    box.exec("pass")
    assert time.perf_counter() - began < 5  # sanity only: speed lives in the benchmark


@pytest.mark.skipif(not IS_ROOT, reason="veth pairs on the host need root")
def test_a_start_that_fails_half_way_leaves_no_veth_and_no_cgroup(manager, tmp_path):
    # The veth pair and the cgroup exist before the mount step inside fails (the volume's
    # container path does not exist in a read-only root), so the failure path must remove
    # them.
    before = set(network.our_links())
    spec = ContainerSpec.build(net="bridge", limits=nsmagic.Limits.parse(memory="64M"),
                               read_only=True, volumes=[f"{tmp_path}:/no/such/place"])
    with pytest.raises(nsmagic.ContainerSetupError, match="/no/such/place"):
        manager.start("halfway", spec)
    assert "halfway" not in manager.names()
    assert wait_until(lambda: not [n for n in set(network.our_links()) - before
                                   if n.startswith(network.VETH_PREFIX)], 5)
    assert wait_until(lambda: not _cgroup_dirs_named(spec.container_id), 5)


def _cgroup_dirs_named(container_id: str) -> list[str]:
    found = []
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        found += [d for d in dirs if d.endswith(container_id)]
        if root.count("/") > 6:
            dirs.clear()
    return found


def test_a_timeout_interrupts_the_cell_and_the_container_runs_on(manager):
    box = manager.start("patient", ContainerSpec.build())
    result = box.exec("import time\nkept = 1\nwhile True: time.sleep(0.05)", timeout=0.3)
    assert not result.ok and result.timed_out == 0.3 and not result.killed
    assert result.exception.type == "KeyboardInterrupt"
    assert result.describe() == ("timed out after 0.3 s; the cell was interrupted and "
                                 "container 'patient' runs on")
    out, _ = out_of(box, "print(kept)")
    assert out == "1\n"


def test_a_cell_that_will_not_stop_at_its_timeout_costs_the_container(manager):
    box = manager.start("stubborn", ContainerSpec.build())
    result = box.exec("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                      "while True: time.sleep(0.05)", timeout=0.3)
    assert result.killed and result.timed_out == 0.3
    assert result.describe() == ("timed out after 0.3 s; the cell would not stop, so "
                                 "container 'stubborn' was killed")
    assert box.wait(5).signal == 9


def test_a_background_cell_runs_while_the_caller_goes_on_and_keeps_others_out(manager):
    box = manager.start("worker", ContainerSpec.build())
    seen, ended = [], []
    cell = box.exec_background("import time\nprint('begun', flush=True)\ntime.sleep(0.5)\n"
                               "answer = 42", outputs=("answer",), on_stdout=seen.append,
                               on_end=ended.append)
    assert cell.state == "running"
    with pytest.raises(SpecError, match="'worker' is busy with a background cell"):
        box.exec("pass")
    result = cell.wait(10)
    assert result.ok and result.outputs == {"answer": 42} and ended == [result]
    assert seen == ["begun\n"] and box.logs() == "begun\n"
    out, _ = out_of(box, "print(answer)")
    assert out == "42\n"


def test_shell_cells_run_in_the_shell_asked_for(manager):
    box = manager.start("shells", ContainerSpec.build())
    out, _ = out_of(box, 'echo "${BASH_VERSION:+bash}" $0', kind="shell", shell="/bin/bash")
    assert out == "bash /bin/bash\n"
    out, _ = out_of(box, 'echo "${BASH_VERSION:-no bash}"', kind="shell")
    assert out == "no bash\n"  # /bin/sh is dash on Debian


def test_a_background_run_is_killed_at_its_timeout(manager):
    job = manager.run_background(ContainerSpec.build(), "import time\ntime.sleep(30)",
                                 name="late", timeout=0.3)
    assert job.wait(10).signal == 9
    assert job.describe() == "killed after its timeout of 0.3 s"


def test_the_options_a_named_container_has_from_its_start():
    import argparse

    from nsmagic.runtime.named import options_fixed_at_start
    from nsmagic.runtime.options import add_container_options

    parser = argparse.ArgumentParser()
    add_container_options(parser)
    parser.add_argument("--cgroup")
    parser.add_argument("--export-oci")
    parser.add_argument("--timeout")
    assert options_fixed_at_start(parser.parse_args(["--timeout", "3"])) == []
    assert options_fixed_at_start(parser.parse_args(
        ["-v", "/x:/y", "--memory", "1G", "--read-only", "--cgroup", "g"])) == [
        "--memory", "--read-only", "--volume", "--cgroup"]


def test_a_background_run_is_labelled_by_its_name_in_the_registry_and_the_monitor(manager):
    # The dashboard draws the monitor's labels: the name, not the container's hex id.
    from nsmagic.monitor import Monitor
    from nsmagic.runtime.registry import REGISTRY

    monitor = Monitor(rate=10)
    watch = monitor.watch()
    try:
        job = manager.run_background(ContainerSpec.build(), "import time\ntime.sleep(1)",
                                     name="labelled")
        record = REGISTRY.get(job.spec.container_id)
        assert (record.name, record.label) == ("labelled", "labelled")
        assert wait_until(lambda: monitor.snapshot(job.spec.container_id), 5)
        assert monitor.snapshot(job.spec.container_id).label == "labelled"
        assert job.wait(10).ok
    finally:
        watch.close()
    box = manager.start("agent", ContainerSpec.build())
    assert REGISTRY.get(box.spec.container_id).label == "agent"


def test_ctrl_c_interrupts_the_cell_and_says_how_it_ended(manager):
    import os
    import signal
    import threading

    from nsmagic.runtime.named import CellInterrupted

    box = manager.start("interrupted", ContainerSpec.build())
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(CellInterrupted) as interrupted:
        box.exec("import time\nwhile True: time.sleep(0.05)")
    assert isinstance(interrupted.value, KeyboardInterrupt)
    assert interrupted.value.result.interrupted and not interrupted.value.result.killed
    assert str(interrupted.value).startswith("interrupted: the cell stopped after 0.")
    assert box.state == "running"


def test_a_containers_log_keeps_the_newest_output_up_to_its_limit(monkeypatch):
    from nsmagic.runtime import named

    monkeypatch.setattr(named, "LOG_LIMIT", 1000)
    box = named.ManagedContainer("logbox", ContainerSpec.build())
    for index in range(100):
        box._emit("stdout", f"{index:03d}" + "x" * 47)  # 50 characters a chunk
    assert len(box.logs()) <= 1000 and box.logs().endswith("099" + "x" * 47)
    box.container.close()
