"""OCI export: a bundle's config.json gives runc the protections of an nsmagic container with
the same spec (masked and read-only kernel paths, seccomp, no_new_privs, Docker's
capabilities, the device cgroup, a minimal /dev, a read-only /sys, a clean environment, the
same view of the host under a private writable layer, the host's secrets hidden, the
container's own /etc files); it validates against the runtime-spec schema; and the same
probes, run by runc and by nsmagic, give the same answers."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import jsonschema
import pytest

import nsmagic
from nsmagic import oci
from nsmagic.cgroups.convert import weight_to_shares
from nsmagic.cgroups.devices import CONTAINER_DEVICES
from nsmagic.cgroups.limits import Limits
from nsmagic.errors import SpecError
from nsmagic.isolation import etc, masks, seccomp, view
from nsmagic.isolation.capabilities import DOCKER_DEFAULT
from nsmagic.runtime.named import MANAGER
from nsmagic.runtime.spec import ContainerSpec

from .conftest import IS_ROOT
from .oci_schema import SCHEMA_DIR, SCHEMA_RELEASE, validate

LIMITS = dict(cpus=0.5, memory="64M", memory_swap="128M", pids=32, cpu_weight=200, cpuset="0")
RUNC = shutil.which("runc") or ("/usr/sbin/runc" if os.path.exists("/usr/sbin/runc") else None)
needs_runc = pytest.mark.skipif(not (IS_ROOT and RUNC), reason="needs root and runc")
needs_busybox = pytest.mark.skipif(not os.path.isfile(oci.BUSYBOX),
                                   reason="needs busybox-static")
DOCKER_MASK = f"{sum(1 << cap for cap in DOCKER_DEFAULT.values()):016x}"


def build(**options) -> ContainerSpec:
    options.setdefault("is_root", True)
    return ContainerSpec.build(**options)


def namespace_types(config: dict) -> dict[str, str | None]:
    return {n["type"]: n.get("path") for n in config["linux"]["namespaces"]}


def mount_at(config: dict, destination: str) -> dict | None:
    """The last mount on destination (the one the container sees)."""
    found = [m for m in config["mounts"] if m["destination"] == destination]
    return found[-1] if found else None


def mounts_at(config: dict, destination: str) -> list[dict]:
    return [m for m in config["mounts"] if m["destination"] == destination]


# -- the mapping -------------------------------------------------------------------------------
def test_default_spec_maps_namespaces_hostname_and_process(tmp_path):
    spec = build(hostname="lab1", env={"GREETING": "hi"})
    config, _ = oci.config_for(spec, ["/bin/echo", "hi"], tmp_path)
    assert config["ociVersion"] == "1.0.2"
    assert namespace_types(config) == {"pid": None, "network": None, "ipc": None, "uts": None,
                                       "mount": None, "cgroup": None}
    assert config["hostname"] == "lab1"
    process = config["process"]
    assert process["args"] == ["/bin/echo", "hi"]
    assert process["terminal"] is False and process["user"] == {"uid": 0, "gid": 0}
    # The container's clean environment, nothing else of this process's.
    assert process["env"] == [f"{k}={v}" for k, v in spec.env.items()]
    assert "GREETING=hi" in process["env"] and "HOSTNAME=lab1" in process["env"]
    assert "uidMappings" not in config["linux"]


def test_default_config_gives_runc_the_protections_of_nsmagic(tmp_path):
    config, _ = oci.config_for(build(), ["/bin/true"], tmp_path)
    process, linux = config["process"], config["linux"]
    assert process["noNewPrivileges"] is True
    for kind in ("bounding", "effective", "permitted"):
        assert process["capabilities"][kind] == list(oci.DOCKER_CAPABILITIES)
    assert "inheritable" not in process["capabilities"]  # none, as nsmagic
    assert {f"CAP_{name}" for name in DOCKER_DEFAULT} == set(oci.DOCKER_CAPABILITIES)
    assert linux["maskedPaths"] == list(masks.MASKED_PATHS)
    assert linux["readonlyPaths"] == list(masks.READONLY_PATHS)
    assert linux["seccomp"] == seccomp.oci_profile()
    # The device cgroup: nothing, then nsmagic's own rules (making any node; opening the
    # nodes of the minimal /dev, the console and the terminals).
    rules = linux["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert all(r["allow"] for r in rules[1:])
    assert {(r["type"], r.get("major"), r.get("minor"), r["access"]) for r in rules[1:]} == {
        (rule.kind, rule.major, rule.minor, rule.access) for rule in CONTAINER_DEVICES}
    openable = {(r.get("major"), r.get("minor")) for r in rules[1:] if "r" in r["access"]}
    assert openable == {(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2),
                        (136, None)}
    assert {d["path"]: (d["major"], d["minor"]) for d in linux["devices"]} == {
        "/dev/null": (1, 3), "/dev/zero": (1, 5), "/dev/full": (1, 7), "/dev/random": (1, 8),
        "/dev/urandom": (1, 9), "/dev/tty": (5, 0)}
    assert mount_at(config, "/proc")["type"] == "proc"
    assert mount_at(config, "/dev")["type"] == "tmpfs"
    assert "newinstance" in mount_at(config, "/dev/pts")["options"]
    assert f"size={64 << 20}" in mount_at(config, "/dev/shm")["options"]
    assert mount_at(config, "/dev/mqueue")["type"] == "mqueue"
    assert mount_at(config, "/sys")["type"] == "sysfs"
    assert "ro" in mount_at(config, "/sys")["options"]
    assert mount_at(config, "/sys/fs/cgroup")["type"] == "cgroup"
    assert "ro" in mount_at(config, "/sys/fs/cgroup")["options"]
    assert mount_at(config, "/tmp")["type"] == "tmpfs"


def test_default_root_is_the_view_under_private_writable_layers(tmp_path):
    config, notes = oci.config_for(build(), None, tmp_path)
    host = view.host_view()
    layers = f"{tmp_path}/rootfs{oci.LAYERS}"
    # rootfs/ holds only mount points: read-only, every write lands on a tmpfs.
    assert config["root"] == {"path": "rootfs", "readonly": True}
    runs = mounts_at(config, "/run")
    assert "tmpcopyup" in runs[0]["options"] and "tmpcopyup" not in runs[-1]["options"]
    for index, directory in enumerate(host.directories):
        shown = mount_at(config, directory)
        assert shown["type"] == "overlay"
        assert f"lowerdir={directory}" in shown["options"]
        assert f"upperdir={layers}/{index}/upper" in shown["options"]
        assert f"workdir={layers}/{index}/work" in shown["options"]
        # The layers' tmpfs is mounted before, and covered after, every overlay.
        assert config["mounts"].index(runs[0]) < config["mounts"].index(shown) \
            < config["mounts"].index(runs[-1])
    for directory, mode in view.EMPTY_DIRECTORIES.items():
        if directory not in ("/dev", "/proc", "/sys", "/tmp"):
            assert mount_at(config, directory)["type"] == "tmpfs"
            assert f"mode={mode:o}" in mount_at(config, directory)["options"]
    assert host.masked, "this host has secrets under /etc to hide (/etc/shadow at least)"
    for secret in host.masked:
        hidden = mount_at(config, secret)
        assert "ro" in hidden["options"]
        if os.path.isdir(secret):
            assert hidden["type"] == "tmpfs"
        else:
            assert hidden == {"destination": secret, "type": "bind",
                              "source": f"{layers}/empty", "options": ["bind", "ro"]}
    for name in etc.GENERATED:
        if not os.path.islink(f"/etc/{name}"):
            assert mount_at(config, f"/etc/{name}")["source"] == f"{layers}/etc/{name}"
    assert any("vanish" in n for n in notes)


def test_read_only_shows_the_view_through_read_only_binds(tmp_path):
    config, _ = oci.config_for(build(read_only=True), None, tmp_path)
    assert config["root"]["readonly"] is True
    for directory in view.host_view().directories:
        assert mount_at(config, directory) == {"destination": directory, "type": "bind",
                                               "source": directory, "options": ["bind", "ro"]}
    assert not any(m["type"] == "overlay" for m in config["mounts"])
    assert "ro" in mount_at(config, "/run")["options"]
    assert mount_at(config, "/var") is None  # the read-only root's own empty directory
    assert mount_at(config, "/tmp")["type"] == "tmpfs"  # /tmp stays writable, as nsmagic


def test_without_overlayfs_the_view_is_read_only_under_writable_directories(tmp_path,
                                                                            monkeypatch):
    # As nsmagic on such a kernel: what is shown of the host is read-only, the rest writable.
    monkeypatch.setattr("nsmagic.oci.root.has_overlayfs", lambda: False)
    config, notes = oci.config_for(build(), None, tmp_path)
    assert not any(m["type"] == "overlay" for m in config["mounts"])
    assert mount_at(config, "/usr")["options"] == ["bind", "ro"]
    assert mount_at(config, "/var")["type"] == "tmpfs"
    assert "ro" not in mount_at(config, "/run")["options"]
    assert any("no overlayfs" in n for n in notes)


def test_privileged_drops_seccomp_and_no_new_privs_but_keeps_the_masks(tmp_path):
    config, notes = oci.config_for(build(privileged=True), None, tmp_path)
    assert config["process"]["noNewPrivileges"] is False
    assert "CAP_SYS_ADMIN" in config["process"]["capabilities"]["bounding"]
    assert "seccomp" not in config["linux"]
    assert config["linux"]["maskedPaths"] == list(masks.MASKED_PATHS)
    assert config["linux"]["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    assert any("--privileged" in n for n in notes)
    validate(config)


def test_privileged_read_only_shows_the_view_through_overlays_without_an_upper_layer(tmp_path):
    # A read-only bind could be remounted read-write by root holding CAP_SYS_ADMIN; an
    # overlay with no upper layer cannot.
    config, notes = oci.config_for(build(privileged=True, read_only=True), None, tmp_path)
    for directory in view.host_view().directories:
        shown = mount_at(config, directory)
        assert shown["type"] == "overlay" and "ro" in shown["options"]
        assert f"lowerdir={directory}:{tmp_path}/rootfs{oci.LAYERS}/none" in shown["options"]
        assert not any(o.startswith("upperdir=") for o in shown["options"])
    assert any("cannot lock" in n for n in notes)


def test_seccomp_unconfined_drops_only_the_filter(tmp_path):
    config, notes = oci.config_for(build(seccomp=False), None, tmp_path)
    assert "seccomp" not in config["linux"]
    assert config["process"]["noNewPrivileges"] is True
    assert config["process"]["capabilities"]["bounding"] == list(oci.DOCKER_CAPABILITIES)
    assert any("unconfined" in n for n in notes)


def test_host_root_binds_the_hosts_root_unmasked_with_a_note(tmp_path):
    bundle = oci.write_bundle(build(host_root=True), tmp_path / "b", ["/bin/true"])
    assert bundle.config["root"] == {"path": "rootfs", "readonly": False}
    assert "maskedPaths" not in bundle.config["linux"]  # nsmagic's --host-root masks nothing
    assert "seccomp" in bundle.config["linux"]
    assert "mount --rbind / rootfs" in (bundle.path / "prepare-rootfs.sh").read_text()
    assert any("--host-root" in n for n in bundle.notes)


def test_limits_map_to_linux_resources_with_runc_conversions(tmp_path):
    spec = build(limits=Limits.parse(**LIMITS))
    resources = oci.config_for(spec, None, tmp_path)[0]["linux"]["resources"]
    assert resources["cpu"] == {"quota": 50_000, "period": 100_000,
                                "shares": weight_to_shares(200), "cpus": "0"}
    assert resources["memory"] == {"limit": 64 << 20, "swap": 128 << 20}  # memory + swap
    assert resources["pids"] == {"limit": 32}
    default_weight = build(limits=Limits.parse(cpu_weight=100))
    assert oci.config_for(default_weight)[0]["linux"]["resources"]["cpu"]["shares"] == 1024
    unlimited_swap = build(limits=Limits.parse(memory="64M", memory_swap="-1"))
    assert oci.config_for(unlimited_swap)[0]["linux"]["resources"]["memory"]["swap"] == -1
    assert set(oci.config_for(build())[0]["linux"]["resources"]) == {"devices"}


def test_network_modes():
    host = oci.config_for(build(net="host"))[0]
    assert "network" not in namespace_types(host)
    joined, notes = oci.config_for(build(net="container:4242"))
    assert namespace_types(joined)["network"] == "/proc/4242/ns/net"
    assert any("/proc/4242/ns/net" in n for n in notes)
    bridge, notes = oci.config_for(build(net="bridge"))
    assert namespace_types(bridge)["network"] is None
    assert any("bridge" in n for n in notes)


def test_user_namespace_maps_root_to_a_block_of_its_own_and_binds_sys_without_a_netns():
    config = oci.config_for(build(userns=True, net="host"))[0]
    assert "user" in namespace_types(config)
    block = {"containerID": 0, "hostID": oci.BUNDLE_ID_BASE, "size": 65536}
    assert config["linux"]["uidMappings"] == config["linux"]["gidMappings"] == [block]
    assert mount_at(config, "/sys")["type"] == "none"  # sysfs cannot be mounted there
    assert mount_at(config, "/sys/fs/cgroup") is None
    own_net = oci.config_for(build(userns=True))[0]
    assert mount_at(own_net, "/sys")["type"] == "sysfs"
    assert all("userxattr" in m["options"] for m in own_net["mounts"]
               if m["type"] == "overlay")


def test_volumes_and_no_uts_or_mount_namespace(tmp_path):
    (tmp_path / "data").mkdir()
    spec = build(volumes=[f"{tmp_path}/data:/data:ro", f"{tmp_path}:/work"])
    config = oci.config_for(spec)[0]
    assert mount_at(config, "/data") == {"destination": "/data", "type": "bind",
                                         "source": f"{tmp_path}/data",
                                         "options": ["rbind", "ro"]}
    assert mount_at(config, "/work")["options"] == ["rbind", "rw"]
    no_uts = oci.config_for(build(namespaces={"pid", "mount"}))[0]
    assert "hostname" not in no_uts  # runc refuses a host name without a UTS namespace
    no_mount, notes = oci.config_for(build(namespaces={"pid", "uts"}))
    assert no_mount["mounts"] == [] and any("mount namespace" in n for n in notes)


def test_a_working_directory_outside_the_view_starts_in_root(tmp_path):
    inside = oci.config_for(build(cwd="/usr/share"), None, tmp_path)[0]
    assert inside["process"]["cwd"] == "/usr/share"
    outside, notes = oci.config_for(build(cwd=str(tmp_path)), None, tmp_path)
    assert outside["process"]["cwd"] == "/"
    assert any("working directory" in n for n in notes)


# -- schema ------------------------------------------------------------------------------------
def test_the_schema_files_are_kept_with_their_licence_and_are_of_the_version_we_write():
    names = {p.name for p in SCHEMA_DIR.iterdir()}
    assert {"config-schema.json", "config-linux.json", "defs.json", "defs-linux.json",
            "LICENSE"} <= names
    assert "Apache License" in (SCHEMA_DIR / "LICENSE").read_text()
    assert SCHEMA_RELEASE.startswith(f"v{oci.OCI_VERSION} ")


@pytest.mark.parametrize("options", [
    {},
    {"read_only": True},
    {"hostname": "lab1", "limits": Limits.parse(**LIMITS)},
    {"limits": Limits.parse(memory="1G", memory_swap="-1")},
    {"net": "host", "userns": True},
    {"userns": True},
    {"net": "container:1"},
    {"net": "bridge", "read_only": True},
    {"namespaces": {"pid", "uts"}},
    {"privileged": True},
    {"privileged": True, "read_only": True},
    {"seccomp": False},
    {"host_root": True},
], ids=["default", "read-only", "limits", "swap-unlimited", "userns-host-net", "userns",
        "joined-net", "bridge-ro", "no-mount", "privileged", "privileged-ro", "unconfined",
        "host-root"])
def test_exported_configs_validate_against_the_oci_schema(tmp_path, options):
    bundle = oci.write_bundle(build(**options), tmp_path / "bundle", ["/bin/true"])
    written = json.loads((bundle.path / "config.json").read_text())
    assert written == bundle.config
    validate(written)


def test_validation_really_checks():
    config = oci.config_for(build())[0]
    config["linux"]["namespaces"].append({"type": "net"})  # nsmagic's name, not OCI's
    with pytest.raises(jsonschema.ValidationError):
        validate(config)
    config = oci.config_for(build())[0]
    del config["ociVersion"]
    with pytest.raises(jsonschema.ValidationError):
        validate(config)


# -- the bundle on disk ------------------------------------------------------------------------
def test_the_view_bundle_holds_mount_points_layer_seeds_and_etc_files_only(tmp_path):
    spec = build(hostname="seen")
    path = oci.export(spec, tmp_path / "b", ["sh"])
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "config.json", "rootfs"]
    rootfs = path / "rootfs"
    host = view.host_view()
    for link, target in host.links:
        assert os.readlink(str(rootfs) + link) == target
    for directory in host.directories:
        assert list(Path(str(rootfs) + directory).iterdir()) == []  # a mount point
    regular = [p for p in rootfs.rglob("*") if p.is_file() and not p.is_symlink()]
    layers = Path(str(rootfs) + oci.LAYERS)
    assert all(layers in p.parents for p in regular), "no file of the host is copied"
    assert (layers / "etc" / "hostname").read_text() == "seen\n"
    assert "seen" in (layers / "etc" / "hosts").read_text()
    assert (layers / "empty").read_text() == ""
    assert sorted(p.name for p in (layers / "0").iterdir()) == ["upper", "work"]
    assert stat.S_IMODE(os.stat(rootfs / "root").st_mode) == 0o700
    readme = (path / "README.md").read_text()
    assert "runc run" in readme and "runc delete -f" in readme and "tmpcopyup" in readme
    assert "| --cpus C |" in readme and "prepare-rootfs.sh up" not in readme
    assert stat.S_IMODE(os.stat(path / "config.json").st_mode) == 0o600  # holds the env
    oci.export(build(read_only=True), path)  # exporting again into the same bundle is fine


def test_rootfs_is_referenced_or_copied_with_the_containers_own_etc_files(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("hello\n")
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    spec = build(rootfs=str(root), hostname="mine")
    referenced = oci.write_bundle(spec, tmp_path / "ref")
    assert referenced.config["root"] == {"path": str(root), "readonly": False}
    assert not (referenced.path / "rootfs").exists()
    assert mount_at(referenced.config, "/etc/hosts")["source"] == "etc/hosts"
    assert "mine" in (referenced.path / "etc" / "hosts").read_text()
    assert any("writes into that directory" in n for n in referenced.notes)
    copied = oci.write_bundle(spec, tmp_path / "copy", copy_rootfs=True)
    assert copied.config["root"]["path"] == "rootfs"
    assert (copied.path / "rootfs" / "etc" / "motd").read_text() == "hello\n"
    read_only = oci.write_bundle(build(rootfs=str(root), read_only=True), tmp_path / "ro")
    assert mount_at(read_only.config, "/etc/hostname") is None  # no such file to bind over
    assert mount_at(read_only.config, "/etc/hosts") is not None


@needs_busybox
def test_busybox_root_has_a_shell_and_the_containers_own_etc_files(tmp_path):
    path = oci.export(build(hostname="bb"), tmp_path / "bb", bundle_root="busybox")
    root = path / "rootfs"
    assert (root / "bin" / "busybox").is_file()
    assert os.readlink(root / "bin" / "sh") == "/bin/busybox"
    assert "root:x:0:0" in (root / "etc" / "passwd").read_text()
    assert (root / "etc" / "hostname").read_text() == "bb\n"
    assert not (path / "prepare-rootfs.sh").exists()


def test_refuses_a_directory_that_is_not_a_bundle_and_an_unknown_root(tmp_path):
    (tmp_path / "precious.txt").write_text("mine")
    with pytest.raises(SpecError, match="not an OCI bundle"):
        oci.export(build(), tmp_path)
    with pytest.raises(SpecError, match="bundle root"):
        oci.export(build(), tmp_path / "x", bundle_root="alpine")
    assert not (tmp_path / "x").exists()


# -- runc beside nsmagic -----------------------------------------------------------------------
@pytest.fixture
def bundle_dir():
    """A bundle directory root inside a user namespace can reach (pytest's tmp_path is under
    a 0700 directory), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="oci-bundle-"))
    base.chmod(0o755)
    try:
        yield base / "bundle"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_runc(bundle: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """runc run the bundle under a name the session's leak check knows (nsmagic-<pid>-...);
    its container is deleted however the run ends."""
    name = f"nsmagic-{os.getpid()}-oci-{uuid.uuid4().hex[:12]}"
    process = subprocess.Popen([RUNC, "run", "--bundle", str(bundle), name],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        subprocess.run([RUNC, "delete", "-f", name], capture_output=True, timeout=60,
                       check=False)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# Every answer the protections give, read without changing anything outside: files are
# opened for writing and closed unwritten; the probe's own files are created only where a
# private layer should catch them.
PROTECTIONS_PROBE = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
KEYCTL = {"x86_64": 250, "aarch64": 219}[os.uname().machine]

def answer(action):
    try:
        value = action()
    except OSError as error:
        return errno.errorcode.get(error.errno, str(error.errno))
    return "ok" if value is None else value

def open_for_writing(path):
    os.close(os.open(path, os.O_WRONLY))

def create(path):
    existed = os.path.exists(path)
    with open(path, "w") as handle:
        handle.write("probe\n")
    return "existed" if existed else None

def length(path):
    with open(path, "rb") as handle:
        return len(handle.read(4096))

def keyctl():
    if libc.syscall(KEYCTL, 0, -3, 0) == -1:
        raise OSError(ctypes.get_errno(), "keyctl")

def device_opens():
    os.mknod("/dev/probe-mem", 0o600 | 0o020000, os.makedev(1, 1))
    try:
        os.close(os.open("/dev/probe-mem", os.O_RDONLY))
    finally:
        os.unlink("/dev/probe-mem")

status = dict(line.split(":", 1) for line in open("/proc/self/status"))
shm = os.statvfs("/dev/shm")
print(json.dumps({
    "python": os.path.realpath(sys.executable),
    "/proc/sys/kernel/core_pattern": answer(
        lambda: open_for_writing("/proc/sys/kernel/core_pattern")),
    "/sys": answer(lambda: open_for_writing("/sys/kernel/rcu_expedited")),
    "/sys/fs/cgroup": answer(lambda: open_for_writing("/sys/fs/cgroup/pids/pids.max")
                             if os.path.exists("/sys/fs/cgroup/pids") else
                             open_for_writing("/sys/fs/cgroup/cgroup.procs")),
    "/etc/shadow": answer(lambda: length("/etc/shadow")),
    "/proc/keys": answer(lambda: length("/proc/keys")),
    "/proc/timer_list": answer(lambda: length("/proc/timer_list")),
    "keyctl": answer(keyctl),
    "capabilities": {k: status[k].strip()
                     for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
    "NoNewPrivs": status["NoNewPrivs"].strip(),
    "Seccomp": status["Seccomp"].strip(),
    "/usr": answer(lambda: create("/usr/nsmagic-oci-probe")),
    "/etc": answer(lambda: create("/etc/nsmagic-oci-probe")),
    "/etc/hosts": answer(lambda: open_for_writing("/etc/hosts")),
    "/": answer(lambda: create("/nsmagic-oci-probe")),
    "/var/tmp": answer(lambda: create("/var/tmp/probe")),
    "/tmp": answer(lambda: create("/tmp/probe")),
    "hostname": open("/etc/hostname").read().strip(),
    "people in /etc/passwd": [line.split(":")[0] for line in open("/etc/passwd")
                              if 1000 <= int(line.split(":")[2]) < 65534],
    "/dev": sorted(os.listdir("/dev")),
    "a device node made inside opens": answer(device_opens) == "ok",
    "/dev/shm bytes": shm.f_blocks * shm.f_frsize,
    "environment": dict(os.environ),
    "cwd": os.getcwd(),
}))
"""
PROBE_COMMAND = ["/bin/sh", "-c", "exec python3 -c '" + PROTECTIONS_PROBE.replace("'", "'\\''")
                 + "'"]


@needs_runc
@pytest.mark.root
@pytest.mark.parametrize("options", [{}, {"read_only": True}, {"userns": True},
                                     {"privileged": True}, {"seccomp": False}],
                         ids=["default", "read-only", "userns", "privileged", "unconfined"])
def test_runc_and_nsmagic_give_the_same_answers_to_every_protection(bundle_dir, options):
    spec = ContainerSpec.build(**options)
    ours = nsmagic.run(PROBE_COMMAND[2], kind="shell", spec=spec)
    assert ours.exit_code == 0, ours.stderr
    bundle = oci.export(spec, bundle_dir, PROBE_COMMAND)
    first, second = run_runc(bundle), run_runc(bundle)
    assert first.returncode == 0, first.stderr
    ours, theirs = json.loads(ours.stdout), json.loads(first.stdout)

    # What both must answer, whatever the options (in a user namespace the kernel's files
    # belong to a root that is not ours, which refuses before the read-only mount does):
    refused = {"EROFS", "EACCES"} if "user" in spec.namespaces else {"EROFS"}
    assert ours["/proc/sys/kernel/core_pattern"] in refused
    assert ours["/sys"] in refused and ours["/sys/fs/cgroup"] in refused
    assert ours["/etc/shadow"] == ours["/proc/keys"] == ours["/proc/timer_list"] == 0
    assert ours["python"] == os.path.realpath("/usr/bin/python3")  # the view's own
    assert ours["people in /etc/passwd"] == []
    assert ours["a device node made inside opens"] is False
    assert ours["/dev/shm bytes"] == 64 << 20
    assert ours["hostname"] == spec.effective_hostname
    assert ours["/tmp"] == ours["/etc/hosts"] == "ok"
    privileged = options.get("privileged", False)
    assert ours["NoNewPrivs"] == ("0" if privileged else "1")
    assert ours["Seccomp"] == ("2" if spec.seccomp else "0")
    assert ours["keyctl"] == ("EPERM" if spec.seccomp else "ok")
    if not privileged:
        assert ours["capabilities"] == {"CapInh": "0" * 16, "CapPrm": DOCKER_MASK,
                                        "CapEff": DOCKER_MASK, "CapBnd": DOCKER_MASK,
                                        "CapAmb": "0" * 16}
    writes = "EROFS" if spec.read_only else "ok"
    assert ours["/usr"] == ours["/etc"] == ours["/var/tmp"] == writes

    # The bundle's one difference: its root directory itself is read-only (runc cannot
    # put a private layer over root.path), so only a new entry at the top is refused.
    assert ours.pop("/") == writes and theirs.pop("/") == "EROFS"
    # runc links /dev/core to /proc/kcore (masked), which nsmagic's /dev does not have.
    theirs["/dev"] = [name for name in theirs["/dev"] if name != "core"]
    assert theirs == ours
    # Writes vanished with the container: not on the host, not seen by the next run.
    assert not os.path.exists("/usr/nsmagic-oci-probe")
    assert not os.path.exists("/etc/nsmagic-oci-probe")
    assert json.loads(second.stdout)["/usr"] == writes


# Root with every capability and no filter tries to make the read-only view writable.
REMOUNT_PROBE = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
MS_REMOUNT, MS_BIND = 32, 4096
for flags in (MS_REMOUNT | MS_BIND, MS_REMOUNT):
    libc.mount(b"none", b"/usr", None, flags, None)
try:
    open("/usr/nsmagic-oci-privileged-probe", "w").close()
    print("written")
except OSError as error:
    print(os.strerror(error.errno))
"""


@needs_runc
@pytest.mark.root
def test_privileged_read_only_root_cannot_make_the_hosts_directories_writable(bundle_dir):
    spec = ContainerSpec.build(privileged=True, read_only=True)
    try:
        ours = nsmagic.run(REMOUNT_PROBE, spec=spec)
        bundle = oci.export(spec, bundle_dir, ["python3", "-c", REMOUNT_PROBE])
        theirs = run_runc(bundle)
    finally:
        leaked = os.path.exists("/usr/nsmagic-oci-privileged-probe")
        if leaked:
            os.unlink("/usr/nsmagic-oci-privileged-probe")
    assert not leaked
    assert ours.stdout.strip() == theirs.stdout.strip() == "Read-only file system", (
        ours.stderr, theirs.stderr)


PROBE = r"""
echo "hostname=$(hostname)"
for f in memory/memory.limit_in_bytes memory/memory.memsw.limit_in_bytes \
         cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us cpu/cpu.shares pids/pids.max \
         cpuset/cpuset.cpus memory.max memory.swap.max cpu.max cpu.weight pids.max cpuset.cpus
do
  if [ -r /sys/fs/cgroup/$f ]; then echo "$f=$(cat /sys/fs/cgroup/$f)"; fi
done
for n in pid uts ipc net mnt user cgroup; do echo "ns-$n=$(readlink /proc/self/ns/$n)"; done
"""


def parse_probe(text: str) -> tuple[dict[str, str], set[str]]:
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    private = {key[3:] for key, value in values.items() if key.startswith("ns-")
               and value != os.readlink(f"/proc/self/ns/{key[3:]}")}
    return {k: v for k, v in values.items() if not k.startswith("ns-")}, private


@needs_runc
@needs_busybox
@pytest.mark.root
def test_nsmagic_and_runc_agree_on_hostname_limits_and_namespaces(bundle_dir):
    spec = ContainerSpec.build(hostname="same-host", limits=Limits.parse(**LIMITS))
    result = nsmagic.run(PROBE, kind="shell", spec=spec)
    assert result.exit_code == 0, result.stderr
    ours, our_namespaces = parse_probe(result.stdout)

    bundle = oci.export(spec, bundle_dir, ["/bin/sh", "-c", PROBE], bundle_root="busybox")
    validate(json.loads((bundle / "config.json").read_text()))
    completed = run_runc(bundle)
    assert completed.returncode == 0, completed.stderr
    theirs, their_namespaces = parse_probe(completed.stdout)

    assert ours["hostname"] == theirs["hostname"] == "same-host"
    if "cpu.weight" in ours:  # cgroup v2: runc < 1.3.2 converts shares to weight linearly
        ours.pop("cpu.weight")
        theirs.pop("cpu.weight", None)
    limit_files = {k for k in ours if k != "hostname"}
    assert len(limit_files) >= 5, ours
    assert ours == theirs
    if "memory/memory.limit_in_bytes" in ours:
        assert ours["memory/memory.limit_in_bytes"] == str(64 << 20)
        assert ours["cpu/cpu.cfs_quota_us"] == "50000"
        assert ours["pids/pids.max"] == "32"
    assert our_namespaces == their_namespaces == {"pid", "uts", "ipc", "net", "mnt", "cgroup"}


@needs_runc
@needs_busybox
@pytest.mark.root
def test_exit_status_comes_through_runc(bundle_dir):
    bundle = oci.export(build(), bundle_dir, ["/bin/sh", "-c", "exit 7"],
                        bundle_root="busybox")
    assert run_runc(bundle).returncode == 7


@needs_runc
@pytest.mark.root
def test_the_view_bundle_runs_the_views_python_in_a_user_namespace(bundle_dir):
    spec = ContainerSpec.build(hostname="mapped", userns=True, read_only=True)
    bundle = oci.export(spec, bundle_dir, [sys.executable, "-c",
                                           "import nsmagic, socket; print(socket.gethostname(),"
                                           " open('/proc/self/uid_map').read().split())"])
    completed = run_runc(bundle)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split()[0] == "mapped"
    assert completed.stdout.split(None, 1)[1].strip() == str(
        ["0", str(oci.BUNDLE_ID_BASE), "65536"])


@needs_runc
@pytest.mark.root
def test_the_host_root_bundle_runs_on_the_hosts_root_once_prepared(bundle_dir):
    spec = ContainerSpec.build(hostname="bound", host_root=True)
    # This test file is on the host's root, not in the view.
    script = (f"hostname; test -f {shlex.quote(__file__)} && echo host-root; "
              "grep NoNewPrivs /proc/self/status")
    bundle = oci.export(spec, bundle_dir, ["/bin/sh", "-c", script])
    prepare = bundle / "prepare-rootfs.sh"
    subprocess.run([str(prepare), "up"], check=True, capture_output=True)
    try:
        completed = run_runc(bundle)
    finally:
        subprocess.run([str(prepare), "down"], check=True, capture_output=True)
    assert not os.path.ismount(bundle / "rootfs")
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0] == "bound"
    assert "host-root" in lines
    assert lines[-1].split() == ["NoNewPrivs:", "1"]


# -- the magics ----------------------------------------------------------------------------------
def test_cell_export_oci_writes_the_bundle_and_runs_the_cell(ipython_shell, tmp_path, capfd):
    target = tmp_path / "cell"
    assert ipython_shell.run_cell(
        f"%%container sh --hostname cellhost --memory 64M --export-oci {target}\n"
        "hostname").success
    captured = capfd.readouterr()
    assert "cellhost" in captured.out
    assert "wrote an OCI bundle" in captured.out + captured.err
    config = json.loads((target / "config.json").read_text())
    assert config["hostname"] == "cellhost"
    assert config["process"]["args"] == ["/bin/sh", "-c", "hostname\n"]  # the cell as it is
    assert config["linux"]["resources"]["memory"]["limit"] == 64 << 20
    assert config["linux"]["seccomp"] == seccomp.oci_profile()
    validate(config)


def test_container_export_writes_a_named_containers_spec(ipython_shell, tmp_path, capfd):
    try:
        ipython_shell.run_line_magic("container", "start ocilab --hostname ocilab --pids 40")
        ipython_shell.run_line_magic("container", f"export ocilab --oci {tmp_path / 'n'}")
        config = json.loads((tmp_path / "n" / "config.json").read_text())
        assert config["hostname"] == "ocilab"
        assert config["linux"]["resources"]["pids"] == {"limit": 40}
        assert config["process"]["args"] == ["/bin/sh"]
        validate(config)
        if os.path.isfile(oci.BUSYBOX):
            ipython_shell.run_line_magic(
                "container", f"export ocilab --oci {tmp_path / 'bb'} --bundle-root busybox")
            assert (tmp_path / "bb" / "rootfs" / "bin" / "busybox").is_file()
        from IPython.core.error import UsageError

        with pytest.raises(UsageError):
            ipython_shell.run_line_magic("container", "export ocilab")
        with pytest.raises(UsageError):
            ipython_shell.run_line_magic("container", f"export nosuch --oci {tmp_path}/m")
    finally:
        MANAGER.close_all()
