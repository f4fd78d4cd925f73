"""The command line: doctor's report, usage errors and the list of commands (the benchmark,
which `bench` hands its options to, has its own tests in test_bench.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nsmagic", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_doctor_prints_the_tier_line():
    completed = run_cli("doctor")
    assert completed.returncode == 0, completed.stderr
    first = completed.stdout.splitlines()[0]
    assert first.startswith("nsmagic doctor: ")
    assert any(f"(tier: {tier})" in first for tier in ("full", "userns", "none"))


@pytest.mark.parametrize("args", [
    [],
    ["bogus"],
    ["doctor", "--bogus"],
    ["bench", "--runs", "0"],
    ["bench", "--runs", "many"],
    ["bench", "--json"],
    ["bench", "--only", "no-such-benchmark"],
])
def test_bad_options_exit_2_with_one_line_on_stderr(args):
    completed = run_cli(*args, timeout=30)
    assert completed.returncode == 2
    assert completed.stdout == ""
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert "error" in lines[0]


def test_help_lists_the_commands():
    completed = run_cli("--help", timeout=30)
    assert completed.returncode == 0
    assert "doctor" in completed.stdout and "bench" in completed.stdout
