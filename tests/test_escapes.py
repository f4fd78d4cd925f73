"""Escape attempts: each test runs code that tries to break out of a container (default
options unless the test says otherwise) and asserts that the attempt fails inside and that
nothing changed outside. Where a test could pass for the wrong reason (a server nobody could
reach, a setuid binary that would not work anyway), a positive control shows that the same
attempt does work when the isolation in question is switched off.

Runs as root and, rootless, as nobody (where containers get a user namespace automatically);
tests that need real root are marked root."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import textwrap
import uuid

import pytest

import nsmagic
from nsmagic.errors import SpecError
from nsmagic.isolation.capabilities import DOCKER_DEFAULT, last_capability
from nsmagic.runtime.launcher import ForkServerLauncher

from .conftest import IS_ROOT, requires_root, running_containers, wait_until

DOCKER_MASK = sum(1 << cap for cap in DOCKER_DEFAULT.values())
# What the test process itself may hold (a sandboxed host may have dropped some already).
with open("/proc/self/status") as _status:
    HOST_BOUNDING = int(next(x for x in _status if x.startswith("CapBnd:")).split()[1], 16)
# Kernels built without module support answer ENOSYS to everyone.
KERNEL_HAS_MODULES = os.path.exists("/proc/modules")
# x86_64 and aarch64 numbers of init_module(2) and finit_module(2).
MODULE_SYSCALLS = {"x86_64": (175, 313), "aarch64": (105, 273)}


def run(code: str, **options) -> nsmagic.ContainerResult:
    result = nsmagic.run(textwrap.dedent(code), **options)
    assert result.ok, (result.describe(), result.stdout, result.stderr)
    return result


def status_fields(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def processes_with(marker: str) -> list[int]:
    """Host processes whose command line or environment contains marker."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        for part in ("cmdline", "environ"):
            try:
                with open(f"/proc/{entry}/{part}", "rb") as handle:
                    if marker.encode() in handle.read():
                        found.append(int(entry))
                        break
            except OSError:
                pass
    return found


# --- processes -------------------------------------------------------------------------------


def test_a_container_can_neither_see_nor_signal_a_host_process():
    host_pid = os.getpid()
    out = run(f"""
        import os
        print({host_pid} in [int(p) for p in os.listdir('/proc') if p.isdigit()])
        try:
            os.kill({host_pid}, 0)
            print('reached')
        except ProcessLookupError:
            print('ProcessLookupError')
    """).stdout
    assert out.split() == ["False", "ProcessLookupError"]


def test_a_process_cannot_outlive_its_container_by_double_fork_and_setsid():
    marker = f"nsmagic-escape-{uuid.uuid4().hex}"
    # The grandchild detaches (new session, parent gone) and sleeps under a marked name and
    # environment; the payload returns at once.
    code = f"""
        import os
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.environ['ESCAPE_MARKER'] = {marker!r}
                os.execv('/bin/sleep', [{marker!r}, '60'])
            os._exit(0)
        os.wait()
        print('detached')
    """
    assert run(code).stdout == "detached\n"
    assert wait_until(lambda: not processes_with(marker), 5), processes_with(marker)
    assert wait_until(lambda: not running_containers(), 5)


@pytest.mark.parametrize("namespaces", [None, {"uts", "ipc", "net", "mount", "cgroup"}],
                         ids=["pid-namespace", "no-pid-namespace"])
def test_a_detached_process_dies_with_the_container_with_or_without_a_pid_namespace(namespaces):
    # Without a pid namespace kill(-1) is not available to pid 1: it is a child subreaper
    # and kills the orphans it inherits, generation by generation.
    marker = f"nsmagic-escape-{uuid.uuid4().hex}"
    code = f"""
        import os, subprocess
        subprocess.Popen(['/bin/sh', '-c', 'exec -a {marker} sleep 60'],
                         start_new_session=True)
        print('left behind')
    """
    options = {} if namespaces is None else {"namespaces": namespaces}
    assert run(code, **options).stdout == "left behind\n"
    assert wait_until(lambda: not processes_with(marker), 5), processes_with(marker)


# --- host name -------------------------------------------------------------------------------


@pytest.mark.parametrize("namespaces", [None, {"pid", "ipc", "net", "mount", "cgroup"}],
                         ids=["own-uts", "host-uts"])
def test_a_container_cannot_change_the_hosts_hostname(namespaces):
    before = socket.gethostname()
    options = {} if namespaces is None else {"namespaces": namespaces}
    out = run("""
        import socket
        try:
            socket.sethostname('pwned-by-a-container')
            print('changed')
        except PermissionError:
            print('PermissionError')
    """, **options).stdout
    assert out == "PermissionError\n"  # CAP_SYS_ADMIN is not among Docker's capabilities
    assert socket.gethostname() == before


# --- network ---------------------------------------------------------------------------------


@pytest.fixture
def loopback_server():
    """A TCP server on the host's 127.0.0.1 (only that address), never accepting on its own."""
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    yield server
    server.close()


def _connect_code(port: int) -> str:
    return f"""
        import socket
        try:
            socket.create_connection(('127.0.0.1', {port}), timeout=2).close()
            print('connected')
        except OSError as error:
            print(type(error).__name__)
    """


def _accepted(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
        return True
    except BlockingIOError:
        return False


def test_net_none_cannot_reach_a_service_on_the_hosts_loopback(loopback_server):
    port = loopback_server.getsockname()[1]
    assert run(_connect_code(port), net="none").stdout == "ConnectionRefusedError\n"
    assert not _accepted(loopback_server)


def test_the_loopback_service_is_reachable_from_the_host_network_positive_control(
        loopback_server):
    # The same attempt with --net host reaches the server: the refusal above is isolation.
    port = loopback_server.getsockname()[1]
    assert run(_connect_code(port), net="host").stdout == "connected\n"
    assert wait_until(lambda: _accepted(loopback_server), 2)


# --- files -----------------------------------------------------------------------------------


@pytest.fixture
def host_root_file():
    """A file owned by host root, mode 0644, in a directory any user may traverse (the test
    shows it with --host-root, the most a container can see). Rootless, /etc/passwd."""
    if not IS_ROOT:
        yield "/etc/passwd"
        return
    directory = tempfile.mkdtemp(prefix="nsmagic-escape-", dir="/var/tmp")
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "owned-by-root")
    with open(path, "w") as handle:
        handle.write("host data\n")
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(directory)


def test_root_in_a_user_namespace_cannot_write_a_host_owned_file(host_root_file):
    with open(host_root_file, "rb") as handle:
        before = handle.read()
    stat_before = os.stat(host_root_file)
    out = run(f"""
        import os
        print(os.getuid())
        for attempt in (lambda: os.open({host_root_file!r}, os.O_WRONLY | os.O_APPEND),
                        lambda: os.chmod({host_root_file!r}, 0o666),
                        lambda: os.chown({host_root_file!r}, 0, 0)):
            try:
                fd = attempt()
                if fd is not None:
                    os.close(fd)
                print('allowed')
            except PermissionError:
                print('PermissionError')
    """, userns=True, host_root=True).stdout
    assert out.split() == ["0", "PermissionError", "PermissionError", "PermissionError"]
    with open(host_root_file, "rb") as handle:
        assert handle.read() == before
    after = os.stat(host_root_file)
    assert (after.st_mode, after.st_uid, after.st_gid) == (
        stat_before.st_mode, stat_before.st_uid, stat_before.st_gid)


_REMOUNT = """
    import ctypes, errno, os
    libc = ctypes.CDLL(None, use_errno=True)
    MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096
    for path in (b'/', b'/proc'):
        # A bind remount without MS_RDONLY asks for read-write.
        code = libc.mount(None, path, None, MS_REMOUNT | MS_BIND, None)
        print(path.decode(), code, errno.errorcode.get(ctypes.get_errno(), '0') if code else 'ok')
    try:
        open('/etc/nsmagic-escape', 'w')
        print('wrote')
    except OSError as error:
        print(errno.errorcode[error.errno])
"""


@pytest.mark.parametrize("privileged", [False, True], ids=["default", "privileged"])
def test_a_read_only_root_cannot_be_remounted_read_write(privileged):
    # Default: no CAP_SYS_ADMIN. Privileged: CAP_SYS_ADMIN, yet the read-only flags were
    # locked by copying the mount namespace into a less privileged user namespace.
    out = run(_REMOUNT, read_only=True, privileged=privileged).stdout.split("\n")
    assert out[:3] == ["/ -1 EPERM", "/proc -1 EPERM", "EROFS"]
    assert not os.path.exists("/etc/nsmagic-escape")


@pytest.mark.root
@requires_root
def test_a_container_cannot_raise_its_own_cgroup_limits():
    out = run("""
        import errno, os
        path = ('/sys/fs/cgroup/memory.max' if os.path.exists('/sys/fs/cgroup/memory.max')
                else '/sys/fs/cgroup/memory/memory.limit_in_bytes')
        print(open(path).read().strip())
        try:
            with open(path, 'w') as handle:
                handle.write(str(1 << 40))
            print('raised')
        except OSError as error:
            print(errno.errorcode[error.errno])
        print(open(path).read().strip())
    """, memory="64M").stdout
    assert out.split() == [str(64 << 20), "EROFS", str(64 << 20)]


# --- privileges ------------------------------------------------------------------------------


def test_capabilities_are_dockers_default_set_and_no_new_privs_is_on():
    fields = status_fields(run("print(open('/proc/self/status').read())").stdout)
    for name in ("CapBnd", "CapEff", "CapPrm"):
        assert int(fields[name], 16) == DOCKER_MASK, name
    assert int(fields["CapInh"], 16) == 0
    assert int(fields["CapAmb"], 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"


def test_privileged_keeps_every_capability_and_allows_privilege_gains():
    fields = status_fields(run("print(open('/proc/self/status').read())",
                               privileged=True).stdout)
    # Real root keeps the bounding set it has; a new user namespace starts with a full one
    # (capabilities over that namespace only).
    expected = HOST_BOUNDING if IS_ROOT else (1 << (last_capability() + 1)) - 1
    assert int(fields["CapBnd"], 16) == expected
    assert expected & ~DOCKER_MASK  # so the comparison above means something
    assert fields["NoNewPrivs"].strip() == "0"


def test_the_magic_says_privileged_loudly_and_only_when_asked(ipython_shell, capsys):
    ipython_shell.run_cell_magic("container", "--privileged", "pass")
    loud = [line for line in capsys.readouterr().err.splitlines() if "PRIVILEGED" in line]
    assert len(loud) == 1 and "every capability" in loud[0]
    ipython_shell.run_cell_magic("container", "", "pass")
    assert "PRIVILEGED" not in capsys.readouterr().err


@pytest.fixture
def setuid_root_id():
    """A setuid-root copy of /usr/bin/id in a root-owned directory, shown to containers at
    /shared (a volume): its path inside and the volume."""
    directory = tempfile.mkdtemp(prefix="nsmagic-setuid-", dir="/var/tmp")
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "id")
    shutil.copy("/usr/bin/id", path)
    os.chown(path, 0, 0)
    os.chmod(path, 0o4755)
    yield "/shared/id", f"{directory}:/shared:ro"
    shutil.rmtree(directory)


_AS_NOBODY_RUN = """
    import os, subprocess
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    print(os.geteuid(), subprocess.run([{path!r}, '-u'], capture_output=True,
                                       text=True).stdout.strip())
"""


@pytest.mark.root
@requires_root
def test_a_setuid_root_binary_gives_no_privileges_inside(setuid_root_id):
    path, volume = setuid_root_id
    out = run(_AS_NOBODY_RUN.format(path=path), volumes=[volume]).stdout
    assert out.split() == ["65534", "65534"]  # no_new_privs: the setuid bit is ignored


@pytest.mark.root
@requires_root
def test_the_setuid_binary_does_work_when_privileged_positive_control(setuid_root_id):
    path, volume = setuid_root_id
    out = run(_AS_NOBODY_RUN.format(path=path), privileged=True, volumes=[volume]).stdout
    assert out.split() == ["65534", "0"]


_BOUNDING_SET = """
    import ctypes
    libc = ctypes.CDLL(None)
    PR_CAPBSET_READ = 23
    print(sum(1 << cap for cap in range(64) if libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1))
"""


@pytest.fixture
def fake_proc():
    """A directory dressed as /proc whose cap_last_cap claims the kernel knows one capability."""
    directory = tempfile.mkdtemp(prefix="nsmagic-fakeproc-", dir="/var/tmp")
    os.chmod(directory, 0o755)
    os.makedirs(os.path.join(directory, "sys", "kernel"))
    with open(os.path.join(directory, "sys", "kernel", "cap_last_cap"), "w") as handle:
        handle.write("0\n")
    yield directory
    shutil.rmtree(directory)


def test_the_bounding_set_is_dockers_default_set():
    assert int(run(_BOUNDING_SET).stdout) == DOCKER_MASK


def test_a_volume_over_proc_does_not_keep_the_bounding_set(fake_proc):
    try:
        result = nsmagic.run(textwrap.dedent(_BOUNDING_SET), volumes=[f"{fake_proc}:/proc"])
    except SpecError:
        return  # refusing a volume on /proc is one fix
    assert result.ok, (result.describe(), result.stderr)
    assert int(result.stdout) == DOCKER_MASK


_LOAD_MODULE = """
    import ctypes, errno, platform
    libc = ctypes.CDLL(None, use_errno=True)
    init_module, finit_module = {numbers}[platform.machine()]
    # Nothing real: an empty image, and an invalid file descriptor.
    for name, args in (('init_module', (init_module, None, ctypes.c_ulong(0), b'')),
                       ('finit_module', (finit_module, -1, b'', 0))):
        code = libc.syscall(*args)
        print(name, errno.errorcode.get(ctypes.get_errno(), '?') if code else 'loaded')
""".replace("{numbers}", repr(MODULE_SYSCALLS))


def test_a_container_cannot_load_kernel_modules():
    # Refused by the seccomp filter before the kernel looks (without it: no CAP_SYS_MODULE,
    # EPERM too, or ENOSYS on kernels without modules).
    assert run(_LOAD_MODULE).stdout.split() == ["init_module", "EPERM", "finit_module", "EPERM"]


@pytest.mark.root
@requires_root
@pytest.mark.skipif(not KERNEL_HAS_MODULES, reason="this kernel has no module support")
def test_module_loading_gets_past_the_permission_check_when_privileged_positive_control():
    # With CAP_SYS_MODULE the kernel checks the (empty, invalid) arguments instead.
    out = run(_LOAD_MODULE, privileged=True, namespaces={"pid", "mount", "ipc", "uts", "net",
                                                         "cgroup"}).stdout.split()
    assert out[0] == "init_module" and out[1] not in ("EPERM", "loaded")
    assert out[2] == "finit_module" and out[3] == "EBADF"


# --- the notebook's environment --------------------------------------------------------------


_FIND_SECRET = """
    import os
    secret = {secret!r}
    print(secret in os.environ.values(),
          secret.encode() in open('/proc/self/environ', 'rb').read())
"""


def test_the_notebooks_environment_is_neither_in_a_containers_nor_in_its_memory(
        monkeypatch):
    # A process's exec-time environment stays readable in its memory (/proc/self/environ),
    # and containers are forks of the fork server: it must not start with the notebook's.
    secret = f"nsmagic-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    launcher = ForkServerLauncher()  # started now, with the secret in our environment
    try:
        out = run(_FIND_SECRET.format(secret=secret), launcher=launcher).stdout
        assert out.split() == ["False", "False"]
        # Positive control: asked for by name, the variable is passed (and only then).
        out = run(_FIND_SECRET.format(secret=secret), launcher=launcher,
                  env={"AWS_SECRET_ACCESS_KEY": secret}).stdout
        assert out.split()[0] == "True"
    finally:
        launcher.close()


def test_nothing_is_left_running_after_the_escape_attempts():
    assert wait_until(lambda: not running_containers(), 5)
