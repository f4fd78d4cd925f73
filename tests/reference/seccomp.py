"""Docker's default seccomp profile, taken from a Debian package, as an OCI linux.seccomp."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

# Docker's own profile: moby's profiles/seccomp/default.json as Debian ships Docker's source
# (the same upstream release as Debian's docker.io, whose dockerd embeds this file). Read from
# the .deb, not installed: the package drags in dozens of Go source packages.
DOCKER_PACKAGE = "golang-github-docker-docker-dev"
DOCKER_MEMBER = "usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json"
# containers/common's profile, what podman applies; installed by scripts/setup. It descends
# from moby's but allows keyctl, unshare, mount, clone with namespace flags and ptrace to
# everyone (it leaves those to capabilities), so it is *not* Docker's default.
CONTAINERS_COMMON_PACKAGE = "golang-github-containers-common"
CONTAINERS_COMMON_PATH = Path("/usr/share/containers/seccomp.json")

# The names the profile format uses for the machine (Go's GOARCH) and libseccomp's.
PROFILE_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm",
                "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
SECCOMP_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64",
                "i686": "SCMP_ARCH_X86", "armv7l": "SCMP_ARCH_ARM",
                "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X",
                "riscv64": "SCMP_ARCH_RISCV64"}


@dataclass(frozen=True)
class Profile:
    """A seccomp profile in Docker's format and where it came from."""

    package: str
    version: str
    member: str  # the file's path inside the package
    sha256: str
    data: dict[str, Any]

    def describe(self) -> str:
        return f"{self.package} {self.version}: /{self.member} (sha256 {self.sha256[:16]})"


class ProfileUnavailable(RuntimeError):
    """The profile could not be found or fetched; the message says how to get it."""


def cache_dir() -> Path:
    """$NSMAGIC_CACHE/reference, else ~/.cache/nsmagic/reference (as the VM images' cache)."""
    root = os.environ.get("NSMAGIC_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "nsmagic") / "reference"


@cache  # apt-cache alone takes most of a second
def docker_profile() -> Profile:
    """Docker's default.json from the candidate version of DOCKER_PACKAGE, cached by version."""
    version = _candidate_version(DOCKER_PACKAGE)
    cached = cache_dir() / f"{DOCKER_PACKAGE}_{version}.json"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        text = _member_of_deb(DOCKER_PACKAGE, version, DOCKER_MEMBER)
        # Atomically: two test processes may fetch at once.
        partial = cached.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(text)
        partial.replace(cached)
    return _profile(DOCKER_PACKAGE, version, DOCKER_MEMBER, cached.read_bytes())


@cache
def containers_common_profile() -> Profile:
    """containers/common's (podman's) default profile, as installed from Debian."""
    try:
        raw = CONTAINERS_COMMON_PATH.read_bytes()
    except OSError as error:
        raise ProfileUnavailable(f"{CONTAINERS_COMMON_PATH}: {error.strerror} (apt-get install "
                                 f"{CONTAINERS_COMMON_PACKAGE}; scripts/setup does)") from error
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", CONTAINERS_COMMON_PACKAGE],
                             capture_output=True, text=True, check=False).stdout.strip()
    return _profile(CONTAINERS_COMMON_PACKAGE, version or "unknown",
                    str(CONTAINERS_COMMON_PATH).lstrip("/"), raw)


def _profile(package: str, version: str, member: str, raw: bytes) -> Profile:
    return Profile(package, version, member, hashlib.sha256(raw).hexdigest(), json.loads(raw))


def _candidate_version(package: str) -> str:
    """The version apt would fetch; without package lists, the newest one in the cache."""
    shown = subprocess.run(["apt-cache", "show", "--no-all-versions", package],
                           capture_output=True, text=True, check=False).stdout
    match = re.search(r"^Version: (\S+)$", shown, re.MULTILINE)
    if match:
        return match.group(1)
    cached = sorted(cache_dir().glob(f"{package}_*.json"))
    if cached:
        return cached[-1].stem.split("_", 1)[1]
    raise ProfileUnavailable(f"apt knows no {package} and none is cached in {cache_dir()} "
                             "(run apt-get update)")


def _member_of_deb(package: str, version: str, member: str) -> bytes:
    """One file of a package, by apt-get download and dpkg-deb, without unpacking the rest."""
    with tempfile.TemporaryDirectory(prefix="reference-deb-") as scratch:
        # apt's sandbox user _apt cannot write to a private temporary directory.
        download = subprocess.run(["apt-get", "download", "-o", "APT::Sandbox::User=root",
                                   f"{package}={version}"], cwd=scratch, capture_output=True,
                                  text=True, check=False)
        debs = list(Path(scratch).glob("*.deb"))
        if download.returncode != 0 or len(debs) != 1:
            raise ProfileUnavailable(f"apt-get download {package}={version} failed: "
                                     f"{download.stderr.strip()[-300:]}")
        tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(debs[0])],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for entry in archive:
            if entry.name.removeprefix("./") == member and entry.isfile():
                handle = archive.extractfile(entry)
                assert handle is not None
                return handle.read()
    raise ProfileUnavailable(f"{package} {version} has no /{member}")


def _kernel_at_least(wanted: str, release: str) -> bool:
    """Compare "major.minor" with the running kernel's release ("6.18.0-1-amd64")."""
    have = tuple(int(x) for x in re.findall(r"\d+", release)[:2])
    return have >= tuple(int(x) for x in wanted.split(".")[:2])


def _applies(rule: dict[str, Any], capabilities: frozenset[str], arch: str,
             release: str) -> bool:
    """Whether a conditional rule is part of the filter, as the profile format defines:
    every included capability present, no excluded one, the machine named or not excluded,
    the kernel at least minKernel (or below an excluded minKernel)."""
    includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    if arch in (excludes.get("arches") or ()):
        return False
    if not set(includes.get("caps") or ()) <= capabilities:
        return False
    if capabilities & set(excludes.get("caps") or ()):
        return False
    if includes.get("minKernel") and not _kernel_at_least(includes["minKernel"], release):
        return False
    return not (excludes.get("minKernel") and _kernel_at_least(excludes["minKernel"], release))


def to_oci(profile: Profile, capabilities: frozenset[str], machine: str | None = None,
           release: str | None = None) -> dict[str, Any]:
    """The linux.seccomp section a container with these (bounding) capabilities gets."""
    machine = machine or platform.machine()
    release = release or platform.release()
    data = profile.data
    arch = PROFILE_ARCH.get(machine, machine)
    oci: dict[str, Any] = {"defaultAction": data["defaultAction"]}
    if "defaultErrnoRet" in data:
        oci["defaultErrnoRet"] = data["defaultErrnoRet"]
    if data.get("architectures"):
        oci["architectures"] = list(data["architectures"])
    for entry in data.get("archMap") or ():
        if entry["architecture"] == SECCOMP_ARCH.get(machine):
            oci["architectures"] = [entry["architecture"], *entry.get("subArchitectures", ())]
    syscalls = []
    for rule in data.get("syscalls") or ():
        if not _applies(rule, capabilities, arch, release):
            continue
        call: dict[str, Any] = {"names": rule.get("names") or [rule["name"]],
                                "action": rule["action"]}
        if rule.get("args"):
            call["args"] = rule["args"]
        if "errnoRet" in rule:
            call["errnoRet"] = rule["errnoRet"]
        syscalls.append(call)
    oci["syscalls"] = syscalls
    return oci
