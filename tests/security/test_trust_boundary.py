"""Findings 6 and 16 of issue 15: what a container sends the notebook is untrusted data.

6: a container forges the supervisor's {"event": "started", "pid": N, "cgroup": ...} on every
socket it holds (found as an attacker would, in /proc/self/fd): the notebook must not take
a pid, a cgroup or a network namespace from it -- stopping the container never signals N (a
sleeping host process of the test), never kills another container's group, and
--net container:NAME joins NAME's own network only.

16: a --memory 64M container floods its output: the notebook's memory stays bounded; empty
or malformed frames on the data socket give one clean error, never an exception from a
parser or code run by an unpickler.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import textwrap
import threading
import time

import psutil
import pytest

import nsmagic
from nsmagic.errors import NsmagicError
from nsmagic.runtime.named import MANAGER

from ..conftest import IS_ROOT, wait_until
from ..reference.runc import runc_available
from .harness import in_nsmagic, in_runc, observe, run_nsmagic, unique, verdict_of

FORGE = """
    import json, os, socket, struct, time
    message = json.dumps({"event": "started", "pid": PID, "cgroup": CGROUP,
                          "cgroup_driver": "v1", "address": "10.0.0.1",
                          "warnings": ["forged"]}).encode()
    sent = {}
    for entry in sorted(os.listdir("/proc/self/fd"), key=int):
        fd = int(entry)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if not target.startswith("socket:"):
            continue
        sock = socket.socket(fileno=os.dup(fd))
        try:
            if sock.type == socket.SOCK_STREAM:
                sock.sendall(struct.pack("!Q", len(message)) + message)
            else:
                sock.send(message)
            sent[fd] = sock.type.name
        except OSError as error:
            sent[fd] = f"error {error.errno}"
        finally:
            sock.close()
    time.sleep(0.3)  # the notebook reads it while the container still runs
    print(json.dumps({"reached": bool(sent), "sent_on": sent}))
"""


def forge(pid: int, cgroup: str | None = "nsmagic-forged") -> str:
    return FORGE.replace("PID", str(pid)).replace("CGROUP", repr(cgroup))


@pytest.fixture
def victim():
    """A sleeping host process of the test's: what a forged pid points at."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def _alive(process: subprocess.Popen) -> bool:
    return process.poll() is None


def _named(prefix: str, **options) -> tuple[str, object]:  # noqa: ANN003
    name = unique(prefix)[:40]
    managed = MANAGER.start(name, nsmagic.ContainerSpec.build(name=name, **options))
    return name, managed


def _exec(managed, script: str) -> dict:  # noqa: ANN001
    """A probe as a cell of a named container (its stdout captured inside, copied out:
    a named container's output is read by two threads)."""
    cell = ("import contextlib, io\n_printed = io.StringIO()\n"
            "with contextlib.redirect_stdout(_printed):\n"
            f"    exec({textwrap.dedent(script)!r}, {{}})\n"
            "verdict = _printed.getvalue()\n")
    result = managed.exec(cell, outputs=("verdict",))
    assert result.ok and "verdict" in result.outputs, result
    return verdict_of(result.outputs["verdict"])


def _forge_in(managed, pid: int, cgroup: str | None = "nsmagic-forged") -> dict:  # noqa: ANN001
    """Run the forgery as a cell of a named container. Its forged frame on the data socket
    is taken as the cell's reply (a malformed one): how that cell ended is recorded, not
    asserted; what matters is what the notebook does next."""
    cell = textwrap.dedent(forge(pid, cgroup)).replace(
        'print(json.dumps({"reached": bool(sent), "sent_on": sent}))', "")
    result = managed.exec(cell)
    return {"cell_exit_code": result.exit_code,
            "cell_exception": str(result.exception) if result.exception else None}


# --- 6. forged control messages ----------------------------------------------------------------


def test_6_a_forged_started_event_gives_the_notebook_no_pid_or_cgroup(victim):
    row = "forged 'started' taken as pid/cgroup (nsmagic.run)"
    with nsmagic.Container() as container:
        result = container.run(textwrap.dedent(forge(victim.pid)), timeout=30)
        sent = verdict_of(result.stdout, result.stderr)
        # What the container tells us is not what we signal: pid 1 through its pidfd.
        container.send_signal(signal.SIGTERM)
    taken = result.pid == victim.pid or result.cgroup == "nsmagic-forged"
    verdict = observe(6, row, "nsmagic", {"reached": taken or not _alive(victim),
                                          "result_pid": result.pid, "victim": victim.pid,
                                          "result_cgroup": result.cgroup,
                                          "victim_alive": _alive(victim)})
    # Positive control: the forgery was delivered (on the events socket the notebook
    # reads, which noted a message it does not accept), and the victim is killable.
    delivered = "SOCK_SEQPACKET" in sent["sent_on"].values()
    noted = any("does not accept" in w for w in result.warnings)
    observe(6, row, "control", {"reached": delivered and noted, "sent_on": sent["sent_on"],
                                "noted": noted})
    assert delivered and noted, (sent, result.warnings)
    if runc_available():
        reference = observe(6, row, "runc", in_runc(forge(victim.pid)))
        assert not reference["reached"], reference  # runc's container holds no socket
    assert result.ok, result.describe()
    assert not verdict["reached"], verdict


@pytest.mark.parametrize("via", ["magic", "api"])
def test_6_stopping_a_named_container_after_a_forgery_never_signals_the_forged_pid(
        victim, via, request):
    how = "%container stop" if via == "magic" else "MANAGER stop"
    row = f"stop after a forgery signals the forged pid ({how})"
    name, managed = _named("forger")
    try:
        sent = _forge_in(managed, victim.pid)
        real_pid = managed.pid
        if via == "magic":
            request.getfixturevalue("ipython_shell").run_line_magic("container", f"stop {name}")
        else:
            MANAGER.get(name).stop(grace_s=2)
        stopped = wait_until(lambda: managed.state == "exited", 5)
    finally:
        MANAGER.remove(name, force=True)
    time.sleep(0.2)
    verdict = observe(6, row, "nsmagic", {"reached": not _alive(victim)
                                          or managed.pid == victim.pid,
                                          "victim_alive": _alive(victim),
                                          "container_pid": managed.pid, "real_pid": real_pid,
                                          **sent})
    # Positive control: the stop reached the real container, and the victim dies when it
    # is really signalled.
    observe(6, row, "control", {"reached": stopped, "container_stopped": stopped})
    assert stopped
    assert not verdict["reached"], verdict
    victim.terminate()
    assert wait_until(lambda: not _alive(victim), 5)


def test_6_a_forged_cgroup_name_does_not_kill_another_containers_group():
    row = "forged cgroup/pid of another container killed it"
    victim_name, other = _named("victim")
    forger_name = None
    try:
        other_cgroup, other_pid = other.result.cgroup, other.pid
        forger_name, forger = _named("forger")
        sent = _forge_in(forger, other_pid, other_cgroup)
        MANAGER.remove(forger_name, force=True)
        forger_name = None
        time.sleep(0.3)
        alive = other.state == "running" and other.exec("x = 1").ok
        verdict = observe(6, row, "nsmagic", {"reached": not alive, "other_alive": alive,
                                              "forged_cgroup": other_cgroup,
                                              "forger_cgroup": forger.result.cgroup,
                                              **sent})
        # (as nobody without delegated cgroups there is none: the forged pid remains)
        assert other_cgroup is None or forger.result.cgroup != other_cgroup
        observe(6, row, "control", {"reached": forger.state == "exited",
                                    "forger_removed": forger.state == "exited"})
        assert forger.state == "exited"
    finally:
        if forger_name:
            MANAGER.remove(forger_name, force=True)
        MANAGER.remove(victim_name, force=True)
    assert not verdict["reached"], verdict


NETNS = """
    import json, os
    print(json.dumps({"reached": False, "netns": os.stat("/proc/self/ns/net").st_ino}))
"""


def test_6_net_container_joins_only_the_named_containers_network():
    row = "--net container:NAME joined the forged pid's network"
    # A host process in a network namespace of its own: what the forged pid points at.
    command = ["unshare", "--net", "sleep", "60"] if IS_ROOT else \
        ["unshare", "--map-root-user", "--net", "sleep", "60"]
    outsider = subprocess.Popen(command)
    name = None
    try:
        assert wait_until(lambda: os.stat(f"/proc/{outsider.pid}/ns/net").st_ino
                          != os.stat("/proc/self/ns/net").st_ino, 5)
        outsider_netns = os.stat(f"/proc/{outsider.pid}/ns/net").st_ino
        name, managed = _named("netowner")
        own_netns = _exec(managed, NETNS)["netns"]
        sent = _forge_in(managed, outsider.pid)
        joined = in_nsmagic(NETNS, net=f"container:{name}")["netns"]
        verdict = observe(6, row, "nsmagic", {"reached": joined != own_netns,
                                              "joined": joined, "named_netns": own_netns,
                                              "forged_pid_netns": outsider_netns, **sent})
        # Positive control: joining works (the named container's own network, not a new
        # one) and the forged pid's network is a different one.
        observe(6, row, "control", {"reached": own_netns != outsider_netns,
                                    "joined_named": joined == own_netns})
        assert own_netns != outsider_netns
    finally:
        if name:
            MANAGER.remove(name, force=True)
        outsider.kill()
        outsider.wait()
    assert not verdict["reached"], verdict


# --- 16. floods and malformed frames -----------------------------------------------------------

FLOOD_MIB = 300
FLOOD = f"""
    import sys
    chunk = b"x" * (1 << 20)
    for _ in range({FLOOD_MIB}):
        sys.stdout.buffer.write(chunk)
    sys.stdout.flush()
    print("flooded", file=sys.stderr)
"""


def _peak_growth(action) -> tuple[int, object]:  # noqa: ANN001
    """The most this process's RSS grew over its size before action() ran."""
    me = psutil.Process()
    gc.collect()
    baseline = me.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        value = action()
    finally:
        done.set()
        sampler.join()
    return peak[0] - baseline, value


def test_16_a_flood_of_output_does_not_fill_the_notebooks_memory():
    row = f"notebook RSS growth from a --memory 64M container printing {FLOOD_MIB} MiB"
    growth, result = _peak_growth(lambda: run_nsmagic(FLOOD, memory="64M"))
    verdict = observe(16, row, "nsmagic", {"reached": growth >= 64 << 20,
                                           "growth_mib": round(growth / (1 << 20), 1),
                                           "kept_mib": len(result.stdout) >> 20,
                                           "ended": result.describe()})
    assert result.ok and result.stderr == "flooded\n", (result.describe(), result.stderr)
    assert "cut after" in result.stdout[-200:], result.stdout[-200:]
    # Positive control: the measure sees a reader that keeps everything (a plain child
    # process read with capture_output) grow by about the flood.
    control_mib = 128
    code = (f"import sys\nfor _ in range({control_mib}): "
            "sys.stdout.buffer.write(b'x' * (1 << 20))\n")
    control_growth, _ = _peak_growth(lambda: subprocess.run(
        ["python3", "-c", code], capture_output=True, timeout=60, check=True))
    observe(16, row, "control", {"reached": control_growth >= (control_mib - 28) << 20,
                                 "growth_mib": round(control_growth / (1 << 20), 1),
                                 "flood_mib": control_mib,
                                 "reader": "subprocess.run(capture_output=True)"})
    assert control_growth >= (control_mib - 28) << 20, control_growth
    assert not verdict["reached"], verdict


MALFORMED = """
    import json, os, pickle, socket, struct, time
    KIND, MARKER = KIND_VALUE, MARKER_VALUE

    class Touch:  # unpickled by a careless notebook, this runs a command there
        def __reduce__(self):
            return (os.system, (f"touch {MARKER}",))

    frames = {
        "empty": [b"", b""],
        "garbage": [b"{not json", b"\\x80\\x04garbage"],
        "code-in-pickle": [json.dumps({"errors": {}}).encode(),
                           pickle.dumps({"x": pickle.dumps(Touch())})],
        "nested-code": [json.dumps({"errors": {}}).encode(), pickle.dumps(Touch())],
    }
    sent = []
    for entry in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            if not os.readlink(f"/proc/self/fd/{entry}").startswith("socket:"):
                continue
        except OSError:
            continue
        sock = socket.socket(fileno=os.dup(int(entry)))
        if sock.type == socket.SOCK_STREAM:
            if KIND == "huge":
                sock.sendall(struct.pack("!Q", 1 << 62) + b"x" * 1024)
            else:
                for frame in frames[KIND]:
                    sock.sendall(struct.pack("!Q", len(frame)) + frame)
            sent.append(int(entry))
        sock.close()
    time.sleep(0.2)
    print(json.dumps({"reached": False, "sent_on": sent}))
"""


@pytest.mark.parametrize("kind", ["empty", "garbage", "code-in-pickle", "nested-code", "huge"])
@pytest.mark.parametrize("outputs", [(), ("x",)], ids=["no-out", "out-x"])
def test_16_malformed_frames_on_the_data_socket_are_one_clean_error(kind, outputs, scratch):
    row = f"malformed frames on the data socket ({kind}, --out {','.join(outputs) or '-'})"
    marker = os.path.join(scratch, "touched-by-the-notebook")
    script = MALFORMED.replace("KIND_VALUE", repr(kind)).replace("MARKER_VALUE", repr(marker))
    try:
        result = run_nsmagic(script, outputs=outputs)
        raised = None
    except NsmagicError as error:  # a clean error of nsmagic's is fine
        result, raised = None, f"{type(error).__name__}: {error}"
    except Exception as error:  # noqa: BLE001 - what the finding is about
        result, raised = None, f"UNCLEAN {type(error).__name__}: {error}"
    detail = {"raised": raised}
    if result is not None:
        detail.update(ended=result.describe(), outputs=sorted(result.outputs),
                      output_errors=result.output_errors)
    ran_code = os.path.exists(marker)
    unclean = raised is not None and raised.startswith("UNCLEAN")
    errors = len(result.output_errors) if result is not None else 1
    verdict = observe(16, row, "nsmagic", {"reached": unclean or ran_code or errors > 1
                                           or bool(result and result.outputs),
                                           "ran_code_in_notebook": ran_code, **detail})
    assert not verdict["reached"], verdict
    assert result is None or result.ok, detail


def test_16_malformed_frames_in_a_named_containers_reply_are_one_clean_error():
    name, managed = _named("frames")
    try:
        script = MALFORMED.replace("KIND_VALUE", repr("empty")).replace("MARKER_VALUE",
                                                                         repr("/nonexistent"))
        try:
            quiet = textwrap.dedent(script).replace('print(json.dumps({"reached": False, '
                                                    '"sent_on": sent}))', "")
            result = managed.exec(quiet)
            detail = {"exit_code": result.exit_code, "exception": str(result.exception)}
            unclean = False
        except NsmagicError as error:
            detail, unclean = {"raised": f"{type(error).__name__}: {error}"}, False
        except Exception as error:  # noqa: BLE001
            detail, unclean = {"raised": f"UNCLEAN {type(error).__name__}: {error}"}, True
        verdict = observe(16, "malformed frames in a named container's reply", "nsmagic",
                          {"reached": unclean, **detail})
    finally:
        MANAGER.remove(name, force=True)
    assert not verdict["reached"], verdict
