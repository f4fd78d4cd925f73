"""pull brings an image from an OCI layout or a registry into the store, verified, resumable,
safe to interrupt and to run twice at once; every failure is one sentence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from nsmagic.images import DigestMismatch, ImageError, images, pull
from nsmagic.images.reference import parse_registry
from nsmagic.images.registry import RegistryClient, is_loopback
from tests.conftest import wait_until
from tests.images import builders
from tests.images.conftest import skopeo

CHILD = ("import sys; from nsmagic.images import pull; "
         "pull(sys.argv[1], store=sys.argv[2]); print('pulled')")


def layer_files(image) -> list[list[str]]:
    return [sorted(os.listdir(d)) for d in image.layer_dirs()]


def test_a_pull_from_an_oci_layout_unpacks_each_layer_and_reads_the_config(store,
                                                                         busybox_layout):
    image = pull(f"oci:{busybox_layout}:2", store=store)
    lower, upper = image.layer_dirs()
    assert os.path.isfile(os.path.join(lower, "bin", "busybox"))
    assert os.readlink(os.path.join(lower, "bin", "sh")) == "/bin/busybox"
    assert open(os.path.join(upper, "etc", "second")).read() == "second layer\n"
    assert image.config.cmd == ("/bin/sh",)
    assert image.config.env == ("PATH=/usr/bin:/bin",)
    assert image.config.diff_ids == tuple(layer.diff_id for layer in image.record.layers)
    assert image.name == f"oci:{busybox_layout}:2"


def test_a_second_pull_fetches_nothing_and_layers_are_shared_by_diff_id(store, busybox_layout):
    pull(f"oci:{busybox_layout}:1", store=store)
    steps = []
    image = pull(f"oci:{busybox_layout}:2", store=store, progress=steps.append)
    base = image.record.layers[0].digest
    assert {p.step for p in steps if p.digest == base} == {"exists"}
    assert {p.step for p in steps if p.digest != base} == {"download", "unpack"}
    again = []
    pull(f"oci:{busybox_layout}:2", store=store, progress=again.append)
    assert {p.step for p in again} == {"exists"}


def test_progress_reports_bytes_done_of_the_total_per_layer(store, python_layout):
    reports = []
    image = pull(f"oci:{python_layout}:3.11", store=store, progress=reports.append)
    for layer in image.record.layers:
        downloads = [p for p in reports if p.digest == layer.digest and p.step == "download"]
        assert downloads[-1].done == downloads[-1].total == layer.size
        assert [p.done for p in downloads] == sorted(p.done for p in downloads)
        assert [p for p in reports if p.digest == layer.digest and p.step == "unpack"][-1] \
            .finished


def test_a_multi_platform_index_gives_this_machines_image_unless_told_otherwise(tmp_path,
                                                                              store):
    layout = str(tmp_path / "multi")
    builders.write_layout(layout, "m", [builders.busybox_layer()], architecture="amd64",
                          index_of=[("arm64", "v8"), ("amd64", None), ("ppc64le", None)])
    assert pull(f"oci:{layout}:m", store=store).config.architecture == "amd64"
    other = pull(f"oci:{layout}:m", store=store, platform="linux/arm64")
    assert other.config.architecture == "arm64"
    assert any("built for linux/arm64" in note for note in other.notes)
    with pytest.raises(ImageError, match=r"has no image for linux/s390x: it offers "
                       r"linux/amd64, linux/arm64/v8, linux/ppc64le$"):
        pull(f"oci:{layout}:m", store=store, platform="linux/s390x")


def test_a_registrys_multi_platform_index_gives_this_machines_image(tmp_path, store,
                                                                   loaded_registry):
    layout = str(tmp_path / "multi")
    builders.write_layout(layout, "m", [builders.busybox_layer()], architecture="amd64",
                          index_of=[("arm64", "v8"), ("amd64", None)])
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:m",
           f"docker://{loaded_registry.host}/test/multi:m")
    image = pull(f"{loaded_registry.host}/test/multi:m", store=store)
    assert image.config.architecture == "amd64"


def test_a_layout_without_the_tag_names_the_tags_it_has(store, busybox_layout):
    with pytest.raises(ImageError, match=r"has no image tagged 'nope': it has '1', '2'$"):
        pull(f"oci:{busybox_layout}:nope", store=store)
    with pytest.raises(ImageError, match=r"holds 2 images, so a tag is needed"):
        pull(f"oci:{busybox_layout}", store=store)


def test_plain_http_is_for_loopback_registries_only_as_docker_does():
    for host in ("127.0.0.1:5000", "127.8.9.10", "localhost:5000", "[::1]:5000", "localhost"):
        assert is_loopback(host), host
        assert RegistryClient(parse_registry(f"{host}/x")).scheme == "http"
    for host in ("docker.io", "ghcr.io", "10.0.0.1:5000", "192.168.1.2", "example.com:443"):
        assert not is_loopback(host), host
        assert RegistryClient(parse_registry(f"{host}/x")).scheme == "https"


def test_a_pull_from_a_registry_gets_the_same_layers_as_the_layout(store, loaded_registry,
                                                                  busybox_layout, tmp_path):
    from_layout = pull(f"oci:{busybox_layout}:2", store=str(tmp_path / "other"))
    image = pull(f"{loaded_registry.host}/test/busybox:2", store=store)
    assert [layer.diff_id for layer in image.record.layers] == \
        [layer.diff_id for layer in from_layout.record.layers]
    assert layer_files(image) == layer_files(from_layout)
    assert image.name == f"{loaded_registry.host}/test/busybox:2"
    by_digest = pull(f"docker://{loaded_registry.host}/test/busybox@{image.digest}",
                     store=store)
    assert by_digest.digest == image.digest


def test_a_tag_the_registry_lacks_is_one_sentence(store, loaded_registry):
    with pytest.raises(ImageError) as caught:
        pull(f"{loaded_registry.host}/test/busybox:missing", store=store)
    assert str(caught.value) == (
        "the manifest of test/busybox:missing found nothing: "
        f"{loaded_registry.host}/test/busybox:missing does not exist in the registry "
        f"{loaded_registry.host} (404: MANIFEST_UNKNOWN manifest unknown)")


def test_a_registry_that_answers_5xx_or_nothing_is_one_sentence(store, front):
    front.rules.status = 503
    with pytest.raises(ImageError, match=r"^the registry 127.0.0.1:\d+ failed while answering "
                       r"the manifest of test/busybox:1 \(503 Service Unavailable\): try "
                       r"again later$"):
        pull(f"{front.host}/test/busybox:1", store=store)
    port = builders_free_port()
    with pytest.raises(ImageError, match=rf"^cannot reach the registry 127.0.0.1:{port} for "
                       r"the manifest of test/busybox:1: .*refused"):
        pull(f"127.0.0.1:{port}/test/busybox:1", store=store)


def builders_free_port() -> int:
    from tests.images.registry_server import free_port

    return free_port()


def test_the_bearer_token_flow_of_docker_hub_ghcr_and_quay(store, front):
    front.rules.token = "t0ken-" + str(os.getpid())
    image = pull(f"{front.host}/test/busybox:1", store=store)
    assert image.layer_dirs()
    asked = front.rules.token_requests
    assert asked[0]["service"] == ["nsmagic-test"]
    assert asked[0]["scope"] == ["repository:test/busybox:pull"]
    authorized = [h.get("Authorization") for _, path, h in front.rules.seen if "/blobs/" in path]
    assert authorized and set(authorized) == {f"Bearer {front.rules.token}"}


def test_a_corrupted_blob_is_discarded_with_one_sentence_and_a_clean_pull_then_works(
        store, front, loaded_registry):
    clean = pull(f"{loaded_registry.host}/test/busybox:1", store=str(store.root) + "-ref")
    layer = clean.record.layers[0].digest
    front.rules.corrupt.add(layer)
    with pytest.raises(DigestMismatch) as caught:
        pull(f"{front.host}/test/busybox:1", store=store)
    message = str(caught.value)
    assert message.startswith(f"the layer {layer} of {front.host}/test/busybox:1 arrived with "
                              "the digest sha256:")
    assert message.endswith("as its manifest says: the download was discarded")
    assert not store.has_blob(layer)
    assert os.listdir(store.path("tmp")) == []
    assert images(store) == []
    front.rules.corrupt.clear()
    assert pull(f"{front.host}/test/busybox:1", store=store).layer_dirs()


def test_a_download_cut_off_half_way_resumes_with_a_range_request(store, front,
                                                                  loaded_registry):
    layer = pull(f"{loaded_registry.host}/test/busybox:1",
                 store=str(store.root) + "-ref").record.layers[0]
    front.rules.cut_after[layer.digest] = layer.size // 2
    image = pull(f"{front.host}/test/busybox:1", store=store)
    assert image.record.layers[0].digest == layer.digest
    ranges = [h.get("Range") for method, path, h in front.rules.seen
              if method == "GET" and path.endswith(layer.digest)]
    assert ranges[0] is None and ranges[1].startswith("bytes=")
    # From what had arrived (whole 64 KiB reads of it), not from the start again.
    assert 0 < int(ranges[1][len("bytes="):-1]) <= layer.size // 2


def test_a_registry_that_ignores_range_is_downloaded_again_from_the_start(store, front,
                                                                         loaded_registry):
    layer = pull(f"{loaded_registry.host}/test/busybox:1",
                 store=str(store.root) + "-ref").record.layers[0]
    front.rules.cut_after[layer.digest] = layer.size // 3
    front.rules.ignore_range = True
    assert pull(f"{front.host}/test/busybox:1", store=store).record.layers[0].digest == \
        layer.digest


def test_a_pull_killed_half_way_leaves_nothing_trusted_and_the_next_pull_resumes(
        store, front, loaded_registry):
    front.rules.delay_per_chunk = 0.05  # about 1.3 MB/s: the kill lands mid-download
    child = subprocess.Popen([sys.executable, "-c", CHILD, f"{front.host}/test/busybox:1",
                              store.root], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        partial = lambda: [n for n in os.listdir(store.path("tmp"))  # noqa: E731
                           if n.endswith(".partial") and os.path.getsize(store.path("tmp", n))]
        assert wait_until(lambda: os.path.isdir(store.path("tmp")) and partial(), 20)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
        child.stdout.close()
        child.stderr.close()
    assert images(store) == [] and os.listdir(store.path("layers", "sha256")) == []
    front.rules.delay_per_chunk = 0
    front.rules.seen.clear()
    image = pull(f"{front.host}/test/busybox:1", store=store)
    assert image.layer_dirs()
    ranges = [h.get("Range") for method, path, h in front.rules.seen
              if method == "GET" and path.endswith(image.record.layers[0].digest)]
    assert ranges and ranges[0].startswith("bytes=") and ranges[0] != "bytes=0-"


def test_two_processes_pulling_the_same_image_at_once_both_succeed(store, front):
    front.rules.delay_per_chunk = 0.01
    children = [subprocess.Popen([sys.executable, "-c", CHILD, f"{front.host}/test/busybox:2",
                                  store.root], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for _ in range(2)]
    outcomes = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0], outcomes
    assert [out for out, _ in outcomes] == ["pulled\n", "pulled\n"]
    (info,) = images(store)
    assert len(info.layers) == 2
    blob_gets = [path for method, path, _ in front.rules.seen
                 if method == "GET" and "/blobs/" in path]
    # The second process waited on the first one's lock instead of downloading again.
    assert len(blob_gets) == len(set(blob_gets))
