"""Docker's default seccomp policy: one table, built once with libseccomp, loaded per container."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from nsmagic.errors import CapabilityError, NsmagicError
from nsmagic.isolation import syscalls

ALLOW = "allow"
REFUSE = "refuse"  # EPERM, the answer Docker gives to what its profile does not allow
NOSYS = "nosys"  # ENOSYS: "no such call here", which makes C libraries fall back

# A syscall the table does not name answers ENOSYS (as runc does for syscalls newer than its
# profile): a system call added to the kernel after this table is refused, and programs that
# probe for it take their fallback path instead of failing on an EPERM they do not expect.
DEFAULT = NOSYS

NAMESPACE_FLAGS = (syscalls.CLONE_NEWNS | syscalls.CLONE_NEWUTS | syscalls.CLONE_NEWIPC
                   | syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWPID | syscalls.CLONE_NEWNET
                   | syscalls.CLONE_NEWCGROUP)
# CLONE_NEWTIME (0x80) cannot be given to clone(): that bit lies in the exit-signal byte.
# Only unshare() and clone3() take it, and both are refused whole.
AF_ALG, AF_VSOCK = 38, 40  # Linux's numbers on every architecture
PERSONALITY_QUERY = 0xFFFFFFFF

# The 32-bit ABIs a 64-bit kernel also runs. A process may use them whatever it was compiled
# for (int 0x80 from x86_64 code enters the i386 table), so each gets the same rules: a filter
# for the native ABI alone would let a 32-bit keyctl() through.
ARCHITECTURES = {
    "x86_64": ("X86_64", "X86", "X32"),
    "aarch64": ("AARCH64", "ARM"),
}


@dataclass(frozen=True)
class Arg:
    """A condition on one argument, compared as libseccomp and the OCI spec do (64 bits)."""

    index: int
    op: str  # "eq", "lt", "gt" or "masked_eq"
    value: int  # for masked_eq: the mask
    value_two: int = 0  # for masked_eq: what the masked bits must equal


@dataclass(frozen=True)
class Rule:
    """One line of the policy: what these syscalls get (when arg matches), and why."""

    action: str
    names: tuple[str, ...]
    why: str
    arg: Arg | None = None
    min_kernel: tuple[int, int] | None = None  # older kernels: refused instead


def _rule(action: str, why: str, names: str, arg: Arg | None = None,
          min_kernel: tuple[int, int] | None = None) -> Rule:
    return Rule(action, tuple(names.split()), why, arg, min_kernel)


def _clone_flags_arg() -> int:
    # s390 passes clone's stack first and its flags second (the other way round elsewhere).
    return 1 if platform.machine().startswith("s390") else 0


# The policy, for a container with Docker's default capabilities (capabilities.DOCKER_DEFAULT).
# Docker's profile (moby profiles/seccomp) gates many calls on capabilities: those whose
# capability is in the default set are allowed here, the others refused. Names one
# architecture lacks (mmap2 on x86_64) apply where they exist; names this host's libseccomp
# does not know yet (newer syscalls) cannot be filtered by it and answer ENOSYS.
POLICY: tuple[Rule, ...] = (
    _rule(ALLOW, "files, directories and their metadata; permissions are the kernel's checks",
          "open openat openat2 creat close close_range read write pread64 pwrite64 readv "
          "writev preadv preadv2 pwritev pwritev2 lseek _llseek dup dup2 dup3 fcntl fcntl64 "
          "flock fsync fdatasync sync syncfs sync_file_range truncate truncate64 ftruncate "
          "ftruncate64 fallocate fadvise64 fadvise64_64 readahead sendfile sendfile64 splice "
          "tee vmsplice copy_file_range cachestat stat stat64 lstat lstat64 fstat fstat64 "
          "fstatat64 newfstatat statx statfs statfs64 fstatfs fstatfs64 access faccessat "
          "faccessat2 getdents getdents64 getcwd chdir fchdir mkdir mkdirat rmdir rename "
          "renameat renameat2 link linkat unlink unlinkat symlink symlinkat readlink "
          "readlinkat chmod fchmod fchmodat fchmodat2 chown chown32 fchown fchown32 fchownat "
          "lchown lchown32 umask utime utimes utimensat utimensat_time64 futimesat setxattr "
          "lsetxattr fsetxattr getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr "
          "removexattr lremovexattr fremovexattr setxattrat getxattrat listxattrat "
          "removexattrat statmount listmount"),
    _rule(ALLOW, "mknod needs CAP_MKNOD and chroot CAP_SYS_CHROOT, both in Docker's default "
          "set; the device cgroup decides which devices open", "mknod mknodat chroot"),
    _rule(ALLOW, "waiting for files, timers and events", "poll ppoll ppoll_time64 select "
          "_newselect pselect6 pselect6_time64 epoll_create epoll_create1 epoll_ctl "
          "epoll_ctl_old epoll_wait epoll_wait_old epoll_pwait epoll_pwait2 eventfd eventfd2 "
          "inotify_init inotify_init1 inotify_add_watch inotify_rm_watch fanotify_mark "
          "signalfd signalfd4 timerfd_create timerfd_settime timerfd_settime64 timerfd_gettime "
          "timerfd_gettime64 io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents "
          "io_pgetevents_time64"),
    _rule(ALLOW, "memory of one's own", "brk mmap mmap2 munmap mremap mprotect madvise "
          "mincore msync mlock mlock2 mlockall munlock munlockall remap_file_pages membarrier "
          "memfd_create memfd_secret pkey_alloc pkey_free pkey_mprotect map_shadow_stack mseal "
          "process_mrelease"),
    _rule(ALLOW, "processes and threads (clone is decided by its flags, below)",
          "fork vfork execve execveat exit exit_group wait4 waitid waitpid getpid getppid "
          "gettid getpgid setpgid getpgrp getsid setsid set_tid_address set_robust_list "
          "get_robust_list futex futex_time64 futex_waitv futex_wake futex_wait futex_requeue "
          "rseq restart_syscall prctl arch_prctl set_thread_area get_thread_area modify_ldt "
          "getrlimit setrlimit ugetrlimit prlimit64 getrusage getpriority setpriority "
          "sched_yield sched_setaffinity sched_getaffinity sched_setparam sched_getparam "
          "sched_setscheduler sched_getscheduler sched_get_priority_max sched_get_priority_min "
          "sched_rr_get_interval sched_rr_get_interval_time64 sched_setattr sched_getattr "
          "ioprio_get ioprio_set getcpu capget capset seccomp landlock_create_ruleset "
          "landlock_add_rule landlock_restrict_self pidfd_open pidfd_send_signal uretprobe"),
    _rule(ALLOW, "user and group ids; changing them needs CAP_SETUID/CAP_SETGID",
          "getuid getuid32 geteuid geteuid32 getgid getgid32 getegid getegid32 getresuid "
          "getresuid32 getresgid getresgid32 getgroups getgroups32 setuid setuid32 setgid "
          "setgid32 setreuid setreuid32 setregid setregid32 setresuid setresuid32 setresgid "
          "setresgid32 setfsuid setfsuid32 setfsgid setfsgid32 setgroups setgroups32"),
    _rule(ALLOW, "signals, to the processes the pid namespace shows", "kill tkill tgkill "
          "rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigsuspend "
          "rt_sigtimedwait rt_sigtimedwait_time64 rt_sigqueueinfo rt_tgsigqueueinfo "
          "sigaltstack sigreturn sigprocmask pause alarm"),
    _rule(ALLOW, "reading clocks and timers; adjtimex and clock_adjtime only read without "
          "CAP_SYS_TIME", "clock_gettime clock_gettime64 clock_getres clock_getres_time64 "
          "clock_nanosleep clock_nanosleep_time64 nanosleep gettimeofday time getitimer "
          "setitimer timer_create timer_delete timer_settime timer_settime64 timer_gettime "
          "timer_gettime64 timer_getoverrun times adjtimex clock_adjtime clock_adjtime64"),
    _rule(ALLOW, "sockets once made (socket itself is decided by its family, below)",
          "socketpair bind connect listen accept accept4 getsockname getpeername getsockopt "
          "setsockopt sendto recvfrom sendmsg recvmsg sendmmsg recvmmsg recvmmsg_time64 send "
          "recv shutdown socketcall"),
    _rule(ALLOW, "pipes and System V / POSIX IPC (the IPC namespace keeps them private)",
          "pipe pipe2 shmget shmat shmdt shmctl semget semop semctl semtimedop "
          "semtimedop_time64 msgget msgsnd msgrcv msgctl ipc mq_open mq_unlink mq_timedsend "
          "mq_timedsend_time64 mq_timedreceive mq_timedreceive_time64 mq_notify mq_getsetattr"),
    _rule(ALLOW, "system information and devices already opened", "uname sysinfo getrandom "
          "ioctl"),
    _rule(ALLOW, "32-bit ARM housekeeping", "arm_fadvise64_64 arm_sync_file_range "
          "sync_file_range2 breakpoint cacheflush set_tls"),
    _rule(ALLOW, "before Linux 4.8 a tracer could change a syscall after seccomp had checked "
          "it, so Docker allows tracing only from 4.8 on", "ptrace process_vm_readv "
          "process_vm_writev", min_kernel=(4, 8)),
    _rule(ALLOW, "clone without namespace flags: fork and threads", "clone",
          Arg(_clone_flags_arg(), "masked_eq", NAMESPACE_FLAGS, 0)),
    *(_rule(REFUSE, "a new namespace is a new view of the kernel to attack (CAP_SYS_ADMIN in "
            "Docker)", "clone", Arg(_clone_flags_arg(), "masked_eq", flag, flag))
      for flag in (syscalls.CLONE_NEWNS, syscalls.CLONE_NEWUTS, syscalls.CLONE_NEWIPC,
                   syscalls.CLONE_NEWUSER, syscalls.CLONE_NEWPID, syscalls.CLONE_NEWNET,
                   syscalls.CLONE_NEWCGROUP)),
    _rule(NOSYS, "clone3 passes its flags in memory, which seccomp cannot read: ENOSYS makes "
          "glibc fall back to clone, whose flags the filter sees", "clone3"),
    _rule(ALLOW, "sockets of every family below AF_ALG", "socket", Arg(0, "lt", AF_ALG)),
    _rule(ALLOW, "the one family between AF_ALG and AF_VSOCK (AF_NFC)", "socket",
          Arg(0, "eq", AF_ALG + 1)),
    _rule(ALLOW, "sockets of the families above AF_VSOCK", "socket", Arg(0, "gt", AF_VSOCK)),
    *(_rule(REFUSE, "AF_ALG exposes the kernel's crypto code and AF_VSOCK talks to a "
            "hypervisor's host; Docker refuses both (socketcall, which 32-bit x86 uses for "
            "socket(), hides its arguments from seccomp and stays allowed, as in Docker)",
            "socket", Arg(0, "eq", family)) for family in (AF_ALG, AF_VSOCK)),
    # Docker answers other personas with EPERM. A filter rule cannot say "none of these
    # values" (libseccomp takes one comparison per argument in a rule, and how it orders
    # overlapping rules with different actions is unspecified), so other values fall to the
    # default, ENOSYS: refused all the same, the persona unchanged.
    *(_rule(ALLOW, "the harmless personas: Linux, 32-bit Linux, uname26, and the query",
            "personality", Arg(0, "eq", persona))
      for persona in (0x0, 0x0008, 0x20000, 0x20008, PERSONALITY_QUERY)),
    _rule(REFUSE, "file handles name files outside the container's mounts (Docker allows "
          "them only with CAP_SYS_ADMIN; open_by_handle_at is refused too)",
          "name_to_handle_at"),
    _rule(REFUSE, "keyrings are not namespaced: keys would be shared with the host's users "
          "of the same uid", "keyctl add_key request_key"),
    _rule(REFUSE, "kernel programs and performance counters: a large attack surface that "
          "also observes the host (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)",
          "bpf perf_event_open lookup_dcookie fanotify_init lsm_get_self_attr "
          "lsm_set_self_attr lsm_list_modules"),
    _rule(REFUSE, "userfaultfd lets a process stall the kernel inside a page fault, the "
          "classic way to win races in kernel exploits; Docker never allows it", "userfaultfd"),
    _rule(REFUSE, "io_uring performs its operations without system calls, out of the "
          "filter's sight, and has had many kernel bugs; newer Docker refuses it",
          "io_uring_setup io_uring_enter io_uring_register"),
    _rule(REFUSE, "mounting, old API and new, and changing the root: the container's file "
          "system is set up before the filter and stays as it is (CAP_SYS_ADMIN)",
          "mount umount umount2 fsopen fsconfig fsmount fspick move_mount open_tree "
          "open_tree_attr mount_setattr pivot_root swapon swapoff quotactl quotactl_fd"),
    _rule(REFUSE, "entering or making namespaces (CAP_SYS_ADMIN in Docker)", "unshare setns"),
    _rule(REFUSE, "host names: the UTS namespace was set up before the filter",
          "sethostname setdomainname"),
    _rule(REFUSE, "kernel modules and booting another kernel (CAP_SYS_MODULE, CAP_SYS_BOOT)",
          "init_module finit_module delete_module create_module get_kernel_syms query_module "
          "kexec_load kexec_file_load reboot"),
    _rule(REFUSE, "process accounting and the kernel log are the host's (CAP_SYS_PACCT, "
          "CAP_SYSLOG)", "acct syslog"),
    _rule(REFUSE, "setting the clock changes the host's time (CAP_SYS_TIME)",
          "settimeofday stime clock_settime clock_settime64"),
    _rule(REFUSE, "raw I/O ports and terminal hang-up (CAP_SYS_RAWIO, CAP_SYS_TTY_CONFIG)",
          "iopl ioperm vhangup"),
    _rule(REFUSE, "NUMA placement, also of other processes' pages (CAP_SYS_NICE)",
          "mbind set_mempolicy get_mempolicy set_mempolicy_home_node migrate_pages move_pages"),
    _rule(REFUSE, "reaching into other processes beyond ptrace (CAP_SYS_PTRACE)",
          "kcmp pidfd_getfd process_madvise"),
    _rule(REFUSE, "opening any file of a mounted file system by handle escapes the "
          "container's root (the 'shocker' exploit; CAP_DAC_READ_SEARCH)", "open_by_handle_at"),
    _rule(REFUSE, "obsolete or never implemented; not in Docker's profile", "_sysctl uselib "
          "ustat sysfs nfsservctl afs_syscall tuxcall security vserver getpmsg putpmsg"),
    _rule(REFUSE, "32-bit x86 calls modern C libraries no longer make; not in Docker's "
          "profile", "bdflush break ftime gtty idle lock mpx nice oldfstat oldlstat "
          "oldolduname oldstat olduname prof profil readdir sgetmask ssetmask sigaction "
          "signal sigpending sigsuspend stty ulimit vm86 vm86old"),
)

_ERRNO = {REFUSE: errno.EPERM, NOSYS: errno.ENOSYS}
_OCI_ACTION = {ALLOW: ("SCMP_ACT_ALLOW", None), REFUSE: ("SCMP_ACT_ERRNO", errno.EPERM),
               NOSYS: ("SCMP_ACT_ERRNO", errno.ENOSYS)}
_OCI_OP = {"eq": "SCMP_CMP_EQ", "lt": "SCMP_CMP_LT", "gt": "SCMP_CMP_GT",
           "masked_eq": "SCMP_CMP_MASKED_EQ"}

_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1
_PR_GET_NO_NEW_PRIVS = 39
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_BPF_MAXINSNS = 4096


class SeccompError(NsmagicError):
    """The filter could not be installed; the message says why and what to do."""


class SeccompUnavailable(CapabilityError):
    """This host cannot filter system calls (no libseccomp, no binding, or no kernel support)."""


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Filter:
    """A built filter: libseccomp's BPF program, ready to load into any process forked later."""

    def __init__(self, bpf: bytes, seccomp_nr: int, binding: str, architectures: tuple[str, ...],
                 refused: tuple[str, ...], unknown: tuple[str, ...], build_us: float) -> None:
        self.bpf = bpf
        self.binding = binding
        self.architectures = architectures
        self.refused = refused  # names refused whole, with EPERM, that libseccomp knows
        self.unknown = unknown  # names this libseccomp does not know: they answer ENOSYS
        self.build_us = build_us
        self._seccomp_nr = seccomp_nr
        # Kept alive as long as the Filter: the kernel copies the program when it is loaded.
        self._buffer = ctypes.create_string_buffer(bpf, len(bpf))
        self._program = _SockFprog(len(bpf) // 8, ctypes.addressof(self._buffer))

    def __repr__(self) -> str:
        return (f"<seccomp.Filter {len(self.bpf) // 8} instructions, {len(self.refused)} "
                f"refused, via {self.binding}>")


# -- the binding ------------------------------------------------------------------------------
_binding_cache: tuple[ModuleType | None, str] | None = None


def _binding() -> tuple[ModuleType | None, str]:
    """libseccomp's own binding where installed (it is maintained with the library), else
    pyseccomp, which pip installs anywhere; with the module, its name or why there is none."""
    global _binding_cache
    if _binding_cache is None:
        _binding_cache = _load_binding()
    return _binding_cache


def _load_binding() -> tuple[ModuleType | None, str]:
    try:
        import seccomp as upstream  # Debian's python3-seccomp; not on PyPI

        if hasattr(upstream, "SyscallFilter"):
            return upstream, "libseccomp's own binding (seccomp)"
    except ImportError:
        pass
    try:
        import pyseccomp
    except ImportError:
        return None, "the Python package pyseccomp is not installed (pip install pyseccomp)"
    except (OSError, RuntimeError):
        # pyseccomp looks for libseccomp.so.2 when it is imported.
        return None, ("no libseccomp on this host (libseccomp.so.2; Debian and Ubuntu: "
                      "apt-get install libseccomp2)")
    return pyseccomp, f"pyseccomp {getattr(pyseccomp, '__version__', '?')}"


def _kernel_reason() -> str | None:
    if platform.system() != "Linux":
        return "seccomp is a Linux feature"
    try:
        with open("/proc/self/status") as handle:
            if not any(line.startswith("Seccomp:") for line in handle):
                return "this kernel was built without seccomp (CONFIG_SECCOMP)"
    except OSError:
        pass  # no /proc: let the kernel answer when the filter is loaded
    return None


def unavailable_reason() -> str | None:
    """Why this host cannot filter system calls, or None when it can."""
    reason = _kernel_reason()
    if reason:
        return reason
    module, name = _binding()
    if module is None:
        return name
    try:
        build()
    except SeccompUnavailable as error:
        return str(error)
    return None


def available() -> bool:
    """True when the filter can be built and loaded here; unavailable_reason() says why not."""
    return unavailable_reason() is None


# -- building ---------------------------------------------------------------------------------
def _kernel_version(release: str | None = None) -> tuple[int, int]:
    numbers = re.findall(r"\d+", release or platform.release())[:2]
    return (int(numbers[0]), int(numbers[1])) if len(numbers) == 2 else (0, 0)


def resolve(policy: tuple[Rule, ...] = POLICY,
            release: str | None = None) -> list[tuple[str, tuple[str, ...], Arg | None]]:
    """The policy for this kernel: (action, names, arg) with kernel conditions decided."""
    kernel = _kernel_version(release)
    decided = []
    for rule in policy:
        action = rule.action
        if rule.min_kernel and kernel < rule.min_kernel:
            action = REFUSE  # Docker leaves these to its default, EPERM
        decided.append((action, rule.names, rule.arg))
    return decided


def architectures(machine: str | None = None) -> tuple[str, ...]:
    """libseccomp's names of the ABIs filtered on this machine: the native one first. An ABI
    this kernel does not run (x32 is often built out) is left out: its calls are then killed
    (an ABI the filter was not built for never gets through), and the filter is a third
    shorter, which each container pays for when it loads it."""
    machine = machine or platform.machine()
    found = ARCHITECTURES.get(machine, ("NATIVE",))
    if machine == platform.machine() and "X32" in found and not _kernel_runs_x32():
        found = tuple(arch for arch in found if arch != "X32")
    return found


_X32_SYSCALL_BIT = 0x40000000
_X32_GETPID = _X32_SYSCALL_BIT | 39


def _kernel_runs_x32() -> bool:
    """Whether an x32 system call reaches this kernel (it answers ENOSYS when x32 is out)."""
    if platform.machine() != "x86_64":
        return False
    libc = syscalls.libc()
    return libc.syscall(ctypes.c_long(_X32_GETPID)) != -1 or ctypes.get_errno() != errno.ENOSYS


_default_filter: Filter | None = None


def build(policy: tuple[Rule, ...] = POLICY) -> Filter:
    """Compile the policy with libseccomp into a BPF program, once per process for POLICY.

    Call it in the fork server before containers are forked: each then only loads the bytes.
    """
    global _default_filter
    if policy is POLICY and _default_filter is not None:
        return _default_filter
    started = time.perf_counter_ns()
    module, name = _binding()
    if module is None:
        raise SeccompUnavailable(name)
    try:
        built = _compile(module, name, policy)
    except (OSError, RuntimeError, ValueError) as error:
        raise SeccompUnavailable(f"libseccomp could not build the filter: {error}") from error
    built.build_us = (time.perf_counter_ns() - started) / 1000
    if policy is POLICY:
        _default_filter = built
    return built


def _compile(module: Any, binding_name: str, policy: tuple[Rule, ...]) -> Filter:
    def action_of(action: str) -> int:
        return module.ALLOW if action == ALLOW else module.ERRNO(_ERRNO[action])

    default = action_of(DEFAULT)
    syscall_filter = module.SyscallFilter(default)
    arches = architectures()
    for arch in arches[1:]:
        syscall_filter.add_arch(getattr(module.Arch, arch))
    try:
        # A binary tree of syscall numbers instead of a list. Loading a filter, the kernel
        # (5.11+) runs it once for every syscall number of each ABI to cache the ones always
        # allowed; down a tree that takes half the time a list does here.
        syscall_filter.set_attr(module.Attr.CTL_OPTIMIZE, 2)
    except (AttributeError, OSError, RuntimeError):
        pass  # libseccomp before 2.5: a list, slower to load, the same decisions
    unknown, refused = [], []
    for action, names, arg in resolve(policy):
        if action == DEFAULT:
            continue  # libseccomp refuses a rule that repeats the default action
        for syscall in names:
            # -1 is libseccomp's "no such name on any architecture I know"; names of other
            # architectures resolve to negative placeholders that apply where they exist.
            if module.resolve_syscall(module.Arch.NATIVE, syscall) == -1:
                unknown.append(syscall)
                continue
            if arg is None:
                syscall_filter.add_rule(action_of(action), syscall)
                if action == REFUSE:
                    refused.append(syscall)
            else:
                syscall_filter.add_rule(action_of(action), syscall, module.Arg(
                    arg.index, getattr(module, arg.op.upper()), arg.value, arg.value_two))
    # Only libseccomp's export is used, never its seccomp_load(): the bytes are loaded by
    # install() in each container, so building costs once, not once per container.
    with tempfile.TemporaryFile() as handle:
        syscall_filter.export_bpf(handle)
        handle.seek(0)
        bpf = handle.read()
    if not bpf or len(bpf) % 8 or len(bpf) // 8 > _BPF_MAXINSNS:
        raise ValueError(f"libseccomp exported {len(bpf)} bytes, not a loadable BPF program")
    seccomp_nr = module.resolve_syscall(module.Arch.NATIVE, "seccomp")
    return Filter(bpf, seccomp_nr, binding_name, arches, tuple(sorted(set(refused))),
                  tuple(sorted(set(unknown))), 0.0)


# -- loading ----------------------------------------------------------------------------------
def install(program: Filter | None = None) -> None:
    """Load the filter into the calling process, all its threads, and whatever it starts.

    It cannot be removed. no_new_privs must be set first (prctl(PR_SET_NO_NEW_PRIVS, 1)):
    the kernel requires it of unprivileged callers, and nsmagic requires it of all, so that
    no setuid program runs under a filter it did not expect. Raises SeccompError.
    """
    program = program or build()
    libc = syscalls.libc()
    if syscalls.prctl(_PR_GET_NO_NEW_PRIVS) != 1:
        raise SeccompError("the seccomp filter needs no_new_privs set first "
                           "(prctl(PR_SET_NO_NEW_PRIVS, 1), as capabilities.restrict_to() does)")
    # TSYNC applies the filter to every thread of the process at once, or to none.
    result = libc.syscall(ctypes.c_long(program._seccomp_nr),
                          ctypes.c_uint(_SECCOMP_SET_MODE_FILTER),
                          ctypes.c_uint(_SECCOMP_FILTER_FLAG_TSYNC),
                          ctypes.byref(program._program))
    code = ctypes.get_errno() if result == -1 else 0
    if code == errno.ENOSYS:
        # Kernels before 3.17 have no seccomp(2): prctl loads a filter for this thread only.
        result = libc.prctl(ctypes.c_int(_PR_SET_SECCOMP), ctypes.c_ulong(_SECCOMP_MODE_FILTER),
                            ctypes.byref(program._program), ctypes.c_ulong(0), ctypes.c_ulong(0))
        code = ctypes.get_errno() if result == -1 else 0
    if result > 0:
        raise SeccompError(f"thread {result} of this process could not take the seccomp filter "
                           "(it has a filter of its own); load it before starting threads")
    if result == -1:
        raise SeccompError(f"the kernel refused the seccomp filter: {os.strerror(code)}")


# -- the same policy for runc -----------------------------------------------------------------
def oci_profile(policy: tuple[Rule, ...] = POLICY, machine: str | None = None,
                release: str | None = None) -> dict[str, Any]:
    """The policy as an OCI runtime-spec linux.seccomp object, for runc and exported bundles.

    Names runc's libseccomp does not know are skipped by runc, as build() skips them here.
    """
    default_action, default_errno = _OCI_ACTION[DEFAULT]
    profile: dict[str, Any] = {
        "defaultAction": default_action, "defaultErrnoRet": default_errno,
        "architectures": [f"SCMP_ARCH_{arch}" for arch in architectures(machine)
                          if arch != "NATIVE"],
        "syscalls": [],
    }
    if not profile["architectures"]:
        del profile["architectures"]  # runc then filters the native ABI only
    merged: dict[str, list[str]] = {}  # unconditional names, one entry per action
    for action, names, arg in resolve(policy, release):
        if arg is None:
            merged.setdefault(action, []).extend(names)
            continue
        entry = _oci_entry(action, list(names))
        entry["args"] = [{"index": arg.index, "value": arg.value, "valueTwo": arg.value_two,
                          "op": _OCI_OP[arg.op]}]
        profile["syscalls"].append(entry)
    profile["syscalls"][:0] = [_oci_entry(action, sorted(set(names)))
                               for action, names in merged.items()]
    return profile


def _oci_entry(action: str, names: list[str]) -> dict[str, Any]:
    name, errno_ret = _OCI_ACTION[action]
    entry: dict[str, Any] = {"names": names, "action": name}
    if errno_ret is not None:
        entry["errnoRet"] = errno_ret
    return entry


# -- doctor -----------------------------------------------------------------------------------
def _libseccomp_version() -> str:
    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]

    try:
        function = ctypes.CDLL("libseccomp.so.2").seccomp_version
    except (OSError, AttributeError):
        return "libseccomp"
    function.restype = ctypes.POINTER(Version)
    version = function().contents
    return f"libseccomp {version.major}.{version.minor}.{version.micro}"


def describe() -> str:
    """One line for `nsmagic doctor`: what the filter refuses and through what, or why not."""
    reason = unavailable_reason()
    if reason:
        return f"seccomp filter: unavailable: {reason}"
    built = build()
    library = _libseccomp_version()
    newer = f"; {len(built.unknown)} newer than {library} answer ENOSYS" if built.unknown else ""
    return (f"seccomp filter: ready, Docker's default policy via {built.binding} over "
            f"{library}: {len(built.refused)} syscalls refused (EPERM), clone "
            f"with namespace flags refused, clone3 and unknown syscalls ENOSYS, for "
            f"{', '.join(a.lower() for a in built.architectures)}{newer}")
