"""nsmagic and the ecosystem's own tools read each other's images: skopeo writes, nsmagic
pulls; nsmagic pushes and exports, skopeo inspects, umoci validates and unpacks, podman runs."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tarfile

import pytest

from nsmagic.images import export, pull, push
from nsmagic.images.files import remove_any
from tests.conftest import IS_ROOT
from tests.images.conftest import skopeo, tool


def files_of(image) -> list[list[str]]:
    return [sorted(os.listdir(d)) for d in image.layer_dirs()]


def diff_ids(image) -> list[str]:
    return [layer.diff_id for layer in image.record.layers]


@pytest.fixture(scope="module")
def reference_image(tmp_path_factory, busybox_layout):
    """busybox:2 pulled from the layout our builder wrote: what every other route must give."""
    directory = str(tmp_path_factory.mktemp("reference"))
    yield pull(f"oci:{busybox_layout}:2", store=directory)
    remove_any(directory)


@tool("skopeo")
@pytest.mark.parametrize("destination", ["docker-archive", "oci", "registry-v2s2"])
def test_images_skopeo_writes_are_pulled_with_the_same_layers(tmp_path, store, busybox_layout,
                                                             loaded_registry, reference_image,
                                                             destination):
    if destination == "docker-archive":
        target = f"docker-archive:{tmp_path}/busybox.tar:test/busybox:2"
        skopeo("copy", f"oci:{busybox_layout}:2", target)
        source = f"docker-archive:{tmp_path}/busybox.tar"
    elif destination == "oci":
        source = target = f"oci:{tmp_path}/by-skopeo:two"
        skopeo("copy", f"oci:{busybox_layout}:2", target)
    else:  # Docker's manifest media types, as Docker Hub mostly serves
        source = f"{loaded_registry.host}/test/busybox:v2s2"
        skopeo("copy", "--format", "v2s2", "--dest-tls-verify=false", f"oci:{busybox_layout}:2",
               f"docker://{source}")
    image = pull(source, store=store)
    assert diff_ids(image) == diff_ids(reference_image)
    assert files_of(image) == files_of(reference_image)
    assert image.config.cmd == reference_image.config.cmd


@tool("skopeo")
def test_a_pushed_image_is_what_skopeo_inspects_in_the_registry(store, loaded_registry,
                                                                reference_image):
    image = pull(reference_image.name, store=store)
    destination = f"{loaded_registry.host}/pushed/busybox:7"
    digest = push(image.name, destination, store=store)
    inspected = json.loads(skopeo("inspect", "--tls-verify=false",
                                  f"docker://{destination}").stdout)
    assert inspected["Digest"] == digest == image.digest
    assert inspected["Layers"] == [layer.digest for layer in image.record.layers]
    # Pushing again sends no blob: the registry has them all.
    reports = []
    push(image.name, destination, reports.append, store=store)
    assert {p.step for p in reports} == {"upload"} and all(p.finished for p in reports)


@tool("skopeo")
def test_a_push_through_the_bearer_flow_asks_for_a_push_scope(store, front, reference_image):
    image = pull(reference_image.name, store=store)
    front.rules.token = "push-token"
    destination = f"{front.host}/pushed/through-front:1"
    push(image.name, destination, store=store)
    assert front.rules.token_requests[0]["scope"][0] == "repository:pushed/through-front:pull,push"
    front.rules.token = None
    inspected = json.loads(skopeo("inspect", "--tls-verify=false",
                                  f"docker://{destination}").stdout)
    assert inspected["Digest"] == image.digest


@tool("umoci")
@tool("skopeo")
def test_an_exported_oci_layout_is_valid_for_umoci_and_skopeo(tmp_path, store,
                                                              reference_image):
    image = pull(reference_image.name, store=store)
    layout = tmp_path / "exported"
    export(image.name, f"oci:{layout}:v2", store=store)
    export(image.name, f"oci:{layout}:again", store=store)  # a second tag in the same layout
    stat = subprocess.run(["umoci", "stat", "--json", "--image", f"{layout}:v2"],
                          capture_output=True, text=True, timeout=60)
    assert stat.returncode == 0, stat.stderr
    assert len(json.loads(stat.stdout)["history"] or []) >= 0
    bundle = tmp_path / "bundle"
    unpack = ["umoci", "unpack"] + ([] if IS_ROOT else ["--rootless"])
    unpacked = subprocess.run([*unpack, "--image", f"{layout}:again", str(bundle)],
                              capture_output=True, text=True, timeout=120)
    assert unpacked.returncode == 0, unpacked.stderr
    assert (bundle / "rootfs" / "etc" / "second").read_text() == "second layer\n"
    assert os.readlink(bundle / "rootfs" / "bin" / "sh") == "/bin/busybox"
    inspected = json.loads(skopeo("inspect", f"oci:{layout}:v2").stdout)
    assert inspected["Layers"] == [layer.digest for layer in image.record.layers]
    shutil.rmtree(bundle, ignore_errors=True)


@tool("skopeo")
def test_an_exported_docker_archive_is_read_by_skopeo_with_its_name(tmp_path, store,
                                                                    loaded_registry):
    image = pull(f"{loaded_registry.host}/test/busybox:2", store=store)
    archive = tmp_path / "busybox.tar"
    export(image.name, f"docker-archive:{archive}", store=store)
    inspected = json.loads(skopeo("inspect", f"docker-archive:{archive}").stdout)
    # docker-archive layers are uncompressed: their digests are the diff_ids.
    assert inspected["Layers"] == diff_ids(image)
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest[0]["RepoTags"] == [f"{loaded_registry.host}/test/busybox:2"]
    again = pull(f"docker-archive:{archive}", store=store)
    assert diff_ids(again) == diff_ids(image)


def podman(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """podman with a store of this test alone (removed after), cgroupfs (this host's cgroups
    are hybrid v1) and limits of open files and processes below this host's (podman's defaults
    are above them here, and runc may not raise a limit)."""
    files = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 4096)
    processes = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
    base = ["podman", "--root", str(tmp_path / "nsmagic-podman-root"), "--runroot",
            str(runroot(tmp_path)), "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
    if args and args[0] == "run":
        args = ("run", "--rm", "--network", "none", "--ulimit", f"nofile={files}:{files}",
                "--ulimit", f"nproc={processes}:{processes}", *args[1:])
    return subprocess.run([*base, *args], capture_output=True, text=True, timeout=300)


def runroot(tmp_path) -> str:
    """podman refuses a runroot longer than 50 characters: a short one named by the test's."""
    return f"/tmp/nsmagic-podman-{abs(hash(str(tmp_path))) % 10**8}"


@pytest.fixture
def podman_dir(tmp_path):
    yield tmp_path
    podman(tmp_path, "system", "reset", "--force")
    shutil.rmtree(tmp_path / "nsmagic-podman-root", ignore_errors=True)
    shutil.rmtree(runroot(tmp_path), ignore_errors=True)


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="podman runs rootful here")
@tool("podman")
def test_podman_runs_what_nsmagic_exported_as_a_layout_and_as_an_archive(podman_dir, store,
                                                                         python_layout,
                                                                         busybox_layout):
    python = pull(f"oci:{python_layout}:3.11", store=store)
    layout = podman_dir / "exported"
    export(python.name, f"oci:{layout}:3.11", store=store)
    ran = podman(podman_dir, "run", f"oci:{layout}:3.11", "/usr/bin/python3", "-c",
                 "import sys; print('python', sys.version_info[:2])")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "python (3, 11)"
    busybox = pull(f"oci:{busybox_layout}:2", store=store)
    archive = podman_dir / "busybox.tar"
    export(busybox.name, f"docker-archive:{archive}:localhost/nsmagic-test/busybox:2",
           store=store)
    loaded = podman(podman_dir, "load", "-i", str(archive))
    assert loaded.returncode == 0, loaded.stderr
    ran = podman(podman_dir, "run", "localhost/nsmagic-test/busybox:2", "cat",
                 "/etc/second", "/etc/hello")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "second layer\nhello from busybox\n"
