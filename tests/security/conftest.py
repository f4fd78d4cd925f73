"""Fixtures of the escape suite: scratch space on the host that containers must not see,
and the table of every observation (NSMAGIC_SECURITY_TABLE=path writes it)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from .harness import OBSERVATIONS, PREFIX, write_table


@pytest.fixture(scope="session", autouse=True)
def security_table():
    """Write the observations of the session as a Markdown table, when asked to."""
    yield
    path = os.environ.get("NSMAGIC_SECURITY_TABLE")
    if path and OBSERVATIONS:
        write_table(path)


@pytest.fixture
def scratch():
    """A directory of the test's user on the host's disk (/var/tmp), searchable by all,
    removed afterwards: what a container must not reach unless it is given to it."""
    directory = tempfile.mkdtemp(prefix=PREFIX, dir="/var/tmp")
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
