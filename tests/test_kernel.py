"""%%container inside a real Jupyter kernel (ipykernel over ZeroMQ), as a notebook uses it."""

from __future__ import annotations

import os
import signal
import time

import pytest
from jupyter_client.manager import start_new_kernel

from .conftest import wait_until


@pytest.fixture
def kernel():
    manager, client = start_new_kernel(kernel_name="python3", startup_timeout=60)
    try:
        execute(client, "%load_ext nsmagic")
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def execute(client, code, timeout=60):
    """Run code; return (reply content, [(arrival time, iopub message)])."""
    msg_id = client.execute(code)
    messages = []
    while True:
        message = client.get_iopub_msg(timeout=timeout)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        messages.append((time.monotonic(), message))
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            break
    reply = client.get_shell_msg(timeout=timeout)
    return reply["content"], messages


def streams(messages, name="stdout"):
    return [(t, m["content"]["text"]) for t, m in messages
            if m["msg_type"] == "stream" and m["content"]["name"] == name]


def test_a_cell_streams_its_lines_one_by_one(kernel):
    _, client = kernel
    reply, messages = execute(client, "%%container\nimport time\nfor i in range(5):\n"
                                      "    print('tick', i)\n    time.sleep(0.3)\n")
    assert reply["status"] == "ok"
    chunks = streams(messages)
    assert "".join(text for _, text in chunks) == "".join(f"tick {i}\n" for i in range(5))
    # Delivered over about 1.2 s, not in one burst at the end.
    assert len(chunks) >= 3
    assert chunks[-1][0] - chunks[0][0] > 0.8


def test_a_failing_cell_fails_like_a_normal_cell(kernel):
    _, client = kernel
    reply, messages = execute(client, "%%container\nx = 1\n[][x]\n")
    assert reply["status"] == "error"
    assert reply["ename"] == "ContainerError"
    error = next(m for _, m in messages if m["msg_type"] == "error")
    traceback = "\n".join(error["content"]["traceback"])
    assert "IndexError: list index out of range" in traceback and "line 3" in traceback


def test_isolation_evidence_in_the_kernel(kernel):
    _, client = kernel
    reply, messages = execute(client, "%%container --hostname lab1\nimport os, socket\n"
                                      "print(os.getpid(), socket.gethostname(), os.getuid())")
    assert reply["status"] == "ok"
    pid, name, _uid = "".join(t for _, t in streams(messages)).split()
    assert (pid, name) == ("2", "lab1")


def test_interrupting_the_kernel_stops_the_container(kernel):
    manager, client = kernel
    msg_id = client.execute("%%container\nimport os, time\nprint(os.getpid(), flush=True)\n"
                            "time.sleep(60)")
    began = None
    while True:
        message = client.get_iopub_msg(timeout=30)
        if message["parent_header"].get("msg_id") == msg_id and message["msg_type"] == "stream":
            began = time.monotonic()
            manager.interrupt_kernel()
            break
    reply = client.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "error"
    # One line, not a traceback through nsmagic (ContainerInterrupted is a KeyboardInterrupt).
    assert reply["content"]["ename"] == "ContainerInterrupted"
    assert time.monotonic() - began < 1.5
    reply, _ = execute(client, "print('kernel still usable')")
    if reply["status"] == "aborted":  # ipykernel aborts requests queued just after an error
        reply, _ = execute(client, "print('kernel still usable')")
    assert reply["status"] == "ok"


def test_killing_the_kernel_kills_its_containers(kernel):
    manager, client = kernel
    client.execute("%%container -o\nimport time\nprint('up', flush=True)\ntime.sleep(60)")
    while True:
        message = client.get_iopub_msg(timeout=30)
        if message["msg_type"] == "stream":
            break
    kernel_pid = manager.provisioner.process.pid
    helpers = _descendants(kernel_pid)
    assert helpers, "the container's processes should be running"
    has_cgroups = bool(_cgroups_of(kernel_pid))  # none on rlimit-only (unprivileged) hosts
    assert has_cgroups or os.geteuid() != 0
    # Jupyter kills the kernel's whole process group, as here.
    os.killpg(os.getpgid(kernel_pid), signal.SIGKILL)
    assert wait_until(lambda: not any(_exists(pid) for pid in helpers), 5), \
        "container processes outlived the kernel"
    assert wait_until(lambda: not _cgroups_of(kernel_pid), 5), _cgroups_of(kernel_pid)


def _cgroups_of(owner_pid):
    found = []
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(root, d) for d in dirs if d.startswith(f"nsmagic-{owner_pid}-")]
        if root.count("/") > 6:
            dirs.clear()
    return found


def _descendants(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found.append((int(entry), int(fields[1])))
    children = {p for p, parent in found if parent == pid}
    result = set()
    while children:
        result |= children
        children = {p for p, parent in found if parent in children} - result
    return result


def _exists(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
