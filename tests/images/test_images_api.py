"""images() measures what is on disk (shared and unique); remove and prune never take what an
image or a running container (a lease) uses, and a lease ends with its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from nsmagic.images import ImageError, get, images, lease, prune, pull, remove

HOLD = ("import sys, time; from nsmagic.images import get; "
        "held = get(sys.argv[1], store=sys.argv[2]).lease().open(); "
        "print('held', flush=True); time.sleep(120)")


def du(path: str) -> int:
    """Bytes on disk as du(1) counts them (each inode once)."""
    out = subprocess.run(["du", "-s", "--block-size=1", path], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[0])


def measured(store, image) -> int:
    record = image.record
    blobs = {record.manifest, record.config, *(layer.digest for layer in record.layers)}
    return sum(du(store.blob_path(b)) for b in blobs) + sum(
        du(store.layer_path(layer.diff_id)) for layer in record.layers)


@pytest.fixture
def two_images(store, busybox_layout):
    """busybox:1 and busybox:2, which shares 1's only layer and adds one."""
    return (pull(f"oci:{busybox_layout}:1", store=store),
            pull(f"oci:{busybox_layout}:2", store=store))


def test_sizes_are_bytes_on_disk_as_du_counts_them_and_shared_layers_count_as_shared(
        store, two_images):
    one, two = two_images
    info = {i.name: i for i in images(store)}
    base = one.record.layers[0]
    base_bytes = du(store.blob_path(base.digest)) + du(store.layer_path(base.diff_id))
    for image in (one, two):
        assert info[image.name].size == measured(store, image) == image.size
        assert info[image.name].shared == base_bytes
        assert info[image.name].id == image.id and info[image.name].digest == image.digest
    assert info[one.name].unique == info[one.name].size - base_bytes
    assert [(layer.diff_id, layer.images) for layer in info[two.name].layers] == \
        [(base.diff_id, 2), (two.record.layers[1].diff_id, 1)]


def test_remove_takes_only_what_no_other_image_uses(store, two_images, busybox_layout):
    one, two = two_images
    removed = remove(two.name, store=store)
    top = two.record.layers[1]
    assert removed[0] == f"image {two.name}"
    assert sorted(removed[1:]) == sorted([f"layer {top.diff_id}", f"blob {top.digest}",
                                          f"blob {two.digest}", f"blob {two.id}"])
    assert [i.name for i in images(store)] == [one.name]
    assert os.path.isfile(os.path.join(get(one.name, store=store).layer_dirs()[0], "bin",
                                       "busybox"))
    assert prune(store) == []


def test_an_image_the_store_lacks_is_one_sentence(store):
    with pytest.raises(ImageError, match=r"^docker.io/library/nothing is not in the "
                       r"image store .*, so there is nothing to remove$"):
        remove("docker.io/library/nothing", store=store)
    with pytest.raises(ImageError, match=r"^nothing:1 is not in the image store .*: pull it "
                       r"first$"):
        get("nothing:1", store=store)


def test_a_lease_keeps_a_removed_images_layers_until_it_ends(store, two_images):
    _, two = two_images
    with lease(two.name, store=store):
        assert remove(two.name, store=store) == [f"image {two.name}"]
        assert prune(store) == []
        assert all(os.path.isdir(d) for d in two.layer_dirs())
    pruned = prune(store)
    assert f"layer {two.record.layers[1].diff_id}" in pruned
    assert not os.path.exists(store.layer_path(two.record.layers[1].diff_id))


def test_a_lease_lives_as_long_as_its_process_and_not_longer(store, two_images):
    _, two = two_images
    holder = subprocess.Popen([sys.executable, "-c", HOLD, two.name, store.root],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert remove(two.name, store=store) == [f"image {two.name}"]
        assert prune(store) == []
    finally:
        holder.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel ends the flock
        holder.wait()
        holder.stdout.close()
    pruned = prune(store)
    assert f"layer {two.record.layers[1].diff_id}" in pruned
    assert os.listdir(store.path("leases")) == []
