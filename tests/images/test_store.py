"""The store keeps only what was verified: a lying image, a broken layer, a killed unpack or a
full disk leave nothing a later run trusts, and the next pull with room succeeds."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess

import pytest

from nsmagic.images import DigestMismatch, ImageError, NoSpace, images, pull
from nsmagic.images.store import ROOT_STORE, Store, default_root, opaque_attribute, privileged
from tests.conftest import IS_ROOT
from tests.images import builders


def assert_only_verified_content(store: Store) -> None:
    """Every blob hashes to its name, every layer has its record, nothing is half-made."""
    for name in os.listdir(store.path("blobs", "sha256")):
        with open(store.path("blobs", "sha256", name), "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == name
    for name in os.listdir(store.path("layers", "sha256")):
        assert os.path.isfile(store.path("layers", "sha256", name, "layer.json"))
    assert not [n for n in os.listdir(store.path("tmp")) if n.startswith("layer-")]


def test_the_store_is_the_machines_for_root_the_users_otherwise_unless_configured(
        monkeypatch, tmp_path):
    monkeypatch.setenv("NSMAGIC_IMAGE_STORE", str(tmp_path / "chosen"))
    assert default_root() == str(tmp_path / "chosen")
    monkeypatch.delenv("NSMAGIC_IMAGE_STORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    expected = ROOT_STORE if os.geteuid() == 0 else str(tmp_path / "data/nsmagic/images")
    assert default_root() == expected


def test_the_store_records_which_opaque_attribute_its_layers_carry(store):
    store.open()
    assert store.opaque_xattr == opaque_attribute(privileged())
    assert store.userxattr == (not privileged())


def test_an_image_whose_config_lies_about_a_layer_keeps_no_layer(tmp_path, store):
    layout = str(tmp_path / "lying")
    builders.write_layout(layout, "x", [builders.busybox_layer()],
                          diff_ids=["sha256:" + "0" * 64])
    with pytest.raises(DigestMismatch) as caught:
        pull(f"oci:{layout}:x", store=store)
    assert "unpacks to content with the digest sha256:" in str(caught.value)
    assert str(caught.value).endswith("the unpacked layer was discarded")
    assert os.listdir(store.path("layers", "sha256")) == []
    assert images(store) == []
    assert_only_verified_content(store)


@pytest.mark.parametrize("blob, words", [
    (b"this is not a tar" * 100, "is not a tar archive an image layer can be"),
    (gzip.compress(builders.tar_of([builders.Entry("big", "file", os.urandom(200_000))]))[:5000],
     "ends in the middle of its gzip stream"),
])
def test_a_layer_that_is_not_a_tar_is_one_sentence_and_leaves_nothing(tmp_path, store, blob,
                                                                      words):
    layout = str(tmp_path / "broken")
    builders.write_layout(layout, "x", [blob], blobs_as_is=True)
    with pytest.raises(ImageError) as caught:
        pull(f"oci:{layout}:x", store=store)
    assert words in str(caught.value)
    assert str(caught.value).startswith("the layer sha256:")
    assert os.listdir(store.path("layers", "sha256")) == []
    assert_only_verified_content(store)


def test_what_a_killed_unpack_left_is_removed_by_the_next_one(store, busybox_layout):
    image = pull(f"oci:{busybox_layout}:1", store=store)
    diff_id = image.record.layers[0].diff_id
    # As if a process had died half-way through unpacking this layer.
    os.rename(store.layer_path(diff_id), store.path("tmp", f"layer-{diff_id[7:]}.99999.dead"))
    store.forget(image.name)
    pull(f"oci:{busybox_layout}:1", store=store)
    assert os.listdir(store.path("tmp")) == []
    assert_only_verified_content(store)


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="mounts a tmpfs")
def test_a_full_disk_is_one_sentence_and_the_next_pull_with_room_succeeds(tmp_path,
                                                                          python_layout):
    mountpoint = tmp_path / "nsmagic-full-store"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "nsmagic-test-tmpfs",
                    str(mountpoint)], check=True)
    try:
        store = Store(str(mountpoint / "images"))
        with pytest.raises(NoSpace) as caught:
            pull(f"oci:{python_layout}:3.11", store=store)
        message = str(caught.value)
        assert message.startswith(f"no space left in the image store {store.root} while ")
        assert "\n" not in message and message.count(": ") == 1
        assert images(store) == []
        assert_only_verified_content(store)
        assert not [n for n in os.listdir(store.path("tmp")) if n.endswith(".partial")]
        subprocess.run(["mount", "-o", "remount,size=200m", str(mountpoint)], check=True)
        image = pull(f"oci:{python_layout}:3.11", store=store)
        assert os.path.isfile(os.path.join(image.layer_dirs()[1], "usr/bin/python3.11"))
        assert_only_verified_content(store)
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
