"""Findings 1, 12, 13, 15 and 17 of issue 15: the host kernel's settings and bookkeeping
(/proc/sys, /sys, cgroups, loop devices, timers, firmware, the host name, /tmp's size).

No probe ever writes a kernel setting: "writable" means the file opens for writing (the
check the kernel makes at open: a read-only mount answers EROFS there), and nothing is then
written. Each row: nsmagic's default, a positive control that switches the protection off,
and runc with Docker's defaults as the reference (root, where runc is installed).
"""

from __future__ import annotations

import fcntl
import os
import socket

import pytest

from ..conftest import IS_ROOT, requires_root
from ..reference.runc import runc_available
from .harness import compare, in_nsmagic, in_runc, observe, refused, unique

# Opened for writing, never written; O_NONBLOCK and O_NOCTTY so no open can block or take a
# terminal.
OPENS_FOR_WRITING = """
    import errno, json, os
    seen = {}
    for path in PATHS:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY))
            seen[path] = "opened"
        except OSError as error:
            seen[path] = errno.errorcode.get(error.errno, str(error.errno))
    print(json.dumps({"reached": "opened" in seen.values(), "paths": seen}))
"""


def opens_for_writing(paths: list[str]) -> str:
    return OPENS_FOR_WRITING.replace("PATHS", repr(paths))


HOST_ROOT = {"host_root": True}
ROOT_ONLY_CONTROL = HOST_ROOT if IS_ROOT else None  # the host's files are root's


# --- 1. /proc/sys --------------------------------------------------------------------------


def test_1_core_pattern_does_not_open_for_writing():
    # A pipe in kernel.core_pattern makes the host kernel run a program as full root outside
    # every namespace. As nobody the control cannot open it either (host root owns it): the
    # namespaced rows below are its control there.
    verdicts = compare(1, "/proc/sys/kernel/core_pattern opens for writing",
                       opens_for_writing(["/proc/sys/kernel/core_pattern"]),
                       control=ROOT_ONLY_CONTROL, runc={})
    refused(verdicts)


def test_1_sysrq_trigger_does_not_open_for_writing():
    if not os.path.exists("/proc/sysrq-trigger"):
        pytest.skip("this kernel has no /proc/sysrq-trigger")
    verdicts = compare(1, "/proc/sysrq-trigger opens for writing",
                       opens_for_writing(["/proc/sysrq-trigger"]),
                       control=ROOT_ONLY_CONTROL, runc={})
    refused(verdicts)


COUNT_WRITABLE_SYSCTLS = """
    import json, os
    opened, total = [], 0
    for parent, _, files in os.walk("/proc/sys"):
        for name in files:
            path = os.path.join(parent, name)
            total += 1
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # never written
                opened.append(path)
            except OSError:
                pass
    print(json.dumps({"reached": bool(opened), "writable": len(opened), "of": total,
                      "some": sorted(opened)[:5]}))
"""


def test_1_no_sysctl_opens_for_writing():
    # The control: the host's root gives the container a /proc without read-only paths, so
    # every sysctl its root owns opens (as nobody: its own network namespace's net.*).
    verdicts = compare(1, "sysctls under /proc/sys that open for writing",
                       COUNT_WRITABLE_SYSCTLS, control=HOST_ROOT, runc={})
    refused(verdicts)


def test_1_a_namespaced_sysctl_of_its_own_network_is_read_only_too():
    # net.ipv4.ip_forward of the container's own network namespace: root inside with
    # CAP_NET_ADMIN over it opens it (also as nobody), so only the read-only /proc/sys
    # refuses it.
    verdicts = compare(1, "its own net.ipv4.ip_forward opens for writing",
                       opens_for_writing(["/proc/sys/net/ipv4/ip_forward"]),
                       control={"host_root": True, "privileged": True}, runc={})
    refused(verdicts)


# --- 12. /sys ------------------------------------------------------------------------------

HOST_SYSFS_KNOBS = ["/sys/kernel/mm/transparent_hugepage/enabled", "/sys/kernel/mm/ksm/run",
                    "/sys/power/state"]


def test_12_host_sysfs_knobs_do_not_open_for_writing():
    knobs = [path for path in HOST_SYSFS_KNOBS if os.path.exists(path)]
    if not knobs:
        pytest.skip("this kernel has none of THP, KSM or /sys/power")
    verdicts = compare(12, "THP, KSM, /sys/power/state open for writing",
                       opens_for_writing(knobs), control=ROOT_ONLY_CONTROL, runc={})
    refused(verdicts)


LIST_NETWORK_INTERFACES = """
    import json, os
    host = set(HOST_INTERFACES)
    try:
        seen = sorted(os.listdir("/sys/class/net"))
    except OSError as error:
        seen = ["error " + str(error.errno)]
    print(json.dumps({"reached": bool(host & set(seen) - {"lo"}), "listed": seen}))
"""


def test_12_sys_class_net_lists_only_the_containers_own_interfaces():
    host = sorted(os.listdir("/sys/class/net"))
    if set(host) <= {"lo"}:
        pytest.skip("the host has no interface but lo")
    verdicts = compare(12, "/sys/class/net lists host interfaces",
                       LIST_NETWORK_INTERFACES.replace("HOST_INTERFACES", repr(host)),
                       control=HOST_ROOT, runc={})
    refused(verdicts)


SYSFS_MOUNT = """
    import json
    options = None
    for line in open("/proc/self/mountinfo"):
        fields = line.split()
        if fields[4] == "/sys":
            options = fields[5].split(",")
    print(json.dumps({"reached": options is not None and "rw" in options,
                      "options": options}))
"""


def test_12_sys_is_mounted_read_only():
    verdicts = compare(12, "/sys mounted read-write", SYSFS_MOUNT, control=HOST_ROOT, runc={})
    refused(verdicts)


# --- 17. timers, firmware, the host's name, /tmp ---------------------------------------------

READ_TIMER_LIST = """
    import errno, json
    try:
        size = len(open("/proc/timer_list", "rb").read())
        seen = f"{size} bytes"
    except OSError as error:
        size, seen = 0, errno.errorcode.get(error.errno, str(error.errno))
    print(json.dumps({"reached": size > 0, "read": seen}))
"""


def test_17_proc_timer_list_reads_empty():
    if not os.path.exists("/proc/timer_list"):
        pytest.skip("this kernel has no /proc/timer_list")
    # The host's is mode 0400, root's: as nobody the control could not read it either.
    verdicts = compare(17, "/proc/timer_list readable", READ_TIMER_LIST,
                       control=ROOT_ONLY_CONTROL, runc={})
    refused(verdicts)


LIST_FIRMWARE = """
    import errno, json, os
    try:
        seen = sorted(os.listdir("/sys/firmware"))
    except OSError as error:
        seen = ["error " + errno.errorcode.get(error.errno, str(error.errno))]
    print(json.dumps({"reached": bool(seen) and not seen[0].startswith("error"),
                      "listed": seen}))
"""


def test_17_sys_firmware_lists_nothing():
    if not os.listdir("/sys/firmware"):
        pytest.skip("the host's /sys/firmware is empty")
    verdicts = compare(17, "/sys/firmware listable", LIST_FIRMWARE, control=HOST_ROOT,
                       runc={})
    refused(verdicts)


NO_UTS = {"pid", "ipc", "net", "mount", "cgroup"}


def test_17_without_uts_the_hosts_name_does_not_open_for_writing():
    before = socket.gethostname()
    script = opens_for_writing(["/proc/sys/kernel/hostname", "/proc/sys/kernel/domainname"])
    verdicts = compare(17, "--no-uts: /proc/sys/kernel/hostname opens for writing", script,
                       options={"namespaces": NO_UTS},
                       control={"namespaces": NO_UTS, "host_root": True} if IS_ROOT else None,
                       runc={})
    assert socket.gethostname() == before
    refused(verdicts)


RAM_FILESYSTEMS = """
    import ctypes, json, os
    libc = ctypes.CDLL(None, use_errno=True)
    ram = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1])
    half_of_ram = ram * 1024 // 2
    types = {}
    for line in open("/proc/self/mountinfo"):
        fields = line.split()
        types[fields[4]] = fields[fields.index("-") + 1]
    sizes = {}
    for path in ("/tmp", "/", "/var/tmp", "/usr"):
        if not os.path.isdir(path):
            continue
        st = os.statvfs(path)
        sizes[path] = [types.get(path, "?"), st.f_blocks * st.f_frsize]
    # An unbounded RAM file system of its own: one the container has (tmpfs at the kernel's
    # default size, half of the host's memory) or one it may mount.
    os.makedirs("/tmp/probe-mount", exist_ok=True)
    mounted = libc.mount(b"tmpfs", b"/tmp/probe-mount", b"tmpfs", 0, None) == 0
    unsized = sizes["/tmp"][0] == "tmpfs" and sizes["/tmp"][1] >= half_of_ram * 0.9
    print(json.dumps({"reached": unsized or mounted, "tmp_unsized": unsized,
                      "mounted_unsized_tmpfs": mounted, "half_of_ram": half_of_ram,
                      "type_and_bytes": sizes}))
"""


def test_17_tmp_is_not_an_unbounded_ram_file_system():
    # Control: --privileged may mount a tmpfs of the kernel's default size itself.
    verdicts = compare(17, "/tmp an unsized tmpfs (half the host's RAM)", RAM_FILESYSTEMS,
                       control={"privileged": True}, runc={})
    refused(verdicts)


# --- 13. raising its own limits ----------------------------------------------------------------

RAISE_OWN_LIMITS = """
    import ctypes, errno, json, os
    libc = ctypes.CDLL(None, use_errno=True)
    CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUSER = 0x20000, 0x02000000, 0x10000000
    WANTED = {"memory": ("memory.limit_in_bytes", 96 << 20), "pids": ("pids.max", 48)}

    def err():
        return errno.errorcode.get(ctypes.get_errno(), "?")

    def try_raise(steps):
        for controller, (name, value) in WANTED.items():
            target = f"/tmp/cg-{controller}-{os.getpid()}"
            os.makedirs(target, exist_ok=True)
            if libc.mount(b"cgroup", target.encode(), b"cgroup", 0, controller.encode()):
                steps[controller] = "mount " + err()
                continue
            try:
                with open(f"{target}/{name}", "w") as handle:
                    handle.write(str(value))
                steps[controller] = "raised"
            except OSError as error:
                steps[controller] = "write " + errno.errorcode.get(error.errno, "?")

    steps = {}
    try_raise(steps)  # directly: needs CAP_SYS_ADMIN
    direct = dict(steps)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        nested = {}
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWCGROUP):
            nested["unshare"] = err()
        else:
            nested["unshare"] = "ok"
            try:
                for name, text in (("setgroups", "deny"), ("uid_map", "0 0 1"),
                                   ("gid_map", "0 0 1")):
                    with open(f"/proc/self/{name}", "w") as handle:
                        handle.write(text)
                try_raise(nested)
            except OSError as error:
                nested["maps"] = errno.errorcode.get(error.errno, "?")
        os.write(write_end, json.dumps(nested).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    nested = json.loads(os.read(read_end, 65536) or b"{}")

    def own(path):
        try:
            return open(path).read().strip()
        except OSError as error:
            return "error " + errno.errorcode.get(error.errno, "?")

    limits = {"memory": own("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
              "pids": own("/sys/fs/cgroup/pids/pids.max")}
    raised = "raised" in list(direct.values()) + list(nested.values())
    print(json.dumps({"reached": raised, "direct": direct, "nested": nested,
                      "limits_after": limits}))
"""


@pytest.mark.root
@requires_root
def test_13_a_container_cannot_raise_its_own_limits_through_a_nested_cgroup_mount():
    # The control: without the seccomp filter, unshare(CLONE_NEWUSER) is allowed and root of
    # the nested namespaces mounts the v1 hierarchies and writes the limits (of its own
    # cgroup, which ends with it).
    limits = {"memory": "64M", "pids": 32}
    verdicts = compare(13, "raise memory/pids limits via nested userns + cgroup v1 mount",
                       RAISE_OWN_LIMITS, options=limits, control={**limits, "seccomp": False},
                       runc={})
    assert verdicts["nsmagic"]["limits_after"] == {"memory": str(64 << 20), "pids": "32"}
    refused(verdicts)


# --- 15. loop devices and cgroups that stay on the host ---------------------------------------

LOOP_CTL_ADD, LOOP_CTL_REMOVE = 0x4C80, 0x4C81
OTHER_HIERARCHIES = ("blkio", "devices", "systemd", "unified")

CREATE_LOOP_AND_CGROUPS = """
    import ctypes, errno, fcntl, json, os, stat
    libc = ctypes.CDLL(None, use_errno=True)
    NUMBER, NAME = LOOP_NUMBER, "CGROUP_NAME"
    seen = {}

    def name(error):
        return errno.errorcode.get(error.errno, str(error.errno))

    # A loop device: the host's /dev/loop-control, or one made with CAP_MKNOD.
    try:
        os.mknod("/tmp/loop-control", stat.S_IFCHR | 0o600, os.makedev(10, 237))
        seen["mknod"] = "ok"
    except OSError as error:
        seen["mknod"] = name(error)
    for path in ("/dev/loop-control", "/tmp/loop-control"):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as error:
            seen[path] = "open " + name(error)
            continue
        try:
            fcntl.ioctl(fd, 0x4C80, NUMBER)
            seen[path] = "added"
        except OSError as error:
            seen[path] = "ioctl " + name(error)
        os.close(fd)
    # cgroups in hierarchies nsmagic does not use: through /sys/fs/cgroup or a fresh mount.
    sources = {"blkio": (b"cgroup", b"blkio"), "devices": (b"cgroup", b"devices"),
               "systemd": (b"cgroup", b"none,name=systemd"), "unified": (b"cgroup2", None)}
    for hierarchy, (fstype, options) in sources.items():
        for base in (f"/sys/fs/cgroup/{hierarchy}", f"/tmp/mnt-{hierarchy}"):
            if base.startswith("/tmp/"):
                os.makedirs(base, exist_ok=True)
                if libc.mount(b"cgroup", base.encode(), fstype, 0, options):
                    seen[base] = "mount " + errno.errorcode.get(ctypes.get_errno(), "?")
                    continue
            try:
                os.mkdir(f"{base}/{NAME}")
                seen[base] = "created"
            except OSError as error:
                seen[base] = "mkdir " + name(error)
    print(json.dumps({"reached": "added" in seen.values() or "created" in seen.values(),
                      **seen}))
"""


def _free_loop_number() -> int:
    taken = {int(n[4:]) for n in os.listdir("/sys/block") if n[4:].isdigit()
             and n.startswith("loop")}
    return next(n for n in range(200 + os.getpid() % 500, 100000) if n not in taken)


def _cgroups_named(name: str) -> list[str]:
    found = []
    for parent, directories, _ in os.walk("/sys/fs/cgroup"):
        if name in directories:
            found.append(os.path.join(parent, name))
    return found


def _remove_loop(number: int) -> bool:
    """Remove /dev/loopNUMBER if a probe made it; True if there was one."""
    if not os.path.exists(f"/sys/block/loop{number}"):
        return False
    fd = os.open("/dev/loop-control", os.O_RDWR)
    try:
        fcntl.ioctl(fd, LOOP_CTL_REMOVE, number)
    finally:
        os.close(fd)
    return True


@pytest.mark.root
@requires_root
def test_15_loop_devices_and_cgroups_made_inside_do_not_stay_on_the_host():
    rows = []
    try:
        # Control: the host's /dev and /sys/fs/cgroup, every capability, no device policy.
        control = {"host_root": True, "privileged": True}
        for mode, options in (("nsmagic", {}), ("control", control), ("runc", None)):
            number, name = _free_loop_number(), unique("cgroup")
            script = (CREATE_LOOP_AND_CGROUPS.replace("LOOP_NUMBER", str(number))
                      .replace("CGROUP_NAME", name))
            rows.append((number, name))
            if mode == "runc":
                if not runc_available():
                    continue
                verdict = in_runc(script)
            else:
                verdict = in_nsmagic(script, **options)
            left = {"loop_device": os.path.exists(f"/sys/block/loop{number}"),
                    "cgroups": _cgroups_named(name)}
            verdict = observe(15, "loop device / cgroup created inside stays on the host",
                              mode, {**verdict, "reached": bool(left["loop_device"]
                                                                or left["cgroups"]),
                                     "left_on_host": left})
            if mode == "control":
                assert verdict["reached"], verdict
            else:
                assert not verdict["reached"], verdict
    finally:
        for number, name in rows:
            _remove_loop(number)
            for path in _cgroups_named(name):
                os.rmdir(path)

