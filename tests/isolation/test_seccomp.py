"""The seccomp filter: what Docker's default profile refuses is refused, everything ordinary
still works, 32-bit calls cannot go around it, and runc enforces the same policy.

Every probe runs in a forked child that sets no_new_privs, installs the filter and reports
through a pipe; the same probe without the filter is the positive control.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from nsmagic.isolation import seccomp, syscalls

from ..conftest import IS_ROOT, requires_root

pytestmark = pytest.mark.skipif(not seccomp.available(),
                                reason=f"no seccomp here: {seccomp.unavailable_reason()}")

X86_64 = platform.machine() == "x86_64"
needs_x86_64 = pytest.mark.skipif(not X86_64, reason="probes the x86 ABIs (x86_64 only)")
REPO = Path(__file__).resolve().parents[2]
_libc = ctypes.CDLL(None, use_errno=True)


# -- probing in a child -----------------------------------------------------------------------
def in_child(probe, *, filtered: bool = True, policy: tuple = seccomp.POLICY,
             no_new_privs: bool = True) -> Any:
    """probe() in a forked child, after no_new_privs and the filter; its result (JSON)."""
    program = seccomp.build(policy) if filtered else None  # built here, as a fork server would
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setsid()  # no controlling terminal for any probe to touch
            if no_new_privs:
                syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
            if program is not None:
                seccomp.install(program)
            report = {"result": probe()}
        except BaseException as error:  # noqa: B036 - everything must reach the parent
            report = {"error": f"{type(error).__name__}: {error}"}
        data = json.dumps(report).encode()
        while data:
            data = data[os.write(write_end, data):]
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the probe's child died: status {status}"
    report = json.loads(b"".join(chunks))
    assert "error" not in report, report["error"]
    return report["result"]


def number(name: str) -> int:
    """The native syscall number, from libseccomp's table (the kernel's headers)."""
    module, _ = seccomp._binding()
    return module.resolve_syscall(module.Arch.NATIVE, name)


def call(name: str, *args: int) -> int:
    """The raw syscall: its result, or -errno."""
    ctypes.set_errno(0)
    result = _libc.syscall(ctypes.c_long(number(name)), *(ctypes.c_long(a) for a in args))
    return -ctypes.get_errno() if result == -1 else result


def outcome(result: int) -> str:
    """'ok' or the errno's name, so failures read as EPERM/ENOSYS rather than numbers."""
    return "ok" if result >= 0 else errno.errorcode.get(-result, str(-result))


KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING = 0, -3
ADDR_NO_RANDOMIZE = 0x0040000


def native_names(action: str) -> list[str]:
    """Names the table gives this action unconditionally that exist natively here."""
    names = {name for rule in seccomp.POLICY if rule.action == action and rule.arg is None
             for name in rule.names}
    return sorted(name for name in names if number(name) >= 0)


# Arguments for a refused call: invalid pointers (1) by default, so that even unfiltered it
# can do nothing. Where 1 means something (kexec_file_load's flag 1 unloads a loaded kernel,
# fd 1 is a file finit_module would read, pid 1 is init), bad descriptors or pid 0 (self).
SAFE_ARGS = {"kexec_file_load": (-1, -1, 0, 0, 0), "kexec_load": (1, 1, 1, 0),
             "finit_module": (-1, 0, 0), "migrate_pages": (0, 1, 1, 1),
             "move_pages": (0, 1, 1, 1, 1, 1), "kcmp": (0, 0, 0, 0, 0)}
# Refused calls the kernel lets anyone make (with these arguments it answers EFAULT, EINVAL
# or EBADF): unfiltered, not even 'nobody' gets EPERM for them.
ANYONE_MAY = {"keyctl", "add_key", "request_key", "unshare", "setns", "userfaultfd", "mbind",
              "set_mempolicy", "get_mempolicy"}


def probe_refused() -> dict[str, str]:
    return {name: outcome(call(name, *SAFE_ARGS.get(name, (1, 1, 1, 1, 1, 1))))
            for name in native_names(seccomp.REFUSE)}


# -- what is refused --------------------------------------------------------------------------
def test_every_syscall_the_table_refuses_answers_eperm():
    answers = in_child(probe_refused)
    assert len(answers) > 60
    assert {name: answer for name, answer in answers.items() if answer != "EPERM"} == {}


# The calls named in the design as Docker's refusals. (clock_adjtime, named with them, Docker
# allows: it only reads the clock without CAP_SYS_TIME; POLICY says why.)
DOCKER_REFUSES = ("keyctl add_key request_key bpf perf_event_open userfaultfd kexec_load "
                  "name_to_handle_at "
                  "kexec_file_load open_by_handle_at mount umount2 fsopen fsmount fspick "
                  "move_mount open_tree mount_setattr pivot_root unshare setns io_uring_setup "
                  "io_uring_enter io_uring_register init_module finit_module delete_module "
                  "reboot swapon swapoff acct settimeofday clock_settime syslog").split()


def test_dockers_refusals_are_all_in_the_table_as_refused():
    assert set(DOCKER_REFUSES) <= set(native_names(seccomp.REFUSE))


def test_the_refusals_come_from_the_filter_not_the_kernel_positive_control():
    # Unfiltered, the same safe calls get the kernel's own answers (EFAULT, EINVAL, EBADF...).
    # Root passes every capability check, so no answer may be EPERM; as another user the
    # kernel refuses some of them itself.
    answers = in_child(probe_refused, filtered=False)
    kernel_eperm = {name for name, answer in answers.items() if answer == "EPERM"}
    assert not kernel_eperm & ANYONE_MAY
    if IS_ROOT:
        # Only what a host can switch off for everyone (kexec_load_disabled, lockdown,
        # io_uring_disabled) may still be EPERM from the kernel itself.
        assert kernel_eperm <= {"kexec_load", "kexec_file_load", "io_uring_setup"}


def probe_namespaces() -> dict[str, str]:
    def clone(flags: int) -> str:
        # Raw clone(2) with no new stack: a fork; the child leaves at once.
        pid = call("clone", flags | signal.SIGCHLD, 0, 0, 0, 0)
        if pid == 0:
            os._exit(0)
        if pid > 0:
            os.waitpid(pid, 0)
        return outcome(pid)

    answers = {f"clone {name}": clone(flag) for name, flag in (
        ("CLONE_NEWUSER", syscalls.CLONE_NEWUSER), ("CLONE_NEWNS", syscalls.CLONE_NEWNS),
        ("CLONE_NEWNET", syscalls.CLONE_NEWNET), ("CLONE_NEWPID", syscalls.CLONE_NEWPID))}
    answers["clone plain"] = clone(0)
    answers["clone3"] = outcome(call("clone3", 0, 0))
    pid = os.fork()
    if pid == 0:  # unshare() in a child of the child: it changes the caller for good
        os._exit(0 if call("unshare", syscalls.CLONE_NEWUSER) == 0 else 1)
    answers["unshare CLONE_NEWUSER"] = "ok" if os.waitpid(pid, 0)[1] == 0 else "refused"
    answers["unshare errno"] = outcome(call("unshare", syscalls.CLONE_NEWUSER))
    return answers


def test_namespaces_cannot_be_made_and_clone3_answers_enosys():
    answers = in_child(probe_namespaces)
    assert answers == {"clone CLONE_NEWUSER": "EPERM", "clone CLONE_NEWNS": "EPERM",
                       "clone CLONE_NEWNET": "EPERM", "clone CLONE_NEWPID": "EPERM",
                       "clone plain": "ok", "clone3": "ENOSYS",
                       "unshare CLONE_NEWUSER": "refused", "unshare errno": "EPERM"}


def test_unfiltered_the_same_calls_make_a_user_namespace_positive_control():
    answers = in_child(probe_namespaces, filtered=False)
    assert answers["clone CLONE_NEWUSER"] == "ok"
    assert answers["unshare CLONE_NEWUSER"] == "ok"
    assert answers["clone3"] == "EINVAL"  # the kernel's answer to a missing argument
    if IS_ROOT:
        assert answers["clone CLONE_NEWNS"] == answers["clone CLONE_NEWNET"] == "ok"


def probe_keyring() -> str:
    return outcome(call("keyctl", KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0))


def test_keyctl_works_unfiltered_and_is_refused_filtered():
    assert in_child(probe_keyring, filtered=False) == "ok"
    assert in_child(probe_keyring) == "EPERM"


def probe_arguments() -> dict[str, str]:
    def open_socket(family: int) -> str:
        result = call("socket", family, socket.SOCK_DGRAM, 0)
        if result >= 0:
            os.close(result)
        return outcome(result)

    return {
        "socket AF_ALG": open_socket(seccomp.AF_ALG),
        "socket AF_VSOCK": open_socket(seccomp.AF_VSOCK),
        "socket AF_INET": open_socket(socket.AF_INET),
        "socket AF_UNIX": open_socket(socket.AF_UNIX),
        "socket AF_NETLINK": open_socket(socket.AF_NETLINK),
        "personality query": outcome(call("personality", seccomp.PERSONALITY_QUERY)),
        "personality PER_LINUX": outcome(call("personality", 0)),
        "personality ADDR_NO_RANDOMIZE": outcome(call("personality", ADDR_NO_RANDOMIZE)),
        "ptrace": outcome(call("ptrace", 3, os.getppid(), 0, 0)),  # PEEKUSER, not tracing
    }


def test_calls_decided_by_their_arguments():
    assert in_child(probe_arguments) == {
        "socket AF_ALG": "EPERM", "socket AF_VSOCK": "EPERM", "socket AF_INET": "ok",
        "socket AF_UNIX": "ok", "socket AF_NETLINK": "ok", "personality query": "ok",
        "personality PER_LINUX": "ok",
        # Docker says EPERM; a rule cannot say "none of these values" (see seccomp.POLICY).
        "personality ADDR_NO_RANDOMIZE": "ENOSYS",
        "ptrace": "ESRCH",  # reached the kernel: allowed from Linux 4.8 on, as in Docker
    }


def test_a_syscall_the_table_does_not_name_answers_enosys():
    without_getppid = tuple(
        seccomp.Rule(r.action, tuple(n for n in r.names if n != "getppid"), r.why, r.arg,
                     r.min_kernel) for r in seccomp.POLICY)
    assert in_child(lambda: outcome(call("getppid")), policy=without_getppid) == "ENOSYS"
    assert in_child(lambda: outcome(call("getppid"))) == "ok"


# -- what still works -------------------------------------------------------------------------
def probe_ordinary_work() -> dict[str, Any]:
    done: dict[str, Any] = {}
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    done["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    results = []
    worker = threading.Thread(target=lambda: results.append(threading.get_native_id()))
    worker.start()
    worker.join()
    done["thread"] = len(results) == 1 and results[0] != threading.get_native_id()
    done["exec /bin/true"] = subprocess.run(["/bin/true"], check=False).returncode
    left, right = socket.socketpair()
    left.sendall(b"ping")
    done["socketpair"] = right.recv(4).decode()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    connection, _ = server.accept()
    client.sendall(b"tcp")
    done["tcp on loopback"] = connection.recv(3).decode()
    area = mmap.mmap(-1, 1 << 20)
    area[:5] = b"hello"
    done["mmap"] = area[:5].decode()
    # A module no one has imported yet: written now, so its import reads and compiles it.
    import importlib
    import tempfile

    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "nsmagic_fresh_module.py"), "w") as handle:
        handle.write("import decimal\nVALUE = decimal.Decimal('0.1') * 3\n")
    sys.path.insert(0, folder)
    fresh = importlib.import_module("nsmagic_fresh_module")
    done["imports"] = [str(fresh.VALUE)]
    with open("/etc/os-release") as handle:
        done["read a file"] = bool(handle.read())
    done["urandom"] = len(os.urandom(16))
    received = []
    signal.signal(signal.SIGUSR1, lambda *_: received.append(True))
    os.kill(os.getpid(), signal.SIGUSR1)
    done["signal"] = received == [True]
    return done


def test_fork_threads_exec_sockets_mmap_and_imports_still_work():
    done = in_child(probe_ordinary_work)
    assert done.pop("imports"), "every probe module was already imported: nothing proved"
    assert done == {"fork": 7, "thread": True, "exec /bin/true": 0, "socketpair": "ping",
                    "tcp on loopback": "tcp", "mmap": "hello", "read a file": True,
                    "urandom": 16, "signal": True}


def test_every_allowed_syscall_gets_the_kernels_own_answer():
    # Called with invalid arguments, each gets the answer it gets without the filter (mostly
    # EFAULT or EBADF): the filter changes nothing. Calls that would block, exit or change
    # the process are left out; the probes above exercise them.
    disruptive = {"exit", "exit_group", "pause", "rt_sigsuspend", "rt_sigreturn", "sigreturn",
                  "fork", "vfork", "clone", "execve", "execveat", "munmap", "brk", "mremap",
                  "mprotect", "madvise", "mlockall", "munlockall", "setsid", "setpgid",
                  "set_tid_address", "set_robust_list", "rseq", "seccomp", "prctl",
                  "arch_prctl", "set_thread_area", "modify_ldt", "rt_sigaction",
                  "rt_sigprocmask", "sigaltstack", "kill", "tkill", "tgkill", "alarm",
                  "setitimer", "nanosleep", "clock_nanosleep", "wait4", "waitid", "select",
                  "pselect6", "poll", "ppoll", "epoll_wait", "epoll_pwait", "epoll_pwait2",
                  "sched_yield", "futex", "futex_waitv", "futex_wait", "personality",
                  "landlock_restrict_self", "setuid", "setgid", "setreuid", "setregid",
                  "setresuid", "setresgid", "setfsuid", "setfsgid", "setgroups", "capset",
                  "setrlimit", "prlimit64", "sync", "syncfs", "close_range", "umask", "chdir",
                  "fchdir", "chroot", "shmat", "mmap", "io_destroy", "sched_setaffinity",
                  "sched_setscheduler", "sched_setparam", "sched_setattr", "setpriority",
                  "ioprio_set", "mlock", "mlock2", "restart_syscall", "pkey_mprotect",
                  "map_shadow_stack", "process_mrelease", "uretprobe", "mseal", "msgrcv",
                  "rt_sigtimedwait", "semop", "semtimedop", "mq_timedreceive", "accept",
                  "accept4", "recvfrom", "recvmsg", "recvmmsg", "read", "readv", "write",
                  "writev", "close", "memfd_secret"}

    def probe() -> dict[str, str]:
        return {name: outcome(call(name, -1, 0, 0, 0, 0, 0))
                for name in native_names(seccomp.ALLOW) if name not in disruptive}

    answers = in_child(probe)
    assert len(answers) > 150
    assert answers == in_child(probe, filtered=False)


# -- 32-bit system calls ----------------------------------------------------------------------
# x86 machine code for int 0x80 from 64-bit code: f(nr, a, b, c) enters the i386 table.
# push rbx; mov eax, edi; mov ebx, esi; xchg ecx, edx (b -> ecx, c -> edx); int 0x80;
# pop rbx; ret.
_INT80 = bytes([0x53, 0x89, 0xF8, 0x89, 0xF3, 0x87, 0xD1, 0xCD, 0x80, 0x5B, 0xC3])
I386 = {"getpid": 20, "keyctl": 288, "unshare": 310, "clone3": 435, "mount": 21}


def call_i386(name: str, a: int = 0, b: int = 0, c: int = 0) -> int:
    """An i386 syscall through int 0x80: its result or -errno (the kernel's raw return)."""
    code = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    code.write(_INT80)
    address = ctypes.addressof(ctypes.c_char.from_buffer(code))
    function = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                ctypes.c_uint)(address)
    return function(I386[name], a & 0xFFFFFFFF, b & 0xFFFFFFFF, c & 0xFFFFFFFF)


def probe_i386() -> dict[str, str]:
    return {"getpid": "ok" if call_i386("getpid") == os.getpid() else "wrong",
            "keyctl": outcome(call_i386("keyctl", KEYCTL_GET_KEYRING_ID,
                                        KEY_SPEC_SESSION_KEYRING)),
            "unshare CLONE_NEWUSER": outcome(call_i386("unshare", syscalls.CLONE_NEWUSER)),
            "mount": outcome(call_i386("mount", 1, 1, 1)),
            "clone3": outcome(call_i386("clone3"))}


@needs_x86_64
def test_a_32_bit_syscall_gets_the_same_rules():
    control = in_child(probe_i386, filtered=False)
    if control["getpid"] != "ok":
        pytest.skip("this kernel runs no i386 system calls (IA32 emulation off)")
    assert control["keyctl"] == "ok"  # positive control: int 0x80 reaches the kernel
    assert in_child(probe_i386) == {"getpid": "ok", "keyctl": "EPERM",
                                    "unshare CLONE_NEWUSER": "EPERM", "mount": "EPERM",
                                    "clone3": "ENOSYS"}


X32_BIT = 0x40000000
X32 = {"getpid": 39, "keyctl": 250, "unshare": 272, "clone3": 435}


def probe_x32() -> dict[str, str]:
    def x32(name: str, *args: int) -> str:
        ctypes.set_errno(0)
        result = _libc.syscall(ctypes.c_long(X32_BIT | X32[name]),
                               *(ctypes.c_long(a) for a in args))
        return outcome(-ctypes.get_errno() if result == -1 else result)

    return {"getpid": x32("getpid"), "unshare": x32("unshare", syscalls.CLONE_NEWUSER),
            "keyctl": x32("keyctl", KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)}


@needs_x86_64
def test_an_x32_syscall_gets_the_same_rules_where_the_kernel_runs_x32():
    if in_child(probe_x32, filtered=False)["getpid"] != "ok":
        pytest.skip("this kernel runs no x32 system calls (CONFIG_X86_X32_ABI); "
                    "test_the_program_decides_every_x86_abi_alike_and_kills_others checks "
                    "the program's x32 decisions")
    assert in_child(probe_x32) == {"getpid": "ok", "unshare": "EPERM", "keyctl": "EPERM"}


def run_bpf(program: bytes, arch: int, nr: int, args: tuple[int, ...] = ()) -> int:
    """Classic BPF, as much as libseccomp emits, run over one seccomp_data: the action."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
    insns = [struct.unpack("<HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    a = x = pc = 0
    scratch = [0] * 16
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:  # ld [k]
            a = struct.unpack_from("<I", data, k)[0]
        elif code == 0x00:  # ld #k
            a = k
        elif code == 0x60:  # ld M[k]
            a = scratch[k]
        elif code == 0x61:  # ldx M[k]
            x = scratch[k]
        elif code == 0x02:  # st M[k]
            scratch[k] = a
        elif code == 0x03:  # stx M[k]
            scratch[k] = x
        elif code == 0x54:  # and #k
            a &= k
        elif code == 0x07:  # tax
            x = a
        elif code == 0x87:  # txa
            a = x
        elif code == 0x05:  # ja
            pc += k
        elif code in (0x15, 0x25, 0x35, 0x45, 0x1D, 0x2D, 0x3D, 0x4D):
            operand = x if code & 0x08 else k
            test = {0x10: a == operand, 0x20: a > operand, 0x30: a >= operand,
                    0x40: bool(a & operand)}[code & 0xF0]
            pc += jt if test else jf
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"BPF opcode {code:#x} at {pc - 1} not modelled")


AUDIT_ARCH_X86_64, AUDIT_ARCH_I386 = 0xC000003E, 0x40000003
RET_ALLOW, RET_EPERM, RET_ENOSYS = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | 38


@needs_x86_64
def test_the_program_decides_every_x86_abi_alike_and_kills_others():
    bpf = seccomp.build().bpf
    abis = [(I386, AUDIT_ARCH_I386, 0), (X32, AUDIT_ARCH_X86_64, 0)]
    if "X32" in seccomp.architectures():
        abis.append((X32, AUDIT_ARCH_X86_64, X32_BIT))
    else:  # this kernel runs no x32: its calls are killed, never let through
        assert run_bpf(bpf, AUDIT_ARCH_X86_64, X32_BIT | X32["getpid"]) & 0x7FFF0000 == 0
    for table, arch, offset in abis:
        assert run_bpf(bpf, arch, offset | table["getpid"]) == RET_ALLOW
        assert run_bpf(bpf, arch, offset | table["keyctl"]) == RET_EPERM
        assert run_bpf(bpf, arch, offset | table["unshare"]) == RET_EPERM
        assert run_bpf(bpf, arch, offset | table["clone3"]) == RET_ENOSYS
    assert run_bpf(bpf, AUDIT_ARCH_X86_64, 56, (syscalls.CLONE_NEWUSER,)) == RET_EPERM  # clone
    assert run_bpf(bpf, AUDIT_ARCH_X86_64, 56, (0x3D0F00,)) == RET_ALLOW  # a thread's flags
    # An ABI the filter was not built for: the process is killed, never let through.
    assert run_bpf(bpf, 0xC00000B7, 39) & 0x7FFF0000 == 0  # aarch64: SECCOMP_RET_KILL_*


# -- the table --------------------------------------------------------------------------------
def test_every_syscall_libseccomp_knows_for_each_abi_is_decided_by_the_table():
    # So that only syscalls newer than the table get the default ENOSYS.
    module, _ = seccomp._binding()
    named = {name for rule in seccomp.POLICY for name in rule.names}
    for arch in seccomp.architectures():
        known = set()
        for nr in range(1024):
            try:
                known.add(module.resolve_syscall(getattr(module.Arch, arch),
                                                 nr | (X32_BIT if arch == "X32" else 0)))
            except ValueError:
                pass
        assert len(known) > 300, arch
        assert sorted(name.decode() for name in known if name.decode() not in named) == [], arch


def test_a_syscall_has_one_unconditional_rule_and_none_beside_it():
    unconditional: dict[str, int] = {}
    conditional = set()
    for rule in seccomp.POLICY:
        for name in rule.names:
            if rule.arg is None:
                unconditional[name] = unconditional.get(name, 0) + 1
            else:
                conditional.add(name)
    assert {n: c for n, c in unconditional.items() if c > 1} == {}
    assert conditional == {"clone", "socket", "personality"}
    assert not conditional & set(unconditional)


def test_each_rule_says_why():
    assert all(len(rule.why) > 10 for rule in seccomp.POLICY)


def test_ptrace_is_refused_on_kernels_before_4_8_as_in_docker():
    def actions(release: str) -> set[str]:
        return {action for action, names, _ in seccomp.resolve(release=release)
                if {"ptrace", "process_vm_readv", "process_vm_writev"} & set(names)}

    assert actions("4.4.0") == {seccomp.REFUSE}
    assert actions("4.8.0") == actions("6.18.0") == {seccomp.ALLOW}


# -- build once, load many times --------------------------------------------------------------
def test_the_filter_is_built_once_per_process():
    first = seccomp.build()
    assert seccomp.build() is first
    assert first.bpf and len(first.bpf) % 8 == 0 and first.build_us > 0
    assert first.architectures == seccomp.architectures()
    if X86_64:  # x32 only where this kernel runs it
        assert first.architectures in (("X86_64", "X86", "X32"), ("X86_64", "X86"))


def test_install_needs_no_new_privs_first():
    def probe() -> str:
        try:
            seccomp.install()
        except seccomp.SeccompError as error:
            with open("/proc/self/status") as handle:
                mode = next(line.split()[1] for line in handle if line.startswith("Seccomp:"))
            return f"{error} / mode {mode}"
        return "installed"

    answer = in_child(probe, filtered=False, no_new_privs=False)
    assert "no_new_privs" in answer and answer.endswith("/ mode 0")


def test_the_filter_applies_to_every_thread_and_to_children():
    def probe() -> dict[str, str]:
        answers = {}
        worker = threading.Thread(target=lambda: answers.update(thread=probe_keyring()))
        worker.start()
        worker.join()
        child = subprocess.run([sys.executable, "-I", "-S", "-c",
                                "import ctypes; l = ctypes.CDLL(None, use_errno=True); "
                                f"l.syscall({number('keyctl')}, 0, -3, 0); "
                                "print(ctypes.get_errno())"],
                               capture_output=True, text=True, check=True)
        answers["child"] = errno.errorcode[int(child.stdout)]
        return answers

    assert in_child(probe) == {"thread": "EPERM", "child": "EPERM"}


def test_install_is_fast_enough_to_do_per_container():
    # Generous, for a loaded shared machine: the kernel only copies and checks the program.
    def probe() -> float:
        started = time.perf_counter()
        seccomp.install()
        return time.perf_counter() - started

    assert min(in_child(probe) for _ in range(3)) < 0.05


# -- graceful degradation ---------------------------------------------------------------------
def run_python(code: str, executable: str = sys.executable) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True, cwd=str(REPO)).stdout


PRETEND_NO = """
import sys
sys.modules["seccomp"] = None  # the upstream binding: not installed
{setup}
from nsmagic.isolation import seccomp
print(seccomp.available())
print(seccomp.unavailable_reason())
print(seccomp.describe())
try:
    seccomp.build()
except seccomp.SeccompUnavailable as error:
    print("build:", error)
"""


def test_without_a_binding_it_says_so_and_pretends_nothing():
    out = run_python(PRETEND_NO.format(setup='sys.modules["pyseccomp"] = None')).splitlines()
    assert out[0] == "False"
    assert "pip install pyseccomp" in out[1]
    assert out[2].startswith("seccomp filter: unavailable: ")
    assert out[3].startswith("build: ") and "pyseccomp" in out[3]


def test_without_libseccomp_it_says_so():
    setup = ("import ctypes.util; real = ctypes.util.find_library\n"
             "ctypes.util.find_library = lambda name: None if name == 'seccomp' else real(name)")
    out = run_python(PRETEND_NO.format(setup=setup)).splitlines()
    assert out[0] == "False"
    assert "no libseccomp on this host" in out[1]


def test_describe_names_the_binding_and_the_count_for_doctor():
    line = seccomp.describe()
    refused = len(seccomp.build().refused)
    assert line.startswith("seccomp filter: ready") and "\n" not in line
    assert seccomp.build().binding in line and f"{refused} syscalls refused (EPERM)" in line


def upstream_python() -> str | None:
    """A Python that has libseccomp's own binding (Debian's python3-seccomp), if any."""
    for candidate in ("/usr/bin/python3",):
        if os.path.exists(candidate) and subprocess.run(
                [candidate, "-c", "import seccomp; seccomp.SyscallFilter"],
                capture_output=True, check=False).returncode == 0:
            return candidate
    return None


def test_libseccomps_own_binding_builds_the_same_program():
    python = upstream_python()
    if python is None:
        pytest.skip("no Python with libseccomp's own binding (apt-get install python3-seccomp)")
    out = run_python("from nsmagic.isolation import seccomp; f = seccomp.build(); "
                     "print(f.binding); print(f.bpf.hex())", python).splitlines()
    assert out[0] == "libseccomp's own binding (seccomp)"
    assert bytes.fromhex(out[1]) == seccomp.build().bpf


# -- the OCI profile --------------------------------------------------------------------------
def validate_oci_config(config: dict) -> None:
    """Validate against the OCI runtime-spec's JSON schema that the repository carries."""
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    folder = next((f for f in (REPO / "tests" / "schemas", REPO / "nsmagic" / "schemas")
                   if (f / "config-schema.json").exists()), None)
    assert folder is not None, "the OCI runtime-spec schema is not in the repository"
    registry = Registry().with_resources(
        (path.name, Resource.from_contents(json.loads(path.read_text()),
                                           default_specification=DRAFT4))
        for path in folder.glob("*.json"))
    schema = json.loads((folder / "config-schema.json").read_text())
    jsonschema.Draft4Validator(schema, registry=registry).validate(config)


def test_the_oci_profile_validates_against_the_runtime_spec_schema():
    profile = seccomp.oci_profile()
    validate_oci_config({"ociVersion": "1.0.2", "linux": {"seccomp": profile}})
    broken = {**profile, "syscalls": [{"names": ["read"], "action": "SCMP_ACT_MAYBE"}]}
    with pytest.raises(jsonschema.ValidationError):  # the check is real
        validate_oci_config({"ociVersion": "1.0.2", "linux": {"seccomp": broken}})


def test_the_oci_profile_is_the_same_table():
    profile = seccomp.oci_profile(machine="x86_64", release="6.18.0")
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == 38
    assert profile["architectures"][:2] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert profile["architectures"][2:] in ([], ["SCMP_ARCH_X32"])
    # runtime-spec 1.1's fields only
    assert {key for entry in profile["syscalls"] for key in entry} <= {
        "names", "action", "errnoRet", "args"}
    by_action: dict[tuple, set[str]] = {}
    for entry in profile["syscalls"]:
        if "args" not in entry:
            key = (entry["action"], entry.get("errnoRet"))
            assert key not in by_action, "one entry per action"
            by_action[key] = set(entry["names"])
    refused = {n for r in seccomp.POLICY if r.action == seccomp.REFUSE and r.arg is None
               for n in r.names}
    assert by_action[("SCMP_ACT_ERRNO", errno.EPERM)] == refused
    assert by_action[("SCMP_ACT_ERRNO", errno.ENOSYS)] == {"clone3"}
    assert {"read", "ptrace", "mmap2", "socketcall"} <= by_action[("SCMP_ACT_ALLOW", None)]
    clone = [e for e in profile["syscalls"] if e["names"] == ["clone"]]
    assert {"action": "SCMP_ACT_ALLOW", "names": ["clone"], "args": [
        {"index": 0, "value": seccomp.NAMESPACE_FLAGS, "valueTwo": 0,
         "op": "SCMP_CMP_MASKED_EQ"}]} in clone
    assert len(clone) == 8  # the allow, and one EPERM rule for each of 7 namespace flags
    assert seccomp.oci_profile(machine="riscv64").get("architectures") is None


PROBE_IN_RUNC = f"""
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    ctypes.set_errno(0)
    return "ok" if libc.syscall(nr, *args) != -1 else os.strerror(ctypes.get_errno())
print(json.dumps({{"keyctl": call({number("keyctl")}, 0, -3, 0),
                  "clone3": call({number("clone3")}, 0, 0),
                  "getppid": call({number("getppid")})}}))
"""


def run_in_runc(directory: Path, profile: dict | None) -> dict[str, str]:
    """PROBE_IN_RUNC in a runc container of host's /usr (read-only), with this profile."""
    runc = shutil.which("runc") or "/usr/sbin/runc"
    bundle = directory / ("filtered" if profile else "unfiltered")
    rootfs = bundle / "rootfs"
    for sub in ("usr", "proc", "dev", "tmp"):
        (rootfs / sub).mkdir(parents=True)
    for link in ("bin", "lib", "lib64"):
        (rootfs / link).symlink_to(f"usr/{link}")
    subprocess.run([runc, "spec"], cwd=bundle, check=True, capture_output=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(terminal=False, args=["/usr/bin/python3", "-I", "-S", "-c",
                                                   PROBE_IN_RUNC])
    config["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr",
                             "options": ["rbind", "ro"]})
    # Relative: under runc's own cgroup, named for its owner so that prune would find it.
    config["linux"]["cgroupsPath"] = f"nsmagic-{os.getpid()}-seccomp-{bundle.name}"
    if profile:
        config["linux"]["seccomp"] = profile
    (bundle / "config.json").write_text(json.dumps(config))
    name = f"nsmagic-{os.getpid()}-seccomp-{bundle.name}"
    state = directory / "state"
    try:
        done = subprocess.run([runc, "--root", str(state), "run", "--bundle", str(bundle),
                               name], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, check=False)
    finally:
        subprocess.run([runc, "--root", str(state), "delete", "-f", name],
                       capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.root
@requires_root
@pytest.mark.skipif(not (shutil.which("runc") or os.path.exists("/usr/sbin/runc")),
                    reason="runc is not installed (apt-get install runc)")
def test_runc_enforces_the_oci_profile():
    with tempfile.TemporaryDirectory(prefix="nsmagic-seccomp-runc-") as scratch:
        control = run_in_runc(Path(scratch), None)
        filtered = run_in_runc(Path(scratch), seccomp.oci_profile())
    assert control["keyctl"] == "ok"  # runc gives each container a session keyring
    assert filtered == {"keyctl": os.strerror(errno.EPERM), "clone3": os.strerror(errno.ENOSYS),
                        "getppid": "ok"}
