"""The container images of the baseline's programs, built here from Debian's packages into the
baseline's own image store and kept there: busybox (the guest's shell, from the very package
the guest's initramfs takes it from), and python and openssl on one Debian base layer."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nsmagic.errors import CapabilityError, SpecError
from nsmagic.images import api
from nsmagic.images.draft import Draft
from nsmagic.images.errors import ImageError
from nsmagic.images.layerwrite import Item, NewLayer, write_layer
from nsmagic.images.reference import RegistryReference, parse
from nsmagic.images.store import Store
from nsmagic.vm import debs
from nsmagic.vm.images import BUSYBOX_PACKAGE, cache_dir

REPOSITORY = "localhost/nsmagic-vm"
BUSYBOX_IMAGE = f"{REPOSITORY}/busybox:latest"
PYTHON_IMAGE = f"{REPOSITORY}/python:3.11"
OPENSSL_IMAGE = f"{REPOSITORY}/openssl:latest"
# What the base layer holds: the C libraries both programs on it link against.
BASE_PACKAGES = ("libc6", "libgcc-s1", "zlib1g", "libexpat1", "libssl3")
# The label that says which package versions an image holds: a new version rebuilds it.
PACKAGES_LABEL = "org.nsmagic.vm.packages"
# Every entry's time: the same packages give the same layer, byte for byte, at every build.
EPOCH = 1_700_000_000
# Documentation is no part of what an image runs; slim images leave it out too.
LEFT_OUT = ("usr/share/doc", "usr/share/man", "usr/share/lintian")
BUSYBOX_DIRS = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "proc": 0o755, "root": 0o700,
                "sbin": 0o755, "sys": 0o755, "tmp": 0o1777, "usr": 0o755, "usr/bin": 0o755,
                "usr/sbin": 0o755}  # fmt: skip


@dataclass(frozen=True)
class OnBase:
    """An image made of the base layer and one layer of its own packages."""

    name: str
    packages: tuple[str, ...]
    links: tuple[tuple[str, str], ...]  # (path, target) added to its layer
    cmd: tuple[str, ...]


ON_BASE = (
    # The standard library too (json, ...): nsmagic's Python cells run in it (--image).
    OnBase(PYTHON_IMAGE, ("libpython3.11-minimal", "python3.11-minimal", "libpython3.11-stdlib",
                          "libffi8"), (("usr/bin/python3", "python3.11"),), ("/usr/bin/python3",)),
    OnBase(OPENSSL_IMAGE, ("openssl",), (), ("/usr/bin/openssl", "version")),
)  # fmt: skip


def image_store(cache: Path | None = None) -> Store:
    """The baseline's own image store (under the VM cache): its images share only what they
    share with each other, so images() reports exactly the base they have in common."""
    return Store(str((Path(cache) if cache else cache_dir()) / "image-store")).open()


def _packages_text(found: dict[str, str]) -> str:
    return " ".join(f"{package}={version}" for package, version in sorted(found.items()))


def _current(store: Store, name: str, packages: str) -> api.Image | None:
    """The image of that name if it holds exactly these package versions, whole."""
    record = store.record(name)
    if record is None:
        return None
    if any(store.layer(layer.diff_id) is None or not store.has_blob(layer.digest)
           for layer in record.layers):
        return None
    image = api.Image(store, record)
    return image if image.config.labels.get(PACKAGES_LABEL) == packages else None


def _tree_items(root: Path, relative: str = "") -> Iterator[Item]:
    """Every entry of a tree, parents first, sorted, owned by root (as a package's are)."""
    with os.scandir(root / relative if relative else root) as found:
        entries = sorted(found, key=lambda e: e.name)
    for entry in entries:
        path = f"{relative}/{entry.name}" if relative else entry.name
        yield Item(path, source=entry.path, uid=0, gid=0)
        if entry.is_dir(follow_symlinks=False):
            yield from _tree_items(root, path)


def _settle(root: Path) -> None:
    """Leave out the documentation and give every entry one time (a reproducible layer)."""
    for part in LEFT_OUT:
        shutil.rmtree(root / part, ignore_errors=True)
    for directory, subdirectories, names in os.walk(root):
        for name in subdirectories + names:
            os.utime(os.path.join(directory, name), (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(root, (EPOCH, EPOCH))


def _layer(store: Store, root: Path, label: str) -> NewLayer:
    _settle(root)
    return write_layer(store, _tree_items(root), label)


def _unpacked(packages: dict[str, str], work: Path, cache: Path) -> Path:
    """The packages' files in one new tree under work (apt-get download, dpkg-deb -x)."""
    root = Path(tempfile.mkdtemp(dir=work))
    for package, version in sorted(packages.items()):
        debs.unpack(debs.download(package, version, cache / "debs"), root)
    return root


def _name(store: Store, draft: Draft, name: str, packages: str, cmd: tuple[str, ...]) -> api.Image:
    draft.settings.update(Env=["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"],
                          Cmd=list(cmd), Labels={PACKAGES_LABEL: packages})
    record = draft.write(store).record(name, f"nsmagic.vm: Debian packages {packages}")
    store.save(record)
    return api.Image(store, record)


def _busybox_tree(busybox: bytes, root: Path) -> None:
    for directory, mode in BUSYBOX_DIRS.items():
        (root / directory).mkdir(parents=True, exist_ok=True)
        os.chmod(root / directory, mode)  # mkdir's mode is cut by the umask
    binary = root / "bin" / "busybox"
    binary.write_bytes(busybox)
    binary.chmod(0o755)
    # The applets' names come from the binary itself: a static busybox runs anywhere.
    listed = debs.run_tool([str(binary), "--list-full"]).split()
    for applet in sorted(set(listed) - {"bin/busybox"}):
        (root / applet).parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/bin/busybox", root / applet)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")


def busybox_image(busybox_version: str, *, cache: Path | None = None) -> api.Image:
    """The shell program's image: busybox-static of that version (the guest's), its applets as
    links, a few directories; built once into the baseline's store, then found there."""
    cache = Path(cache) if cache else cache_dir()
    store = image_store(cache)
    packages = _packages_text({BUSYBOX_PACKAGE: busybox_version})
    found = _current(store, BUSYBOX_IMAGE, packages)
    if found is not None:
        return found
    with store.lock("nsmagic-vm-build"):
        found = _current(store, BUSYBOX_IMAGE, packages)
        if found is not None:
            return found
        deb = debs.download(BUSYBOX_PACKAGE, busybox_version, cache / "debs")
        busybox = debs.extract(deb, lambda path: path == "bin/busybox").get("bin/busybox")
        if not busybox:
            raise CapabilityError(f"{deb.name} holds no bin/busybox.")
        with store.using(), tempfile.TemporaryDirectory(dir=store.path("tmp")) as work:
            root = Path(work) / "root"
            _busybox_tree(busybox, root)
            draft = Draft.scratch()
            draft.add_layer(_layer(store, root, "the busybox layer"), f"packages {packages}")
            image = _name(store, draft, BUSYBOX_IMAGE, packages, ("/bin/sh",))
    api.prune(store)  # what an image of older packages alone needed
    return image


def _all_current(store: Store, wanted: list[tuple[OnBase, dict[str, str], str]]
                 ) -> list[api.Image]:
    found = [_current(store, spec.name, text) for spec, _, text in wanted]
    return [image for image in found if image is not None] if all(found) else []


def images_on_one_base(*, cache: Path | None = None) -> list[api.Image]:
    """Two images on one base layer (the C libraries): python and openssl, each with a layer of
    its own packages; built once into the baseline's store (the base written once), then found
    there."""
    cache = Path(cache) if cache else cache_dir()
    store = image_store(cache)
    memo = cache / "resolved.json"
    base = debs.versions(BASE_PACKAGES, memo)
    wanted = []
    for spec in ON_BASE:
        own = debs.versions(spec.packages, memo)
        wanted.append((spec, own, _packages_text({**base, **own})))
    found = _all_current(store, wanted)
    if found:
        return found
    with store.lock("nsmagic-vm-build"):
        found = _all_current(store, wanted)
        if found:  # another process built them while this one waited
            return found
        with store.using(), tempfile.TemporaryDirectory(dir=store.path("tmp")) as work:
            base_layer = _layer(store, _unpacked(base, Path(work), cache), "the base layer")
            images = []
            for spec, own, text in wanted:
                root = _unpacked(own, Path(work), cache)
                for path, target in spec.links:
                    os.symlink(target, root / path)
                draft = Draft.scratch()
                draft.add_layer(base_layer, f"packages {_packages_text(base)}")
                draft.add_layer(_layer(store, root, f"the layer of {spec.name}"),
                                f"packages {_packages_text(own)}")
                images.append(_name(store, draft, spec.name, text, spec.cmd))
    api.prune(store)
    return images



def named_image(ref: str, *, cache: Path | None = None) -> api.Image:
    """The image a user names (--image REF): from the default store, else from the baseline's;
    an oci: or docker-archive: file is brought into the baseline's store. Nothing is fetched
    from a registry: a baseline never reaches the network behind the user's back."""
    reference = parse(ref)
    for store in (None, image_store(cache)):
        try:
            return api.get(reference, store)
        except ImageError:
            continue
    if isinstance(reference, RegistryReference):
        raise SpecError(f"the image {ref} is not in the image store {Store().root}: pull it "
                        f"first (%container pull {ref}), then name it with --image")
    return api.pull(reference, store=image_store(cache))
