"""Findings 5, 7 and 10 of issue 15: secrets of the host and of other cells -- kernel keyrings,
an earlier cell's source in a later container's memory, and the notebook's environment.

A secret is searched for the way an attacker inside would: its own readable memory
(/proc/self/maps and /proc/self/mem), its environment, pid 1's. The scanner never holds the
secret it looks for: only a prefix and a digest, so finding it means it was there.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import textwrap
import uuid

import pytest

import nsmagic
from nsmagic.runtime.launcher import ForkServerLauncher, SpawnLauncher
from nsmagic.runtime.named import MANAGER

from ..conftest import requires_root
from ..reference.runc import run_probe, runc_available
from .harness import (
    compare,
    in_nsmagic,
    in_runc,
    observe,
    refused,
    run_nsmagic,
    unique,
    verdict_of,
)

# add_key, request_key, keyctl
KEY_SYSCALLS = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}
KEY_SPEC_USER_KEYRING = -4
KEYCTL_REVOKE, KEYCTL_UNLINK, KEYCTL_SEARCH = 3, 9, 10
needs_key_syscalls = pytest.mark.skipif(platform.machine() not in KEY_SYSCALLS,
                                        reason="key syscall numbers known for x86_64, aarch64")


def new_secret() -> str:
    return "nsmsecret" + uuid.uuid4().hex


# --- 5. kernel keyrings -------------------------------------------------------------------


def _keyctl(*args: int | bytes | None) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    number = KEY_SYSCALLS[platform.machine()][2]
    converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return libc.syscall(ctypes.c_long(number), *converted)


def add_user_key(description: str, payload: str) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    number = KEY_SYSCALLS[platform.machine()][0]
    data = payload.encode()
    key = libc.syscall(ctypes.c_long(number), b"user", description.encode(), data,
                       ctypes.c_size_t(len(data)), ctypes.c_long(KEY_SPEC_USER_KEYRING))
    assert key > 0, os.strerror(ctypes.get_errno())
    return key


def find_user_key(description: str) -> int | None:
    key = _keyctl(KEYCTL_SEARCH, KEY_SPEC_USER_KEYRING, b"user", description.encode(), 0)
    return key if key > 0 else None


def drop_key(key: int) -> None:
    _keyctl(KEYCTL_UNLINK, key, KEY_SPEC_USER_KEYRING)
    _keyctl(KEYCTL_REVOKE, key)


KEY_PROBE = """
    import ctypes, errno, json, platform
    libc = ctypes.CDLL(None, use_errno=True)
    ADD_KEY, _, KEYCTL = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}[
        platform.machine()]
    DESCRIPTION, SECRET, ADD = DESCRIPTION_VALUE, SECRET_VALUE, ADD_VALUE
    seen = {}

    def err():
        return errno.errorcode.get(ctypes.get_errno(), "?")

    def call(number, *args):
        return libc.syscall(ctypes.c_long(number),
                            *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])

    if ADD:  # leave a key in the user keyring of whoever root is outside
        key = call(ADD_KEY, b"user", DESCRIPTION, b"left by a container", 19, -4)
        seen["add_key"] = "added" if key > 0 else err()
    else:  # read the host's
        key = call(KEYCTL, 10, -4, b"user", DESCRIPTION, 0)
        if key < 0:
            seen["search"] = err()
        else:
            buffer = ctypes.create_string_buffer(4096)
            size = call(KEYCTL, 11, key, buffer, 4096)
            if size < 0:
                # Only a possessor may read: link the user keyring into our own session
                # keyring (KEYCTL_LINK), which makes its keys ours, and read again.
                seen["first_read"] = err()
                seen["link"] = "linked" if call(KEYCTL, 8, -4, -3) == 0 else err()
                size = call(KEYCTL, 11, key, buffer, 4096)
            seen["read"] = buffer.raw[:size].decode() if size >= 0 else err()
    try:
        seen["in_proc_keys"] = DESCRIPTION.decode() in open("/proc/keys").read()
    except OSError as error:
        seen["in_proc_keys"] = errno.errorcode.get(error.errno, "?")
    print(json.dumps({"reached": seen.get("read") == SECRET or seen["in_proc_keys"] is True
                      or seen.get("add_key") == "added", **seen}))
"""


def _key_probe(description: str, secret: str, add: bool) -> str:
    return (KEY_PROBE.replace("DESCRIPTION_VALUE", repr(description.encode()))
            .replace("SECRET_VALUE", repr(secret)).replace("ADD_VALUE", repr(add)))


@pytest.mark.root
@requires_root
@needs_key_syscalls
def test_5_a_key_in_the_host_roots_user_keyring_is_not_readable():
    description, secret = unique("key"), new_secret()
    key = add_user_key(description, secret)
    try:
        # Control: without the seccomp filter root inside (uid 0, no user namespace) finds
        # host root's user keyring and reads the key.
        verdicts = compare(5, "host root's user-keyring key readable",
                           _key_probe(description, secret, add=False),
                           control={"seccomp": False}, runc={})
    finally:
        drop_key(key)
    refused(verdicts)


@pytest.mark.root
@requires_root
@needs_key_syscalls
def test_5_a_key_added_inside_does_not_outlive_the_container():
    rows = {}
    left = []
    modes = [("nsmagic", {}), ("control", {"seccomp": False})]
    if runc_available():
        modes.append(("runc", None))
    try:
        for mode, options in modes:
            description = unique("key")
            script = _key_probe(description, "", add=True)
            inside = in_runc(script) if mode == "runc" else in_nsmagic(script, **options)
            key = find_user_key(description)
            if key is not None:
                left.append(key)
            rows[mode] = observe(5, "key added inside outlives the container (user keyring)",
                                 mode, {**inside, "reached": key is not None,
                                        "on_host_after": key is not None})
    finally:
        for key in left:
            drop_key(key)
    assert rows["control"]["reached"], rows["control"]
    if "runc" in rows:
        assert rows["runc"]["reached"] or not rows["nsmagic"]["reached"]
    assert not rows["nsmagic"]["reached"], rows["nsmagic"]


# --- 7. an earlier cell's secret in a later container's memory ---------------------------------

SCAN_MEMORY = """
    import ctypes, hashlib, json, os
    PREFIX, LENGTH, DIGEST = PREFIX_VALUE, LENGTH_VALUE, DIGEST_VALUE
    CHUNK = 16 << 20
    found, scanned = [], 0

    def scan(data, where):
        start = data.find(PREFIX)
        while start >= 0:
            if hashlib.sha256(data[start:start + LENGTH]).hexdigest() == DIGEST:
                found.append(where)
                return True
            start = data.find(PREFIX, start + 1)
        return False

    # Its own memory: every readable mapping (what it inherited from its parent included).
    # A process that is not dumpable (a user namespace's) owns no /proc/self/mem: it makes
    # itself dumpable first, as any process may.
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
        for line in maps.read().splitlines():
            fields = line.split()
            where = fields[5] if len(fields) > 5 else "anonymous"
            if "r" not in fields[1] or where in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            low, high = (int(x, 16) for x in fields[0].split("-"))
            position = low
            while position < high:
                size = min(CHUNK + LENGTH, high - position)
                try:
                    mem.seek(position)
                    data = mem.read(size)
                except (OSError, ValueError, OverflowError):
                    break
                scanned += len(data)
                if scan(data, where):
                    break
                position += CHUNK
    # Its environment block and pid 1's (as the kernel keeps them), and os.environ.
    for path in ("/proc/self/environ", "/proc/1/environ", "/proc/self/cmdline"):
        try:
            scan(open(path, "rb").read(), path)
        except OSError:
            pass
    scan("\\0".join(f"{k}={v}" for k, v in os.environ.items()).encode(), "os.environ")
    print(json.dumps({"reached": bool(found), "found_in": sorted(set(found)),
                      "scanned_mib": scanned >> 20}))
"""


def scanner(secret: str) -> str:
    data = secret.encode()
    return (SCAN_MEMORY.replace("PREFIX_VALUE", repr(data[:14]))
            .replace("LENGTH_VALUE", str(len(data)))
            .replace("DIGEST_VALUE", repr(hashlib.sha256(data).hexdigest())))


def _holds(secret: str) -> str:
    """A cell whose source holds the secret, and keeps it in memory while it runs."""
    return f"secret = {secret!r}\nkept = [secret * 2, secret.encode()]\nprint(len(kept))\n"


@pytest.mark.parametrize("first", [
    pytest.param({}, id="default"),
    pytest.param({"userns": True}, id="userns"),
    pytest.param({"env": {"CELL_SECRET": "SECRET"}}, id="env"),
    pytest.param({"inputs": {"value": "SECRET"}}, id="inputs"),
])
def test_7_an_earlier_cells_secret_is_not_in_a_later_containers_memory(first):
    secret = new_secret()
    options = {k: ({n: secret for n in v} if k in ("env", "inputs") else v)
               for k, v in first.items()}
    inputs = options.pop("inputs", None)
    row = f"earlier cell's secret in a later container's memory ({'/'.join(first) or 'source'})"
    with nsmagic.Container(**options) as container:
        result = container.run(_holds(secret), inputs=inputs, timeout=30)
    assert result.ok, (result.describe(), result.stderr)
    verdicts = compare(7, row, scanner(secret), options={"userns": True} if first.get(
        "userns") else {}, control=None)
    if runc_available() and not first:
        run_probe(_holds(secret), language="python", timeout=30)
        verdicts["runc"] = observe(7, row, "runc", in_runc(scanner(secret)))
        assert verdicts["runc"]["reached"] or not verdicts["nsmagic"]["reached"]
    refused(verdicts)


@pytest.mark.parametrize("options", [pytest.param({}, id="default"),
                                     pytest.param({"userns": True}, id="userns")])
def test_7_the_scanner_finds_a_secret_in_its_own_source_positive_control(options):
    secret = new_secret()
    script = f"mine = {secret!r}\n" + textwrap.dedent(scanner(secret))
    row = ("earlier cell's secret in a later container's memory "
           f"({'userns' if options else 'source'})")
    verdict = observe(7, row, "control", in_nsmagic(script, **options))
    assert verdict["reached"], verdict
    if runc_available() and not options:
        assert in_runc(script)["reached"]


def test_7_a_named_containers_cell_is_not_in_a_later_containers_memory():
    secret = new_secret()
    name = unique("cells")[:40]
    managed = MANAGER.start(name, nsmagic.ContainerSpec.build(name=name))
    try:
        assert managed.exec(_holds(secret).replace("print(len(kept))", "")).ok
        verdict = observe(7, "named container's cell in a later container's memory",
                          "nsmagic", in_nsmagic(scanner(secret)))
        # Control: the named container's own process still holds it.
        control = run_in(managed, scanner(secret))
        observe(7, "named container's cell in a later container's memory", "control", control)
        assert control["reached"], control
    finally:
        MANAGER.remove(name, force=True)
    assert not verdict["reached"], verdict


def run_in(managed, script: str) -> dict:  # noqa: ANN001
    """Run a probe as a cell of a named container; its verdict, copied out with --out (the
    cell prints nothing: a named container's output is read by two threads)."""
    cell = ("import contextlib, io\n_printed = io.StringIO()\n"
            "with contextlib.redirect_stdout(_printed):\n"
            f"    exec({textwrap.dedent(script)!r}, {{}})\n"
            "verdict = _printed.getvalue()\n")
    result = managed.exec(cell, outputs=("verdict",))
    assert result.ok and "verdict" in result.outputs, result
    return verdict_of(result.outputs["verdict"])


# --- 10. the notebook's environment ---------------------------------------------------------

ENVIRONMENT = "AWS_SECRET_ACCESS_KEY"


@pytest.fixture
def notebook_secret(monkeypatch):
    """A dummy secret in the notebook's environment, there before nsmagic's helpers start
    (a kernel started with cloud credentials in its environment)."""
    secret = new_secret()
    monkeypatch.setenv(ENVIRONMENT, secret)
    return secret


@pytest.mark.parametrize("launcher_class", [ForkServerLauncher, SpawnLauncher],
                         ids=["forkserver", "spawn"])
def test_10_the_notebooks_environment_does_not_reach_the_container(notebook_secret,
                                                                   launcher_class):
    launcher = launcher_class()
    row = f"notebook's {ENVIRONMENT} visible inside ({launcher.name})"
    try:
        result = run_nsmagic(scanner(notebook_secret), launcher=launcher)
        verdict = observe(10, row, "nsmagic", verdict_of(result.stdout, result.stderr))
        control = observe(10, row, "control", in_nsmagic(
            scanner(notebook_secret), launcher=launcher,
            env={ENVIRONMENT: notebook_secret}))
        assert control["reached"] and "os.environ" in control["found_in"], control
    finally:
        launcher.close()
    if runc_available():
        reference = observe(10, row, "runc", in_runc(scanner(notebook_secret)))
        assert reference["reached"] or not verdict["reached"], (verdict, reference)
    assert not verdict["reached"], verdict
