"""The bundle's root filesystem: nsmagic's roots as runc builds them from config.json mounts.

- The default root and --read-only: rootfs/ is a skeleton of mount points (the directories
  a root has, the merged-/usr links); config.json mounts the view's directories at the same
  paths, each an overlay with a private upper layer on a tmpfs (the default) or a read-only
  bind (--read-only), hides the host's secrets in them, and binds the container's own /etc
  files. The root itself is read-only: its own directories get fresh tmpfs mounts instead,
  so every write lands on a tmpfs and vanishes with the container, as in nsmagic.
- --rootfs DIR: root.path is DIR (or a copy of it in rootfs/), with the container's own
  /etc/hostname, hosts and resolv.conf bound over DIR's.
- A busybox-static root (bundle_root="busybox"), for tests and hosts without the view.
- --host-root: rootfs/ is empty and the bundle's prepare-rootfs.sh binds the host's / there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nsmagic.errors import SpecError
from nsmagic.isolation import etc, view
from nsmagic.runtime.spec import ContainerSpec

ROOTFS_DIR = "rootfs"
BUSYBOX = "/bin/busybox"  # Debian's busybox-static: one static binary, no libraries needed
BUNDLE_ROOT_MODES = ("bind", "busybox")
# Where, in the skeleton, the layers live: runc copies this directory's contents onto a
# fresh tmpfs at /run (its "tmpcopyup"), the overlays and /etc binds name their sources on
# that tmpfs, and then /run is covered by the container's own empty one.
LAYERS = "/run/oci-layers"
# Mounted before /run is covered, so the layers never show; /dev, /proc, /sys and /tmp have
# mounts of their own.
_OWN_MOUNTS = ("/dev", "/proc", "/sys", "/tmp", "/run")
_TMPFS = ["nosuid", "nodev"]  # as nsmagic's root tmpfs (mountops.TMPFS_FLAGS)


@dataclass
class Skeleton:
    """What the view's rootfs/ holds: mount points, links and the layers' seed files."""

    directories: dict[str, int] = field(default_factory=dict)  # path inside -> mode
    links: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (text, mode)
    owner: tuple[int, int] | None = None  # (uid, gid) on the host: root of a user namespace


@dataclass
class RootPlan:
    """How the bundle's root is made: root.path and readonly, the mounts that build it, and
    what is written into the bundle for it."""

    mode: str  # "view", "rootfs", "copy", "busybox" or "host"
    path: str
    readonly: bool
    mounts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skeleton: Skeleton | None = None
    etc_files: dict[str, str] = field(default_factory=dict)  # bundle's etc/: name -> text
    cwd: str | None = None  # process.cwd when the spec's is not in this root

    def write(self, bundle: Path, spec: ContainerSpec) -> None:
        """Write what this plan needs into the (existing) bundle directory."""
        rootfs = bundle / ROOTFS_DIR
        if self.mode == "view":
            assert self.skeleton is not None
            _write_skeleton(rootfs, self.skeleton)
        elif self.mode == "copy":
            shutil.copytree(str(spec.rootfs), rootfs, symlinks=True, dirs_exist_ok=True)
        elif self.mode == "busybox":
            _busybox_rootfs(rootfs)
            for name, text in self.etc_files.items():
                _write(rootfs / "etc" / name, text, 0o644)
        elif self.mode == "host":
            rootfs.mkdir(exist_ok=True)
            _write(bundle / "prepare-rootfs.sh", _prepare_script(), 0o755)
        if self.mode in ("rootfs", "copy"):
            (bundle / "etc").mkdir(exist_ok=True)
            for name, text in self.etc_files.items():
                _write(bundle / "etc" / name, text, 0o644)


def plan(spec: ContainerSpec, bundle: Path, bundle_root: str = "bind",
         copy_rootfs: bool = False, root_ids: tuple[int, int] | None = None) -> RootPlan:
    """The root for spec in the bundle at (absolute) bundle. root_ids: the host uid and gid
    of root in the bundle's user namespace, which must own the skeleton."""
    if bundle_root not in BUNDLE_ROOT_MODES:
        raise SpecError(f"the bundle root must be one of {', '.join(BUNDLE_ROOT_MODES)}, "
                        f"not {bundle_root!r}.")
    if spec.rootfs is not None:
        return _rootfs_plan(spec, copy_rootfs)
    if bundle_root == "busybox":
        return RootPlan("busybox", ROOTFS_DIR, bool(spec.read_only),
                        etc_files=_etc_files(spec, etc.BOUND),
                        notes=["the root is a minimal busybox-static system, not the view "
                               "of the host's userland nsmagic shows: the host's commands "
                               "and Python are not there."])
    if spec.host_root:
        return RootPlan("host", ROOTFS_DIR, False, notes=[
            "--host-root: the host's own root, read-write, as nsmagic shows it; runc cannot "
            "use the host's / as a root, so prepare-rootfs.sh binds it into rootfs/ (run it "
            "before `runc run`, and `down` afterwards). As in nsmagic, /proc is not masked "
            "and nothing of the host is hidden."])
    return _view_plan(spec, bundle, root_ids)


# -- the default root: the view ---------------------------------------------------------------
def _view_plan(spec: ContainerSpec, bundle: Path, root_ids: tuple[int, int] | None
               ) -> RootPlan:
    # The host as it is now (a secret may have appeared in /etc since this process first
    # looked): the bundle is a snapshot of it.
    view.host_view.cache_clear()
    host = view.host_view()
    layers = f"{bundle}/{ROOTFS_DIR}{LAYERS}"
    writable = not spec.read_only
    notes: list[str] = []
    overlays = has_overlayfs()
    if not overlays:
        notes.append("this kernel has no overlayfs: the view's directories are read-only "
                     "binds (writes there fail with EROFS), as nsmagic shows them then.")
    elif not _can_name(layers):
        overlays = False
        notes.append(f"the bundle's path {str(bundle)!r} has a ',', ':' or '\\', which an "
                     "overlay's options cannot name: the view's directories are read-only "
                     "binds.")
    skeleton = Skeleton(directories=dict(view.EMPTY_DIRECTORIES), owner=root_ids)
    skeleton.links = list(host.links)
    skeleton.files[f"{LAYERS}/empty"] = ("", 0o444)
    mounts: list[dict[str, Any]] = [
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
         "options": ["tmpcopyup", *_TMPFS, "mode=755"]},
    ]
    if writable:
        # The root's own directories, before the view: a venv under /opt or /home is then
        # shown on top of its tmpfs.
        mounts += [{"destination": path, "type": "tmpfs", "source": "tmpfs",
                    "options": [*_TMPFS, f"mode={mode:o}"]}
                   for path, mode in sorted(view.EMPTY_DIRECTORIES.items())
                   if path not in _OWN_MOUNTS]
    for index, directory in enumerate(host.directories):
        _add_parents(skeleton, directory)
        skeleton.directories[directory] = _mode_of(directory)
        mounts.append(_shown(directory, index, layers, writable and overlays,
                             spec.privileged and overlays, spec, skeleton))
    mounts += _hidden_secrets(host.masked, layers)
    mounts += _own_etc_files("/etc" in host.directories, writable and overlays, layers, spec,
                             skeleton)
    # The layers' tmpfs stays mounted under this one: the overlays and binds hold it.
    mounts.append({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
                   "options": [*_TMPFS, "mode=755"] + ([] if writable else ["ro"])})
    plan = RootPlan("view", ROOTFS_DIR, True, mounts, notes, skeleton)
    if not _in_view(spec.cwd, skeleton, host.directories):
        plan.cwd = "/"
        notes.append(f"the working directory {spec.cwd} is not in the view: the bundle "
                     "starts in / (nsmagic does the same).")
    notes += _view_notes(spec, writable and overlays, overlays, root_ids)
    return plan


def _hidden_secrets(masked: tuple[str, ...], layers: str) -> list[dict[str, Any]]:
    """The host's secrets in the view: an empty read-only file bound over each file, an
    empty read-only tmpfs over each directory (nsmagic's masks)."""
    mounts: list[dict[str, Any]] = []
    for secret in masked:
        if os.path.islink(secret):
            continue
        if os.path.isdir(secret):
            mounts.append({"destination": secret, "type": "tmpfs", "source": "tmpfs",
                           "options": ["ro", "nosuid", "nodev", "noexec", "mode=700",
                                       "size=4k"]})
        else:
            mounts.append({"destination": secret, "type": "bind",
                           "source": f"{layers}/empty", "options": ["bind", "ro"]})
    return mounts


def _own_etc_files(shown_etc: bool, layered: bool, layers: str, spec: ContainerSpec,
                   skeleton: Skeleton) -> list[dict[str, Any]]:
    """The container's own /etc files, seeded in the skeleton and bound from the layers
    (layered: /etc is an overlay, where runc can make a missing file to bind over)."""
    mounts: list[dict[str, Any]] = []
    for name, text in _etc_files(spec, etc.GENERATED).items():
        target = f"/etc/{name}"
        # As nsmagic: not over a link, and not where a read-only /etc has no such file.
        if not shown_etc or os.path.islink(target) or not (layered or os.path.isfile(target)):
            continue
        skeleton.files[f"{LAYERS}/etc/{name}"] = (text, 0o644)
        mounts.append({"destination": target, "type": "bind",
                       "source": f"{layers}/etc/{name}", "options": ["bind", "rw"]})
    return mounts


def _view_notes(spec: ContainerSpec, layered: bool, overlays: bool,
                root_ids: tuple[int, int] | None) -> list[str]:
    """What a view bundle does differently from nsmagic with this spec."""
    notes = []
    if layered:
        notes.append("writes go to tmpfs layers that vanish with the container, as in "
                     "nsmagic, except that / itself is read-only: a new entry at the top "
                     "of the root is refused (its directories are writable tmpfs mounts).")
    if spec.privileged and not layered:
        shown = ("are overlays with no upper layer, which stay read-only" if overlays else
                 "are read-only binds, which it could remount read-write too")
        notes.append("--privileged with a read-only view: root inside holds CAP_SYS_ADMIN, "
                     "and runc cannot lock read-only mounts as nsmagic does, so it could "
                     "remount /proc/sys, /sys and read-only volumes read-write; the view's "
                     f"directories {shown}.")
    if root_ids is not None and os.geteuid() not in (0, root_ids[0]):
        notes.append(f"the skeleton belongs to uid {os.geteuid()}, not to root inside "
                     f"(uid {root_ids[0]} outside): export as root to give it to that uid.")
    if "user" in spec.namespaces:
        notes.append("user namespace: runc opens the sources of bind mounts on the host, "
                     "so the container's own /etc files are the bundle's "
                     f"{ROOTFS_DIR}{LAYERS}/etc/ files themselves (writes there are kept).")
    return notes


def _shown(directory: str, index: int, layers: str, layered: bool, locked: bool,
           spec: ContainerSpec, skeleton: Skeleton) -> dict[str, Any]:
    """The mount that shows a host directory at its own path: under a writable layer
    (layered), read-only for good (locked: overlayfs with no upper layer), or read-only."""
    if layered and _can_name(directory):
        skeleton.directories[f"{LAYERS}/{index}/upper"] = _mode_of(directory)
        skeleton.directories[f"{LAYERS}/{index}/work"] = 0o700
        options = [*_TMPFS, f"lowerdir={directory}", f"upperdir={layers}/{index}/upper",
                   f"workdir={layers}/{index}/work"]
        if "user" in spec.namespaces:
            options.append("userxattr")  # overlayfs keeps its attributes in user.*
        return {"destination": directory, "type": "overlay", "source": "overlay",
                "options": options}
    if locked and _can_name(directory):
        # Root inside holds CAP_SYS_ADMIN and no filter: it could remount a read-only bind
        # read-write and write the host's files (nsmagic locks read-only mounts; runc has no
        # lock). An overlay without an upper layer is read-only in itself: overlayfs refuses
        # to remount it read-write. It needs two lower layers: the second one is empty.
        skeleton.directories[f"{LAYERS}/none"] = 0o755
        return {"destination": directory, "type": "overlay", "source": "overlay",
                "options": ["ro", *_TMPFS, f"lowerdir={directory}:{layers}/none"]}
    return {"destination": directory, "type": "bind", "source": directory,
            "options": ["bind", "ro"]}


def has_overlayfs() -> bool:
    """Whether this kernel has overlayfs, built in or loaded (runc's mount of the first
    overlay would load a module that /proc/filesystems does not list yet: looked up too)."""
    try:
        with open("/proc/filesystems") as handle:
            if any(line.split()[-1:] == ["overlay"] for line in handle):
                return True
    except OSError:
        return True  # no /proc to ask: let runc try
    modules = f"/lib/modules/{os.uname().release}"
    for index in ("modules.dep", "modules.builtin"):
        try:
            with open(os.path.join(modules, index)) as handle:
                if any("/overlay.ko" in line for line in handle):
                    return True
        except OSError:
            continue
    return False


def _can_name(path: str) -> bool:
    """Overlay options are comma separated: a path with one of these cannot be named."""
    return not any(c in path for c in ",:\\")


def _mode_of(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o755


def _add_parents(skeleton: Skeleton, directory: str) -> None:
    """The directories above a shown one, with the host's modes (so /work/main/nsmagic sits
    in a /work/main as listable as the host's)."""
    parent = os.path.dirname(directory)
    while parent != "/" and parent not in skeleton.directories:
        skeleton.directories[parent] = _mode_of(parent)
        parent = os.path.dirname(parent)


def _in_view(cwd: str, skeleton: Skeleton, directories: tuple[str, ...]) -> bool:
    if cwd == "/" or cwd in skeleton.directories:
        return True
    return any(cwd.startswith(d + "/") for d in directories) and os.path.isdir(cwd)


def _write_skeleton(rootfs: Path, skeleton: Skeleton) -> None:
    rootfs.mkdir(mode=0o755, exist_ok=True)
    made = [rootfs]
    for path in sorted(skeleton.directories):
        target = Path(str(rootfs) + path)
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(skeleton.directories[path])
        made.append(target)
    for path, link in skeleton.links:
        target = Path(str(rootfs) + path)
        if not target.is_symlink():
            os.symlink(link, target)
        made.append(target)
    for path, (text, mode) in skeleton.files.items():
        target = Path(str(rootfs) + path)
        target.parent.mkdir(parents=True, exist_ok=True)
        _write(target, text, mode)
        made.append(target)
    if skeleton.owner is not None and os.geteuid() == 0:
        # Root of the user namespace must own its root's directories and layers (runc's
        # tmpcopyup copies owners, and overlayfs copies up as root inside), as Docker's
        # userns-remap chowns an image. (Written by a user, they are that user's already.)
        for path in {*made, *(p for m in made for p in _parents_within(m, rootfs))}:
            os.lchown(path, *skeleton.owner)


def _parents_within(path: Path, rootfs: Path) -> list[Path]:
    return [p for p in path.parents if p != rootfs and rootfs in p.parents]


# -- the container's own /etc files -----------------------------------------------------------
def _etc_files(spec: ContainerSpec, names: tuple[str, ...]) -> dict[str, str]:
    """The files nsmagic writes, with the host name known (nsmagic rewrites hostname and
    hosts once it is set)."""
    files = {name: etc.generate(name) for name in names}
    if "uts" in spec.namespaces:
        name = spec.effective_hostname
        files.update({"hostname": name + "\n", "hosts": etc.hosts_file(name)})
    return {name: text for name, text in files.items() if name in names}


# -- --rootfs DIR -----------------------------------------------------------------------------
def _rootfs_plan(spec: ContainerSpec, copy_rootfs: bool) -> RootPlan:
    rootfs = str(spec.rootfs)
    notes = []
    if copy_rootfs:
        mode, path = "copy", ROOTFS_DIR
        if not spec.read_only:
            notes.append("--rootfs with a copied root: writes go to the bundle's copy and "
                         "are kept (nsmagic's private writable layer has no OCI form).")
    else:
        mode, path = "rootfs", rootfs
        if not spec.read_only:
            notes.append(f"--rootfs {rootfs}: the bundle's container writes into that "
                         "directory itself (nsmagic's private writable layer has no OCI "
                         "form): copy it first (--copy-rootfs), or use --read-only.")
    plan = RootPlan(mode, path, bool(spec.read_only), notes=notes)
    files = _etc_files(spec, etc.BOUND)
    for name in etc.BOUND:
        target = os.path.join(rootfs, "etc", name)
        if not os.path.isdir(os.path.join(rootfs, "etc")) or os.path.islink(target) or (
                spec.read_only and not os.path.isfile(target)):
            continue
        plan.etc_files[name] = files[name]
        plan.mounts.append({"destination": f"/etc/{name}", "type": "bind",
                            "source": f"etc/{name}", "options": ["bind", "rw"]})
    if plan.mounts:
        notes.append("the container's own /etc files are the bundle's etc/ files: writes "
                     "to them are kept.")
    return plan


# -- a busybox-static root --------------------------------------------------------------------
def _busybox_rootfs(root: Path) -> None:
    """A minimal root: busybox-static with a link per applet, /etc/passwd and mount points."""
    if not os.path.isfile(BUSYBOX):
        raise SpecError(f"a busybox bundle root needs {BUSYBOX} (Debian: apt-get install "
                        "busybox-static).")
    for name in ("bin", "dev", "etc", "proc", "root", "sys", "tmp", "usr/bin", "usr/sbin",
                 "sbin", "var"):
        (root / name).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    target = root / "bin" / "busybox"
    shutil.copy2(BUSYBOX, target)
    os.chmod(target, 0o755)
    applets = subprocess.run([BUSYBOX, "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        link = root / applet
        if applet == "bin/busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/bin/busybox", link)
    _write(root / "etc" / "passwd", "root:x:0:0:root:/root:/bin/sh\n"
           "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n", 0o644)
    _write(root / "etc" / "group", "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n", 0o644)


# -- --host-root ------------------------------------------------------------------------------
def _prepare_script() -> str:
    return (
        "#!/bin/sh\n"
        "# Fill rootfs/ with the host's root, as an nsmagic --host-root container sees it (an\n"
        "# OCI root.path must be a directory of its own: runc pivot_root()s into it).\n"
        "#   ./prepare-rootfs.sh up     before `runc run` (as root)\n"
        "#   ./prepare-rootfs.sh down   afterwards: unmount everything under rootfs/\n"
        "set -eu\n"
        'cd "$(dirname "$0")"\n'
        'case "${1:-up}" in\n'
        "up)\n"
        "  if mountpoint -q rootfs; then echo 'rootfs/ is prepared already'; exit 0; fi\n"
        "  # Every mount of the host; slave, so nothing mounted in rootfs/ reaches the host.\n"
        "  mount --rbind / rootfs\n"
        "  mount --make-rslave rootfs\n"
        "  ;;\n"
        "down)\n"
        "  if mountpoint -q rootfs; then umount -R rootfs; fi\n"
        "  ;;\n"
        "*) echo \"usage: $0 up|down\" >&2; exit 2 ;;\n"
        "esac\n"
    )


def _write(path: Path, text: str, mode: int) -> None:
    if path.is_file() and not path.is_symlink():
        path.unlink()  # a read-only seed of an earlier export into this bundle
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)
