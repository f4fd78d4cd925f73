"""OCI export: config.json mapping, schema validation, the bundle on disk, and the same spec
run by nsmagic and by runc giving the same host name, limits and namespaces."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path

import jsonschema
import pytest

from nsmagic import oci
from nsmagic.cgroups.convert import weight_to_shares
from nsmagic.cgroups.limits import Limits
from nsmagic.errors import SpecError
from nsmagic.runtime.container import Container
from nsmagic.runtime.named import MANAGER
from nsmagic.runtime.spec import ContainerSpec

from .conftest import IS_ROOT
from .oci_schema import SCHEMA_DIR, SCHEMA_RELEASE, validate

LIMITS = dict(cpus=0.5, memory="64M", memory_swap="128M", pids=32, cpu_weight=200, cpuset="0")
RUNC = shutil.which("runc")
needs_runc = pytest.mark.skipif(
    not (IS_ROOT and RUNC and os.path.isfile(oci.BUSYBOX)),
    reason="needs root, runc and busybox-static")


def build(**options) -> ContainerSpec:
    options.setdefault("is_root", True)
    return ContainerSpec.build(**options)


def namespace_types(config: dict) -> dict[str, str | None]:
    return {n["type"]: n.get("path") for n in config["linux"]["namespaces"]}


def mount_at(config: dict, destination: str) -> dict | None:
    return next((m for m in config["mounts"] if m["destination"] == destination), None)


# -- the mapping -------------------------------------------------------------------------------
def test_default_spec_maps_namespaces_hostname_security_and_process():
    spec = build(hostname="lab1", env={"GREETING": "hi"}, cwd="/srv")
    config, notes = oci.config_for(spec, ["/bin/echo", "hi"])
    assert config["ociVersion"] == "1.0.2"
    assert namespace_types(config) == {"pid": None, "network": None, "ipc": None, "uts": None,
                                       "mount": None, "cgroup": None}
    assert config["hostname"] == "lab1"
    process = config["process"]
    assert process["args"] == ["/bin/echo", "hi"]
    assert process["terminal"] is False and process["noNewPrivileges"] is True
    assert process["cwd"] == "/srv" and "GREETING=hi" in process["env"]
    assert process["user"] == {"uid": 0, "gid": 0}
    for kind in ("bounding", "effective", "permitted"):
        assert process["capabilities"][kind] == list(oci.DOCKER_CAPABILITIES)
    assert "CAP_SYS_ADMIN" not in oci.DOCKER_CAPABILITIES and len(oci.DOCKER_CAPABILITIES) == 14
    assert "uidMappings" not in config["linux"]
    assert config["root"] == {"path": "rootfs", "readonly": False}
    assert notes == []


def test_limits_map_to_linux_resources_with_runc_conversions():
    spec = build(limits=Limits.parse(**LIMITS))
    resources = oci.config_for(spec)[0]["linux"]["resources"]
    assert resources["cpu"] == {"quota": 50_000, "period": 100_000,
                                "shares": weight_to_shares(200), "cpus": "0"}
    assert resources["memory"] == {"limit": 64 << 20, "swap": 128 << 20}  # memory + swap
    assert resources["pids"] == {"limit": 32}
    assert resources["devices"] == [{"allow": False, "access": "rwm"}]
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


def test_user_namespace_maps_root_to_the_outside_id_and_binds_sys_without_a_netns():
    spec = build(userns=True, net="host")
    config = oci.config_for(spec)[0]
    assert "user" in namespace_types(config)
    assert config["linux"]["uidMappings"] == [{"containerID": 0, "hostID": spec.uid_outside,
                                               "size": 1}]
    assert config["linux"]["gidMappings"] == [{"containerID": 0, "hostID": spec.gid_outside,
                                               "size": 1}]
    assert mount_at(config, "/sys")["type"] == "none"  # sysfs cannot be mounted there
    assert mount_at(config, "/sys/fs/cgroup") is None
    own_net = oci.config_for(build(userns=True))[0]
    assert mount_at(own_net, "/sys")["type"] == "sysfs"


def test_filesystem_modes_map_to_mounts_and_root(tmp_path):
    (tmp_path / "data").mkdir()
    spec = build(read_only=True, volumes=[f"{tmp_path}/data:/data:ro", f"{tmp_path}:/work"])
    config = oci.config_for(spec)[0]
    assert config["root"]["readonly"] is True
    assert mount_at(config, "/proc")["type"] == "proc"
    assert mount_at(config, "/tmp")["type"] == "tmpfs"
    assert mount_at(config, "/sys/fs/cgroup")["options"][-1] == "ro"
    assert mount_at(config, "/data") == {"destination": "/data", "type": "bind",
                                         "source": f"{tmp_path}/data",
                                         "options": ["rbind", "ro"]}
    assert mount_at(config, "/work")["options"] == ["rbind", "rw"]
    no_uts = oci.config_for(build(namespaces={"pid", "mount"}))[0]
    assert "hostname" not in no_uts  # runc refuses a host name without a UTS namespace
    no_mount, notes = oci.config_for(build(namespaces={"pid", "uts"}))
    assert no_mount["mounts"] == [] and any("mount namespace" in n for n in notes)


def test_privileged_keeps_every_capability_and_privilege_gains():
    config, notes = oci.config_for(build(privileged=True))
    assert config["process"]["noNewPrivileges"] is False
    assert "CAP_SYS_ADMIN" in config["process"]["capabilities"]["bounding"]
    assert any("--privileged" in n for n in notes)
    validate(config)


# -- schema ------------------------------------------------------------------------------------
def test_the_schema_files_are_kept_with_their_licence_and_are_of_the_version_we_write():
    names = {p.name for p in SCHEMA_DIR.iterdir()}
    assert {"config-schema.json", "config-linux.json", "defs.json", "defs-linux.json",
            "LICENSE"} <= names
    assert "Apache License" in (SCHEMA_DIR / "LICENSE").read_text()
    assert SCHEMA_RELEASE.startswith(f"v{oci.OCI_VERSION} ")


@pytest.mark.parametrize("options", [
    {},
    {"hostname": "lab1", "limits": Limits.parse(**LIMITS)},
    {"limits": Limits.parse(memory="1G", memory_swap="-1")},
    {"net": "host", "userns": True},
    {"net": "container:1"},
    {"net": "bridge", "read_only": True},
    {"namespaces": {"pid", "uts"}},
    {"overlay": True},
], ids=["default", "limits", "swap-unlimited", "userns-host-net", "joined-net", "bridge-ro",
        "no-mount", "overlay"])
def test_exported_configs_validate_against_the_oci_schema(tmp_path, options):
    bundle = oci.write_bundle(build(**options), tmp_path / "bundle", ["/bin/true"])
    written = json.loads((bundle.path / "config.json").read_text())
    assert written == bundle.config
    validate(written)


def test_validation_really_checks(tmp_path):
    config = oci.config_for(build())[0]
    config["linux"]["namespaces"].append({"type": "net"})  # nsmagic's name, not OCI's
    with pytest.raises(jsonschema.ValidationError):
        validate(config)
    config = oci.config_for(build())[0]
    del config["ociVersion"]
    with pytest.raises(jsonschema.ValidationError):
        validate(config)


# -- the bundle on disk ------------------------------------------------------------------------
def test_bind_mode_writes_an_empty_rootfs_a_prepare_script_and_a_readme(tmp_path):
    path = oci.export(build(read_only=True), tmp_path / "b", ["sh"])
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "config.json",
                                                     "prepare-rootfs.sh", "rootfs"]
    assert list((path / "rootfs").iterdir()) == []
    script = path / "prepare-rootfs.sh"
    assert os.stat(script).st_mode & stat.S_IXUSR
    text = script.read_text()
    assert "mount --rbind / rootfs" in text and "remount,bind,ro" in text
    assert "lowerdir=/" in (oci.export(build(overlay=True), tmp_path / "o")
                            / "prepare-rootfs.sh").read_text()
    readme = (path / "README.md").read_text()
    assert "runc run" in readme and "prepare-rootfs.sh up" in readme
    assert "runc delete -f" in readme and "| --cpus C |" in readme
    assert stat.S_IMODE(os.stat(path / "config.json").st_mode) == 0o600  # holds the env


def test_rootfs_is_referenced_or_copied(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("hello\n")
    spec = build(rootfs=str(root))
    referenced = oci.write_bundle(spec, tmp_path / "ref")
    assert referenced.config["root"]["path"] == str(root)
    assert not (referenced.path / "rootfs").exists()
    copied = oci.write_bundle(spec, tmp_path / "copy", copy_rootfs=True)
    assert copied.config["root"]["path"] == "rootfs"
    assert (copied.path / "rootfs" / "etc" / "motd").read_text() == "hello\n"


@pytest.mark.skipif(not os.path.isfile(oci.BUSYBOX), reason="needs busybox-static")
def test_busybox_rootfs_has_a_shell(tmp_path):
    path = oci.export(build(), tmp_path / "bb", host_root="busybox")
    root = path / "rootfs"
    assert (root / "bin" / "busybox").is_file()
    assert os.readlink(root / "bin" / "sh") == "/bin/busybox"
    assert "root:x:0:0" in (root / "etc" / "passwd").read_text()
    assert not (path / "prepare-rootfs.sh").exists()
    # exporting again into the same bundle is fine
    oci.export(build(hostname="again"), path, host_root="busybox")


def test_refuses_a_directory_that_is_not_a_bundle(tmp_path):
    (tmp_path / "precious.txt").write_text("mine")
    with pytest.raises(SpecError, match="not an OCI bundle"):
        oci.export(build(), tmp_path)
    with pytest.raises(SpecError, match="host_root"):
        oci.export(build(), tmp_path / "x", host_root="alpine")


# -- nsmagic and runc, side by side -------------------------------------------------------------
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


def run_runc(bundle: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    name = f"nsmtest-{uuid.uuid4().hex[:12]}"
    try:
        return subprocess.run([RUNC, "run", "--bundle", str(bundle), name],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
    finally:
        subprocess.run([RUNC, "delete", "-f", name], capture_output=True, check=False)


@needs_runc
def test_nsmagic_and_runc_agree_on_hostname_limits_and_namespaces(tmp_path):
    spec = ContainerSpec.build(hostname="same-host", limits=Limits.parse(**LIMITS))
    result = Container(spec).run(PROBE, kind="shell")
    assert result.exit_code == 0, result.stderr
    ours, our_namespaces = parse_probe(result.stdout)

    bundle = oci.export(spec, tmp_path / "bundle", ["/bin/sh", "-c", PROBE],
                        host_root="busybox")
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
@pytest.mark.parametrize("privileged", [False, True], ids=["default", "privileged"])
def test_nsmagic_and_runc_give_the_same_capabilities(tmp_path, privileged):
    spec = ContainerSpec.build(privileged=privileged)
    script = "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status"
    result = Container(spec).run(script, kind="shell")
    assert result.exit_code == 0, result.stderr
    bundle = oci.export(spec, tmp_path / "b", ["/bin/sh", "-c", script], host_root="busybox")
    completed = run_runc(bundle)
    assert completed.returncode == 0, completed.stderr
    ours = dict(line.split(":") for line in result.stdout.splitlines())
    theirs = dict(line.split(":") for line in completed.stdout.splitlines())
    assert ours["CapEff"].strip() == theirs["CapEff"].strip()
    assert ours["CapBnd"].strip() == theirs["CapBnd"].strip()
    assert ours["NoNewPrivs"].strip() == theirs["NoNewPrivs"].strip() == (
        "0" if privileged else "1")


@needs_runc
def test_exit_status_comes_through_runc(tmp_path):
    bundle = oci.export(build(), tmp_path / "b", ["/bin/sh", "-c", "exit 7"],
                        host_root="busybox")
    assert run_runc(bundle).returncode == 7


@needs_runc
def test_the_host_root_bundle_runs_read_only_in_a_user_namespace():
    spec = ContainerSpec.build(hostname="bound", userns=True, read_only=True)
    script = ("hostname; cat /proc/self/uid_map; touch /usr/nsmagic-oci-probe 2>/dev/null "
              "&& echo usr-writable; touch /tmp/x && echo tmp-writable; test -x /bin/ls "
              "&& echo host-ls")
    # Root inside is an unprivileged uid outside: the bundle's path must be searchable by
    # it (pytest's tmp_path is under a 0700 directory).
    base = Path(tempfile.mkdtemp(prefix="oci-userns-"))
    try:
        base.chmod(0o755)
        bundle = oci.export(spec, base / "b", ["/bin/sh", "-c", script])
        prepare = bundle / "prepare-rootfs.sh"
        subprocess.run([str(prepare), "up"], check=True, capture_output=True)
        try:
            completed = run_runc(bundle)
        finally:
            subprocess.run([str(prepare), "down"], check=True, capture_output=True)
        assert not os.path.ismount(bundle / "rootfs")
    finally:
        if not os.path.ismount(base / "b" / "rootfs"):
            shutil.rmtree(base)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.split()
    assert lines[0] == "bound"
    assert lines[1:4] == ["0", str(spec.uid_outside), "1"]
    assert "usr-writable" not in lines and "tmp-writable" in lines and "host-ls" in lines


# -- the magics ----------------------------------------------------------------------------------
def test_cell_export_oci_writes_the_bundle_and_runs_the_cell(ipython_shell, tmp_path, capfd):
    target = tmp_path / "cell"
    assert ipython_shell.run_cell(
        f"%%container sh --hostname cellhost --memory 64M --export-oci {target}\n"
        "hostname").success
    captured = capfd.readouterr()
    assert "cellhost" in captured.out
    assert "wrote an OCI bundle" in captured.err
    config = json.loads((target / "config.json").read_text())
    assert config["hostname"] == "cellhost"
    assert config["process"]["args"] == ["/bin/sh", "-c", "hostname\n"]  # the cell as it is
    assert config["linux"]["resources"]["memory"]["limit"] == 64 << 20
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
        from IPython.core.error import UsageError

        with pytest.raises(UsageError):
            ipython_shell.run_line_magic("container", "export ocilab")
        with pytest.raises(UsageError):
            ipython_shell.run_line_magic("container", f"export nosuch --oci {tmp_path}/m")
    finally:
        MANAGER.close_all()
