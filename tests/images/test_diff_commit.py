"""docker diff and docker commit for nsmagic: a busybox container creates, changes and deletes
files and replaces a directory whole; diff lists it as A/C/D lines without the runtime's own
mount points; commit makes that a gzip layer with OCI whiteouts on the image, which nsmagic
runs at once and skopeo, umoci and podman read."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile

import pytest

import nsmagic
from nsmagic import images
from nsmagic.errors import SpecError
from nsmagic.images.commit import commit, diff
from nsmagic.images.store import Store
from tests.conftest import IS_ROOT

from . import builders
from .conftest import skopeo, tool
from .test_interop import podman, podman_dir  # noqa: F401 - a fixture

CHANGES = ("echo new > /srv/new; echo more >> /srv/hello; rm /srv/old; "
           "rm -rf /data; mkdir /data; echo c > /data/c; "
           "mkdir -p /opt/tool; ln -s /bin/busybox /opt/tool/run; rm /etc/hello")


@pytest.fixture
def busybox(tmp_path) -> str:
    """oci:... of busybox with a layer holding /srv (hello, old) and /data (a, b)."""
    layout = str(tmp_path / "busybox")
    extra = builders.tar_of([
        builders.Entry("srv", "dir", mode=0o755),
        builders.Entry("srv/hello", "file", b"hello\n"),
        builders.Entry("srv/old", "file", b"old\n"),
        builders.Entry("data", "dir", mode=0o755),
        builders.Entry("data/a", "file", b"a\n"),
        builders.Entry("data/b", "file", b"b\n")])
    builders.write_layout(layout, "1", [builders.busybox_layer(), extra],
                          env=["PATH=/bin:/sbin"], cmd=["/bin/sh"])
    return f"oci:{layout}:1"


@pytest.fixture
def changed(busybox):
    """A container of busybox that ran CHANGES, its writable layer kept (removed after)."""
    container = nsmagic.Container(image=busybox)
    container.keep_writable_layer = True
    try:
        container.start(CHANGES, kind="shell")
        result = container.wait()
    finally:
        container.close()
    assert result.ok, result.stderr
    yield container
    container.writable_layer.remove()


def test_diff_lists_what_the_container_added_changed_and_deleted_as_docker_diff_does(changed):
    assert [str(change) for change in diff(changed)] == [
        "C /data", "D /data/a", "D /data/b", "A /data/c",  # replaced whole: opaque
        "C /etc", "D /etc/hello",
        "A /opt", "A /opt/tool", "A /opt/tool/run",
        "C /srv", "C /srv/hello", "A /srv/new", "D /srv/old"]


def test_the_runtimes_own_mount_points_are_no_change(changed):
    upper = changed.writable_layer.upper
    made_by_runtime = [p for p in (".nsmagic", "proc", "sys", "dev", "etc/hostname",
                                   "etc/hosts", "etc/resolv.conf") if os.path.lexists(
                                       os.path.join(upper, p))]
    assert made_by_runtime, "the runtime made none of its mount points in the upper layer"
    paths = {change.path for change in diff(changed)}
    assert not paths & {"/" + p for p in made_by_runtime}


def test_a_container_that_changed_nothing_has_an_empty_diff(busybox):
    container = nsmagic.Container(image=busybox)
    container.keep_writable_layer = True
    try:
        container.start("cat /srv/hello > /dev/null", kind="shell")
        assert container.wait().ok
        container.close()
        assert diff(container) == []
    finally:
        container.close()
        container.writable_layer.remove()


def test_a_committed_image_runs_at_once_with_the_changes_and_the_config_changes(changed):
    image = commit(changed, "test/committed:1", changes=["ENV COMMITTED=yes",
                                                         'CMD ["/bin/cat", "/srv/new"]'],
                   message="after the changes")
    assert image.name == "docker.io/test/committed:1"
    result = nsmagic.run("cat /srv/hello /srv/new; ls /data; test -e /srv/old || echo no-old; "
                         "test -e /etc/hello || echo no-hello; readlink /opt/tool/run; "
                         "echo $COMMITTED", kind="shell", image="test/committed:1")
    assert result.ok, result.stderr
    assert result.stdout.split() == ["hello", "more", "new", "c", "no-old", "no-hello",
                                     "/bin/busybox", "yes"]
    assert image.config.cmd == ("/bin/cat", "/srv/new")
    assert images.get("test/committed:1").id == image.id


def test_the_committed_layer_is_a_gzip_tar_with_oci_whiteouts_and_its_digests(changed,
                                                                             busybox):
    base = images.get(busybox)
    image = commit(changed, "test/committed:2")
    store = Store()
    layer = image.record.layers[-1]
    assert image.record.layers[:-1] == base.record.layers
    assert layer.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    with open(store.blob_path(layer.digest), "rb") as handle:
        blob = handle.read()
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer.digest
    tar_bytes = gzip.decompress(blob)
    assert "sha256:" + hashlib.sha256(tar_bytes).hexdigest() == layer.diff_id
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        names = tar.getnames()
        owners = {(m.uid, m.gid) for m in tar.getmembers()}
    assert names == ["data", "data/.wh..wh..opq", "data/c", "etc", "etc/.wh.hello", "opt",
                     "opt/tool", "opt/tool/run", "srv", "srv/.wh.old", "srv/hello", "srv/new"]
    assert owners == {(0, 0)}  # as the container saw them, rootless too
    config = image.config.raw
    assert config["rootfs"]["diff_ids"] == [*base.config.diff_ids, layer.diff_id]
    assert len([h for h in config["history"] if not h.get("empty_layer")]) == 3
    assert config["config"]["Env"] == base.config.raw["config"]["Env"]


def test_nothing_to_diff_in_a_read_only_or_ended_container_said_in_one_sentence(busybox):
    read_only = nsmagic.Container(image=busybox, read_only=True)  # never gets a layer
    with pytest.raises(SpecError, match="is --read-only, so it has no writable layer"):
        diff(read_only)
    ended = nsmagic.Container(image=busybox)
    try:
        ended.start("true", kind="shell")
        ended.wait()
    finally:
        ended.close()
    with pytest.raises(SpecError, match="has ended, and its writable layer went with it"):
        commit(ended, "test/never:1")
    assert images.get(busybox) and all(r.name != "docker.io/test/never:1"
                                       for r in Store().records())


def test_commit_names_only_store_names_and_takes_only_config_changes(changed):
    with pytest.raises(SpecError, match="cannot name a new image"):
        commit(changed, "oci:/tmp/x:1")
    with pytest.raises(SpecError, match="is not one commit applies"):
        commit(changed, "test/x:1", changes=["RUN rm -rf /"])


@tool("umoci")
@tool("skopeo")
def test_skopeo_and_umoci_read_the_committed_image_and_its_whiteouts(changed, tmp_path):
    image = commit(changed, "test/committed:3")
    layout = tmp_path / "exported"
    images.export(image.name, f"oci:{layout}:3")
    inspected = json.loads(skopeo("inspect", f"oci:{layout}:3").stdout)
    assert inspected["Layers"] == [layer.digest for layer in image.record.layers]
    bundle = tmp_path / "bundle"
    unpack = ["umoci", "unpack"] + ([] if IS_ROOT else ["--rootless"])
    subprocess.run([*unpack, "--image", f"{layout}:3", str(bundle)], check=True,
                   capture_output=True, timeout=120)
    rootfs = bundle / "rootfs"
    assert sorted(os.listdir(rootfs / "data")) == ["c"]  # the opaque directory
    assert not (rootfs / "srv" / "old").exists() and not (rootfs / "etc" / "hello").exists()
    assert (rootfs / "srv" / "hello").read_text() == "hello\nmore\n"
    assert os.readlink(rootfs / "opt" / "tool" / "run") == "/bin/busybox"
    assert not (rootfs / ".nsmagic").exists()


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="podman runs rootful here")
@tool("podman")
def test_podman_runs_the_committed_image_with_the_same_output(changed, podman_dir):  # noqa: F811
    commit(changed, "test/committed:4")
    command = ["/bin/sh", "-c", "cat /srv/hello /srv/new; ls /data; ls /srv"]
    ours = nsmagic.run(kind="command", argv=command, image="test/committed:4")
    layout = podman_dir / "exported"
    images.export("test/committed:4", f"oci:{layout}:4")
    theirs = podman(podman_dir, "run", f"oci:{layout}:4", *command)
    assert theirs.returncode == 0, theirs.stderr
    assert ours.ok and theirs.stdout == ours.stdout
