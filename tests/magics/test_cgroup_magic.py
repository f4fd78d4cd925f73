"""%cgroup create/set/show/ls/rm/run and %%container --cgroup through a real IPython shell,
on the host's real driver: cgroup v1 as root here, the rlimit fallback as nobody."""

from __future__ import annotations

import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from IPython.core.error import UsageError

from nsmagic.cgroups import Limits
from nsmagic.magics import ContainerError
from nsmagic.magics.cgroup import CgroupError, CgroupMagics
from nsmagic.runtime import groups
from nsmagic.runtime.launcher import close_default_launcher
from nsmagic.runtime.spec import ContainerSpec

from .. import conftest
from ..conftest import IS_ROOT, requires_root, wait_until

MiB = 1024 * 1024
# Warm containers of the fork server's pool keep a group (nsmagic-<pid>-w<12 hex>) while idle;
# they are the pool's, not a leak of the test that ran before.
_WARM = re.compile(r"^nsmagic-\d+-w[0-9a-f]{12}$")


def running_containers() -> list[int]:
    """Our container processes (not the fork server, nor the idle containers of its warm
    pool); only this test process's descendants, as other test runs may share the host."""
    ours = {int(p.split()[0]) for p in conftest.running_containers()}
    return sorted(ours & {c.pid for c in psutil.Process().children(recursive=True)})


def nsmagic_cgroups() -> list[str]:
    """This process's nsmagic directories under /sys/fs/cgroup, except idle warm-pool groups
    (groups are named nsmagic-<owner pid>-..., so other test runs on the host do not count)."""
    found = subprocess.run(["find", "/sys/fs/cgroup", "-name", f"nsmagic-{os.getpid()}-*"],
                           capture_output=True, text=True, check=False).stdout.split()
    return sorted(p for p in found if not _WARM.match(Path(p).name))


@pytest.fixture(autouse=True)
def no_cgroup_left(ipython_shell):
    """Each test must remove what it created: no group in /sys/fs/cgroup, none registered."""
    yield
    left = wait_until(lambda: not nsmagic_cgroups(), 3) or nsmagic_cgroups()
    registered = groups.names()
    groups.remove_all()  # so one failure does not cascade into the next tests
    assert left is True, f"leaked cgroups: {left}"
    assert not registered, f"groups left registered: {registered}"


@pytest.fixture
def nofile_for_containers():
    """As nobody the soft RLIMIT_NOFILE is 1024, and the fork server's supervisor asks for
    descriptors >= 1024 (F_DUPFD_CLOEXEC 1024 in supervisor._keep_only): every container
    then fails with EINVAL. That is a runtime bug reported separately; here a fresh fork
    server with a higher soft limit lets the rlimit path be tested, and is closed afterwards
    so no other test runs on it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft > 1024 or hard <= 1024:
        yield
        return
    close_default_launcher()
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    try:
        yield
    finally:
        close_default_launcher()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def shown(capsys) -> str:
    out = capsys.readouterr()
    return out.out + out.err


def v1_dir(controller: str, full_name: str) -> Path:
    """Where the kernel's v1 group lives in one hierarchy (under this process's own cgroup)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path("/sys/fs/cgroup", controller, path.lstrip("/"), full_name)
    raise AssertionError(f"no {controller} hierarchy")


# Python run inside a container: the container's own group is shown read-only at
# /sys/fs/cgroup/<controller> (its cgroup namespace makes it the root), so these are the
# limits of the group it runs in.
READ_LIMITS = textwrap.dedent("""
    def read(controller, name):
        return open(f"/sys/fs/cgroup/{controller}/{name}").read().strip()
""")


# -- the round trip on real cgroups ---------------------------------------------------------
@pytest.mark.root
@requires_root
def test_create_container_show_set_run_ls_rm_round_trip(ipython_shell, capsys):
    shell = ipython_shell
    full = f"nsmagic-{os.getpid()}-exp1"
    shell.run_line_magic("cgroup", "create exp1 --cpus 0.5 --memory 64M --pids 16")
    assert f"created exp1 ({full}, cgroup v1)" in shown(capsys)
    memory_dir = v1_dir("memory", full)
    assert int((memory_dir / "memory.limit_in_bytes").read_text()) == 64 * MiB
    assert int((v1_dir("cpu", full) / "cpu.cfs_quota_us").read_text()) == 50000
    assert (v1_dir("pids", full) / "pids.max").read_text().strip() == "16"

    # A cell in the group: it sees the group's own limits through its cgroup namespace.
    cell = READ_LIMITS + "print(read('memory', 'memory.limit_in_bytes'), " \
                         "read('pids', 'pids.max'))\n"
    result = shell.run_cell_magic("container", "--cgroup exp1 -o", cell)
    assert shown(capsys).split() == [str(64 * MiB), "16"]
    assert result.ok and result.cgroup == full and result.cgroup_driver == "v1"
    assert result.limits.memory == 64 * MiB and result.limits.pids == 16
    assert memory_dir.is_dir()  # the container did not take the shared group with it

    # Its OOM kill is reported as such, and counted in the group.
    failed = shell.run_cell("%%container --cgroup exp1\nb = b'x' * (200 << 20)\n")
    assert isinstance(failed.error_in_exec, ContainerError)
    assert str(failed.error_in_exec).startswith("killed: out of memory, limit 64 MiB")
    assert "ContainerError: killed: out of memory, limit 64 MiB" in shown(capsys)

    shell.run_line_magic("cgroup", "set exp1 --memory 128M")
    assert "exp1: cpus 0.5, memory 128 MiB" in shown(capsys)
    assert int((memory_dir / "memory.limit_in_bytes").read_text()) == 128 * MiB

    shell.run_line_magic("cgroup", "show exp1")
    table = shown(capsys)
    for row in (f"cgroup exp1 ({full})", "driver", "cgroup v1", "limits", "cpu time",
                "user / system", "throttled", "memory current", "memory peak", "swap",
                "pids current", "pids limit"):
        assert row in table, row
    assert re.search(r"memory limit\s+128 MiB", table)
    assert re.search(r"memory peak\s+64 MiB", table)  # the OOM-killed cell's peak
    assert re.search(r"oom events / kills\s+n/a / 1", table)  # v1 counts kills, not events
    assert re.search(r"cpu time\s+0\.\d{3} s", table)

    # A host command in the group: its output streams to the cell; the host sees it in it.
    shell.run_line_magic("cgroup", "run exp1 -- sh -c 'grep memory /proc/self/cgroup; "
                                   "echo to-stderr >&2'")
    out = capsys.readouterr()
    assert out.out.strip().endswith(f"/{full}") and out.err.strip() == "to-stderr"

    shell.run_line_magic("cgroup", "ls")
    listing = shown(capsys).splitlines()
    assert listing[0].split()[:2] == ["name", "limits"]
    assert listing[1].startswith("exp1") and "memory 128 MiB" in listing[1] and full in listing[1]

    shell.run_line_magic("cgroup", "rm exp1")
    assert f"removed exp1 ({full})" in shown(capsys)
    assert not memory_dir.exists() and groups.names() == []
    with pytest.raises(UsageError, match="there is no cgroup named 'exp1'"):
        shell.run_line_magic("cgroup", "rm exp1")


@pytest.mark.root
@requires_root
def test_run_reports_an_oom_kill_and_a_failing_command(ipython_shell, capsys):
    ipython_shell.run_line_magic("cgroup", "create small --memory 32M --memory-swap 32M")
    with pytest.raises(CgroupError, match=r"ended with killed: out of memory, limit 32 MiB"):
        ipython_shell.run_line_magic(
            "cgroup", f"run small -- {shlex.quote(sys.executable)} -c \"b = b'x' * (100 << 20)\"")
    with pytest.raises(CgroupError, match="sh ended with exit status 3"):
        ipython_shell.run_line_magic("cgroup", "run small -- sh -c 'exit 3'")
    result = ipython_shell.run_line_magic("cgroup", "run small --no-raise -o -- sh -c 'exit 3'")
    assert result.exit_code == 3 and "nsmagic: sh ended with exit status 3" in shown(capsys)
    assert result.limits.memory == 32 * MiB and result.cgroup == f"nsmagic-{os.getpid()}-small"
    ipython_shell.run_line_magic("cgroup", "rm small")


@pytest.mark.root
@requires_root
def test_groups_go_with_their_kernel_atexit_and_prune_takes_a_dead_kernels(tmp_path):
    script = textwrap.dedent("""
        import os, sys
        from nsmagic.runtime import groups
        from nsmagic.cgroups import Limits
        groups.create("left", Limits(memory=64 << 20))
        print(os.getpid(), flush=True)
        if sys.argv[1] == "crash":
            os.kill(os.getpid(), 9)
    """)
    clean = subprocess.run([sys.executable, "-c", script, "exit"], capture_output=True,
                           text=True, check=True)
    assert not v1_dir("memory", f"nsmagic-{clean.stdout.strip()}-left").exists()

    crashed = subprocess.run([sys.executable, "-c", script, "crash"], capture_output=True,
                             text=True, check=False)
    assert crashed.returncode == -signal.SIGKILL
    orphan = v1_dir("memory", f"nsmagic-{crashed.stdout.strip()}-left")
    assert orphan.is_dir()  # SIGKILL runs no atexit: the orphan is there...
    CgroupMagics(None)  # ...until the extension loads in some kernel and prunes it
    assert not orphan.exists()


def test_unload_removes_this_kernels_groups(ipython_shell):
    ipython_shell.run_line_magic("cgroup", "create gone --pids 8")
    ipython_shell.run_line_magic("unload_ext", "nsmagic")
    try:
        kept = groups.names()
    finally:
        ipython_shell.run_line_magic("load_ext", "nsmagic")
        groups.remove_all()
    assert kept == []


# -- everywhere: root (cgroup v1) and nobody (rlimit groups) ------------------------------
def test_rm_kills_what_is_inside(ipython_shell, capsys):
    ipython_shell.run_line_magic("cgroup", "create busy --pids 50")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        groups.get("busy").attach(sleeper.pid)
        assert sleeper.pid in groups.get("busy").pids()
        ipython_shell.run_line_magic("cgroup", "rm busy")
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
    finally:
        sleeper.kill()
        sleeper.wait()
    assert "removed busy" in shown(capsys)


def test_run_uses_no_namespace_so_needs_no_privilege(ipython_shell, capsys,
                                                     nofile_for_containers):
    # The spec a run uses is valid for an unprivileged kernel without user namespaces.
    spec = ContainerSpec.build(namespaces=set(), userns=False, is_root=False, cgroup="g")
    assert spec.namespaces == frozenset() and not spec.mount_proc
    ipython_shell.run_line_magic("cgroup", "create g --memory 256M")
    capsys.readouterr()
    ipython_shell.run_line_magic(
        "cgroup", "run g -q -- readlink /proc/self/ns/user /proc/self/ns/pid /proc/self/ns/mnt")
    inside = capsys.readouterr().out.split()
    assert inside == [os.readlink(f"/proc/self/ns/{ns}") for ns in ("user", "pid", "mnt")]
    ipython_shell.run_line_magic("cgroup", "rm g")
    assert wait_until(lambda: not running_containers(), 3)


def test_show_and_ls_tables_have_text_and_html_forms(ipython_shell, capsys):
    groups.create("tbl", Limits(memory=64 * MiB, pids=20))
    report = groups.report("tbl")
    rows = dict(report.rows())
    assert rows["memory limit"] == "64 MiB" and rows["pids limit"] == "20"
    assert rows["pids current"] == "0"
    html = report._repr_html_()
    assert "<table>" in html and "<th style='text-align:left'>memory limit</th>" in html
    assert "64 MiB" in html
    assert str(report).startswith(f"cgroup tbl (nsmagic-{os.getpid()}-tbl)")
    listing = groups.table()
    assert [row[0] for row in listing.rows()] == ["tbl"]
    assert "<table class='nsmagic-cgroups'>" in listing._repr_html_()
    # In the shell, display() shows the text form.
    ipython_shell.run_line_magic("cgroup", "show tbl")
    assert re.search(r"memory limit\s+64 MiB", shown(capsys))
    groups.remove("tbl")
    ipython_shell.run_line_magic("cgroup", "ls")
    assert "no cgroups yet" in shown(capsys)


def test_help_documents_every_subcommand(ipython_shell):
    doc = ipython_shell.find_line_magic("cgroup").__doc__
    for text in ("%cgroup create", "%cgroup set", "%cgroup show", "%cgroup ls", "%cgroup rm",
                 "%cgroup run", "--memory", "--memory-swap", "--cpu-weight", "--cpuset",
                 "--timeout", "-- command"):
        assert text in doc, text


def test_dash_h_prints_a_subcommands_help(ipython_shell, capsys):
    ipython_shell.run_line_magic("cgroup", "create -h")
    out = capsys.readouterr().out
    assert "%cgroup create" in out and "--memory-swap" in out and "%cgroup run" not in out
    ipython_shell.run_line_magic("cgroup", "run x --help")
    assert "--timeout" in capsys.readouterr().out


@pytest.fixture
def existing(ipython_shell):
    ipython_shell.run_line_magic("cgroup", "create taken --pids 10")
    yield
    groups.remove("taken")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "%cgroup needs a subcommand: create, set, show, ls, rm or run"),
        ("make x", "%cgroup does not know 'make'"),
        ("create", "%cgroup create needs a NAME"),
        ("show", "%cgroup show needs a NAME"),
        ("rm", "%cgroup rm needs a NAME"),
        ("set", "%cgroup set needs a NAME"),
        ("create x --memory 12Q", "--memory must be a size such as 512K, 256M"),
        ("create x --cpus -1", "--cpus must be a number of cores above 0"),
        ("create x --pids 0", "--pids must be a whole number from 1"),
        ("create x --memory 64M --memory-swap 32M", "--memory-swap is memory plus swap"),
        ("create x --cpuset 1-0", "runs backwards"),
        ("create a/b", "cgroup name 'a/b' is not valid"),
        ("create ..", "cgroup name '..' is not valid"),
        ("create x..y", "cgroup name 'x..y' is not valid"),
        ("create nsmagic-1-x", "give the short name"),
        ("create x --bogus 1", "%cgroup create: unrecognized arguments: --bogus 1"),
        ("rm nothere", "there is no cgroup named 'nothere'"),
        ("show nothere", "there is no cgroup named 'nothere'"),
        ("run nothere -- true", "there is no cgroup named 'nothere'"),
        ("create taken", "a cgroup named 'taken' already exists"),
        ("set taken", "give at least one limit to set"),
        ("set taken --memory lots", "--memory must be a size"),
        ("run taken", "%cgroup run needs a command"),
        ("run taken --", "%cgroup run needs a command"),
        ("run taken --timeout 1 echo -- hi", "unrecognized arguments: echo; put the command "
                                             "after --: %cgroup run NAME [options] -- cmd"),
        ("run taken echo -- hi", "put the command after --"),
    ],
)
def test_bad_input_is_one_usage_error_and_creates_nothing(ipython_shell, existing, line,
                                                          message):
    before = (nsmagic_cgroups(), groups.names(), running_containers())
    with pytest.raises(UsageError, match=re.escape(message)) as caught:
        ipython_shell.run_line_magic("cgroup", line)
    assert type(caught.value) is UsageError  # IPython prints exactly UsageError in one line
    assert "\n" not in str(caught.value)
    assert (nsmagic_cgroups(), groups.names(), running_containers()) == before


def test_container_cgroup_refuses_limits_and_unknown_groups(ipython_shell):
    with pytest.raises(UsageError, match="--cgroup runs in an existing group"):
        ipython_shell.run_cell_magic("container", "--cgroup x --memory 64M", "pass")
    with pytest.raises(UsageError, match="there is no cgroup named 'x'"):
        ipython_shell.run_cell_magic("container", "--cgroup x", "pass")
    with pytest.raises(UsageError, match="cgroup name 'a/b' is not valid"):
        ipython_shell.run_cell_magic("container", "--cgroup a/b", "pass")


# -- the rlimit fallback, as an unprivileged user -----------------------------------------
@pytest.mark.unprivileged
@pytest.mark.skipif(IS_ROOT or not groups.is_approximate(),
                    reason="needs a host without writable cgroups (runs in the nobody pass)")
def test_rlimit_group_limits_a_container_as_approximated(ipython_shell, capsys,
                                                         nofile_for_containers):
    ipython_shell.run_line_magic("cgroup", "create x --memory 64M")
    out = shown(capsys)
    assert "created x (nsmagic-" in out and "rlimit group" in out
    assert "nsmagic: Memory is limited per process to 64 MiB of virtual address space" in out

    started = time.monotonic()
    failed = ipython_shell.run_cell("%%container --cgroup x\nb = b'x' * (200 << 20)\n")
    assert time.monotonic() - started < 10
    assert isinstance(failed.error_in_exec, ContainerError)
    assert str(failed.error_in_exec) == "MemoryError"
    out = shown(capsys)
    assert "MemoryError" in out
    assert "limits (memory 64 MiB) are applied as per-process rlimits" in out
    assert "nsmagic: limits only approximated:" in out

    ipython_shell.run_line_magic("cgroup", "run x -q -- sh -c 'ulimit -v'")
    assert capsys.readouterr().out.strip() == str(64 * 1024)  # KiB

    ipython_shell.run_line_magic("cgroup", "show x")
    out = shown(capsys)
    assert re.search(r"driver\s+rlimit \(limits approximated\)", out)
    assert "note: this host has no writable cgroup" in out
    ipython_shell.run_line_magic("cgroup", "rm x")


def test_ctrl_c_of_a_run_is_one_line(ipython_shell, nofile_for_containers):
    from nsmagic.magics.container import ContainerInterrupted

    from .interrupting import interrupt_after

    ipython_shell.run_line_magic("cgroup", "create held --memory 256M")
    try:
        with interrupt_after(0.3), pytest.raises(ContainerInterrupted) as interrupted:
            ipython_shell.run_line_magic("cgroup", "run held -- sleep 30")
        assert re.fullmatch(r"interrupted: sleep stopped after 0\.\d s",
                            interrupted.value._render_traceback_()[0])
    finally:
        ipython_shell.run_line_magic("cgroup", "rm held")
