"""A layer unpacks into its own directory: OCI whiteouts become overlayfs whiteouts, nothing
lands outside it, and an unprivileged user keeps its own ownership and skips device nodes."""

from __future__ import annotations

import io
import os
import stat
import subprocess

import pytest

from nsmagic.images.errors import ImageError
from nsmagic.images.store import opaque_attribute, privileged
from nsmagic.images.unpack import UnsafeLayer, unpack
from tests.conftest import IS_ROOT
from tests.images.builders import EPOCH, Entry, tar_of

PRIVILEGED = privileged()
OPAQUE = opaque_attribute(PRIVILEGED)


def unpack_entries(tmp_path, entries, name="layer"):
    dest = tmp_path / name
    dest.mkdir()
    report = unpack(io.BytesIO(tar_of(entries)), str(dest), privileged=PRIVILEGED,
                    opaque_xattr=OPAQUE, label="the layer under test")
    return dest, report


def test_a_whiteout_file_becomes_a_0_0_character_device(tmp_path):
    dest, _ = unpack_entries(tmp_path, [Entry("etc", "dir", mode=0o755),
                                        Entry("etc/.wh.motd", "file")])
    info = os.lstat(dest / "etc" / "motd")
    assert stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(0, 0)
    assert not os.path.lexists(dest / "etc" / ".wh.motd")


def test_an_opaque_marker_sets_overlays_opaque_attribute_for_this_kind_of_store(tmp_path):
    dest, _ = unpack_entries(tmp_path, [Entry("var", "dir", mode=0o755),
                                        Entry("var/.wh..wh..opq", "file"),
                                        Entry("var/kept", "file", b"new\n")])
    # Real root's overlay reads trusted.*; an overlay in a user namespace reads user.*.
    assert OPAQUE == ("trusted.overlay.opaque" if PRIVILEGED else "user.overlay.opaque")
    assert os.getxattr(dest / "var", OPAQUE) == b"y"
    assert sorted(os.listdir(dest / "var")) == ["kept"]


def test_the_stacked_layers_show_deletions_and_opaque_directories_through_real_overlayfs(
        tmp_path):
    lower, _ = unpack_entries(tmp_path, [
        Entry("etc", "dir", mode=0o755), Entry("etc/motd", "file", b"old\n"),
        Entry("etc/keep", "file", b"kept\n"), Entry("var", "dir", mode=0o755),
        Entry("var/old", "file", b"hidden by opaque\n")], "lower")
    upper, _ = unpack_entries(tmp_path, [
        Entry("etc", "dir", mode=0o755), Entry("etc/.wh.motd", "file"),
        Entry("var", "dir", mode=0o755), Entry("var/.wh..wh..opq", "file"),
        Entry("var/new", "file", b"new\n")], "upper")
    merged = tmp_path / "merged"
    merged.mkdir()
    options = f"lowerdir={upper}:{lower}" + ("" if PRIVILEGED else ",userxattr")
    # In a mount namespace of its own, which ends with the command: nothing stays mounted.
    namespace = ["unshare", "--mount"] if PRIVILEGED else ["unshare", "-Ur", "--mount"]
    shown = subprocess.run(
        [*namespace, "sh", "-c", f"mount -t overlay -o {options} overlay {merged} && "
         f"ls {merged}/etc {merged}/var"], capture_output=True, text=True)
    if shown.returncode != 0 and "permission denied" in shown.stderr.lower():
        pytest.skip(f"this kernel refuses overlayfs here: {shown.stderr.strip()}")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == [f"{merged}/etc:", "keep", f"{merged}/var:", "new"]


@pytest.mark.parametrize("entries, words", [
    ([Entry("../evil", "file")], "climbs out of the layer"),
    ([Entry("a/../../evil", "file")], "climbs out of the layer"),
    ([Entry("link", "symlink", target="/"), Entry("link/evil", "file")],
     "goes through the symbolic link 'link'"),
    ([Entry("up", "symlink", target=".."), Entry("up/evil", "file")],
     "goes through the symbolic link 'up'"),
    ([Entry("d", "dir"), Entry("d/l", "symlink", target="/tmp"), Entry("d/l/x/evil", "file")],
     "goes through the symbolic link 'd/l'"),
    ([Entry("hard", "hardlink", target="../outside")], "climbs out of the layer"),
    ([Entry("hard", "hardlink", target="/etc/passwd")], "not a file of this layer"),
    ([Entry("l", "symlink", target="/etc"), Entry("hard", "hardlink", target="l/passwd")],
     "goes through the symbolic link 'l'"),
    ([Entry("d", "dir"), Entry("d/.wh..", "file")], "is a whiteout of no name"),
])
def test_entries_that_would_leave_the_layer_make_it_unsafe(tmp_path, entries, words):
    outside = tmp_path / "outside"
    outside.write_text("untouched\n")
    with pytest.raises(UnsafeLayer) as caught:
        unpack_entries(tmp_path, entries)
    assert words in str(caught.value)
    assert str(caught.value).startswith("the layer under test is not a safe image layer:")
    assert sorted(os.listdir(tmp_path)) == ["layer", "outside"]
    assert outside.read_text() == "untouched\n"
    assert not os.path.exists("/evil") and not os.path.exists("/tmp/x/evil")


def test_absolute_names_land_inside_the_layer_as_tar_and_docker_have_it(tmp_path):
    dest, _ = unpack_entries(tmp_path, [Entry("/abs/file", "file", b"inside\n")])
    assert (dest / "abs" / "file").read_text() == "inside\n"


def test_hard_links_within_the_layer_share_one_inode(tmp_path):
    dest, _ = unpack_entries(tmp_path, [Entry("bin", "dir", mode=0o755),
                                        Entry("bin/a", "file", b"x", mode=0o755),
                                        Entry("bin/b", "hardlink", target="bin/a")])
    assert os.stat(dest / "bin" / "a").st_ino == os.stat(dest / "bin" / "b").st_ino


def test_modes_times_and_symlinks_are_kept_and_read_only_directories_are_applied_last(tmp_path):
    dest, _ = unpack_entries(tmp_path, [
        Entry("ro", "dir", mode=0o555), Entry("ro/file", "file", b"data", mode=0o444),
        Entry("tmp", "dir", mode=0o1777), Entry("su", "file", b"#!", mode=0o4755),
        Entry("ro/link", "symlink", target="file")])
    assert stat.S_IMODE(os.lstat(dest / "ro").st_mode) == 0o555
    assert stat.S_IMODE(os.lstat(dest / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.lstat(dest / "su").st_mode) == 0o4755
    assert os.readlink(dest / "ro" / "link") == "file"
    assert int(os.lstat(dest / "ro" / "file").st_mtime) == EPOCH
    assert int(os.lstat(dest / "ro").st_mtime) == EPOCH
    from nsmagic.images.files import remove_tree

    remove_tree(str(dest))  # read-only directories do not stop a removal
    assert not dest.exists()


def test_a_later_entry_replaces_an_earlier_one_and_directories_merge(tmp_path):
    dest, _ = unpack_entries(tmp_path, [
        Entry("x", "file", b"first"), Entry("x", "dir", mode=0o755),
        Entry("x/inner", "file", b"in"), Entry("x", "dir", mode=0o700),
        Entry("y", "dir"), Entry("y/z", "file"), Entry("y", "symlink", target="x")])
    assert (dest / "x" / "inner").read_text() == "in"
    assert stat.S_IMODE(os.lstat(dest / "x").st_mode) == 0o700
    assert os.readlink(dest / "y") == "x"


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_root_keeps_the_layers_owners_devices_and_attributes(tmp_path):
    dest, report = unpack_entries(tmp_path, [
        Entry("dev", "dir", mode=0o755), Entry("dev/null", "chr", mode=0o666, device=(1, 3)),
        Entry("home", "dir", mode=0o755, uid=1000, gid=1000),
        Entry("home/f", "file", b"x", uid=1000, gid=100, xattrs={"user.note": "kept"})])
    assert os.lstat(dest / "dev" / "null").st_rdev == os.makedev(1, 3)
    assert (os.lstat(dest / "home").st_uid, os.lstat(dest / "home" / "f").st_gid) == (1000, 100)
    assert os.getxattr(dest / "home" / "f", "user.note") == b"kept"
    assert report.notes() == []


@pytest.mark.skipif(IS_ROOT, reason="the unprivileged path (runs in the pass as nobody)")
def test_an_unprivileged_user_keeps_its_own_ownership_and_skips_device_nodes_saying_so(tmp_path):
    dest, report = unpack_entries(tmp_path, [
        Entry("dev", "dir", mode=0o755), Entry("dev/null", "chr", mode=0o666, device=(1, 3)),
        Entry("dev/fifo", "fifo", mode=0o600),
        Entry("home", "dir", mode=0o755, uid=1000, gid=1000),
        Entry("home/f", "file", b"x", uid=1000, xattrs={"user.note": "kept",
                                                        "security.capability": "x"})])
    assert not os.path.lexists(dest / "dev" / "null")
    assert stat.S_ISFIFO(os.lstat(dest / "dev" / "fifo").st_mode)
    assert os.lstat(dest / "home" / "f").st_uid == os.geteuid()
    assert os.getxattr(dest / "home" / "f", "user.note") == b"kept"
    notes = report.notes()
    assert notes[0].startswith("1 device node(s) skipped (/dev/null): only root can create")
    assert "security.capability" in notes[1]


def test_a_layer_cannot_set_overlays_own_attributes(tmp_path):
    dest, _ = unpack_entries(tmp_path, [Entry("d", "dir", mode=0o755, xattrs={
        "trusted.overlay.opaque": "y", "user.overlay.opaque": "y",
        "trusted.overlay.redirect": "/etc"})])
    assert not [a for a in os.listxattr(dest / "d") if ".overlay." in a]


def test_what_is_not_a_tar_gets_one_sentence(tmp_path):
    dest = tmp_path / "layer"
    dest.mkdir()
    with pytest.raises(ImageError, match="^the layer under test is not a tar archive"):
        unpack(io.BytesIO(b"not a tar at all" * 64), str(dest), privileged=PRIVILEGED,
               opaque_xattr=OPAQUE, label="the layer under test")


