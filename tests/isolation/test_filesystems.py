"""Filesystem modes, proved against the real kernel: read-only root, overlay root, a rootfs
directory (busybox) and volumes. Every test also runs rootless (as nobody, through a user
namespace) except the ones marked root."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest

import nsmagic

from ..conftest import IS_ROOT, requires_root

EROFS, EPERM = 30, 1
BUSYBOX = "/bin/busybox"  # Debian's busybox-static

# The default (real root without a user namespace when the tests run as root, a user
# namespace otherwise) and, as root, a user namespace on purpose.
USERNS = pytest.mark.parametrize("userns", [
    pytest.param(None, id="default"),
    pytest.param(True, id="userns", marks=[pytest.mark.root, requires_root]),
])


def root_only(test):  # noqa: ANN001, ANN201
    return pytest.mark.root(requires_root(test))


def run_ok(code: str, **options) -> str:
    result = nsmagic.run(code, **options)
    assert result.ok, (result.describe(), result.stdout, result.stderr, result.exception)
    return result.stdout


@pytest.fixture(scope="module")
def host_dir():
    """A host directory every container uid can read and write (not under /tmp, which is
    private inside; not under a 0700 pytest directory, which nobody cannot traverse)."""
    path = tempfile.mkdtemp(prefix="nsmagic-fs-test-", dir="/var/tmp")
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path)
    with open("/proc/self/mountinfo") as handle:
        leaked = [line for line in handle if path in line]
    assert not leaked, f"mounts left on the host: {leaked}"


@pytest.fixture(scope="module")
def busybox_root(host_dir):
    """A minimal root directory: busybox and its applets, and the usual mount points."""
    if not os.path.exists(BUSYBOX):
        pytest.skip("needs busybox-static (/bin/busybox)")
    root = os.path.join(host_dir, "busybox-root")
    for directory in ("bin", "etc", "proc", "dev", "tmp", "sys/fs/cgroup"):
        os.makedirs(os.path.join(root, directory))
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
    applets = os.popen(f"{BUSYBOX} --list").read().split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", os.path.join(root, "bin", applet))
    with open(os.path.join(root, "etc", "marker"), "w") as handle:
        handle.write("busybox root\n")
    return root


@pytest.fixture
def host_file(host_dir):
    """A file on the host with known contents, writable by every uid."""
    handle, path = tempfile.mkstemp(dir=host_dir)
    os.write(handle, b"host\n")
    os.close(handle)
    os.chmod(path, 0o666)
    yield path
    os.unlink(path)


# --- read-only ---------------------------------------------------------------------------

WRITE_PROBE = """
import errno, os
def attempt(path):
    try:
        with open(path, 'a') as handle:
            handle.write('written inside')
        return 'ok'
    except OSError as error:
        return errno.errorcode[error.errno]
"""


@USERNS
def test_read_only_root_refuses_writes_but_tmp_stays_writable(host_file, userns):
    out = run_ok(WRITE_PROBE + (
        f"for path in ('/etc/nsmagic-test', '/var/tmp/nsmagic-new', {host_file!r},"
        " '/tmp/scratch', '/dev/shm/scratch', '/dev/null'):\n"
        "    print(path, attempt(path))\n"
        "print(open('/tmp/scratch').read())\n"
    ), read_only=True, userns=userns)
    lines = out.splitlines()
    assert lines[:3] == ["/etc/nsmagic-test EROFS", "/var/tmp/nsmagic-new EROFS",
                         f"{host_file} EROFS"]
    assert lines[3:] == ["/tmp/scratch ok", "/dev/shm/scratch ok", "/dev/null ok",
                         "written inside"]
    assert open(host_file).read() == "host\n"
    assert not os.path.exists("/etc/nsmagic-test")


REMOUNT_PROBE = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
MS_REMOUNT, MS_BIND = 32, 4096
def remount(target, flags):
    if libc.mount(None, target.encode(), None, flags, None) == 0:
        return 'ok'
    return errno.errorcode[ctypes.get_errno()]
print('bind-remount /', remount('/', MS_REMOUNT | MS_BIND))
print('bind-remount /proc', remount('/proc', MS_REMOUNT | MS_BIND))
print('bind-remount /etc', remount('/', MS_REMOUNT | MS_BIND))
remount('/', MS_REMOUNT)  # the superblock: refused in a user namespace, a no-op for root
try:
    open('/etc/nsmagic-test', 'w')
    print('write ok')
except OSError as error:
    print('write', errno.errorcode[error.errno])
"""


@USERNS
def test_read_only_flags_are_locked_against_root_inside(userns):
    out = run_ok(REMOUNT_PROBE, read_only=True, userns=userns)
    assert out.splitlines() == ["bind-remount / EPERM", "bind-remount /proc EPERM",
                                "bind-remount /etc EPERM", "write EROFS"]


def test_read_only_payload_cannot_mount_but_a_privileged_one_can():
    # Without CAP_SYS_ADMIN (dropped, as Docker does) the payload mounts nothing; with
    # --privileged it may mount, yet the read-only lock still holds on what exists.
    code = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "os.mkdir('/tmp/m')\n"
            "print(libc.mount(b'tmpfs', b'/tmp/m', b'tmpfs', 0, None), ctypes.get_errno())\n")
    assert run_ok(code, read_only=True).split() == ["-1", "1"]  # EPERM
    assert run_ok(code, read_only=True, privileged=True).split()[0] == "0"


@root_only
def test_read_only_container_sees_its_cgroup():
    out = run_ok("print(open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read())",
                 read_only=True, memory="64M")
    assert out.strip() == str(64 << 20)


# --- overlay -----------------------------------------------------------------------------


def _owned_by_container_root(path: str, userns: bool | None) -> None:
    """Give path to the host uid that root inside maps to, so a user-namespace container can
    copy it up (see test_overlay_in_a_user_namespace_cannot_change_unmapped_files)."""
    if userns and IS_ROOT:
        os.chown(path, 65534, 65534)


@USERNS
def test_overlay_writes_succeed_inside_and_vanish(userns):
    out = run_ok(
        "open('/etc/nsmagic-test', 'w').write('new')\n"
        "open('/nsmagic-top-level', 'w').write('x')\n"
        "print(open('/etc/nsmagic-test').read(), open('/nsmagic-top-level').read())\n",
        overlay=True, userns=userns)
    assert out.split() == ["new", "x"]
    assert not os.path.exists("/etc/nsmagic-test")
    assert not os.path.exists("/nsmagic-top-level")
    # The next container starts from the host's files again.
    out = run_ok("import os\nprint(os.path.exists('/etc/nsmagic-test'))", overlay=True,
                 userns=userns)
    assert out.strip() == "False"


@root_only
def test_overlay_changes_to_host_files_stay_inside(host_file):
    out = run_ok(f"open({host_file!r}, 'w').write('changed')\n"
                 f"print(open({host_file!r}).read())", overlay=True)
    assert out.strip() == "changed"
    assert open(host_file).read() == "host\n"
    out = run_ok(f"print(open({host_file!r}).read())", overlay=True)
    assert out.strip() == "host"


@root_only
def test_overlay_as_real_root_can_delete_and_rename_across_directories():
    # One overlay over the whole root (real root only): renames across directories work.
    out = run_ok("import os\nos.unlink('/etc/passwd')\nos.rename('/etc/group', '/var/group')\n"
                 "print(os.path.exists('/etc/passwd'), os.path.exists('/var/group'))",
                 overlay=True)
    assert out.split() == ["False", "True"]
    assert os.path.exists("/etc/passwd") and os.path.exists("/etc/group")
    assert not os.path.exists("/var/group")


def test_overlay_in_a_user_namespace_cannot_change_files_under_unmapped_directories(
        host_file):
    # A known limit, asserted so that it is noticed if it changes: overlayfs copies a file
    # up together with its parent directories, each with its owner, and host root's
    # directories (/var, /var/tmp, ...) have no owner id inside a single-id user namespace:
    # EOVERFLOW. New files in top-level directories (whose upper layer we own) work.
    _owned_by_container_root(host_file, True)
    out = run_ok(WRITE_PROBE + f"print(attempt({host_file!r}))", overlay=True, userns=True)
    assert out.strip() == "EOVERFLOW"
    assert open(host_file).read() == "host\n"


def test_overlay_keeps_the_hosts_mounts_and_a_fresh_proc_and_tmp():
    out = run_ok(
        "import os\n"
        "print(os.path.exists('/dev/null'), os.path.isdir('/sys/fs/cgroup'), os.getcwd())\n"
        "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), os.listdir('/tmp'))\n"
        "open('/dev/null', 'w').write('x')\n",
        overlay=True, cwd="/work")
    assert out.splitlines() == ["True True /work", "[1, 2] []"]


def test_two_overlay_containers_do_not_see_each_others_writes(host_dir):
    sync = tempfile.mkdtemp(dir=host_dir)
    os.chmod(sync, 0o777)
    first = nsmagic.Container(overlay=True, volumes=[f"{sync}:/sync"])
    with first:
        first.start(
            "import os, time\n"
            "open('/etc/nsmagic-first', 'w').write('1')\n"
            "open('/sync/first-written', 'w').close()\n"
            "deadline = time.monotonic() + 20\n"
            "while not os.path.exists('/sync/second-done') and time.monotonic() < deadline:\n"
            "    time.sleep(0.02)\n"
            "print(os.path.exists('/etc/nsmagic-first'), os.path.exists('/etc/nsmagic-second'))\n"
        )
        deadline = time.monotonic() + 20
        while not os.path.exists(f"{sync}/first-written") and time.monotonic() < deadline:
            time.sleep(0.02)
        out = run_ok("import os\nopen('/etc/nsmagic-second', 'w').write('2')\n"
                     "print(os.path.exists('/etc/nsmagic-first'))", overlay=True)
        open(f"{sync}/second-done", "w").close()
        result = first.wait(timeout=30)
    assert out.strip() == "False"
    assert result.ok, (result.describe(), result.stderr)
    assert result.stdout.split() == ["True", "False"]
    assert not os.path.exists("/etc/nsmagic-first")
    assert not os.path.exists("/etc/nsmagic-second")


@root_only
def test_overlay_container_sees_its_cgroup():
    out = run_ok("print(open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read())",
                 overlay=True, memory="64M")
    assert out.strip() == str(64 << 20)


# --- rootfs ------------------------------------------------------------------------------


@USERNS
def test_rootfs_runs_a_shell_from_the_busybox_tree(busybox_root, userns):
    out = run_ok("hostname; ls /; echo; cat /proc/1/cmdline | tr '\\0' ' '; echo;"
                 " cat /etc/marker; ls /work 2>&1 || echo no-work",
                 kind="shell", rootfs=busybox_root, hostname="bb1", userns=userns)
    hostname, rest = out.split("\n", 1)
    assert hostname == "bb1"
    listing, rest = rest.split("\n\n", 1)
    assert listing.split() == sorted(os.listdir(busybox_root))
    cmdline, marker, *work = rest.splitlines()
    assert cmdline.strip()  # pid 1 is the runtime's init, forked from outside
    assert marker == "busybox root"
    assert work[-1] == "no-work"


@USERNS
def test_rootfs_python_payload_and_chroot_escape_stays_inside(busybox_root, userns):
    out = run_ok(
        "import os\n"
        "print(sorted(os.listdir('/')), sorted(os.listdir('/dev')))\n"
        "os.mkdir('/tmp/x')\n"
        "os.chroot('/tmp/x')\n"  # the classic escape: chroot deeper, climb out, chroot '.'
        "for _ in range(30):\n"
        "    os.chdir('..')\n"
        "os.chroot('.')\n"
        "print(sorted(os.listdir('/')), os.path.exists('/work'), os.path.exists('/usr'))\n",
        rootfs=busybox_root, userns=userns)
    first, second = out.splitlines()
    expected = sorted(os.listdir(busybox_root))
    assert first == str(expected) + " " + str(sorted(
        ["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom",
         "zero"]))
    assert second == f"{expected} False False"


def test_rootfs_python_payload_cannot_import_what_the_tree_lacks(busybox_root):
    result = nsmagic.run("import wave", rootfs=busybox_root)
    assert result.exception is not None
    assert result.exception.type == "ModuleNotFoundError"


@root_only
def test_rootfs_with_sys_fs_cgroup_gets_the_cgroup_view(busybox_root):
    out = run_ok("print(open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read())",
                 rootfs=busybox_root, memory="64M")
    assert out.strip() == str(64 << 20)


def test_rootfs_failure_names_the_step_and_leaves_nothing(host_dir):
    bad = tempfile.mkdtemp(dir=host_dir)
    os.chmod(bad, 0o755)
    os.symlink("/etc", os.path.join(bad, "tmp"))
    with pytest.raises(nsmagic.ContainerSetupError) as raised:
        nsmagic.run("print(1)", rootfs=bad)
    message = str(raised.value)
    assert "setting up inside the container" in message
    assert f"{bad}/tmp" in message and "symbolic link" in message


# --- volumes -----------------------------------------------------------------------------


@USERNS
def test_read_write_volume_works_both_ways(host_dir, host_file, userns):
    _owned_by_container_root(host_dir, userns)
    out = run_ok("import os\nprint(open('/data/' + os.path.basename(" + repr(host_file) +
                 ")).read().strip())\nopen('/data/from-inside', 'w').write('inside')",
                 volumes=[f"{host_dir}:/data"], overlay=True, userns=userns)
    assert out.strip() == "host"
    created = os.path.join(host_dir, "from-inside")
    assert open(created).read() == "inside"
    os.unlink(created)


@USERNS
def test_read_only_volume_refuses_writes_even_after_a_remount(host_dir, host_file, userns):
    name = os.path.basename(host_file)
    out = run_ok(WRITE_PROBE + REMOUNT_PROBE.split("print(")[0] + (
        f"print(open('/mnt/{name}').read().strip())\n"
        f"print(attempt('/mnt/{name}'), attempt('/mnt/new'))\n"
        "print(remount('/mnt', MS_REMOUNT | MS_BIND))\n"
        f"print(attempt('/mnt/{name}'))\n"
    ), volumes=[f"{host_dir}:/mnt:ro"], userns=userns)
    assert out.splitlines() == ["host", "EROFS EROFS", "EPERM", "EROFS"]
    assert open(host_file).read() == "host\n"


def test_volume_of_a_single_file_into_private_tmp(host_file):
    out = run_ok("print(open('/tmp/in/file').read().strip())",
                 volumes=[f"{host_file}:/tmp/in/file:ro"])
    assert out.strip() == "host"


def test_volume_into_a_rootfs_creates_its_mount_point(busybox_root, host_dir, host_file):
    out = run_ok(f"cat /mnt/data/{os.path.basename(host_file)}", kind="shell",
                 rootfs=busybox_root, volumes=[f"{host_dir}:/mnt/data:ro"])
    assert out.strip() == "host"


def test_volume_on_a_missing_path_without_overlay_is_a_clear_error(host_dir):
    with pytest.raises(nsmagic.ContainerSetupError) as raised:
        nsmagic.run("pass", volumes=[f"{host_dir}:/nsmagic-no-such-dir"])
    message = str(raised.value)
    assert "/nsmagic-no-such-dir does not exist" in message and "--overlay" in message
    assert not os.path.exists("/nsmagic-no-such-dir")


@pytest.mark.parametrize("volume", [
    "relative/path:/data", "/var/tmp:data", "/var/tmp:/data:rx", "/var/tmp", "/a:/b:ro:x",
    "/nsmagic-does-not-exist:/data", "/var/tmp:/data/../etc",
])
def test_bad_volume_specs_are_refused_in_one_sentence(volume):
    with pytest.raises(nsmagic.SpecError) as raised:
        nsmagic.run("pass", volumes=[volume])
    message = str(raised.value)
    assert message.startswith("--volume") and message.count(". ") == 0, message


def _host_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as handle:
        return sorted(line.split(" - ")[0].split(None, 4)[4] for line in handle)


def test_no_container_mount_is_visible_on_the_host(host_dir, busybox_root):
    before = _host_mounts()
    run_ok("pass", overlay=True, volumes=[f"{host_dir}:/data"])
    run_ok("pass", rootfs=busybox_root, volumes=[f"{host_dir}:/mnt/data"])
    run_ok("pass", read_only=True, volumes=[f"{host_dir}:/mnt:ro"])
    after = _host_mounts()
    assert after == before
    assert not [line for line in after if host_dir in line]
