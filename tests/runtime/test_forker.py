"""The fork helper: every container process comes from it, yet is the fork server's child,
and the helper lives exactly as long as its server."""

from __future__ import annotations

import os
import signal

import pytest

import nsmagic
from nsmagic.runtime.launcher import ForkServerLauncher

from ..conftest import our_processes, wait_until

pytestmark = pytest.mark.root


def _stat(pid: int) -> tuple[str, int]:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(child) for child in handle.read().split()]


def _name(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as handle:
        return handle.read().strip()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NSMAGIC_POOL", "0")
    launcher = ForkServerLauncher()
    launcher.ping()
    yield launcher
    launcher.close()


def _forker_of(server: ForkServerLauncher) -> int:
    forkers = [pid for pid in _children(server.pid) if _name(pid) == "nsmagic-forker"]
    assert len(forkers) == 1, forkers
    return forkers[0]


def test_the_server_starts_one_fork_helper_at_once(server):
    _forker_of(server)


@pytest.mark.parametrize("options", [{}, {"userns": True}], ids=["root", "userns"])
def test_a_containers_pid_1_is_the_servers_child_not_the_helpers(server, options):
    with nsmagic.Container(launcher=server, **options) as container:
        container.start("import time; time.sleep(30)")
        assert wait_until(lambda: [p for p in _children(server.pid)
                                   if _name(p) == "nsmagic-init"], 5)
        assert not [p for p in _children(_forker_of(server)) if _name(p) == "nsmagic-init"]
    result = nsmagic.run("import os; print(os.getpid(), os.getppid())", launcher=server,
                         **options)
    assert result.ok and result.stdout == "2 1\n"  # inside, the payload's parent is pid 1


def test_containers_still_start_after_the_helper_is_killed(server):
    os.kill(_forker_of(server), signal.SIGKILL)
    assert wait_until(lambda: not [p for p in our_processes() if "forker" in p
                                   and _stat(int(p.split()[0]))[1] == server.pid], 5)
    result = nsmagic.run("print('still here')", launcher=server)
    assert result.ok and result.stdout == "still here\n"
    _forker_of(server)  # a new one


def test_the_helper_ends_with_its_server(monkeypatch):
    monkeypatch.setenv("NSMAGIC_POOL", "0")
    launcher = ForkServerLauncher()
    launcher.ping()
    helper = _forker_of(launcher)
    launcher.close()
    assert wait_until(lambda: not os.path.exists(f"/proc/{helper}"), 5)
