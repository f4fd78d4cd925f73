"""The runc reference reproduces what `docker run` gives a default container, on this host.

Each test states a documented behaviour of Docker's defaults and checks it under the
reference; where a check could pass for the wrong reason, a positive control relaxes the one
default in question (a seccomp profile, the masked or read-only paths, the device cgroup) and
shows the same attempt getting through. Nothing a probe does may reach the host: no test
writes a sysctl, and the controls only open what they would otherwise be refused.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import threading
import time
import uuid

import pytest

from ..conftest import our_cgroups, requires_root
from . import runc, seccomp
from .bundle import DOCKER_CAPABILITIES, MASKED_PATHS, PATH, USERNS_HOST_ID, USERNS_SIZE
from .runc import ProbeTimeout, RuncFailed, requires_runc, run_probe

pytestmark = [pytest.mark.root, requires_root, requires_runc]

# Bit numbers of Docker's capabilities (linux/capability.h).
CAPABILITY_BITS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4,
                   "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
                   "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13, "CAP_SYS_CHROOT": 18,
                   "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31}
DOCKER_MASK = sum(1 << CAPABILITY_BITS[name] for name in DOCKER_CAPABILITIES)


def probe(script: str, **options) -> list | dict:  # noqa: ANN003
    """Run a Python probe that prints one JSON value; return that value."""
    result = run_probe(script, language="python", **options)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def status_fields(text: str) -> dict[str, str]:
    return {key: value.strip() for key, value in
            (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def leftovers(marker: str) -> list[str]:
    """Anything of the reference's still on the host: runc state, bundles, cgroups,
    processes whose command line names the marker."""
    found = [f"/run/runc/{n}" for n in os.listdir("/run/runc") if marker in n] \
        if os.path.isdir("/run/runc") else []
    found += [f"/tmp/{n}" for n in os.listdir("/tmp") if marker in n]
    found += [path for path in our_cgroups() if marker in path]
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if marker.encode() in handle.read():
                    found.append(f"process {entry}")
        except OSError:
            pass
    return found


OUR_MARKER = f"nsmagic-{os.getpid()}-ref-"


# --- the harness -----------------------------------------------------------------------------


@pytest.mark.parametrize("language,script", [
    ("sh", "echo out; echo err >&2; exit 3"),
    ("python", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"),
])
def test_a_probe_gives_its_exit_status_and_output(language, script):
    result = run_probe(script, language=language)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_a_container_runc_cannot_start_is_an_error_not_a_result(monkeypatch):
    monkeypatch.setitem(runc.INTERPRETERS, "sh", "/nonexistent/sh")
    with pytest.raises(RuncFailed, match="nonexistent"):
        run_probe("true")
    assert leftovers(OUR_MARKER) == []


def test_a_probe_that_runs_over_its_timeout_is_killed_and_leaves_nothing():
    started = time.monotonic()
    with pytest.raises(ProbeTimeout):
        run_probe("sleep 60", timeout=1)
    assert time.monotonic() - started < 15
    assert leftovers(OUR_MARKER) == []


def test_ctrl_c_during_a_probe_leaves_nothing():
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT does not raise KeyboardInterrupt in this process")
    # As a terminal's Ctrl-C: SIGINT to the main thread, here while it waits for runc.
    timer = threading.Timer(1.0, signal.pthread_kill,
                            (threading.main_thread().ident, signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_probe("sleep 60")
    finally:
        timer.cancel()
    assert time.monotonic() - started < 15
    assert leftovers(OUR_MARKER) == []


# --- process ---------------------------------------------------------------------------------


def test_the_process_has_dockers_capabilities_and_a_seccomp_filter_but_no_no_new_privs():
    result = run_probe("cat /proc/self/status")
    fields = status_fields(result.stdout)
    for name in ("CapBnd", "CapEff", "CapPrm"):
        assert int(fields[name], 16) == DOCKER_MASK, name
    assert int(fields["CapInh"], 16) == int(fields["CapAmb"], 16) == 0
    assert fields["Seccomp"] == "2"  # filter mode
    # Docker's default: setuid binaries work unless --security-opt no-new-privileges.
    assert fields["NoNewPrivs"] == "0"


def test_the_environment_is_dockers_and_none_of_the_callers():
    # What runc passed at exec (Python itself adds LC_CTYPE to os.environ under the C locale).
    environment = probe("""
import json
pairs = open('/proc/1/environ', 'rb').read().decode().split('\\0')
print(json.dumps(dict(pair.split('=', 1) for pair in pairs if pair)))
""")
    assert sorted(environment) == ["HOME", "HOSTNAME", "PATH"]  # HOME: runc, from /etc/passwd
    assert environment["PATH"] == PATH and environment["HOME"] == "/root"
    assert "NSMAGIC_TEST_SESSION" in os.environ  # the caller's, not passed on


def test_the_hostname_is_the_containers_and_cannot_be_changed():
    host = socket.gethostname()
    seen = probe("""
import errno, json, os, socket
try:
    socket.sethostname('changed-by-a-probe')
    attempt = 'changed'
except OSError as error:
    attempt = errno.errorcode[error.errno]
print(json.dumps([socket.gethostname(), os.environ['HOSTNAME'],
                  open('/etc/hostname').read().strip(), attempt]))
""")
    name = seen[0]
    assert seen == [name, name, name, "EPERM"]  # no CAP_SYS_ADMIN
    assert len(name) == 12 and int(name, 16) >= 0 and name != host  # Docker's: 12 hex digits
    assert socket.gethostname() == host


# --- /proc -----------------------------------------------------------------------------------

_CORE_PATTERN = """
import errno, json, os
try:
    # Opened, never written: the positive control must not change the host's sysctl.
    os.close(os.open('/proc/sys/kernel/core_pattern', os.O_WRONLY))
    print(json.dumps('opened for writing'))
except OSError as error:
    print(json.dumps(errno.errorcode[error.errno]))
"""


@pytest.mark.parametrize("userns,refused", [
    (False, "EROFS"),  # readonlyPaths: /proc/sys is a read-only bind
    # Root of a user namespace does not own the init namespace's sysctls: the permission
    # check refuses before the read-only mount is looked at.
    (True, "EACCES"),
], ids=["root", "userns"])
def test_core_pattern_cannot_be_opened_for_writing(userns, refused):
    with open("/proc/sys/kernel/core_pattern") as handle:
        before = handle.read()
    assert probe(_CORE_PATTERN, userns=userns) == refused
    with open("/proc/sys/kernel/core_pattern") as handle:
        assert handle.read() == before


def test_core_pattern_opens_for_writing_without_the_read_only_paths_positive_control():
    assert probe(_CORE_PATTERN, relax={"readonly_paths"}) == "opened for writing"


_MASKED = """
import json, os, sys
seen = {}
for path in sys.argv[1:]:
    if os.path.isdir(path):
        seen[path] = sorted(os.listdir(path))
    elif os.path.exists(path):
        with open(path, 'rb') as handle:
            seen[path] = [os.stat(path).st_size, len(handle.read(4096))]
print(json.dumps(seen))
"""


def _masked_probe(paths: list[str], **options) -> dict:  # noqa: ANN003
    script = _MASKED.replace("sys.argv[1:]", repr(paths))
    return probe(script, **options)


def test_the_masked_paths_are_empty_kcore_too_where_the_kernel_has_one():
    present = [path for path in MASKED_PATHS if os.path.exists(path)]
    assert present, "no masked path exists on this host: nothing to check"
    seen = _masked_probe(present)
    assert set(seen) == set(present)  # masked, not removed
    for path, value in seen.items():
        assert value in ([], [0, 0]), (path, value)  # an empty tmpfs, or /dev/null
    if os.path.exists("/proc/kcore"):
        assert seen["/proc/kcore"] == [0, 0]


def test_a_masked_file_has_its_contents_without_the_masked_paths_positive_control():
    if not os.path.exists("/proc/timer_list"):
        pytest.skip("this kernel has no /proc/timer_list")
    assert _masked_probe(["/proc/timer_list"])["/proc/timer_list"][1] == 0
    assert _masked_probe(["/proc/timer_list"],
                         relax={"masked_paths"})["/proc/timer_list"][1] > 0


# --- seccomp ---------------------------------------------------------------------------------


def test_the_profile_is_dockers_own_default_json_as_debian_ships_it():
    profile = seccomp.docker_profile()
    assert profile.package == "golang-github-docker-docker-dev"
    assert profile.member.endswith("/docker/docker/profiles/seccomp/default.json")
    section = seccomp.to_oci(profile, frozenset(DOCKER_CAPABILITIES), "x86_64", "6.18.0")
    # An allow-list; anything else EPERM (no defaultErrnoRet: runc's default errno).
    assert section["defaultAction"] == "SCMP_ACT_ERRNO" and "defaultErrnoRet" not in section
    assert section["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    allowed = {name for rule in section["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW"
               and not rule.get("args") for name in rule["names"]}
    assert "read" in allowed and "arch_prctl" in allowed  # amd64-only rules included
    assert not allowed & {"keyctl", "add_key", "request_key", "unshare", "mount", "setns",
                          "bpf", "perf_event_open", "userfaultfd", "kexec_load",
                          "open_by_handle_at", "init_module"}

_KEYCTL_AND_USERNS = """
import ctypes, errno, json, platform
libc = ctypes.CDLL(None, use_errno=True)
SYS_KEYCTL = {'x86_64': 250, 'aarch64': 219}[platform.machine()]
KEYCTL_GET_KEYRING_ID, KEYCTL_DESCRIBE, KEY_SPEC_SESSION_KEYRING = 0, 6, -3
CLONE_NEWUSER = 0x10000000

def outcome(code):
    return errno.errorcode[ctypes.get_errno()] if code < 0 else 'ok'

serial = libc.syscall(SYS_KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
keyring = ''
if serial > 0:
    buffer = ctypes.create_string_buffer(256)
    libc.syscall(SYS_KEYCTL, KEYCTL_DESCRIBE, serial, buffer, 256)
    keyring = buffer.value.decode()
print(json.dumps({'keyctl': outcome(serial), 'serial': serial, 'keyring': keyring,
                  'unshare(CLONE_NEWUSER)': outcome(libc.unshare(CLONE_NEWUSER))}))
"""


@pytest.mark.parametrize("profile,refused", [
    ("docker", "EPERM"),
    # Positive control: the same calls work with no filter.
    ("unconfined", "ok"),
    # podman's profile (containers/common) leaves both to capabilities and the kernel,
    # which allow them: it is not Docker's, whatever it descends from.
    ("containers-common", "ok"),
])
def test_keyctl_and_a_new_user_namespace_are_refused_by_dockers_seccomp_profile(
        profile, refused):
    seen = probe(_KEYCTL_AND_USERNS, seccomp=profile)
    assert seen["keyctl"] == seen["unshare(CLONE_NEWUSER)"] == refused


def test_each_container_joins_a_fresh_session_keyring():
    libc = ctypes.CDLL(None, use_errno=True)
    ours = libc.syscall({"x86_64": 250, "aarch64": 219}[os.uname().machine], 0, -3, 0)
    seen = probe(_KEYCTL_AND_USERNS, seccomp="unconfined")
    # runc names it after the container: "keyring;uid;gid;perm;_ses.<container id>".
    name = seen["keyring"].rsplit(";", 1)[1]
    assert name.startswith("_ses." + OUR_MARKER)
    assert seen["serial"] != ours


@pytest.mark.parametrize("userns", [False, True], ids=["root", "userns"])
def test_userns_maps_root_to_dockremaps_range_and_keeps_the_profile(userns):
    seen = probe("""
import json
print(json.dumps(open('/proc/self/uid_map').read().split()))
""", userns=userns)
    expected = ["0", str(USERNS_HOST_ID), str(USERNS_SIZE)] if userns else ["0", "0",
                                                                           "4294967295"]
    assert seen == expected
    assert probe(_KEYCTL_AND_USERNS, userns=userns)["keyctl"] == "EPERM"


# --- devices ---------------------------------------------------------------------------------

_BLOCK_DEVICE = """
import errno, json, os
numbers = sorted(os.listdir('/sys/dev/block'))  # the host's, as a fresh sysfs shows them
major, minor = map(int, numbers[0].split(':'))
steps = []
try:
    os.mknod('/tmp/block', 0o600 | 0o060000, os.makedev(major, minor))
    steps.append('made')
    # Read-only, and nothing read: the positive control only shows that it opens.
    os.close(os.open('/tmp/block', os.O_RDONLY))
    steps.append('opened')
except OSError as error:
    steps.append(errno.errorcode[error.errno])
print(json.dumps(steps))
"""


@pytest.mark.parametrize("relax,expected", [
    ((), ["made", "EPERM"]),  # the device cgroup allows mknod of any node, no access
    ({"devices"}, ["made", "opened"]),  # positive control: the cgroup allows everything
], ids=["default", "devices-allowed"])
def test_a_block_device_node_can_be_made_but_not_opened(relax, expected):
    if not os.listdir("/sys/dev/block"):
        pytest.skip("this host has no block device")
    assert probe(_BLOCK_DEVICE, relax=relax) == expected


def test_the_device_cgroup_is_dockers_allow_list():
    listed = run_probe("cat /sys/fs/cgroup/devices/devices.list 2>/dev/null").stdout.split("\n")
    if not any(listed):
        pytest.skip("no cgroup v1 devices controller (v2 uses a BPF program: nothing to read)")
    docker = {"c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm",
              "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm", "c *:* m", "b *:* m"}
    assert docker <= set(listed)
    # runc 1.1 also allows tun/tap (10:200) to every container; Docker's list does not.
    assert set(filter(None, listed)) - docker <= {"c 10:200 rwm"}


def test_dev_holds_only_the_standard_nodes_and_shm_is_64_mib():
    seen = probe("""
import json, os, stat
nodes = {}
for directory, _, names in os.walk('/dev'):
    for name in names:
        mode = os.lstat(os.path.join(directory, name)).st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            nodes[os.path.join(directory, name)] = 'c' if stat.S_ISCHR(mode) else 'b'
shm = os.statvfs('/dev/shm')
print(json.dumps([sorted(nodes), shm.f_blocks * shm.f_frsize]))
""")
    nodes, shm_bytes = seen
    standard = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
                "/dev/tty", "/dev/console", "/dev/pts/ptmx"}
    assert {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
            "/dev/tty"} <= set(nodes) <= standard
    assert shm_bytes == 64 << 20


# --- files -----------------------------------------------------------------------------------


def test_etc_shadow_and_the_hosts_accounts_and_homes_are_not_there():
    assert os.path.exists("/etc/shadow")  # so its absence below means something
    seen = probe("""
import json, os
passwd = [line.split(':')[0] for line in open('/etc/passwd')]
print(json.dumps([os.path.exists('/etc/shadow'), passwd, os.listdir('/root'),
                  os.path.exists('/home'), os.path.exists('/var')]))
""")
    assert seen == [False, ["root", "nobody"], [], False, False]


def test_the_root_is_thrown_away_and_the_hosts_userland_is_read_only():
    marker = f"nsmagic-reference-{uuid.uuid4().hex}"
    seen = probe(f"""
import errno, json
outcomes = []
for path in ('/etc/{marker}', '/usr/{marker}', '/bin/{marker}'):
    try:
        open(path, 'w').close()
        outcomes.append('written')
    except OSError as error:
        outcomes.append(errno.errorcode[error.errno])
print(json.dumps(outcomes))
""")
    assert seen == ["written", "EROFS", "EROFS"]
    assert not any(os.path.exists(f"/{d}/{marker}") for d in ("etc", "usr", "bin"))


def test_sys_is_a_fresh_read_only_sysfs_of_the_containers_network_namespace():
    seen = probe("""
import errno, json, os
try:
    open('/sys/kernel/mm/transparent_hugepage/enabled', 'w')
    attempt = 'opened for writing'
except OSError as error:
    attempt = errno.errorcode[error.errno]
options = [line.split()[3].split(',') for line in open('/proc/mounts')
           if line.split()[1] == '/sys']
print(json.dumps([attempt, 'ro' in options[0], sorted(os.listdir('/sys/class/net'))]))
""")
    assert seen == ["EROFS", True, ["lo"]]
