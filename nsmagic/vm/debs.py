"""Debian packages through apt: versions (remembered until apt's lists change), exact-version
downloads into a cache, and their files (members read from a .deb, or a whole tree unpacked)."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from nsmagic.errors import CapabilityError

APT_LISTS = Path("/var/lib/apt/lists")


def run_tool(argv: list[str], cwd: Path | None = None) -> str:
    """stdout of apt or dpkg; CapabilityError (one sentence) when it is missing or fails."""
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as exc:
        raise CapabilityError(
            f"{argv[0]} is not installed: building VM images needs apt and dpkg (Debian)."
        ) from exc
    if proc.returncode != 0:
        raise CapabilityError(
            f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}"
        )
    return proc.stdout


def candidate(package: str) -> tuple[str, str]:
    """Return (version, first Depends entry) of the candidate version of a package."""
    text = run_tool(["apt-cache", "show", "--no-all-versions", package])
    version = depends = ""
    for line in text.splitlines():
        if line.startswith("Version:"):
            version = line.split(":", 1)[1].strip()
        elif line.startswith("Depends:"):
            depends = line.split(":", 1)[1].split(",")[0].split()[0].strip()
    if not version:
        raise CapabilityError(f"apt knows no version of {package}.")
    return version, depends


def resolve(package: str) -> tuple[str, str]:
    """Like candidate, but refresh the apt lists once (as root) when the package is unknown."""
    try:
        return candidate(package)
    except CapabilityError:
        if os.geteuid() != 0:
            raise CapabilityError(
                f"apt does not know {package}: run 'apt-get update' as root once."
            ) from None
        run_tool(["apt-get", "update"])
        return candidate(package)


def memoised(memo: Path, key: str, compute: Callable[[], dict[str, str]]) -> dict[str, str]:
    """compute()'s answer, remembered in the JSON file memo under key until apt's lists change.

    Asking apt-cache takes about half a second per package, which would make every cached
    build anything but instant.
    """
    try:
        stamp = str(APT_LISTS.stat().st_mtime_ns)
    except OSError:
        stamp = ""
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if stamp and known.get("stamp") == stamp and key in known:
        return known[key]
    value = compute()
    known = known if known.get("stamp") == stamp else {"stamp": stamp}
    known[key] = value
    memo.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own for each writer, threads of one process included: a shared one was
    # renamed away by the first writer under the second (FileNotFoundError).
    fd, tmp = tempfile.mkstemp(prefix=".resolved.", suffix=".json", dir=memo.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(known))
    os.replace(tmp, memo)
    return value


def versions(packages: tuple[str, ...], memo: Path) -> dict[str, str]:
    """{package: candidate version} of each package, remembered in memo (see memoised)."""
    return memoised(
        memo, "packages " + " ".join(packages), lambda: {p: resolve(p)[0] for p in packages}
    )


def download(package: str, version: str, debs: Path) -> Path:
    """apt-get download one exact version into the deb cache, unless it is already there."""
    debs.mkdir(parents=True, exist_ok=True)
    marker = debs / f"{package}_{version.replace(':', '%3a')}.path"
    if marker.exists():
        path = debs / marker.read_text().strip()
        if path.exists():
            return path
    before = set(debs.glob("*.deb"))
    # The sandbox user _apt usually cannot write to a user's cache folder; as root apt would
    # only warn, as a user it falls back on its own.
    sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    run_tool(["apt-get", "download", *sandbox, f"{package}={version}"], cwd=debs)
    new = [p for p in set(debs.glob("*.deb")) - before if p.name.startswith(package + "_")]
    if not new:
        # Already downloaded under apt's own file name by an earlier, interrupted build.
        new = list(debs.glob(f"{package}_*.deb"))
    if len(new) != 1:
        raise CapabilityError(f"apt-get download {package}={version} left no single .deb.")
    marker.write_text(new[0].name)
    return new[0]


def extract(deb: Path, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """Return {member path: bytes} for the members `wanted(path)` accepts.

    Streams `dpkg-deb --fsys-tarfile` (what `dpkg -x` unpacks) instead of unpacking the whole
    400 MB module tree to disk only to keep a dozen files.
    """
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if member.isfile() and wanted(name):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        found[name] = handle.read()
    finally:
        if proc.stdout:
            proc.stdout.close()
        proc.wait()
    if proc.returncode not in (0, None) and not found:
        raise CapabilityError(f"dpkg-deb could not read {deb}.")
    return found


def unpack(deb: Path, root: Path) -> None:
    """Every file of the package into root, as dpkg would install it (dpkg-deb -x)."""
    run_tool(["dpkg-deb", "-x", str(deb), str(root)])
