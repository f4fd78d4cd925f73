"""Finding 3 of issue 15: host devices. A host block device (a loop device over a scratch file,
made by the test) written from a container, by its path or through a node made with
CAP_MKNOD (in Docker's default set) in every writable place; /dev/kvm, /dev/console and
/dev/kmsg opened the same ways (opened only, never written)."""

from __future__ import annotations

import os
import subprocess

import pytest

from ..conftest import IS_ROOT, requires_root
from ..reference.runc import runc_available
from .harness import compare, in_nsmagic, in_runc, observe, refused, unique

# The positive control: the host's /dev, every capability and no device policy.
CONTROL = {"host_root": True, "privileged": True}
# Every place a container may write to: a node made there must not open.
PLACES = ["/tmp", "/dev", "/dev/shm", "/var/tmp", "/root", "/"]

OPEN_DEVICES = """
    import errno, json, os, stat
    DEVICES, MARK = DEVICE_LIST, MARK_BYTES
    seen = {}

    def name(error):
        return errno.errorcode.get(error.errno, str(error.errno))

    def use(path, kind):
        if kind == "b":  # a block device: write the mark at offset 0
            fd = os.open(path, os.O_RDWR)
            try:
                os.pwrite(fd, MARK, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            return "wrote"
        # a character device: open only (never written)
        flags = os.O_RDWR if path.endswith("kvm") else os.O_WRONLY
        os.close(os.open(path, flags | os.O_NOCTTY | os.O_NONBLOCK))
        return "opened"

    for path, kind, major, minor in DEVICES:
        try:
            seen[path] = use(path, kind)
        except OSError as error:
            seen[path] = name(error)
        for place in PLACES_LIST:
            node = f"{place.rstrip('/')}/nsmagic-sec-node-{major}-{minor}"
            mode = (stat.S_IFBLK if kind == "b" else stat.S_IFCHR) | 0o600
            try:
                os.mknod(node, mode, os.makedev(major, minor))
            except OSError as error:
                seen[node] = "mknod " + name(error)
                continue
            try:
                seen[node] = use(node, kind)
            except OSError as error:
                seen[node] = "open " + name(error)
            finally:
                try:
                    os.unlink(node)
                except OSError:
                    pass
    print(json.dumps({"reached": any(v in ("wrote", "opened") for v in seen.values()),
                      "tried": seen}))
"""


def probe(devices: list[tuple[str, str, int, int]], mark: bytes, places: list[str]) -> str:
    return (OPEN_DEVICES.replace("DEVICE_LIST", repr(devices))
            .replace("MARK_BYTES", repr(mark)).replace("PLACES_LIST", repr(places)))


@pytest.fixture
def loop_device(scratch):
    """A loop device over a 1 MiB scratch file: (its path, major, minor, the file)."""
    backing = os.path.join(scratch, "backing")
    with open(backing, "wb") as handle:
        handle.write(bytes(1 << 20))
    path = subprocess.run(["losetup", "--find", "--show", backing], check=True,
                          capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        rdev = os.stat(path).st_rdev
        yield path, os.major(rdev), os.minor(rdev), backing
    finally:
        subprocess.run(["losetup", "--detach", path], check=False, capture_output=True,
                       timeout=30)


def _written(backing: str, mark: bytes) -> bool:
    with open(backing, "rb") as handle:
        return handle.read(len(mark)) == mark


def _variants(scratch: str) -> list[tuple[str, dict, list[str]]]:
    volume = os.path.join(scratch, "volume")
    rootfs = os.path.join(scratch, "rootfs")
    for path in (volume, rootfs):
        os.mkdir(path)
        os.chmod(path, 0o755)
    return [("default", {}, PLACES), ("read-only", {"read_only": True}, PLACES),
            ("overlay", {"overlay": True}, PLACES),
            ("rootfs", {"rootfs": rootfs}, ["/tmp", "/dev", "/dev/shm", "/"]),
            ("volume", {"volumes": [f"{volume}:/vol"]}, ["/vol"])]


@pytest.mark.root
@requires_root
@pytest.mark.parametrize("variant", ["default", "read-only", "overlay", "rootfs", "volume"])
def test_3_a_host_block_device_cannot_be_written(loop_device, scratch, variant):
    path, major, minor, backing = loop_device
    name, options, places = next(v for v in _variants(scratch) if v[0] == variant)
    mark = unique("mark").encode()
    script = probe([(path, "b", major, minor)], mark, places)
    row = f"host loop device written ({name})"
    inside = in_nsmagic(script, **options)
    verdict = observe(3, row, "nsmagic", {**inside, "reached": inside["reached"]
                                          or _written(backing, mark)})
    if name == "default":
        control = in_nsmagic(script, **CONTROL)
        observe(3, row, "control", {**control, "reached": _written(backing, mark)})
        assert _written(backing, mark), control
        if runc_available():
            mark_runc = unique("mark").encode()
            reference = in_runc(probe([(path, "b", major, minor)], mark_runc, places))
            observe(3, row, "runc", {**reference, "reached": reference["reached"]
                                     or _written(backing, mark_runc)})
            assert not _written(backing, mark_runc), reference
            # The reference's own control: Docker's device cgroup is what refused it.
            relaxed = in_runc(probe([(path, "b", major, minor)], mark_runc, places),
                              relax=["devices"])
            assert _written(backing, mark_runc), relaxed
    assert not verdict["reached"], verdict


CHARACTER_DEVICES = [("/dev/kvm", "c", 10, 232), ("/dev/console", "c", 5, 1),
                     ("/dev/kmsg", "c", 1, 11)]


# On a volume (not nodev) a node made with CAP_MKNOD opens unless the device policy refuses
# it: the policy allows no console (a node for 5:1 would be the host's system console).
@pytest.mark.parametrize("variant", ["default", pytest.param("volume", marks=[
    pytest.mark.root, requires_root])])
def test_3_kvm_console_and_kmsg_do_not_open(scratch, variant):
    devices = [d for d in CHARACTER_DEVICES if os.path.exists(d[0])]
    if not devices:
        pytest.skip("the host has none of /dev/kvm, /dev/console, /dev/kmsg")
    options, places = {}, PLACES
    if variant == "volume":  # a bind of the host's file system: not nodev
        volume = os.path.join(scratch, "volume")
        os.mkdir(volume)
        options, places = {"volumes": [f"{volume}:/vol"]}, ["/vol"]
    # As nobody the host's nodes are root's (the control could not open them either).
    verdicts = compare(3, f"/dev/kvm, /dev/console, /dev/kmsg open, by path or mknod "
                       f"({variant})", probe(devices, b"", places), options=options,
                       control=CONTROL if IS_ROOT and variant == "default" else None,
                       runc={} if variant == "default" else None)
    if "runc" in verdicts:
        relaxed = in_runc(probe(devices, b"", PLACES), relax=["devices"])
        assert relaxed["reached"], relaxed  # Docker's device cgroup refused the rest
    refused(verdicts)
