"""References are read as Docker and skopeo users write them; anything else gets one sentence."""

from __future__ import annotations

import pytest

from nsmagic.errors import SpecError
from nsmagic.images.reference import (
    ArchiveReference,
    LayoutReference,
    RegistryReference,
    parse,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, registry, repository, tag, digest", [
    ("alpine", "docker.io", "library/alpine", "latest", None),
    ("alpine:3.20", "docker.io", "library/alpine", "3.20", None),
    ("jupyter/base-notebook", "docker.io", "jupyter/base-notebook", "latest", None),
    ("docker.io/library/alpine:3.20", "docker.io", "library/alpine", "3.20", None),
    ("index.docker.io/library/alpine", "docker.io", "library/alpine", "latest", None),
    ("ghcr.io/owner/tool:v1.2", "ghcr.io", "owner/tool", "v1.2", None),
    ("localhost/img", "localhost", "img", "latest", None),
    ("localhost:5000/team/img:dev", "localhost:5000", "team/img", "dev", None),
    ("127.0.0.1:5000/img", "127.0.0.1:5000", "img", "latest", None),
    ("[::1]:5000/img:1", "[::1]:5000", "img", "1", None),
    (f"alpine@{DIGEST}", "docker.io", "library/alpine", None, DIGEST),
    (f"quay.io/a/b:1@{DIGEST}", "quay.io", "a/b", "1", DIGEST),
    ("docker://alpine:3.20", "docker.io", "library/alpine", "3.20", None),
    ("docker://localhost:5000/x", "localhost:5000", "x", "latest", None),
])
def test_registry_references_follow_dockers_conventions(text, registry, repository, tag,
                                                         digest):
    reference = parse(text)
    assert isinstance(reference, RegistryReference)
    assert (reference.registry, reference.repository, reference.tag, reference.digest) == \
        (registry, repository, tag, digest)


def test_docker_hub_names_print_in_full_and_in_dockers_short_form():
    reference = parse("alpine:3.20")
    assert str(reference) == "docker.io/library/alpine:3.20"
    assert reference.familiar == "alpine:3.20"
    assert reference.api_host == "registry-1.docker.io"
    assert parse("localhost:5000/x:1").familiar == "localhost:5000/x:1"


def test_oci_layouts_name_a_directory_and_an_optional_tag(tmp_path):
    assert parse(f"oci:{tmp_path}/layout:v1") == LayoutReference(f"{tmp_path}/layout", "v1")
    assert parse(f"oci:{tmp_path}/layout") == LayoutReference(f"{tmp_path}/layout", None)


def test_a_relative_layout_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse("oci:out:1").path == str(tmp_path / "out")


def test_docker_archives_name_a_file_and_an_optional_image_name(tmp_path):
    reference = parse(f"docker-archive:{tmp_path}/a.tar:busybox:1")
    assert isinstance(reference, ArchiveReference)
    assert reference.path == f"{tmp_path}/a.tar"
    assert str(reference.name) == "docker.io/library/busybox:1"
    assert parse(f"docker-archive:{tmp_path}/a.tar").name is None


@pytest.mark.parametrize("text, words", [
    ("oci-archive:/tmp/x.tar", "unknown transport 'oci-archive'"),
    ("containers-storage:alpine", "unknown transport 'containers-storage'"),
    ("https://example.com/alpine", "unknown transport 'https'"),
    ("oic:/srv/layout", "unknown transport 'oic'"),
    ("Alpine", "is not an image reference"),
    ("alpine:", "the tag of image reference"),
    ("alpine:-bad", "the tag of image reference"),
    ("alpine@sha512:abc", "the digest of image reference"),
    ("a//b", "is not an image reference"),
    ("", "an image reference is needed"),
    ("oci:", "names no path"),
])
def test_bad_references_get_one_sentence_naming_them_and_what_is_accepted(text, words):
    with pytest.raises(SpecError) as caught:
        parse(text)
    message = str(caught.value)
    assert words in message
    assert message.count(". ") == 0 and "\n" not in message
    if text:
        assert repr(text.strip()) in message or "names no path" in message
