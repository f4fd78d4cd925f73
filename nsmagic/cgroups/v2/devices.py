"""cgroup v2 device filter: a small eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE, built
from device rules, loaded and attached to a group with bpf(2) through ctypes.

cgroup v2 has no devices.* files. Instead the kernel runs every BPF_CGROUP_DEVICE program
attached to a task's cgroup and to its ancestors whenever the task opens or makes a device
node, and allows the access only if each of them returns 1. The program reads the request
from its context, struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }, in
which access_type is (access << 16) | type, access a mask of BPF_DEVCG_ACC_MKNOD (1),
_READ (2) and _WRITE (4), and type BPF_DEVCG_DEV_BLOCK (1) or _CHAR (2).

One program is loaded per rule set and process (the verifier runs once) and attached to each
new group with BPF_F_ALLOW_MULTI: programs of ancestors keep running for a group and its
sub-groups, so a group can narrow what its parent allows but never widen it, as on v1. A
program attached this way is held by the cgroup, not by our descriptor: the kernel detaches
and releases it when the group is removed, whichever process removes it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

from nsmagic.cgroups.devices import ACCESS, DeviceRule

# bpf(2) commands, types and flags, from include/uapi/linux/bpf.h.
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # the attach type
BPF_F_ALLOW_MULTI = 2
BPF_F_QUERY_EFFECTIVE = 1

# The context's encodings (BPF_DEVCG_ACC_* and BPF_DEVCG_DEV_*).
_ACCESS_BITS = {"m": 1, "r": 2, "w": 4}
_TYPES = {"b": 1, "c": 2}

# bpf(2) is not in the unified syscall table: its number differs per architecture.
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "loongarch64": 280,
            "ppc64le": 361, "s390x": 351}
# union bpf_attr is larger on newer kernels, and some commands write results back at fixed
# offsets (BPF_PROG_QUERY's revision at 56, for one): hand the kernel a zeroed buffer larger
# than any command's part of it. The kernel accepts a longer attr whose tail is zero.
_ATTR_SIZE = 256

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def bpf(command: int, attr: bytes) -> int:
    """bpf(2) with attr (the start of a union bpf_attr): the kernel's answer; OSError if none."""
    return bpf_with_result(command, attr)[0]


def bpf_with_result(command: int, attr: bytes) -> tuple[int, bytes]:
    """bpf(2), returning (answer, the attr buffer as the kernel left it)."""
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"bpf(2) has no known number on {platform.machine()}")
    buffer = ctypes.create_string_buffer(attr.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    result = _syscall(ctypes.c_long(number), ctypes.c_int(command), buffer,
                      ctypes.c_uint(_ATTR_SIZE))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result, buffer.raw


# -- the program ---------------------------------------------------------------------------
# An instruction is 8 bytes: u8 opcode, two 4-bit register numbers (dst in the low nibble on
# little-endian machines), s16 jump offset (in instructions, from the next one), s32 immediate.
# The opcode is class | operation | source: these are the few this program needs.
LDX_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W: dst = *(u32 *)(src + off)
MOV_K = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K: dst = imm
MOV_X = 0xBF  # BPF_ALU64 | BPF_MOV | BPF_X: dst = src
AND_K = 0x57  # BPF_ALU64 | BPF_AND | BPF_K: dst &= imm
RSH_K = 0x77  # BPF_ALU64 | BPF_RSH | BPF_K: dst >>= imm
JNE_K = 0x55  # BPF_JMP | BPF_JNE | BPF_K: if dst != imm: skip off instructions
EXIT = 0x95  # BPF_JMP | BPF_EXIT: return r0

# Registers: r1 holds the context on entry; r0 is the answer. The request is kept in r2 (the
# device type), r3 (the access mask), r4 (major) and r5 (minor), which the program may use
# freely (no helper is called).
R0, R1, R2, R3, R4, R5 = range(6)

Instruction = tuple[int, int, int, int, int]  # opcode, dst, src, off, imm


def _encode(instructions: Sequence[Instruction]) -> bytes:
    little = sys.byteorder == "little"
    out = bytearray()
    for op, dst, src, off, imm in instructions:
        regs = (src << 4 | dst) if little else (dst << 4 | src)
        out += struct.pack("=BBhi", op, regs, off, imm)
    return bytes(out)


def _rule_block(rule: DeviceRule) -> list[Instruction]:
    """Instructions that return 1 when the request matches rule, and otherwise fall through
    to the next rule's block (every jump skips to the end of this block)."""
    # (opcode, dst, imm) tests that must all pass. JNE compares with imm sign-extended to 64
    # bits: device numbers (below 2**20) and the type are positive, so that is exact.
    checks: list[tuple[int, int, int]] = []
    if rule.kind != "a":
        checks.append((JNE_K, R2, _TYPES[rule.kind]))
    if rule.major is not None:
        checks.append((JNE_K, R4, rule.major))
    if rule.minor is not None:
        checks.append((JNE_K, R5, rule.minor))
    denied = 7 & ~sum(_ACCESS_BITS[a] for a in rule.access)
    # Instruction counts: each check is one jump; the access check is three (copy, mask,
    # jump); the verdict is two (r0 = 1, exit).
    block_length = len(checks) + (3 if denied else 0) + 2
    block: list[Instruction] = []
    for op, dst, imm in checks:
        block.append((op, dst, 0, block_length - len(block) - 1, imm))
    if denied:
        # The request may ask for several accesses at once (open O_RDWR asks r and w): it
        # matches only if it asks for none of the accesses the rule leaves out.
        block.append((MOV_X, R1, R3, 0, 0))
        block.append((AND_K, R1, 0, 0, denied))
        block.append((JNE_K, R1, 0, block_length - len(block) - 1, 0))
    block.append((MOV_K, R0, 0, 0, 1))
    block.append((EXIT, 0, 0, 0, 0))
    return block


def program(rules: Sequence[DeviceRule]) -> list[Instruction]:
    """The filter for rules: load the request, allow (1) on the first rule that matches, else
    deny (0)."""
    prologue: list[Instruction] = [
        (LDX_W, R2, R1, 0, 0),  # r2 = ctx->access_type
        (LDX_W, R4, R1, 4, 0),  # r4 = ctx->major
        (LDX_W, R5, R1, 8, 0),  # r5 = ctx->minor
        (MOV_X, R3, R2, 0, 0),
        (RSH_K, R3, 0, 0, 16),  # r3 = access mask (upper half of access_type)
        (AND_K, R2, 0, 0, 0xFFFF),  # r2 = device type (lower half)
    ]
    body: list[Instruction] = []
    for rule in rules:
        body += _rule_block(rule)
        if rule.kind == "a" and set(rule.access) == set(ACCESS):
            # This rule allows every request: the verifier refuses code that can never run.
            return prologue + body
    return prologue + body + [(MOV_K, R0, 0, 0, 0), (EXIT, 0, 0, 0, 0)]


# -- loading and attaching -----------------------------------------------------------------
class DeviceProgram:
    """A loaded filter: the kernel's program behind one file descriptor; close() is safe
    twice (the program lives on in every cgroup it is attached to)."""

    def __init__(self, rules: Sequence[DeviceRule]) -> None:
        self.rules = tuple(rules)
        self.fd: int | None = _load(_encode(program(self.rules)))

    def attach(self, path: Path) -> None:
        """Attach to the cgroup directory path, alongside the programs of its ancestors."""
        if self.fd is None:
            raise ValueError("the device program was closed")
        target = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # target_fd, attach_bpf_fd, attach_type, attach_flags
            bpf(BPF_PROG_ATTACH, struct.pack("=IIII", target, self.fd, BPF_CGROUP_DEVICE,
                                             BPF_F_ALLOW_MULTI))
        finally:
            os.close(target)

    def program_id(self) -> int:
        """The kernel's id of the program (as BPF_PROG_QUERY and bpftool list it)."""
        if self.fd is None:
            raise ValueError("the device program was closed")
        with open(f"/proc/self/fdinfo/{self.fd}") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key == "prog_id":
                    return int(value)
        raise OSError(errno.ENOENT, "no prog_id in the program's fdinfo")

    def close(self) -> None:
        """Give back our descriptor."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _load(instructions: bytes) -> int:
    # The kernel reads the code, license and log through the addresses in the attr: the
    # buffers must stay alive until bpf() returns.
    code = ctypes.create_string_buffer(instructions, len(instructions))
    try:
        return bpf(BPF_PROG_LOAD, _load_attr(code, None))
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EINVAL):
            raise
    # The verifier said no: load again with its log, to say why.
    log = ctypes.create_string_buffer(1 << 16)
    try:
        return bpf(BPF_PROG_LOAD, _load_attr(code, log))
    except OSError as exc:
        said = log.value.decode(errors="replace").strip().splitlines()[-3:]
        raise OSError(exc.errno, f"{exc.strerror}; the verifier says: {' / '.join(said)}") \
            from None


_LICENSE = ctypes.create_string_buffer(b"MIT")  # no GPL-only helper is called


def _load_attr(code: ctypes.Array, log: ctypes.Array | None) -> bytes:
    # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version,
    # prog_flags, prog_name (BPF_OBJ_NAME_LEN 16, with the NUL), prog_ifindex,
    # expected_attach_type
    return struct.pack(
        "=IIQQIIQII16sII", BPF_PROG_TYPE_CGROUP_DEVICE, len(code) // 8,
        ctypes.addressof(code), ctypes.addressof(_LICENSE), 0 if log is None else 1,
        0 if log is None else len(log), 0 if log is None else ctypes.addressof(log), 0, 0,
        b"nsmagic_devices", 0, BPF_CGROUP_DEVICE,
    )


def attached(path: Path, effective: bool = False) -> list[int]:
    """Ids of the device programs attached to the cgroup directory path (effective: every
    program that runs for it, its ancestors' included)."""
    target = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    ids = (ctypes.c_uint32 * 64)()
    try:
        # target_fd, attach_type, query_flags, attach_flags (out), prog_ids, prog_cnt (in/out)
        _, out = bpf_with_result(BPF_PROG_QUERY, struct.pack(
            "=IIIIQI", target, BPF_CGROUP_DEVICE, BPF_F_QUERY_EFFECTIVE if effective else 0,
            0, ctypes.addressof(ids), len(ids)))
    finally:
        os.close(target)
    (count,) = struct.unpack_from("=I", out, 24)
    return list(ids[:count])


_PROGRAMS: dict[tuple[DeviceRule, ...], DeviceProgram] = {}


def apply(path: Path, rules: Sequence[DeviceRule]) -> list[str]:
    """Allow only rules in the group at path (and below); returns plain-words notes for what
    could not be done (empty when the filter is attached)."""
    key = tuple(rules)
    try:
        loaded = _PROGRAMS.get(key)
        if loaded is None:
            loaded = _PROGRAMS[key] = DeviceProgram(key)
    except OSError as exc:
        return [f"no device filter: the kernel refused to load it ({exc.strerror}); "
                f"{_why(exc.errno, 'load')}"]
    try:
        loaded.attach(path)
    except OSError as exc:
        return [f"no device filter: the kernel refused to attach it to {path} "
                f"({exc.strerror}); {_why(exc.errno, 'attach')}"]
    return []


def close_programs() -> None:
    """Close this process's loaded filters (groups keep theirs until they are removed)."""
    while _PROGRAMS:
        _PROGRAMS.popitem()[1].close()


def _why(code: int | None, step: str) -> str:
    if code == errno.EPERM:
        if step == "load":
            return ("loading a cgroup device program needs CAP_BPF or CAP_SYS_ADMIN in the "
                    "host's first user namespace, which a non-root user does not have, so "
                    "this group's processes may open every device their parent cgroup allows.")
        return ("an ancestor cgroup holds a device program attached without "
                "BPF_F_ALLOW_MULTI, which forbids programs below it (that program still "
                "applies), or attaching needs a capability this process lacks.")
    if code == errno.ENOSYS:
        return "this kernel has no bpf(2), so this group's processes may open any device."
    if code == errno.EINVAL and step == "attach":
        return ("this kernel cannot attach BPF programs to cgroups (CONFIG_CGROUP_BPF), so "
                "this group's processes may open any device.")
    return "so this group's processes may open every device their parent cgroup allows."
