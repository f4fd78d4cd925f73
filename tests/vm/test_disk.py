"""The disk side of the VM comparison, measured: the VM's files, the container image of the same
program, and two images on one base stored once. Every figure is checked against du(1) of the
very files and directories it names, read by this test from the store's own records; no VM is
booted here (tests/vm/test_baseline.py's one boot shows the rows in a real baseline)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import subprocess
import tempfile
from html import escape
from pathlib import Path

import pytest

import nsmagic
from nsmagic.errors import SpecError
from nsmagic.vm import build_image
from nsmagic.vm.disk import DiskFigures, measure_disk, merged_root_bytes
from nsmagic.vm.figures import DISK_ROW, fill_figures
from nsmagic.vm.loops import workload_script
from nsmagic.vm.program_images import (
    BUSYBOX_IMAGE,
    OPENSSL_IMAGE,
    PYTHON_IMAGE,
    named_image,
)
from nsmagic.vm.report import Baseline

IS_ROOT = os.geteuid() == 0


def du(*paths: str | Path) -> int:
    """Bytes on disk of files and trees, each inode once, as du(1) counts them."""
    out = subprocess.run(["du", "-scB1", *map(str, paths)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return int(out.splitlines()[-1].split()[0])


def record(store_root: str, name: str) -> dict:
    """An image's record as the store wrote it (read here without nsmagic.images)."""
    for entry in Path(store_root, "images").glob("*.json"):
        value = json.loads(entry.read_text())
        if value["name"] == name:
            return value
    raise AssertionError(f"no record of {name} in {store_root}")


def blob(store_root: str, digest: str) -> Path:
    return Path(store_root, "blobs", "sha256", digest.removeprefix("sha256:"))


def layer_dir(store_root: str, diff_id: str) -> Path:
    return Path(store_root, "layers", "sha256", diff_id.removeprefix("sha256:"))


def image_paths(store_root: str, name: str) -> list[Path]:
    """Every blob and unpacked layer directory the image's record names."""
    value = record(store_root, name)
    blobs = [value["manifest"], value["config"], *(e["digest"] for e in value["layers"])]
    return [blob(store_root, d) for d in dict.fromkeys(blobs)] + [
        layer_dir(store_root, e["diff_id"]) for e in value["layers"]
    ]


def cpio_files(data: bytes) -> dict[str, bytes]:
    """The regular files of a newc cpio archive (what the kernel unpacks as initramfs)."""
    files, offset = {}, 0
    while True:
        fields = [int(data[offset + 6 + 8 * i: offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name_at = offset + 110
        name = data[name_at: name_at + name_size - 1].decode()
        body = name_at + name_size + (-(110 + name_size) % 4)
        if name == "TRAILER!!!":
            return files
        if mode & 0o170000 == 0o100000:
            files[name] = data[body: body + size]
        offset = body + size + (-size % 4)


class mounted:  # noqa: N801 - reads as a with-statement
    """Layers (lowest first) stacked read-only by overlayfs itself, as a container's root."""

    def __init__(self, layers: list[str]) -> None:
        self.layers = layers
        self.root = tempfile.mkdtemp()

    def __enter__(self) -> str:
        lower = ":".join(reversed(self.layers))
        if len(self.layers) == 1:
            subprocess.run(["mount", "--bind", "-o", "ro", lower, self.root], check=True)
        else:
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}",
                            self.root], check=True)  # fmt: skip
        return self.root

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", self.root], check=True)
        os.rmdir(self.root)


@pytest.fixture(scope="module")
def guest():
    try:
        return build_image("micro")
    except Exception as exc:  # noqa: BLE001 - no apt or no network: nothing to measure
        pytest.skip(f"no guest image here: {exc}")


@pytest.fixture(scope="module")
def disk(guest) -> DiskFigures:
    figures = measure_disk(guest, guest.busybox_version)
    if figures.image is None or figures.base is None:
        pytest.skip(f"the images could not be built here: {figures.notes}")
    return figures


def test_the_vms_disk_is_the_kernel_and_initramfs_it_boots_measured_on_disk(disk, guest):
    kernel, initramfs = disk.vm
    assert kernel.paths == (str(guest.kernel),) and kernel.bytes == du(guest.kernel)
    assert initramfs.paths == (str(guest.initramfs),) and initramfs.bytes == du(guest.initramfs)
    assert disk.vm_bytes == du(guest.kernel, guest.initramfs)
    # The micro guest has no other disk: its root is the initramfs, not the host's over 9p.
    assert "root" in initramfs.what and "9p" not in initramfs.what


def test_the_container_image_is_busybox_from_the_guests_own_package(disk, guest):
    image = disk.image
    assert image.name == BUSYBOX_IMAGE and disk.program == "the shell loop (busybox)"
    (diff_id,) = [e["diff_id"] for e in record(image.store, image.name)["layers"]]
    rootfs = layer_dir(image.store, diff_id) / "rootfs"
    in_guest = cpio_files(gzip.decompress(guest.initramfs.read_bytes()))["bin/busybox"]
    assert (rootfs / "bin" / "busybox").read_bytes() == in_guest, "the same program, byte for byte"
    # And it runs the very loop the guest runs, as a container of that image.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NSMAGIC_IMAGE_STORE", image.store)
        done = nsmagic.run(workload_script("cpu", 0.2) + "echo looped", kind="shell",
                           image=image.name)
    assert done.ok and done.stdout == "looped\n", (done.describe(), done.stderr)


def test_the_container_images_size_is_its_blobs_and_unpacked_layer_on_disk(disk):
    image = disk.image
    paths = image_paths(image.store, image.name)
    assert image.size == du(*paths)
    assert image.blobs == du(*(p for p in paths if "blobs" in p.parts))
    assert image.unpacked == du(*(p for p in paths if "layers" in p.parts))
    assert image.shared == 0 and image.unique == image.size, "no other image uses its layer"


def test_two_images_on_one_base_store_the_base_once_and_report_it_shared(disk):
    base = disk.base
    python, openssl = base.images
    assert (python.name, openssl.name) == (PYTHON_IMAGE, OPENSSL_IMAGE)
    store = python.store
    layers = [[e["diff_id"] for e in record(store, i.name)["layers"]] for i in base.images]
    assert layers[0][0] == layers[1][0] and layers[0][1] != layers[1][1], "one base, own tops"
    assert base.base_layers == (layers[0][0],)
    base_entry = record(store, python.name)["layers"][0]
    base_paths = [blob(store, base_entry["digest"]), layer_dir(store, base_entry["diff_id"])]
    assert base.base_bytes == du(*base_paths)
    for image in base.images:
        assert image.size == du(*image_paths(store, image.name))
        assert image.shared == base.base_bytes, "images() says the base is shared"
        assert image.unique == image.size - base.base_bytes
    # The store holds the base once: everything both need, each path once, is their sizes
    # added up less one base.
    both = list(dict.fromkeys(image_paths(store, python.name) + image_paths(store, openssl.name)))
    assert base.stored_bytes == du(*both)
    assert base.stored_bytes == base.sum_of_sizes - base.base_bytes
    assert base.sum_of_sizes == python.size + openssl.size


def test_the_two_images_run_their_programs_as_containers(disk):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NSMAGIC_IMAGE_STORE", disk.base.images[0].store)
        python = nsmagic.run("import json; print(json.dumps(6 * 7))", image=PYTHON_IMAGE)
        openssl = nsmagic.run("", kind="command", argv=["openssl", "version"],
                              image=OPENSSL_IMAGE)
    assert python.ok and python.stdout == "42\n", (python.describe(), python.stderr)
    assert openssl.ok and openssl.stdout.startswith("OpenSSL 3"), openssl.stderr


@pytest.mark.skipif(not IS_ROOT, reason="mounting overlayfs needs root")
def test_a_named_images_root_is_what_overlayfs_shows_of_its_layers(guest, disk):
    python = named_image(PYTHON_IMAGE)
    figures = measure_disk(guest, None, python)
    assert figures.program == f"the program of {PYTHON_IMAGE}"
    kernel, initramfs, root = figures.vm
    assert root.paths == tuple(python.layer_dirs())
    with mounted(python.layer_dirs()) as merged:
        assert root.bytes == du(merged)
    assert figures.vm_bytes == kernel.bytes + initramfs.bytes + root.bytes
    assert figures.image.name == PYTHON_IMAGE and figures.image.size == disk.base.images[0].size


@pytest.mark.skipif(not IS_ROOT, reason="whiteouts (0/0 devices) and trusted.* need root")
def test_a_merged_root_counts_each_path_once_and_nothing_hidden(tmp_path):
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for layer in (lower, upper):
        (layer / "d").mkdir(parents=True)
    (lower / "kept").write_bytes(b"k" * 5000)
    (lower / "replaced").write_bytes(b"r" * 50_000)
    (lower / "gone").write_bytes(b"g" * 50_000)
    (lower / "d" / "hidden").write_bytes(b"h" * 50_000)
    (upper / "replaced").write_bytes(b"R" * 9000)
    os.mknod(upper / "gone", 0o600 | 0o020000, os.makedev(0, 0))  # a whiteout
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"y")  # hides d/hidden
    (upper / "d" / "new").write_bytes(b"n" * 3000)
    layers = [str(lower), str(upper)]
    with mounted(layers) as merged:
        assert sorted(os.listdir(merged)) == ["d", "kept", "replaced"]
        assert merged_root_bytes(layers, "trusted.overlay.opaque") == du(merged)


def test_a_named_image_is_found_or_refused_in_one_sentence(tmp_path):
    from tests.images.builders import busybox_layer, write_layout

    layout = tmp_path / "layout"
    write_layout(str(layout), "1", [busybox_layer()])
    pulled = named_image(f"oci:{layout}:1", cache=tmp_path / "cache")
    assert pulled.store.root == str(tmp_path / "cache" / "image-store"), "a file: pulled there"
    with pytest.raises(SpecError, match=r"is not in the image store .*: pull it first"):
        named_image("localhost:5999/nowhere/nothing:1", cache=tmp_path / "cache")


def test_the_rows_are_labelled_measured_and_the_sentence_says_the_figures(disk):
    no_vm = Baseline(measured=False, disk=dataclasses.replace(disk, vm=[]))  # Binder's case
    fill_figures(no_vm, budget="1G")
    assert (no_vm.row(DISK_ROW).vm, no_vm.row(DISK_ROW).container) == (None, disk.image.size)
    assert "the VM needs" not in no_vm.disk_sentence
    out = Baseline(measured=True, accel="tcg", memory_bytes=2**28, disk=disk)
    fill_figures(out, budget="1G")
    row = out.row(DISK_ROW)
    assert (row.vm, row.container) == (disk.vm_bytes, disk.image.size)
    assert row.ratio == pytest.approx(disk.vm_bytes / disk.image.size) and row.ratio > 1
    assert "measured, bytes on disk" in row.note and BUSYBOX_IMAGE in row.note
    assert out.row("  of which kernel").vm == disk.vm[0].bytes
    assert out.row("  container image: unique").container == disk.image.unique
    assert out.row("  container image: shared").container == disk.image.shared
    from nsmagic.cgroups.limits import format_size

    sentence = out.disk_sentence
    assert sentence.startswith("Measured on disk: the container image of the shell loop")
    for value in (disk.image.size, disk.vm_bytes, disk.base.base_bytes):
        assert f" {format_size(value)}" in sentence
    assert "two images on one base store it once" in sentence
    text, html, data = out.text(), out._repr_html_(), out.as_dict()
    assert sentence in text and escape(sentence) in html
    assert PYTHON_IMAGE in text and "stored for both (each byte once)" in html
    assert data["disk_sentence"] == sentence
    assert data["disk"]["base"]["stored_bytes"] == disk.base.stored_bytes
    json.dumps(data)
