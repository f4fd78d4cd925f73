"""Device policy: a container's cgroup lets its processes make any device node but open only
Docker's default devices (v1 devices controller, v2 device filter), even with CAP_MKNOD.

The behaviour tests run on the real kernel: v1 on this hybrid host, v2 in the cgroup v2 guest
(marked cgroup_v2) and on the hybrid host's cgroup2 mount, where the kernel runs a device
filter just as a v2 host does.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import struct
import sys
import tempfile
import time
import uuid

import pytest
from cg_helpers import WAIT, assert_gone, go

from nsmagic.cgroups.devices import CONTAINER_DEVICES, DeviceRule
from nsmagic.cgroups.rlimit import RlimitDriver
from nsmagic.cgroups.v1 import V1Driver
from nsmagic.cgroups.v1 import devices as v1_devices
from nsmagic.cgroups.v2 import V2Driver, find_base
from nsmagic.cgroups.v2 import devices as device_filter
from nsmagic.errors import CapabilityError, SpecError

# Docker's default rules but the console (5:1): a container has none of its own here.
DOCKER_DEFAULTS = [
    "c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
    "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm",
]

# The probe's nodes: one allowed (null's numbers), two denied ones that root opens outside a
# device policy (/dev/kmsg's numbers, and loop0's: a block device). loop0 answers ENXIO where
# the loop driver is not loaded (the v2 guest), which is still not EPERM.
NODES = {"null": ("c", 1, 3), "kmsg": ("c", 1, 11), "loop0": ("b", 7, 0)}


# -- the rules and the program, without a kernel -------------------------------------------
def test_containers_get_dockers_default_device_rules():
    assert [str(rule) for rule in CONTAINER_DEVICES] == DOCKER_DEFAULTS


def test_a_rule_is_validated_when_made():
    with pytest.raises(SpecError, match="kind"):
        DeviceRule("x", 1, 3)
    with pytest.raises(SpecError, match="access"):
        DeviceRule("c", 1, 3, "rx")
    with pytest.raises(SpecError, match="major number is 0 to 4095"):
        DeviceRule("c", 4096, 0)
    with pytest.raises(SpecError, match="takes no major"):
        DeviceRule("a", 1, None)


def interpret(code: bytes, access: int, kind: int, major: int, minor: int) -> int:
    """Run an encoded device program (the few opcodes the filter uses) on one request."""
    ctx = struct.pack("=III", access << 16 | kind, major, minor)
    regs, pc, mask = [0] * 11, 0, (1 << 64) - 1
    while True:
        op, pair, off, imm = struct.unpack_from("=BBhi", code, 8 * pc)
        dst, src = (pair & 15, pair >> 4) if sys.byteorder == "little" else (pair >> 4, pair & 15)
        pc += 1
        if op == device_filter.LDX_W:
            assert src == device_filter.R1 and off in (0, 4, 8), "only context loads"
            regs[dst] = struct.unpack_from("=I", ctx, off)[0]
        elif op == device_filter.MOV_K:
            regs[dst] = imm & mask
        elif op == device_filter.MOV_X:
            regs[dst] = regs[src]
        elif op == device_filter.AND_K:
            regs[dst] &= imm & mask
        elif op == device_filter.RSH_K:
            regs[dst] >>= imm
        elif op == device_filter.JNE_K:
            pc += off if regs[dst] != imm & mask else 0
        elif op == device_filter.EXIT:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {op:#x} at {pc - 1}")


def allowed_by(rules: list[DeviceRule], access: str, kind: str, major: int, minor: int) -> bool:
    """The meaning of a rule list: some rule covers the device and every access asked."""
    return any(rule.kind in ("a", kind) and rule.major in (None, major)
               and rule.minor in (None, minor) and set(access) <= set(rule.access)
               for rule in rules)


RULE_SETS = {
    "docker": list(CONTAINER_DEVICES),
    "nothing": [],
    "read-anything": [DeviceRule("a", None, None, "r")],
    "disks-and-tun": [DeviceRule("b", 8, None, "rw"), DeviceRule("c", 10, 200, "w")],
    "null-then-everything": [DeviceRule("c", 1, 3), DeviceRule("a", None, None, "rwm"),
                             DeviceRule("c", 1, 5)],
}


@pytest.mark.parametrize("rules", RULE_SETS.values(), ids=RULE_SETS.keys())
def test_the_program_allows_exactly_what_the_rules_allow(rules):
    code = device_filter._encode(device_filter.program(rules))
    accesses = ["".join(c) for n in (1, 2, 3) for c in itertools.combinations("rwm", n)]
    bits = {"m": 1, "r": 2, "w": 4}
    for access, kind, major, minor in itertools.product(
            accesses, "bc", (1, 5, 7, 8, 10, 136), (0, 1, 2, 3, 5, 7, 8, 9, 11, 200)):
        asked = sum(bits[a] for a in access)
        verdict = interpret(code, asked, {"b": 1, "c": 2}[kind], major, minor)
        assert verdict == allowed_by(rules, access, kind, major, minor), \
            (access, kind, major, minor)


def test_the_docker_filter_is_a_few_dozen_instructions():
    assert 30 <= len(device_filter.program(CONTAINER_DEVICES)) <= 80


# -- real kernels ------------------------------------------------------------------------
@pytest.mark.root
@pytest.mark.cgroup_v2
@pytest.mark.parametrize("rules", RULE_SETS.values(), ids=RULE_SETS.keys())
def test_the_kernels_verifier_accepts_each_program(rules):
    program = device_filter.DeviceProgram(rules)
    try:
        assert program.program_id() > 0
    finally:
        program.close()
    program.close()  # safe twice


@pytest.fixture(params=["v1", "v2"])
def kernel_driver(request, driver):
    """Each kind of kernel-backed driver this host has: its own, and on a hybrid host also a
    v2 driver over the cgroup2 mount (no controllers, but device filters run there)."""
    if request.param == driver.name:
        return driver
    if request.param == "v2" and driver.name == "v1":
        try:
            _, base = find_base()
        except CapabilityError as exc:
            pytest.skip(str(exc))
        return V2Driver(base)
    pytest.skip(f"this host has no cgroup {request.param} hierarchy for nsmagic")


@pytest.fixture
def make_restricted(kernel_driver):
    """Factory for groups with device rules (Docker's by default); each is removed, and
    checked gone, at the end."""
    created = []

    def make(rules=CONTAINER_DEVICES, drv=None):
        group = (drv or kernel_driver).create(f"t-{uuid.uuid4().hex[:8]}", devices=rules)
        created.append(group)
        return group

    try:
        yield make
    finally:
        for group in created:
            group.remove()
            assert_gone(group)


def devices_dir(group):
    """The directory holding the group's device policy."""
    return group.dirs["devices"] if group.driver == "v1" else group.path


def probe_code(where: str) -> str:
    """A child that waits, then in a private mount namespace mounts a tmpfs WITHOUT nodev on
    where, makes NODES there, and opens them and the real /dev/null; prints what happened."""
    return WAIT + f"""
import errno, json, os, stat
from nsmagic.isolation import syscalls
where = {where!r}
syscalls.unshare(syscalls.CLONE_NEWNS)
syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
syscalls.mount("tmpfs", where, "tmpfs", syscalls.MS_NOSUID, "size=64k,mode=700")
made, opened = {{}}, {{}}
for name, (kind, major, minor) in {NODES!r}.items():
    mode = (stat.S_IFCHR if kind == "c" else stat.S_IFBLK) | 0o600
    path = os.path.join(where, name)
    try:
        os.mknod(path, mode, os.makedev(major, minor))
        made[name] = "ok"
    except OSError as exc:
        made[name] = errno.errorcode[exc.errno]
for name in {list(NODES)!r} + ["/dev/null"]:
    try:
        os.close(os.open(os.path.join(where, name), os.O_RDONLY))
        opened[name] = "ok"
    except OSError as exc:
        opened[name] = errno.errorcode[exc.errno]
print(json.dumps({{"made": made, "opened": opened}}))
"""


def run_probe(spawn, tmp_path, join=None) -> dict:
    """The probe's report; join(pid) places it in a group first."""
    where = tmp_path / f"nodes-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    child = spawn(probe_code(str(where)))
    if join is not None:
        join(child.pid)
    go(child)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    return json.loads(out)


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_in_the_group_any_node_can_be_made_but_only_dockers_devices_open(
        make_restricted, spawn, tmp_path):
    group = make_restricted()
    assert group.approximations() == []
    report = run_probe(spawn, tmp_path, group.attach)
    assert report["made"] == {"null": "ok", "kmsg": "ok", "loop0": "ok"}, "c/b *:* m"
    assert report["opened"] == {"null": "ok", "kmsg": "EPERM", "loop0": "EPERM",
                                "/dev/null": "ok"}


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_outside_the_group_the_same_nodes_open_positive_control(driver, spawn, tmp_path):
    report = run_probe(spawn, tmp_path)
    assert report["made"] == {"null": "ok", "kmsg": "ok", "loop0": "ok"}
    assert report["opened"]["kmsg"] == "ok"
    assert report["opened"]["loop0"] in ("ok", "ENXIO"), "opens, or no loop driver"


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_the_rules_are_in_force_as_asked(make_restricted):
    group = make_restricted()
    if group.driver == "v1":
        assert v1_devices.read_rules(group.dirs["devices"]) == DOCKER_DEFAULTS
    else:
        docker = device_filter._PROGRAMS[CONTAINER_DEVICES].program_id()
        assert device_filter.attached(group.path) == [docker]
        assert docker in device_filter.attached(group.path, effective=True)


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_a_sub_group_can_narrow_the_rules_but_not_widen_them(make_restricted, spawn, tmp_path):
    group = make_restricted()
    narrow, wide = devices_dir(group) / "narrow", devices_dir(group) / "wide"
    narrow.mkdir()
    wide.mkdir()
    module = v1_devices if group.driver == "v1" else device_filter
    assert module.apply(narrow, [DeviceRule("c", 1, 5)]) == []  # /dev/zero only
    everything = DeviceRule("a", None, None, "rwm")
    if group.driver == "v1":
        # A v1 child starts with its parent's rules and the kernel refuses to widen them.
        assert v1_devices.read_rules(wide) == DOCKER_DEFAULTS
        with pytest.raises(PermissionError):
            (wide / "devices.allow").write_text(str(everything))
    else:
        # A v2 child's own filter runs beside its parent's, which still says no.
        assert device_filter.apply(wide, [everything]) == []

    def join(sub):
        return lambda pid: (sub / "cgroup.procs").write_text(str(pid))

    narrowed = run_probe(spawn, tmp_path, join(narrow))
    assert narrowed["made"] == {"null": "EPERM", "kmsg": "EPERM", "loop0": "EPERM"}
    assert narrowed["opened"]["/dev/null"] == "EPERM"
    widened = run_probe(spawn, tmp_path, join(wide))
    assert widened["made"] == {"null": "ok", "kmsg": "ok", "loop0": "ok"}
    assert widened["opened"] == {"null": "ok", "kmsg": "EPERM", "loop0": "EPERM",
                                 "/dev/null": "ok"}


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_removing_the_group_leaves_nothing(make_restricted, spawn):
    group = make_restricted()
    child = spawn(WAIT)
    group.attach(child.pid)
    programs = [] if group.driver == "v1" else device_filter.attached(group.path)
    group.remove()
    assert child.wait(timeout=10) != 0
    assert_gone(group)  # every hierarchy, the v1 devices one included
    if programs:
        # The group held the filter; once it is gone and our descriptor closed, the kernel
        # frees the program (asynchronously, after the cgroup's release).
        device_filter.close_programs()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and program_exists(programs[0]):
            time.sleep(0.02)
        assert not program_exists(programs[0])


def program_exists(program_id: int) -> bool:
    try:
        fd = device_filter.bpf(device_filter.BPF_PROG_GET_FD_BY_ID, struct.pack("=I", program_id))
    except OSError as exc:
        assert exc.errno == errno.ENOENT
        return False
    os.close(fd)
    return True


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_a_group_without_rules_keeps_its_parents_devices(kernel_driver):
    group = kernel_driver.create(f"t-{uuid.uuid4().hex[:8]}")
    try:
        if group.driver == "v1":
            assert "devices" not in group.dirs, "no devices hierarchy to attach to"
        else:
            assert device_filter.attached(group.path) == []
        assert group.approximations() == []
    finally:
        group.remove()


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_the_kernel_loads_the_filter_once_per_rule_set(kernel_driver, make_restricted):
    if kernel_driver.name != "v2":
        pytest.skip("cgroup v2 only")
    device_filter.close_programs()
    first, second = make_restricted(), make_restricted()
    assert device_filter.attached(first.path) == device_filter.attached(second.path)
    other = make_restricted([DeviceRule("c", 1, 3)])
    assert device_filter.attached(other.path) != device_filter.attached(first.path)


# -- a whole container --------------------------------------------------------------------
def container_probe(where: str) -> str:
    """Make NODES in where, try to open each, print 'name result' lines."""
    return f"""
import errno, os, stat
for name, (kind, major, minor) in {NODES!r}.items():
    path = os.path.join({where!r}, name)
    os.mknod(path, (stat.S_IFCHR if kind == "c" else stat.S_IFBLK) | 0o600,
             os.makedev(major, minor))
    try:
        os.close(os.open(path, os.O_RDONLY))
        print(name, "ok")
    except OSError as exc:
        print(name, errno.errorcode[exc.errno])
    os.unlink(path)
"""


@pytest.mark.root
@pytest.mark.cgroup_v2
@pytest.mark.parametrize("privileged", [False, True], ids=["default", "privileged-control"])
@pytest.mark.parametrize("where", ["volume", "host-root"])
def test_a_container_can_make_device_nodes_where_it_writes_but_open_only_its_own(
        driver, where, privileged):
    """A --volume, or the host's own root (--host-root), is a filesystem as the host has it,
    not nodev: only the device policy stops root inside, with CAP_MKNOD, from opening a disk
    through a node it makes there. --privileged gives the policy up, as Docker's does."""
    import nsmagic

    with open("/proc/filesystems") as known:
        if where == "volume" and "overlay" not in known.read():
            pytest.skip("no overlayfs in this kernel for the default root (the v2 guest)")
    host = tempfile.mkdtemp(prefix="nsmagic-devices-", dir="/var/tmp")
    try:
        if where == "volume":
            result = nsmagic.run(container_probe("/tmp/data"), volumes=[f"{host}:/tmp/data"],
                                 privileged=privileged)
        else:
            result = nsmagic.run(container_probe(host), host_root=True, privileged=privileged)
    finally:
        os.rmdir(host)
    assert result.ok, result.stderr
    opened = dict(line.split() for line in result.stdout.splitlines())
    assert opened["null"] == "ok"
    if privileged:
        assert opened["kmsg"] == "ok" and opened["loop0"] in ("ok", "ENXIO")
    else:
        assert opened == {"null": "ok", "kmsg": "EPERM", "loop0": "EPERM"}


# -- where the host cannot: said, not pretended ----------------------------------------------
@pytest.mark.root
def test_without_a_devices_hierarchy_the_group_says_so(driver):
    if driver.name != "v1":
        pytest.skip("cgroup v1 only")
    bases = {c: p for c, p in driver.bases.items() if c != "devices"}
    group = V1Driver(bases).create(f"t-{uuid.uuid4().hex[:8]}", devices=CONTAINER_DEVICES)
    try:
        [note] = group.approximations()
        assert note.startswith("no device policy: nsmagic was given no devices hierarchy")
        assert "may open any device node they can make" in note
    finally:
        group.remove()


@pytest.mark.root
@pytest.mark.cgroup_v2
def test_a_refused_filter_is_said_and_the_group_still_made(kernel_driver, monkeypatch):
    if kernel_driver.name != "v2":
        pytest.skip("cgroup v2 only")
    device_filter.close_programs()

    def refuse(instructions):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(device_filter, "_load", refuse)
    group = kernel_driver.create(f"t-{uuid.uuid4().hex[:8]}", devices=CONTAINER_DEVICES)
    try:
        [note] = group.approximations()
        assert note.startswith("no device filter: the kernel refused to load it "
                               "(Operation not permitted); loading a cgroup device program "
                               "needs CAP_BPF or CAP_SYS_ADMIN")
        assert device_filter.attached(group.path) == []
    finally:
        group.remove()


def test_rlimit_groups_say_they_have_no_device_policy():
    group = RlimitDriver().create(f"t-{uuid.uuid4().hex[:8]}", devices=CONTAINER_DEVICES)
    try:
        notes = [n for n in group.approximations() if "device" in n]
        assert notes == [notes[0]] and notes[0].startswith("There is no device policy")
        assert "cannot make device nodes" in notes[0] and "nodev" in notes[0]
    finally:
        group.remove()
    plain = RlimitDriver().create(f"t-{uuid.uuid4().hex[:8]}")
    assert not [n for n in plain.approximations() if "device" in n]
    plain.remove()
