"""Filesystem modes, proved against the real kernel: the default root (a read-only view of
the host's userland under a private writable layer), --read-only, --rootfs (busybox),
--host-root (the positive control: the host's own files) and volumes. Every test also runs
rootless (as nobody, through a user namespace) except the ones marked root."""

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
def test_read_only_root_refuses_writes_but_tmp_stays_writable(userns):
    out = run_ok(WRITE_PROBE + (
        "for path in ('/etc/nsmagic-test', '/var/tmp/nsmagic-new', '/nsmagic-top-level',"
        " '/usr/nsmagic-new', '/tmp/scratch', '/dev/shm/scratch', '/dev/null'):\n"
        "    print(path, attempt(path))\n"
        "print(open('/tmp/scratch').read())\n"
    ), read_only=True, userns=userns)
    lines = out.splitlines()
    assert lines[:4] == ["/etc/nsmagic-test EROFS", "/var/tmp/nsmagic-new EROFS",
                         "/nsmagic-top-level EROFS", "/usr/nsmagic-new EROFS"]
    assert lines[4:] == ["/tmp/scratch ok", "/dev/shm/scratch ok", "/dev/null ok",
                         "written inside"]
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
def test_a_read_only_container_sees_its_cgroup():
    out = run_ok("print(open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read())",
                 read_only=True, memory="64M")
    assert out.strip() == str(64 << 20)


# --- the default root: a view of the host's userland, a private writable layer -------------


@USERNS
def test_writes_anywhere_in_the_default_root_succeed_inside_and_vanish(userns):
    out = run_ok(
        "open('/etc/nsmagic-test', 'w').write('new')\n"
        "open('/nsmagic-top-level', 'w').write('x')\n"
        "open('/root/notes', 'w').write('y')\n"
        "print(open('/etc/nsmagic-test').read(), open('/nsmagic-top-level').read())\n",
        userns=userns)
    assert out.split() == ["new", "x"]
    assert not os.path.exists("/etc/nsmagic-test")
    assert not os.path.exists("/nsmagic-top-level")
    # The next container starts from the view again.
    out = run_ok("import os\nprint(os.path.exists('/etc/nsmagic-test'), "
                 "os.path.exists('/root/notes'))", userns=userns)
    assert out.split() == ["False", "False"]


@root_only
def test_changes_to_nsmagic_and_its_interpreter_stay_inside():
    # What later containers and kernels run is read-only underneath: a cell that rewrites
    # nsmagic's own code changes only its own layer.
    package = os.path.dirname(nsmagic.__file__)
    marker = "# written by a container\n"
    out = run_ok(f"open({package + '/__init__.py'!r}, 'a').write({marker!r})\n"
                 f"print(open({package + '/__init__.py'!r}).read().endswith({marker!r}))")
    assert out.strip() == "True"
    with open(os.path.join(package, "__init__.py")) as handle:
        assert not handle.read().endswith(marker)


def test_the_default_root_shows_the_interpreter_but_not_the_hosts_files(host_file):
    out = run_ok(
        "import os, sys, wave\n"  # an import the fork server had not made: from the view
        f"print(os.path.exists({host_file!r}), os.listdir('/var'), os.listdir('/home'),"
        " os.listdir('/root'), os.listdir('/run'), os.path.isdir(sys.prefix))\n")
    assert out.split() == ["False", "['tmp']", "[]", "[]", "[]", "True"]


@root_only
def test_renames_within_a_shown_directory_work_and_across_them_say_exdev():
    # Each shown directory is a mount of its own: renames inside one work; across two they
    # fail with EXDEV, which mv and shutil.move answer by copying.
    out = run_ok("import os, errno, shutil\n"
                 "os.rename('/etc/os-release', '/etc/os-release.old')\n"
                 "try:\n    os.rename('/etc/os-release.old', '/var/os-release')\n"
                 "except OSError as error:\n    print(errno.errorcode[error.errno])\n"
                 "shutil.move('/etc/os-release.old', '/var/os-release')\n"
                 "print(os.path.exists('/etc/os-release'), os.path.exists('/var/os-release'))")
    assert out.split() == ["EXDEV", "False", "True"]
    assert os.path.exists("/etc/os-release")


def test_root_in_a_single_id_user_namespace_cannot_change_files_of_unmapped_owners():
    # A known limit, asserted so that it is noticed if it changes: host root's files and
    # directories have no owner inside a user namespace that maps one id, so root inside
    # is "others" to them and capabilities do not apply: EACCES. New files in the root's
    # own directories work.
    out = run_ok(WRITE_PROBE + "print(attempt('/usr/share/nsmagic-new'), "
                 "attempt('/root/new'))", userns=True)
    assert out.split() == ["EACCES", "ok"]


def test_the_default_root_has_a_fresh_proc_dev_and_tmp():
    out = run_ok(
        "import os\n"
        "print(os.path.exists('/dev/null'), os.path.isdir('/sys/fs/cgroup'), os.getcwd())\n"
        "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), os.listdir('/tmp'))\n"
        "open('/dev/null', 'w').write('x')\n",
        cwd="/root")
    assert out.splitlines() == ["True True /root", "[1, 2] []"]


def test_two_containers_do_not_see_each_others_writes(host_dir):
    sync = tempfile.mkdtemp(dir=host_dir)
    os.chmod(sync, 0o777)
    first = nsmagic.Container(volumes=[f"{sync}:/sync"])
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
                     "print(os.path.exists('/etc/nsmagic-first'))")
        open(f"{sync}/second-done", "w").close()
        result = first.wait(timeout=30)
    assert out.strip() == "False"
    assert result.ok, (result.describe(), result.stderr)
    assert result.stdout.split() == ["True", "False"]
    assert not os.path.exists("/etc/nsmagic-first")
    assert not os.path.exists("/etc/nsmagic-second")


@root_only
def test_the_default_container_sees_its_cgroup_and_no_other():
    out = run_ok("import os\n"
                 "print(open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read().strip())\n"
                 "print(sorted(os.listdir('/sys/fs/cgroup')))\n"
                 "print(open('/sys/fs/cgroup/devices/devices.list').read().split())",
                 memory="64M")
    limit, hierarchies, devices = out.splitlines()
    assert limit == str(64 << 20)
    assert "unified" not in hierarchies and "blkio" not in hierarchies
    # Its own devices group: Docker's rules, not the host's "a *:* rwm".
    assert "'1:3'" in devices and "'*:*'" in devices and "'a'" not in devices


# --- the host's root: the positive control -----------------------------------------------------


@USERNS
def test_host_root_shows_the_hosts_own_files_read_write(host_file, userns):
    _owned_by_container_root(host_file, userns)
    out = run_ok(f"print(open({host_file!r}).read().strip())\n"
                 f"open({host_file!r}, 'w').write('changed')", host_root=True, userns=userns)
    assert out.strip() == "host"
    assert open(host_file).read() == "changed"


def _owned_by_container_root(path: str, userns: bool | None) -> None:
    """Give path to the host uid that root inside maps to, so a user-namespace container
    may write it."""
    if userns and IS_ROOT:
        os.chown(path, 65534, 65534)


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
        ["fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
         "stdout", "tty", "urandom", "zero"]))
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
    assert f"{bad}/tmp is a symbolic link" in message


# --- volumes -----------------------------------------------------------------------------


@USERNS
def test_read_write_volume_works_both_ways(host_dir, host_file, userns):
    _owned_by_container_root(host_dir, userns)
    out = run_ok("import os\nprint(open('/data/' + os.path.basename(" + repr(host_file) +
                 ")).read().strip())\nopen('/data/from-inside', 'w').write('inside')",
                 volumes=[f"{host_dir}:/data"], userns=userns)
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


def test_a_volume_gets_its_mount_point_made_in_the_containers_own_root(host_dir, host_file):
    out = run_ok(f"print(open('/nsmagic-new/dir/{os.path.basename(host_file)}').read())",
                 volumes=[f"{host_dir}:/nsmagic-new/dir:ro"])
    assert out.strip() == "host"
    assert not os.path.exists("/nsmagic-new")


def test_a_volume_on_a_missing_path_of_a_read_only_root_is_a_clear_error(host_dir):
    with pytest.raises(nsmagic.ContainerSetupError) as raised:
        nsmagic.run("pass", read_only=True, volumes=[f"{host_dir}:/nsmagic-no-such-dir"])
    message = str(raised.value)
    assert "/nsmagic-no-such-dir does not exist" in message and "--read-only" in message
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
    run_ok("pass", volumes=[f"{host_dir}:/data"])
    run_ok("pass", host_root=True, volumes=[f"{host_dir}:/var/tmp:ro"])
    run_ok("pass", rootfs=busybox_root, volumes=[f"{host_dir}:/mnt/data"])
    run_ok("pass", read_only=True, volumes=[f"{host_dir}:/mnt:ro"])
    after = _host_mounts()
    assert after == before
    assert not [line for line in after if host_dir in line]


@root_only
def test_a_secret_file_that_appears_in_etc_later_is_masked_too(monkeypatch):
    # The view is worked out when the fork server starts, and again while it is idle.
    from nsmagic.runtime.launcher import ForkServerLauncher

    monkeypatch.setenv("NSMAGIC_VIEW_REFRESH_S", "0.1")
    launcher = ForkServerLauncher()
    path = tempfile.mktemp(prefix="nsmagic-test-secret-", dir="/etc")
    probe = f"import os\nprint(os.path.exists({path!r}) and open({path!r}).read())"
    try:
        assert run_ok(probe, launcher=launcher).strip() == "False"
        with open(path, "w") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write("host secret\n")
        time.sleep(0.5)  # a few idle turns of the server
        assert run_ok(probe, launcher=launcher).strip() == ""  # there, and empty
        os.chmod(path, 0o644)  # positive control: a world-readable file is shown
        time.sleep(0.5)
        assert run_ok(probe, launcher=launcher).strip() == "host secret"
    finally:
        launcher.close()
        os.unlink(path)


@root_only
def test_without_overlayfs_the_view_is_read_only_and_the_rest_of_the_root_writable():
    # A kernel without overlayfs (ENODEV) gets the documented fallback, said so.
    import errno as errnos
    import json
    import subprocess
    import sys

    code = """
import errno, json, os
from nsmagic.isolation import mounts, syscalls
real_mount = syscalls.mount
def no_overlay(source, target, fstype, flags=0, data=None):
    if fstype == "overlay":
        raise OSError(errno.ENODEV, "No such device")
    return real_mount(source, target, fstype, flags, data)
syscalls.mount = no_overlay
syscalls.unshare(syscalls.CLONE_NEWNS | syscalls.CLONE_NEWPID)
if os.fork():
    os.wait()
else:
    warnings = mounts.setup_mount_namespace(mounts.MountOptions(), [])
    def attempt(path):
        try:
            open(path, "w").close()
            return "ok"
        except OSError as error:
            return errno.errorcode[error.errno]
    print(json.dumps([warnings, attempt("/usr/nsmagic-x"), attempt("/root/x")]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    warnings, usr, root = json.loads(done.stdout)
    assert usr == errnos.errorcode[errnos.EROFS] and root == "ok", done.stderr
    assert any("no overlayfs" in w for w in warnings)
