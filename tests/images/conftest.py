"""Fixtures of the image tests: test images built from Debian's files, a real registry, stores."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from nsmagic.images.files import remove_any
from nsmagic.images.store import Store
from tests.images import builders
from tests.images.registry_server import Front, Registry


def tool(name: str) -> pytest.MarkDecorator:
    """Skip unless the reference tool is installed (scripts/setup installs them all)."""
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"{name} is not installed")


def skopeo(*args: str) -> subprocess.CompletedProcess:
    """skopeo, as a user runs it, with plain HTTP for our loopback registry."""
    return subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True,
                          text=True, check=True, timeout=120)


@pytest.fixture
def store(tmp_path) -> Store:
    """An empty store of this test alone."""
    return Store(str(tmp_path / "store"))


@pytest.fixture(scope="session")
def busybox_layout(tmp_path_factory):
    """An OCI layout (tags 1 and 2) of a busybox image; 2 adds a layer on 1's."""
    path = str(tmp_path_factory.mktemp("layouts") / "busybox")
    base = builders.busybox_layer()
    builders.write_layout(path, "1", [base])
    extra = builders.tar_of([builders.Entry("etc", "dir", mode=0o755),
                             builders.Entry("etc/second", "file", b"second layer\n")])
    builders.write_layout(path, "2", [base, extra])
    yield path
    remove_any(os.path.dirname(path))


@pytest.fixture(scope="session")
def python_layout() -> str:
    """The Debian python3.11 image's OCI layout (tag 3.11), cached between runs."""
    try:
        return builders.python_layout()
    except (subprocess.CalledProcessError, OSError) as error:
        pytest.skip(f"cannot build the python image from Debian packages: {error}")


@pytest.fixture(scope="session")
def registry():
    """docker-registry on 127.0.0.1, stopped at the end whatever happens."""
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed")
    server = Registry()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def loaded_registry(registry, busybox_layout):
    """The registry with busybox:1 and busybox:2 copied in by skopeo."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    for tag in ("1", "2"):
        skopeo("copy", "--dest-tls-verify=false", f"oci:{busybox_layout}:{tag}",
               f"docker://{registry.host}/test/busybox:{tag}")
    return registry


@pytest.fixture
def front(loaded_registry):
    """A front on the loaded registry whose rules a test sets (reset afterwards)."""
    server = Front(loaded_registry)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _no_user_store_and_nothing_left(monkeypatch, tmp_path):
    """No test touches the user's or the machine's own store by accident, and the stores,
    layouts and archives a test made are removed after it (read-only directories too)."""
    monkeypatch.setenv("NSMAGIC_IMAGE_STORE", str(tmp_path / "default-store"))
    monkeypatch.delenv("NSMAGIC_PLATFORM", raising=False)
    yield
    for name in os.listdir(tmp_path):
        remove_any(os.path.join(tmp_path, name))
