"""Finding 14 of issue 15: system calls Docker's default seccomp profile refuses, one row each.

Each call is made with arguments that, past the filter, get a harmless answer of the kernel's
own that is not EPERM (a key id, ENOKEY, EFAULT for a NULL pointer, a user-mode-only
userfaultfd, a user namespace in a child that exits): so EPERM (or ENOSYS, the filter's
answer to what it does not know) means the filter said no. The positive control turns the
filter off (seccomp=False, Docker's --security-opt seccomp=unconfined) or, where the kernel
itself asks for a capability, uses --privileged.
"""

from __future__ import annotations

import platform

import pytest

from ..conftest import IS_ROOT
from .harness import compare, refused

NUMBERS = {
    "x86_64": {"add_key": 248, "request_key": 249, "keyctl": 250, "perf_event_open": 298,
               "name_to_handle_at": 303, "bpf": 321, "userfaultfd": 323,
               "io_uring_setup": 425},
    "aarch64": {"add_key": 217, "request_key": 218, "keyctl": 219, "perf_event_open": 241,
                "name_to_handle_at": 264, "bpf": 280, "userfaultfd": 282,
                "io_uring_setup": 425},
}

CALL = """
    import ctypes, errno, json, os, platform
    libc = ctypes.CDLL(None, use_errno=True)
    NUMBERS = NUMBERS_TABLE[platform.machine()]

    def call(name, *args):
        converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
        result = libc.syscall(ctypes.c_long(NUMBERS[name]), *converted)
        return result, ctypes.get_errno()

    def unshare_user():
        # In a child, which exits: the probe itself stays where it is.
        pid = os.fork()
        if pid == 0:
            code = libc.unshare(ctypes.c_int(0x10000000))  # CLONE_NEWUSER
            os._exit(0 if code == 0 else ctypes.get_errno())
        status = os.waitpid(pid, 0)[1]
        number = os.waitstatus_to_exitcode(status)
        return (0, 0) if number == 0 else (-1, number)

    result, number = CALL_EXPRESSION
    name = "ok" if result >= 0 else errno.errorcode.get(number, str(number))
    print(json.dumps({"reached": not (result < 0 and name in ("EPERM", "ENOSYS")),
                      "answer": name}))
""".replace("NUMBERS_TABLE", repr(NUMBERS))

O_CLOEXEC, UFFD_USER_MODE_ONLY = 0o2000000, 1
# name: (the call, the positive control's options)
ROWS = {
    "keyctl": ('call("keyctl", 0, -3, 0)', {"seccomp": False}),  # GET_KEYRING_ID session
    "add_key": ('call("add_key", b"user", b"nsmagic-sec-probe", b"v", 1, -3)',
                {"seccomp": False}),  # into the container's own session keyring
    "request_key": ('call("request_key", b"user", b"nsmagic-sec-absent", None, 0)',
                    {"seccomp": False}),  # ENOKEY
    "perf_event_open": ('call("perf_event_open", None, 0, -1, -1, 0)',
                        {"seccomp": False}),  # EFAULT: no attributes
    "userfaultfd": (f'call("userfaultfd", {O_CLOEXEC | UFFD_USER_MODE_ONLY})',
                    {"seccomp": False}),  # user-mode only: no capability needed
    "io_uring_setup": ('call("io_uring_setup", 1, None)', {"seccomp": False}),  # EFAULT
    "name_to_handle_at": ('call("name_to_handle_at", -100, b"/", None, None, 0)',
                          {"seccomp": False}),  # EFAULT: no handle buffer
    "unshare(CLONE_NEWUSER)": ("unshare_user()", {"seccomp": False}),
    # The kernel refuses unprivileged bpf() itself here (unprivileged_bpf_disabled): the
    # control needs CAP_BPF, real root's only (--privileged as root).
    "bpf": ('call("bpf", 0, None, 0)', {"privileged": True} if IS_ROOT else None),
}


@pytest.mark.skipif(platform.machine() not in NUMBERS, reason="syscall numbers for x86_64 "
                    "and aarch64 only")
@pytest.mark.parametrize("name", list(ROWS))
def test_14_docker_refused_syscalls_answer_eperm(name):
    expression, control = ROWS[name]
    verdicts = compare(14, f"{name} gets past the filter", CALL.replace(
        "CALL_EXPRESSION", expression), control=control, runc={})
    refused(verdicts)
