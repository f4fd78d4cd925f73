"""Findings 2, 4, 8 and 9 of issue 15: the host's files as a container sees them -- nsmagic's
own install and virtual environment, host files (root-only ones included), the host's
/dev/shm and /var/tmp, and unix sockets on the host's file systems.

Where a probe writes to a host path it writes a harmless marker (a comment, an empty .pth
line), and every test restores or removes what a probe could have changed, whatever the
outcome. What counts is what the host (and a later container) sees afterwards.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import site
import socket

import pytest

import nsmagic

from ..conftest import IS_ROOT, requires_root
from ..reference.runc import runc_available
from .harness import compare, in_nsmagic, in_runc, observe, refused, unique

HOST_ROOT = {"host_root": True}
ROOT_VARIANTS = [pytest.param({}, id="default"), pytest.param({"read_only": True},
                                                              id="read-only"),
                 pytest.param({"overlay": True}, id="overlay")]


def digest(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except FileNotFoundError:
        return None


# --- 2. nsmagic's own install and its virtual environment ------------------------------------

PACKAGE = os.path.dirname(os.path.realpath(nsmagic.__file__))
INIT_PY = os.path.join(PACKAGE, "__init__.py")
NATIVE_INIT = os.path.join(PACKAGE, "native", "nsmagic-init")
SITE_PACKAGES = next(p for p in site.getsitepackages() if os.path.isdir(p))
# The host interpreter's own packages: the one install a runc bundle also shows (read-only).
HOST_DIST_PACKAGES = "/usr/lib/python3/dist-packages"

TAMPER = """
    import errno, json, os
    seen = {}
    for path in APPENDED:
        try:
            with open(path, "ab") as handle:  # only a trailing comment / a few bytes
                handle.write(MARK)
            seen[path] = "appended"
        except OSError as error:
            seen[path] = errno.errorcode.get(error.errno, str(error.errno))
    for path in CREATED:
        try:
            with open(path, "x") as handle:
                handle.write("# nsmagic escape suite: a .pth comment line does nothing\\n")
            seen[path] = "created"
        except OSError as error:
            seen[path] = errno.errorcode.get(error.errno, str(error.errno))
    print(json.dumps({"reached": False, "inside": seen}))
"""

LOOK = """
    import json, os
    seen = {}
    for path in APPENDED:
        try:
            seen[path] = MARK in open(path, "rb").read()
        except OSError:
            seen[path] = False
    for path in CREATED:
        seen[path] = os.path.exists(path)
    print(json.dumps({"reached": any(seen.values()), "sees_the_change": seen}))
"""


def _script(template: str, appended: list[str], created: list[str], mark: bytes) -> str:
    return (template.replace("APPENDED", repr(appended)).replace("CREATED", repr(created))
            .replace("MARK", repr(mark)))


class _Guard:
    """Snapshots of files a probe may append to, restored (and created files removed) at
    the end, so that even a failed protection leaves the shared tree as it was."""

    def __init__(self, appended: list[str], created: list[str]) -> None:
        self.appended = [p for p in appended if os.path.exists(p)]
        self.created = created
        self.before = {}
        for path in self.appended:
            with open(path, "rb") as handle:
                self.before[path] = handle.read()

    def changed(self) -> dict[str, bool]:
        seen = {}
        for path, content in self.before.items():
            with open(path, "rb") as handle:
                seen[path] = handle.read() != content
        for path in self.created:
            seen[path] = os.path.lexists(path)
        return seen

    def restore(self) -> None:
        for path, content in self.before.items():
            with open(path, "rb") as handle:
                now = handle.read()
            if now != content and now.startswith(content):
                with open(path, "r+b") as handle:
                    handle.truncate(len(content))
        for path in self.created:
            if os.path.lexists(path):
                os.unlink(path)


@pytest.mark.parametrize("options", ROOT_VARIANTS)
def test_2_a_container_cannot_change_what_later_containers_and_kernels_run(options):
    mark = f"\n# {unique('mark')}\n".encode()
    appended = [INIT_PY, NATIVE_INIT]
    created = [os.path.join(SITE_PACKAGES, unique() + ".pth"),
               os.path.join(PACKAGE, unique() + ".py"),
               os.path.join(HOST_DIST_PACKAGES, unique() + ".pth")]
    guard = _Guard(appended, created)
    row = f"install/venv changed on the host ({'/'.join(options) or 'default'})"
    try:
        inside = in_nsmagic(_script(TAMPER, appended, created, mark), **options)
        on_host = guard.changed()
        later = in_nsmagic(_script(LOOK, appended, created, mark))
        verdict = observe(2, row, "nsmagic", {
            "reached": any(on_host.values()) or later["reached"],
            "inside": inside["inside"], "host_changed": on_host,
            "later_container_sees": later["sees_the_change"]})
        if options.get("read_only"):
            # (EACCES: as nobody, root inside does not own the host's files either)
            assert set(inside["inside"].values()) <= {"EROFS", "ENOENT", "ETXTBSY",
                                                      "EACCES"}, inside
        if runc_available() and not options:
            reference = in_runc(_script(TAMPER, appended, created, mark))
            observe(2, row, "runc", {"reached": any(guard.changed().values()),
                                     "inside": reference["inside"]})
            assert not any(guard.changed().values())
    finally:
        guard.restore()
    assert not verdict["reached"], verdict


@pytest.mark.root
@requires_root
def test_2_host_root_does_reach_the_venv_positive_control():
    # Only a new, inert file beside the venv's packages (never nsmagic's own files).
    created = [os.path.join(SITE_PACKAGES, unique() + ".pth")]
    guard = _Guard([], created)
    try:
        in_nsmagic(_script(TAMPER, [], created, b""), host_root=True)
        changed = guard.changed()
        observe(2, "install/venv changed on the host (default)", "control",
                {"reached": any(changed.values()), "host_changed": changed})
    finally:
        guard.restore()
    assert all(changed.values()), changed


def test_2_a_cell_cannot_plant_ipython_start_up_code_in_the_users_home(scratch):
    # The container does not know the notebook's HOME (its own is /root); an attacker
    # guesses it. Control: the same home shown as a volume.
    home = os.path.realpath(os.path.expanduser("~"))
    name = unique() + ".py"
    startup = os.path.join(home, ".ipython", "profile_default", "startup")
    planted = os.path.join(startup, name)
    script = f"""
        import errno, json, os
        try:
            os.makedirs({startup!r}, exist_ok=True)
            with open({planted!r}, "x") as handle:
                handle.write("# nsmagic escape suite\\n")
            seen = "created"
        except OSError as error:
            seen = errno.errorcode.get(error.errno, str(error.errno))
        print(json.dumps({{"reached": False, "inside": seen}}))
    """
    shown = os.path.join(scratch, "home")
    os.mkdir(shown)
    created_dirs = [p for p in (os.path.join(home, ".ipython"),) if not os.path.exists(p)]
    try:
        inside = in_nsmagic(script)
        verdict = observe(2, "IPython start-up file planted in the notebook's HOME",
                          "nsmagic", {"reached": os.path.exists(planted), **inside,
                                      "home": home})
        control = in_nsmagic(script, volumes=[f"{shown}:{home}"])
        reached = os.path.exists(os.path.join(shown, ".ipython", "profile_default",
                                              "startup", name))
        observe(2, "IPython start-up file planted in the notebook's HOME", "control",
                {**control, "reached": reached, "volume": f"{shown}:{home}"})
        assert reached
    finally:
        if os.path.exists(planted):
            os.unlink(planted)
        for path in created_dirs:
            if os.path.exists(path):
                shutil.rmtree(path)
    assert not verdict["reached"], verdict


# --- 4. host files: readable, writable, deletable --------------------------------------------

READ_FILE = """
    import errno, hashlib, json
    try:
        content = open(PATH, "rb").read()
        seen = {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    except OSError as error:
        content, seen = b"", {"error": errno.errorcode.get(error.errno, str(error.errno))}
    print(json.dumps({"reached": bool(content) and EXPECTED(content), **seen}))
"""


def _read_script(path: str, expected: str) -> str:
    return READ_FILE.replace("PATH", repr(path)).replace("EXPECTED", expected)


@pytest.mark.parametrize("options", ROOT_VARIANTS)
def test_4_etc_shadow_is_not_readable(options):
    script = _read_script("/etc/shadow", "(lambda c: b'root:' in c)")
    verdicts = compare(4, f"/etc/shadow readable ({'/'.join(options) or 'default'})", script,
                       options=options, control=HOST_ROOT if IS_ROOT else None,
                       runc={} if not options else None)
    refused(verdicts)


@pytest.fixture
def private_host_file(scratch):
    """A file only its owner (the test's user) may read, in a host directory."""
    secret = unique("secret")
    path = os.path.join(scratch, "private")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(secret)
    return path, secret


@pytest.mark.parametrize("options", ROOT_VARIANTS)
def test_4_a_private_host_file_is_not_readable(private_host_file, options):
    path, secret = private_host_file
    script = _read_script(path, f"(lambda c: {secret.encode()!r} in c)")
    verdicts = compare(4, f"owner-only host file readable ({'/'.join(options) or 'default'})",
                       script, options=options, control=HOST_ROOT,
                       runc={} if not options else None)
    refused(verdicts)


CHANGE_FILE = """
    import errno, json, os
    seen = {}
    for name, attempt in (("append", lambda: open(PATH, "ab").write(b"pwned")),
                          ("chmod", lambda: os.chmod(PATH, 0o666)),
                          ("unlink", lambda: os.unlink(PATH))):
        try:
            attempt()
            seen[name] = "done"
        except OSError as error:
            seen[name] = errno.errorcode.get(error.errno, str(error.errno))
    print(json.dumps({"reached": False, "inside": seen}))
"""


def _file_state(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mode, st.st_uid, digest(path))


def _change_row(finding_row: str, path: str, options: dict, control: dict | None,
                with_runc: bool) -> dict:
    """Run CHANGE_FILE on path in each mode; reached = the host's file changed."""
    before = _file_state(path)
    verdicts = {}
    modes = [("nsmagic", options)] + ([("control", control)] if control is not None else [])
    if with_runc and runc_available():
        modes.append(("runc", None))
    for mode, mode_options in modes:
        script = CHANGE_FILE.replace("PATH", repr(path))
        inside = in_runc(script) if mode == "runc" else in_nsmagic(script, **mode_options)
        after = _file_state(path)
        verdicts[mode] = observe(4, finding_row, mode, {"reached": after != before,
                                                        "inside": inside["inside"],
                                                        "host_file": "unchanged"
                                                        if after == before else
                                                        ("deleted" if after is None
                                                         else "changed")})
        if mode == "control":
            assert verdicts[mode]["reached"], verdicts[mode]
        if after != before:
            break  # the file is gone or changed: later modes would not mean anything
    if "runc" in verdicts:
        assert verdicts["runc"]["reached"] or not verdicts["nsmagic"]["reached"]
    return verdicts


@pytest.mark.parametrize("options", ROOT_VARIANTS)
def test_4_a_host_file_cannot_be_written_or_deleted(scratch, options):
    path = os.path.join(scratch, "victim")
    with open(path, "w") as handle:
        handle.write("host data\n")
    os.chmod(path, 0o644)
    # The control runs last and deletes it; so the default goes first.
    verdicts = _change_row(f"host file written/deleted ({'/'.join(options) or 'default'})",
                           path, options, HOST_ROOT, with_runc=not options)
    refused(verdicts)


@pytest.mark.root
@requires_root
@pytest.mark.parametrize("options", ROOT_VARIANTS)
def test_4_a_host_file_the_view_shows_cannot_be_written_or_deleted(options):
    # In the venv the default view shows: the container may change its private copy, never
    # the host's file (and a later container sees the host's).
    path = os.path.join(SITE_PACKAGES, unique() + ".txt")
    with open(path, "w") as handle:
        handle.write("host data\n")
    os.chmod(path, 0o644)
    try:
        verdicts = _change_row(f"view-shown host file written/deleted "
                               f"({'/'.join(options) or 'default'})", path, options,
                               HOST_ROOT, with_runc=not options)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    refused(verdicts)


# --- 8. /dev/shm and /var/tmp ----------------------------------------------------------------

SEE_FILES = """
    import json, os
    seen = {path: os.path.exists(path) for path in PATHS}
    print(json.dumps({"reached": any(seen.values()), "visible": seen}))
"""

LEAVE_FILES = """
    import errno, json
    seen = {}
    for path in PATHS:
        try:
            with open(path, "x") as handle:
                handle.write("left by a container")
            seen[path] = "created"
        except OSError as error:
            seen[path] = errno.errorcode.get(error.errno, str(error.errno))
    print(json.dumps({"reached": False, "inside": seen}))
"""


def test_8_the_hosts_dev_shm_and_var_tmp_are_not_the_containers():
    name = unique()
    paths = [f"/dev/shm/{name}", f"/var/tmp/{name}"]
    try:
        for path in paths:
            with open(path, "w") as handle:
                handle.write("host data")
        script = SEE_FILES.replace("PATHS", repr(paths))
        verdicts = compare(8, "host's /dev/shm, /var/tmp files visible inside", script,
                           control=HOST_ROOT, runc={})
    finally:
        for path in paths:
            if os.path.exists(path):
                os.unlink(path)
    refused(verdicts)


def test_8_what_a_container_leaves_in_shared_places_reaches_neither_host_nor_next():
    name = unique()
    places = ["/dev/shm", "/var/tmp", "/tmp", "/run", "/dev/mqueue"]
    paths = [f"{place}/{name}" for place in places]
    left: list[str] = []
    try:
        rows = {}
        modes = [("nsmagic", {}), ("control", HOST_ROOT)]
        if runc_available():
            modes.append(("runc", None))
        for mode, options in modes:
            leave = LEAVE_FILES.replace("PATHS", repr(paths))
            see = SEE_FILES.replace("PATHS", repr(paths))
            if mode == "runc":
                inside, nxt = in_runc(leave), in_runc(see)
            else:
                inside = in_nsmagic(leave, **options)
                nxt = in_nsmagic(see)  # the next default container
            on_host = [p for p in paths if os.path.exists(p)]
            left += on_host
            rows[mode] = observe(8, "files left in /dev/shm, /var/tmp, /tmp, /run reach the "
                                 "host or the next container", mode,
                                 {"reached": bool(on_host) or nxt["reached"],
                                  "inside": inside["inside"], "on_host": on_host,
                                  "next_container_sees": [p for p, v in
                                                          nxt["visible"].items() if v]})
            for path in on_host:
                os.unlink(path)
        assert rows["control"]["reached"], rows["control"]
        if "runc" in rows:
            assert rows["runc"]["reached"] or not rows["nsmagic"]["reached"]
    finally:
        for path in set(left):
            if os.path.exists(path):
                os.unlink(path)
    assert not rows["nsmagic"]["reached"], rows["nsmagic"]


# --- 9. unix sockets on the host's file systems --------------------------------------------------

CONNECT = """
    import errno, json, socket
    seen = {}
    for address in ADDRESSES:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(2)
        try:
            client.connect(address)
            seen[repr(address)] = "connected"
        except OSError as error:
            seen[repr(address)] = errno.errorcode.get(error.errno, str(error.errno))
        finally:
            client.close()
    print(json.dumps({"reached": "connected" in seen.values(), "tried": seen}))
"""


@pytest.fixture
def host_listeners(scratch):
    """Listening unix sockets of the test: one in a host directory (and, as root, one in
    /run, where D-Bus and systemd keep theirs); none ever accepts."""
    paths = [os.path.join(scratch, "listener.sock")]
    if IS_ROOT:
        paths.append(f"/run/{unique()}.sock")
    servers = []
    try:
        for path in paths:
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(path)
            server.listen(8)
            servers.append(server)
        yield paths
    finally:
        for server in servers:
            server.close()
        for path in paths:
            if os.path.exists(path):
                os.unlink(path)


def test_9_host_file_system_sockets_are_unreachable(host_listeners, scratch):
    script = CONNECT.replace("ADDRESSES", repr(host_listeners))
    verdicts = compare(9, "unix socket in /var/tmp (and /run) connects", script,
                       control=HOST_ROOT, runc={})
    # Also reachable when its directory is given as a volume (at the same path inside).
    control = observe(9, "unix socket in /var/tmp (and /run) connects, as a volume",
                      "control", in_nsmagic(CONNECT.replace("ADDRESSES",
                                                            repr(host_listeners[:1])),
                                            volumes=[f"{scratch}:{scratch}"]))
    assert control["reached"], control
    refused(verdicts)


def test_9_abstract_sockets_of_the_host_are_unreachable():
    name = "\0" + unique()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(name)
    server.listen(8)
    try:
        verdicts = compare(9, "abstract unix socket of the host's network connects",
                           CONNECT.replace("ADDRESSES", repr([name])),
                           control={"net": "host"}, runc={})
    finally:
        server.close()
    refused(verdicts)

