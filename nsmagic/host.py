"""Capability probe: what this host lets nsmagic do, and why not where it does not."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field

# The namespaces tried one by one; names as in ContainerSpec.
PROBED_NAMESPACES = ("user", "pid", "uts", "ipc", "net", "mount", "cgroup")
TIERS = {
    "full": "isolated: namespaces and cgroup limits",
    "userns": "isolated by user namespaces; limits are approximated with rlimits",
    "none": "NOT isolated: a plain child process with rlimits",
}


@dataclass
class Check:
    """One capability: whether it works here and, if not, why in plain words."""

    ok: bool
    reason: str = ""


@dataclass
class HostReport:
    """Everything the probe learned about this host."""

    is_root: bool
    uid: int
    namespaces: dict[str, Check] = field(default_factory=dict)
    proc_mount: Check = field(default_factory=lambda: Check(False, "not probed"))
    seccomp: str = "unknown"
    no_new_privs: bool = False
    cgroup: dict = field(default_factory=dict)
    kvm: Check = field(default_factory=lambda: Check(False, "not probed"))
    pid_1: Check = field(default_factory=lambda: Check(False, "not probed"))
    seccomp_filter: Check = field(default_factory=lambda: Check(False, "not probed"))
    filesystem: str = ""  # what a default container sees of the host
    user_ids: str = ""  # whom root inside a user namespace is on the host

    @property
    def can_create_namespaces(self) -> bool:
        """True when a container can get at least pid, uts, ipc, net and mount namespaces."""
        needed = ("pid", "uts", "ipc", "net", "mount")
        return all(self.namespaces.get(n, Check(False)).ok for n in needed) and (
            self.is_root or self.namespaces.get("user", Check(False)).ok
        )

    @property
    def tier(self) -> str:
        """'full', 'userns' or 'none': how far containers can be isolated and limited here."""
        if not self.can_create_namespaces:
            return "none"
        if self.cgroup.get("driver") in ("v1", "v2"):
            return "full"
        return "userns"

    def to_json(self) -> str:
        """Serialise for the probe's subprocess."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> HostReport:
        """Inverse of to_json."""
        data = json.loads(text)
        data["namespaces"] = {k: Check(**v) for k, v in data["namespaces"].items()}
        data["proc_mount"] = Check(**data["proc_mount"])
        data["kvm"] = Check(**data["kvm"])
        for name in ("pid_1", "seccomp_filter"):
            data[name] = Check(**data.get(name, {"ok": False, "reason": "not probed"}))
        return cls(**data)

    def describe(self) -> str:
        """The doctor's report: one line a capability, each 'no' with its reason."""
        lines = [f"nsmagic doctor: {TIERS[self.tier]} (tier: {self.tier})",
                 f"  running as: {'root' if self.is_root else f'uid {self.uid} (not root)'}"]
        for name in PROBED_NAMESPACES:
            check = self.namespaces.get(name, Check(False, "not probed"))
            lines.append(_line(f"{name} namespace", check))
        lines.append(_line("fresh /proc in a pid namespace", self.proc_mount))
        cg = self.cgroup
        if cg:
            version = cg.get("version", "unknown")
            ok = cg.get("driver") in ("v1", "v2")
            detail = f"cgroup {version}, driver {cg.get('driver')}"
            if cg.get("controllers"):
                detail += f", controllers: {', '.join(cg['controllers'])}"
            lines.append(_line(f"cgroups ({detail})", Check(ok, cg.get("reason", ""))))
        lines.append(_line("KVM for the VM baseline", self.kvm))
        lines.append(_line("nsmagic-init, the small native pid 1", self.pid_1))
        lines.append(_line("seccomp filter for containers (Docker's default profile)",
                           self.seccomp_filter))
        lines.append("  containers: Docker's default capabilities only, no_new_privs set "
                     "(--privileged keeps them all and drops the seccomp filter)")
        if self.filesystem:
            lines.append(f"  a container's root: {self.filesystem}")
        if self.user_ids:
            lines.append(f"  root in a user namespace is, on the host: {self.user_ids}")
        nnp = "yes" if self.no_new_privs else "no"
        lines.append(f"  this process: seccomp {self.seccomp}; no_new_privs: {nnp}")
        return "\n".join(lines)


def _line(label: str, check: Check) -> str:
    mark = "yes" if check.ok else "no "
    return f"  [{mark}] {label}" + (f": {check.reason}" if check.reason else "")


@functools.lru_cache(maxsize=1)
def probe() -> HostReport:
    """Probe this host once per process, in a fresh helper process.

    The probe forks to try each namespace, and the caller (a notebook kernel) is
    multithreaded and must not fork, so the work happens in a subprocess.
    """
    completed = subprocess.run(
        [sys.executable, "-s", "-m", "nsmagic.host", "--json"], capture_output=True, text=True,
        timeout=60, env=_probe_environment(), check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the capability probe failed: {completed.stderr.strip()[-500:]}")
    return HostReport.from_json(completed.stdout)


def _probe_environment() -> dict[str, str]:
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def probe_here() -> HostReport:
    """Run the probe in this process (which must be single-threaded: it forks)."""
    report = HostReport(is_root=os.geteuid() == 0, uid=os.geteuid())
    status = _proc_status()
    report.seccomp = {"0": "off", "1": "strict", "2": "filter"}.get(status.get("Seccomp", ""),
                                                                      "unknown")
    report.no_new_privs = status.get("NoNewPrivs") == "1"
    for name in PROBED_NAMESPACES:
        report.namespaces[name] = _try_in_child(_enter_namespace, name, report.is_root)
    report.proc_mount = _try_in_child(_mount_fresh_proc, report.is_root)
    report.cgroup = _describe_cgroups()
    report.kvm = _check_kvm()
    report.pid_1 = _check_native_init()
    report.seccomp_filter = _check_seccomp()
    report.filesystem = _describe_view()
    report.user_ids = _describe_user_ids()
    return report


def _check_seccomp() -> Check:
    from nsmagic.isolation import seccomp

    if not seccomp.available():
        return Check(False, f"{seccomp.unavailable_reason()}: containers run WITHOUT a "
                            "seccomp filter (every system call open), and say so")
    return Check(True, seccomp.describe().removeprefix("seccomp filter: "))


def _describe_view() -> str:
    from nsmagic.isolation import view

    shown = view.host_view()
    return (f"a read-only view of {', '.join(shown.directories)} under a private writable "
            f"layer; {len(shown.masked)} secret files of the host's /etc masked; host paths "
            "only through --volume (--host-root: the host's own root, read-write)")


def _describe_user_ids() -> str:
    from nsmagic.isolation import idmaps

    if os.geteuid() == 0:
        return (f"a range of {idmaps.RANGE_SIZE} ids of the container's own, from "
                f"{idmaps.POOL_START} up (recorded in {idmaps.RECORDS})")
    import pwd

    name = pwd.getpwuid(os.geteuid()).pw_name
    if idmaps.subordinate_range("/etc/subuid", name, os.geteuid()):
        return "you, and your subordinate ids (/etc/subuid) through newuidmap"
    return ("you, and only you (no subordinate ids in /etc/subuid for you): the read-only "
            "view is what protects your files")


def _check_native_init() -> Check:
    from nsmagic.runtime.inside.init import NATIVE_INIT

    if NATIVE_INIT is not None:
        return Check(True, "an idle container costs one forked Python, not two")
    if os.environ.get("NSMAGIC_INIT") == "python":
        return Check(False, "NSMAGIC_INIT=python: pid 1 stays a forked Python (about 1.5 MB "
                            "more per idle container)")
    return Check(False, "not built (no C compiler when nsmagic was installed): pid 1 stays a "
                        "forked Python, about 1.5 MB more per idle container")


def _proc_status() -> dict[str, str]:
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _try_in_child(function, *args) -> Check:  # noqa: ANN001
    """Run function in a forked child; it returns '' on success or the reason it failed."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            reason = function(*args)
        except Exception as error:  # noqa: BLE001
            reason = _plain_reason(error)
        os.write(write_fd, reason.encode()[:4000])
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        reason = pipe.read().decode()
    os.waitpid(pid, 0)
    return Check(ok=not reason, reason=reason)


def _enter_user_namespace_if_needed(is_root: bool) -> None:
    from nsmagic.isolation import namespaces, syscalls

    if is_root:
        return
    syscalls.unshare(syscalls.CLONE_NEWUSER)
    uid, gid = os.geteuid(), os.getegid()
    with open("/proc/self/setgroups", "w") as handle:
        handle.write("deny")
    with open("/proc/self/uid_map", "w") as handle:
        handle.write(namespaces.IdMap(0, uid).line())
    with open("/proc/self/gid_map", "w") as handle:
        handle.write(namespaces.IdMap(0, gid).line())


def _enter_namespace(name: str, is_root: bool) -> str:
    from nsmagic.isolation import namespaces, syscalls

    try:
        if name == "user":
            syscalls.unshare(syscalls.CLONE_NEWUSER)
            return ""
        _enter_user_namespace_if_needed(is_root)
        syscalls.unshare(namespaces.NAMESPACE_FLAGS[name])
    except OSError as error:
        return _plain_reason(error, name)
    return ""


def _mount_fresh_proc(is_root: bool) -> str:
    from nsmagic.isolation import mounts, syscalls

    try:
        _enter_user_namespace_if_needed(is_root)
        syscalls.unshare(syscalls.CLONE_NEWPID | syscalls.CLONE_NEWNS)
    except OSError as error:
        return "needs pid and mount namespaces, which failed: " + _plain_reason(error)
    pid = os.fork()
    if pid == 0:
        try:
            mounts.make_mounts_private()
            warning = mounts.mount_proc()
        except OSError as error:
            warning = _plain_reason(error)
        os._exit(1 if warning else 0)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return ("the kernel refused a new procfs (parts of the host's /proc are masked, as in "
                "nested containers); /proc inside will show the host's processes")
    return ""


def _plain_reason(error: BaseException, name: str = "") -> str:
    if isinstance(error, OSError):
        if error.errno == 1:  # EPERM
            if name == "user":
                return "the kernel or a seccomp filter forbids user namespaces here"
            return "not permitted (needs root or a user namespace, which this host forbids)"
        if error.errno == 28:  # ENOSPC: user.max_user_namespaces reached or 0
            return "user namespaces are disabled here (user.max_user_namespaces is 0 or used up)"
        if error.errno == 22:  # EINVAL
            return "this kernel does not support it"
        return error.strerror or str(error)
    return str(error)


def _describe_cgroups() -> dict:
    try:
        from nsmagic.cgroups import describe_host
    except ImportError:
        return {"version": "unknown", "driver": "none", "reason": "no cgroup support installed"}
    described = describe_host()
    return described if isinstance(described, dict) else asdict(described)


def _check_kvm() -> Check:
    # The VM baseline's own verdict, word for word. Unlike the baseline, the doctor never
    # builds a guest image for the probe boot: without one, it says KVM is not yet proven.
    from nsmagic.vm.accel import kvm_verdict

    verdict = kvm_verdict(build=False)
    return Check(verdict.kvm, verdict.reason)


if __name__ == "__main__":
    found = probe_here()
    print(found.to_json() if "--json" in sys.argv else found.describe())
