"""Fixtures for the cgroup tests: real groups and child processes, always cleaned up."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from cg_helpers import assert_gone

from nsmagic.cgroups import detect_driver
from nsmagic.cgroups.base import CgroupDriver


@pytest.fixture
def driver() -> CgroupDriver:
    """The real driver of this host; tests needing kernel cgroups skip without one."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups on this host")
    found = detect_driver()
    if found.name == "rlimit":
        pytest.skip("no writable cgroup filesystem here (the rlimit driver was chosen)")
    return found


@pytest.fixture
def make_group(driver):
    """Factory for uniquely named groups; each is removed, and checked gone, at the end."""
    created = []

    def make(limits=None, drv=None):
        group = (drv or driver).create(f"t-{uuid.uuid4().hex[:8]}", limits)
        created.append(group)
        return group

    try:
        yield make
    finally:
        errors = []
        for group in created:
            try:
                group.remove()
            except Exception as exc:  # keep removing the others, then report
                errors.append(exc)
        for group in created:
            assert_gone(group)
        assert not errors, errors


@pytest.fixture
def spawn():
    """Start `python -I -c code` with pipes; every child is killed and reaped at the end."""
    children: list[subprocess.Popen] = []

    def start(code: str, **kwargs) -> subprocess.Popen:
        child = subprocess.Popen(
            [sys.executable, "-I", "-c", code],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, **kwargs,
        )
        children.append(child)
        return child

    try:
        yield start
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.communicate(timeout=10)
