"""Each namespace, proved from inside against outside: the container sees only its own."""

from __future__ import annotations

import ctypes
import os
import socket
import tempfile

import pytest

import nsmagic
from nsmagic.isolation import idmaps
from nsmagic.isolation.namespaces import namespace_id

from ..conftest import IS_ROOT, requires_root

IPC_KEY = 0x4E534D00 + (os.getpid() & 0xFF)


def run_ok(code: str, **options) -> str:
    result = nsmagic.run(code, **options)
    assert result.ok, (result.describe(), result.stderr, result.exception)
    return result.stdout


def test_pid_namespace_makes_the_payload_a_child_of_pid_1_and_hides_host_processes():
    out = run_ok(
        "import os\n"
        "print(os.getpid(), os.getppid())\n"
        "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
    )
    first, second = out.splitlines()
    assert first == "2 1"
    assert second == "[1, 2]"


def test_without_pid_namespace_the_host_processes_are_visible():
    out = run_ok("import os\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]))",
                 namespaces={"uts", "ipc", "net", "mount"})
    assert int(out) > 5


def test_uts_namespace_gives_the_container_its_own_hostname():
    host_before = socket.gethostname()
    # Root inside lacks CAP_SYS_ADMIN (as in Docker), so the name is set from outside...
    out = run_ok("import socket\nprint(socket.gethostname())\ntry:\n"
                 "    socket.sethostname('changed')\nexcept PermissionError:\n"
                 "    print('refused')", hostname="lab1")
    assert out.split() == ["lab1", "refused"]
    # ...and even a privileged container changes only its own UTS namespace.
    out = run_ok("import socket\nsocket.sethostname('changed')\nprint(socket.gethostname())",
                 hostname="lab1", privileged=True)
    assert out.split() == ["changed"]
    assert socket.gethostname() == host_before


def test_default_hostname_is_the_container_id():
    spec = nsmagic.ContainerSpec.build()
    with nsmagic.Container(spec) as container:
        result = container.run("import socket; print(socket.gethostname())")
    assert result.stdout.strip() == spec.container_id


def _libc():
    return ctypes.CDLL("libc.so.6", use_errno=True)


def test_ipc_namespace_hides_host_sysv_queues():
    libc = _libc()
    queue = libc.msgget(IPC_KEY, 0o1600)  # IPC_CREAT | 0600
    assert queue >= 0, os.strerror(ctypes.get_errno())
    try:
        with open("/proc/sysvipc/msg") as handle:
            assert str(queue) in handle.read()
        out = run_ok(
            "import ctypes, os\n"
            "libc = ctypes.CDLL('libc.so.6', use_errno=True)\n"
            f"print(libc.msgget({IPC_KEY}, 0), ctypes.get_errno())\n"
            "print(len(open('/proc/sysvipc/msg').read().splitlines()))\n"
        )
        lookup, lines = out.splitlines()
        assert lookup.split() == ["-1", str(2)]  # ENOENT: the key does not exist in here
        assert lines == "1"  # only the header line
    finally:
        libc.msgctl(queue, 0, None)  # IPC_RMID


def test_ipc_namespace_hides_host_posix_message_queues():
    rt = ctypes.CDLL("librt.so.1", use_errno=True)
    rt.mq_open.restype = ctypes.c_int
    name = f"/nsmagic-test-{os.getpid()}".encode()
    queue = rt.mq_open(name, os.O_CREAT | os.O_RDWR, 0o600, None)
    assert queue >= 0, os.strerror(ctypes.get_errno())
    try:
        out = run_ok(
            "import ctypes, os\n"
            "rt = ctypes.CDLL('librt.so.1', use_errno=True)\n"
            f"print(rt.mq_open({name!r}, os.O_RDONLY), ctypes.get_errno())\n"
        )
        assert out.split() == ["-1", "2"]  # ENOENT
    finally:
        rt.mq_close(queue)
        rt.mq_unlink(name)


def test_net_namespace_has_only_loopback_and_it_is_up():
    assert len(socket.if_nameindex()) >= 1
    out = run_ok(
        "import socket\n"
        "print([name for _, name in socket.if_nameindex()])\n"
        "server = socket.socket(); server.bind(('127.0.0.1', 0)); server.listen()\n"
        "client = socket.create_connection(server.getsockname(), timeout=2)\n"
        "print('loopback works')\n"
    )
    assert out.splitlines() == ["['lo']", "loopback works"]


def test_net_namespace_is_not_the_hosts():
    out = run_ok("import os\nprint(os.readlink('/proc/self/ns/net'))")
    assert out.strip() != namespace_id("self", "net")


def test_mount_namespace_keeps_mounts_and_tmp_files_inside():
    marker = f"nsmagic-mount-test-{os.getpid()}"
    out = run_ok(
        "import ctypes, os\n"
        "libc = ctypes.CDLL('libc.so.6', use_errno=True)\n"
        "assert libc.mount(b'tmpfs', b'/mnt', b'tmpfs', 0, None) == 0\n"
        f"open('/mnt/{marker}', 'w').write('x')\n"
        f"open('/tmp/{marker}', 'w').write('x')\n"
        "print(os.listdir('/tmp'))\n",
        privileged=True,  # mounting needs CAP_SYS_ADMIN, which containers do not keep
    )
    assert out.strip() == f"['{marker}']"  # a private, empty /tmp
    assert not os.path.exists(f"/mnt/{marker}")
    assert not os.path.exists(f"/tmp/{marker}")
    with open("/proc/self/mountinfo") as handle:
        assert marker not in handle.read()


def test_cgroup_namespace_makes_the_container_see_itself_at_the_root():
    out = run_ok("print(open('/proc/self/cgroup').read())")
    for line in out.strip().splitlines():
        assert line.rsplit(":", 1)[1] == "/", line


def test_user_namespace_makes_root_inside_an_unprivileged_user_outside():
    with tempfile.TemporaryDirectory(dir="/var/tmp") as folder:  # /tmp is private inside
        os.chmod(folder, 0o777)
        path = os.path.join(folder, "written-inside")
        result = nsmagic.run("import os\nprint(os.getuid(), os.getgid())\n"
                             "open('/shared/written-inside', 'w').write('x')",
                             userns=True, volumes=[f"{folder}:/shared"])
        assert result.ok, (result.describe(), result.stderr)
        assert result.stdout.split() == ["0", "0"]
        # As root, a range of the container's own (no real user's); else the caller.
        owner = os.stat(path).st_uid
        assert owner == result.root_outside
        assert owner >= idmaps.POOL_START if IS_ROOT else owner == os.getuid()


@requires_root
def test_each_user_namespace_container_gets_a_host_id_range_of_its_own():
    first = nsmagic.Container(userns=True)
    second = nsmagic.Container(userns=True)
    with first, second:
        first.start("import time\ntime.sleep(30)")
        second.start("print(open('/proc/self/uid_map').read())")
        mapped = second.wait(timeout=30)
        while first.result.root_outside is None:
            first.handle_message(first.message_sockets[0])
        first.send_signal(9)
        first.wait(timeout=30)
    inside, outside, count = mapped.stdout.split()
    assert (inside, count) == ("0", str(idmaps.RANGE_SIZE))
    ranges = sorted([first.result.root_outside, mapped.root_outside])
    assert ranges[1] - ranges[0] >= idmaps.RANGE_SIZE  # disjoint
    assert int(outside) == mapped.root_outside
    assert not os.listdir(idmaps.RECORDS)  # both ranges went back to the pool


@requires_root
def test_user_namespace_root_cannot_write_host_root_files():
    with tempfile.NamedTemporaryFile(dir="/var/tmp") as handle:
        os.chmod(handle.name, 0o644)
        result = nsmagic.run("open('/shared/file', 'w').write('x')", userns=True,
                             volumes=[f"{handle.name}:/shared/file"])
        assert result.exception is not None and result.exception.type == "PermissionError"


@requires_root
def test_without_user_namespace_root_stays_root():
    out = run_ok("import os\nprint(os.getuid())\nprint(open('/proc/self/uid_map').read())",
                 userns=False)
    assert out.split()[:4] == ["0", "0", "0", "4294967295"]


@pytest.mark.skipif(IS_ROOT, reason="the automatic user namespace is for unprivileged kernels")
def test_an_unprivileged_kernel_gets_a_user_namespace_automatically():
    spec = nsmagic.ContainerSpec.build()
    assert "user" in spec.namespaces
    out = run_ok("import os\nprint(os.getuid())")
    assert out.strip() == "0"
