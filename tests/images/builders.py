"""Test images built here from Debian's own files, written as OCI layouts by hand.

The layouts are written by this module's few lines, independently of nsmagic.images, so that
a test of nsmagic reads what another writer made (skopeo and umoci check the same layouts).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
EPOCH = 1_700_000_000  # every entry's time: the same tar, byte for byte, at every build
PYTHON_PACKAGES_BASE = ("libc6", "libgcc-s1", "zlib1g", "libexpat1", "libssl3")
PYTHON_PACKAGES_TOP = ("libpython3.11-minimal", "python3.11-minimal")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Entry:
    """One tar entry: kind is file, dir, symlink, hardlink, chr, fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    device: tuple[int, int] = (0, 0)
    xattrs: dict[str, str] = field(default_factory=dict)


def tar_of(entries: list[Entry]) -> bytes:
    """An uncompressed layer tar of exactly these entries, in this order."""
    buffer = io.BytesIO()
    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE,
             "blk": tarfile.BLKTYPE}
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = kinds[entry.kind]
            info.mode = entry.mode
            info.uid, info.gid = entry.uid, entry.gid
            info.mtime = EPOCH
            info.linkname = entry.target
            info.devmajor, info.devminor = entry.device
            if entry.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in entry.xattrs.items()}
            info.size = len(entry.data) if entry.kind == "file" else 0
            tar.addfile(info, io.BytesIO(entry.data) if entry.kind == "file" else None)
    return buffer.getvalue()


def tar_of_directory(root: str) -> bytes:
    """A layer tar of a directory's tree, owned by root, sorted, at one time."""
    entries = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories.sort()
        relative = os.path.relpath(directory, root)
        if relative != ".":
            entries.append(Entry(relative, "dir", mode=0o755))
        for name in sorted(names + [d for d in subdirectories
                                    if os.path.islink(os.path.join(directory, d))]):
            path = os.path.join(directory, name)
            member = os.path.normpath(os.path.join(relative, name))
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                entries.append(Entry(member, "symlink", target=os.readlink(path), mode=0o777))
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as handle:
                    entries.append(Entry(member, "file", handle.read(),
                                         mode=stat.S_IMODE(info.st_mode)))
    return tar_of(entries)


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def write_layout(path: str, tag: str, layers: list[bytes], *, env: list[str] | None = None,
                 cmd: list[str] | None = None, architecture: str = "amd64",
                 extra_config: dict | None = None, compress: bool = True,
                 index_of: list[tuple[str, str]] | None = None,
                 diff_ids: list[str] | None = None, blobs_as_is: bool = False) -> str:
    """An OCI layout at path (added to what is there) holding one image of these
    uncompressed layer tars; index_of=[(arch, variant)...] wraps it in a multi-platform
    index whose other entries point at copies with other architectures; diff_ids overrides
    the config's (to make a lying image), blobs_as_is stores the layers' bytes unchanged
    under a gzip media type. The manifest digest."""
    blobs = os.path.join(path, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data: bytes) -> str:
        digest = sha256(data)
        with open(os.path.join(blobs, digest[7:]), "wb") as handle:
            handle.write(data)
        return digest

    def image(arch: str) -> tuple[str, int]:
        config = {"architecture": arch, "os": "linux",
                  "config": {"Env": env or ["PATH=/usr/bin:/bin"], "Cmd": cmd or ["/bin/sh"],
                             **(extra_config or {})},
                  "rootfs": {"type": "layers",
                             "diff_ids": diff_ids or [sha256(t) for t in layers]}}
        config_bytes = json.dumps(config).encode()
        layer_descriptors = []
        for tar in layers:
            blob = gzipped(tar) if compress and not blobs_as_is else tar
            layer_descriptors.append({
                "mediaType": OCI_LAYER_GZIP if compress else OCI_LAYER_GZIP[:-5],
                "digest": put(blob), "size": len(blob)})
        document = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": OCI_CONFIG, "digest": put(config_bytes),
                                          "size": len(config_bytes)},
                               "layers": layer_descriptors}).encode()
        return put(document), len(document)

    digest, size = image(architecture)
    top = {"mediaType": OCI_MANIFEST, "digest": digest, "size": size}
    if index_of:
        entries = []
        for arch, variant in index_of:
            entry_digest, entry_size = (digest, size) if arch == architecture else image(arch)
            platform = {"architecture": arch, "os": "linux"}
            if variant:
                platform["variant"] = variant
            entries.append({"mediaType": OCI_MANIFEST, "digest": entry_digest,
                            "size": entry_size, "platform": platform})
        index_bytes = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                  "manifests": entries}).encode()
        top = {"mediaType": OCI_INDEX, "digest": put(index_bytes), "size": len(index_bytes)}
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index_path = os.path.join(path, "index.json")
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as handle:
            index = json.load(handle)
    index["manifests"] = [m for m in index["manifests"]
                          if m.get("annotations", {}).get("org.opencontainers.image.ref.name")
                          != tag] + [top]
    with open(index_path, "w") as handle:
        json.dump(index, handle)
    with open(os.path.join(path, "oci-layout"), "w") as handle:
        json.dump({"imageLayoutVersion": "1.0.0"}, handle)
    return digest


def busybox_layer() -> bytes:
    """/bin/busybox from Debian's busybox-static, its applets as links, a few directories."""
    entries = [Entry(d, "dir", mode=0o755) for d in ("bin", "etc", "sbin", "usr", "usr/bin",
                                                     "usr/sbin")]
    entries += [Entry("tmp", "dir", mode=0o1777), Entry("root", "dir", mode=0o700)]
    with open("/bin/busybox", "rb") as handle:
        entries.append(Entry("bin/busybox", "file", handle.read(), mode=0o755))
    applets = subprocess.run(["/bin/busybox", "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in sorted(set(applets)):
        if applet != "bin/busybox":
            entries.append(Entry(applet, "symlink", target="/bin/busybox", mode=0o777))
    entries.append(Entry("etc/passwd", "file", b"root:x:0:0:root:/root:/bin/sh\n"))
    entries.append(Entry("etc/hello", "file", b"hello from busybox\n"))
    return tar_of(entries)


def cache_dir() -> str:
    """NSMAGIC_CACHE or ~/.cache/nsmagic: images kept between test runs."""
    base = os.environ.get("NSMAGIC_CACHE") or os.path.expanduser("~/.cache/nsmagic")
    os.makedirs(base, exist_ok=True)
    return base


def _deb_tree(packages: tuple[str, ...], work: str) -> str:
    debs = os.path.join(work, "debs")
    root = os.path.join(work, "root")
    os.makedirs(debs)
    os.makedirs(root)
    subprocess.run(["apt-get", "download", "-q", *packages], cwd=debs, check=True,
                   capture_output=True)
    for deb in sorted(os.listdir(debs)):
        subprocess.run(["dpkg-deb", "-x", os.path.join(debs, deb), root], check=True)
    # Documentation is no part of what the image runs.
    shutil.rmtree(os.path.join(root, "usr", "share", "doc"), ignore_errors=True)
    shutil.rmtree(os.path.join(root, "usr", "share", "man"), ignore_errors=True)
    return root


def python_layout() -> str:
    """A Debian python3.11 image (two layers: the C libraries, then Python), built once from
    apt-get download + dpkg-deb -x and kept in the cache; its OCI layout's path (tag 3.11)."""
    final = os.path.join(cache_dir(), "python-image-layout")
    if os.path.exists(os.path.join(final, "index.json")):
        return final
    work = tempfile.mkdtemp(dir=cache_dir(), prefix=".python-build-")
    try:
        base = tar_of_directory(_deb_tree(PYTHON_PACKAGES_BASE, os.path.join(work, "base")))
        top_root = _deb_tree(PYTHON_PACKAGES_TOP, os.path.join(work, "top"))
        os.symlink("python3.11", os.path.join(top_root, "usr", "bin", "python3"))
        top = tar_of_directory(top_root)
        layout = os.path.join(work, "layout")
        write_layout(layout, "3.11", [base, top], cmd=["/usr/bin/python3"],
                     env=["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"])
        os.rename(layout, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
