"""`nsmagic run`: exit status, output bytes and signals passed through, bad options; `export`,
`ls`, `stats` and `prune` as the whole machine shows them."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import IS_ROOT, wait_until

CONSOLE_SCRIPT = Path(sys.executable).with_name("nsmagic")


def nsmagic(*args: str, timeout: float = 60, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nsmagic", *args], capture_output=True,
                          timeout=timeout, check=False, **options)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nsmagic", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def wait_for_line(process: subprocess.Popen, expected: bytes, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.strip() == expected:
            return
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"{expected!r} never came; stderr: {process.stderr.read()!r}")


# -- exit status -------------------------------------------------------------------------------
@pytest.mark.parametrize("script, code", [
    ("exit 0", 0), ("exit 7", 7), ("exit 255", 255), ("kill -9 $$", 128 + 9),
    ("kill -TERM $$", 128 + 15),
])
def test_the_commands_exit_status_is_ours(script, code):
    assert nsmagic("run", "--", "sh", "-c", script).returncode == code


def test_a_missing_command_is_127_as_in_a_shell():
    completed = nsmagic("run", "--", "no-such-command-here")
    assert completed.returncode == 127
    assert b"not found" in completed.stderr


def test_the_console_script_works_too():
    if not CONSOLE_SCRIPT.exists():
        pytest.skip("the nsmagic console script is not installed in this environment")
    completed = subprocess.run([str(CONSOLE_SCRIPT), "run", "--", "sh", "-c", "exit 7"],
                               capture_output=True, timeout=60, check=False)
    assert completed.returncode == 7


# -- output ------------------------------------------------------------------------------------
def test_stdout_and_stderr_pass_through_as_bytes():
    completed = nsmagic("run", "--", "sh", "-c",
                        r"printf '\377\376\000abc\n'; printf 'caf\351\n' >&2")
    assert completed.returncode == 0
    assert completed.stdout == b"\xff\xfe\x00abc\n"  # not decoded, not replaced
    assert completed.stderr == b"caf\xe9\n"


def test_large_output_arrives_whole():
    completed = nsmagic("run", "--", "sh", "-c", "seq 1 200000")
    assert completed.returncode == 0
    assert completed.stdout == "".join(f"{i}\n" for i in range(1, 200001)).encode()


def test_a_closed_reader_gives_the_command_sigpipe():
    completed = subprocess.run(
        f"{shlex.quote(sys.executable)} -m nsmagic run -- seq 1 10000000 | head -1; "
        "echo \"status=${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash",
        capture_output=True, text=True, timeout=60, check=False)
    assert completed.stdout.splitlines() == ["1", f"status={128 + signal.SIGPIPE}"]


@pytest.mark.skipif(not IS_ROOT, reason="reads the container's own cgroup files (root here)")
def test_options_reach_the_container():
    completed = nsmagic("run", "--hostname", "clihost", "-e", "GREETING=hello", "--pids", "30",
                        "--", "sh", "-c", "echo $(hostname) $GREETING; "
                        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || "
                        "cat /sys/fs/cgroup/pids.max")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.decode().split() == ["clihost", "hello", "30"]


def test_timeout_kills_with_124():
    started = time.monotonic()
    completed = nsmagic("run", "--timeout", "0.5", "--", "sleep", "30")
    assert completed.returncode == 124
    assert time.monotonic() - started < 15
    assert completed.stderr.decode().strip().splitlines()[-1].endswith("killed")


# -- signals -----------------------------------------------------------------------------------
def test_sigterm_to_the_cli_reaches_the_command():
    process = start("run", "--", "sh", "-c",
                    'trap "echo got-TERM; exit 3" TERM; echo ready; '
                    "while :; do sleep 0.05; done")
    try:
        wait_for_line(process, b"ready")
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 3
    assert out.strip() == b"got-TERM"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_signal_that_kills_the_command_is_128_plus_n(signum):
    process = start("run", "--", "sh", "-c", "echo ready; exec sleep 60")
    try:
        wait_for_line(process, b"ready")
        process.send_signal(signum)
        process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 128 + signum


def test_kill_dash_term_from_a_shell():
    """What the brief asks literally: `kill -TERM <cli pid>`."""
    process = start("run", "--", "sh", "-c",
                    'trap "echo terminated; exit 0" TERM; echo ready; while :; do sleep 0.05; '
                    "done")
    try:
        wait_for_line(process, b"ready")
        subprocess.run(["kill", "-TERM", str(process.pid)], check=True)
        out, _ = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert (process.returncode, out.strip()) == (0, b"terminated")


# -- bad options -------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["run"],
    ["run", "--"],
    ["run", "--bogus", "--", "true"],
    ["run", "--memory", "12x", "--", "true"],
    ["run", "--cpus", "0", "--", "true"],
    ["run", "--memory-swap", "1G", "--", "true"],
    ["run", "--hostname", "-bad-", "--", "true"],
    ["run", "--net", "container:somename", "--", "true"],
    ["run", "--net", "wifi", "--", "true"],
    ["run", "--userns", "--no-userns", "--", "true"],
    ["run", "--timeout", "0", "--", "true"],
    ["run", "--timeout", "soon", "--", "true"],
    ["run", "--volume", "relative:/x", "--", "true"],
    ["run", "--env", "NO-SUCH=NAME", "--", "true"],
    ["run", "--read-only", "--overlay", "--", "true"],
    ["stats"],
    ["export"],
    ["export", "--oci", "/tmp/x", "--bundle-root", "alpine"],
])
def test_bad_options_exit_2_with_one_line_on_stderr(args):
    completed = nsmagic(*args, timeout=30)
    assert completed.returncode == 2, completed.stderr
    assert completed.stdout == b""
    lines = completed.stderr.decode().strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert "error" in lines[0]


# -- export ------------------------------------------------------------------------------------
def test_export_writes_a_bundle(tmp_path):
    completed = nsmagic("export", "--oci", str(tmp_path / "b"), "--hostname", "exp",
                        "--memory", "32M", "--", "sh", "-c", "echo hi")
    assert completed.returncode == 0, completed.stderr
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["hostname"] == "exp"
    assert config["process"]["args"] == ["sh", "-c", "echo hi"]
    assert config["linux"]["resources"]["memory"]["limit"] == 32 << 20
    assert (tmp_path / "b" / "rootfs").is_dir() and config["linux"]["maskedPaths"]


# -- ls, stats, prune ----------------------------------------------------------------------------
@pytest.mark.skipif(not IS_ROOT, reason="ls/stats list cgroups, which need root here")
def test_ls_and_stats_see_a_running_container():
    process = start("run", "--memory", "48M", "--pids", "25", "--", "sh", "-c",
                    "echo ready; exec sleep 60")
    try:
        wait_for_line(process, b"ready")

        def ours() -> list[dict]:
            listing = json.loads(nsmagic("ls", "--json").stdout)
            return [g for g in listing["cgroups"]
                    if g["limits"] and g["limits"]["pids"] == 25
                    and g["limits"]["memory"] == 48 << 20]

        assert wait_until(ours, 10)
        found = ours()
        assert len(found) == 1
        group = found[0]
        assert group["owner_alive"] is True and len(group["pids"]) >= 1
        text = nsmagic("ls").stdout.decode()
        assert group["name"] in text and "nsmagic bridges:" in text

        stats = nsmagic("stats", group["name"], "--json")
        assert stats.returncode == 0, stats.stderr
        figures = json.loads(stats.stdout)
        assert figures["name"] == group["name"]
        assert figures["stats"]["pids_current"] >= 1
        assert figures["stats"]["memory_current"] > 0
        assert figures["limits"]["memory"] == 48 << 20
        by_id = nsmagic("stats", group["name"].split("-", 2)[2], "--json")
        assert json.loads(by_id.stdout)["name"] == group["name"]
        assert b"48 MiB" in nsmagic("stats", group["name"]).stdout
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    gone = nsmagic("stats", group["name"], "--json")
    assert gone.returncode == 1 and b"no nsmagic cgroup" in gone.stderr


def test_stats_of_an_unknown_name_is_exit_1():
    completed = nsmagic("stats", "no-such-group")
    assert completed.returncode == 1
    assert len(completed.stderr.decode().strip().splitlines()) == 1


@pytest.mark.skipif(not IS_ROOT, reason="makes a cgroup by hand")
def test_prune_removes_a_cgroup_whose_owner_is_dead():
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"nsmagic-{dead.pid}-prunetest"
    pids_root = Path("/sys/fs/cgroup/pids")
    if not pids_root.is_dir():
        pytest.skip("no cgroup v1 pids hierarchy here")
    group = pids_root / name
    group.mkdir()
    try:
        listing = json.loads(nsmagic("ls", "--json").stdout)
        entry = next(g for g in listing["cgroups"] if g["name"] == name)
        assert entry["owner_alive"] is False
        completed = nsmagic("prune")
        assert completed.returncode == 0
        assert name in completed.stdout.decode()
        assert not group.exists()
    finally:
        if group.exists():
            os.rmdir(group)
