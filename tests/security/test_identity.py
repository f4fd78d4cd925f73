"""Finding 11 of issue 15: who a --userns container's root is on the host.

Root inside must map to ids of the container's own (a range nsmagic allocates as root, or
subordinate ids), never to a real user of the host (nobody, 65534, included) and never to
the same ids as another container; a non-root kernel without subordinate ids maps root to
the user itself. What a probe claims (its uid_map) is checked against what the host sees:
the owner of a file it writes into a shared directory.
"""

from __future__ import annotations

import os
import pwd

import pytest

from ..conftest import IS_ROOT, requires_root
from ..reference.runc import runc_available
from .harness import in_nsmagic, in_runc, observe, unique

# Real users of the host: a container's root must be none of them (as nobody, the user
# itself is what it maps to without subordinate ids, and allowed).
REAL_USERS = sorted({entry.pw_uid for entry in pwd.getpwall()}
                    - (set() if IS_ROOT else {os.getuid()}))

WHO_IS_ROOT = """
    import json, os
    def outside(path):
        for line in open(path).read().splitlines():
            inside, out, count = (int(x) for x in line.split())
            if inside <= 0 < inside + count:
                return out - inside
        return None
    uid, gid = outside("/proc/self/uid_map"), outside("/proc/self/gid_map")
    written = None
    if os.path.isdir("/shared"):
        written = f"/shared/{NAME}"
        with open(written, "w") as handle:
            handle.write("by a container's root")
    print(json.dumps({"reached": uid in REAL, "root_is": uid, "root_group_is": gid,
                      "wrote": written}))
"""


def who_is_root(name: str) -> str:
    return WHO_IS_ROOT.replace("NAME", repr(name)).replace("REAL", repr(REAL_USERS))


@pytest.fixture
def shared(scratch):
    """A directory every container may write to, shown at /shared."""
    path = os.path.join(scratch, "shared")
    os.mkdir(path)
    os.chmod(path, 0o777)
    return path


def test_11_userns_root_is_no_real_user_and_no_other_containers(shared):
    rows = []
    for _ in range(2):
        name = unique()
        verdict = in_nsmagic(who_is_root(name), userns=True, volumes=[f"{shared}:/shared"])
        st = os.stat(os.path.join(shared, name))
        verdict["file_owner_on_host"] = [st.st_uid, st.st_gid]
        rows.append(verdict)
    # What the container claims is what the host sees.
    for verdict in rows:
        assert verdict["file_owner_on_host"] == [verdict["root_is"], verdict["root_group_is"]]
    shared_identity = rows[0]["root_is"] == rows[1]["root_is"] and IS_ROOT
    expected_own = None if IS_ROOT else os.getuid()
    verdict = observe(11, "--userns root is a real host user / shared by two containers",
                      "nsmagic", {"reached": any(r["reached"] for r in rows) or shared_identity,
                                  "roots": [r["root_is"] for r in rows],
                                  "groups": [r["root_group_is"] for r in rows],
                                  "real_users": len(REAL_USERS)})
    # Positive control: without a user namespace root inside is the host's root, a real
    # user the probe recognises.
    control = observe(11, "--userns root is a real host user / shared by two containers",
                      "control", in_nsmagic(who_is_root(unique()), userns=False)
                      if IS_ROOT else {"reached": True, "root_is": os.getuid(),
                                       "note": "as nobody: the user itself, as allowed"})
    assert control["reached"] if IS_ROOT else True, control
    if runc_available():
        references = [in_runc(who_is_root(unique()), userns=True) for _ in range(2)]
        observe(11, "--userns root is a real host user / shared by two containers", "runc",
                {"reached": any(r["reached"] for r in references),
                 "roots": [r["root_is"] for r in references],
                 "note": "userns-remap: every container the same range"})
        assert not any(r["reached"] for r in references)
        assert not any(r["reached"] for r in rows), verdict  # no weaker than runc
    if expected_own is not None:
        assert [r["root_is"] for r in rows] == [expected_own] * 2, rows
    assert not verdict["reached"], verdict


WRITE_PRIVATE_HOME = """
    import errno, json, os
    HOME = HOME_VALUE
    seen = {}
    for name, attempt in (("read", lambda: open(os.path.join(HOME, "private")).read()),
                          ("create", lambda: open(os.path.join(HOME, "planted"), "x").close())):
        try:
            attempt()
            seen[name] = "done"
        except OSError as error:
            seen[name] = errno.errorcode.get(error.errno, str(error.errno))
    print(json.dumps({"reached": "done" in seen.values(), **seen}))
"""


@pytest.mark.root
@requires_root
def test_11_userns_root_cannot_use_nobodys_private_home(scratch):
    # A home of 'nobody' (65534), private to it: with the host's root shown, root of a
    # --userns container must not be its owner.
    home = os.path.join(scratch, "nobody-home")
    os.mkdir(home, 0o700)
    with open(os.path.join(home, "private"), "w") as handle:
        handle.write("nobody's")
    os.chmod(os.path.join(home, "private"), 0o600)
    for path in (home, os.path.join(home, "private")):
        os.chown(path, 65534, 65534)
    script = WRITE_PRIVATE_HOME.replace("HOME_VALUE", repr(home))
    row = "--userns root reads/writes nobody's private home (host root shown)"
    verdict = observe(11, row, "nsmagic", in_nsmagic(script, userns=True, host_root=True))
    planted = os.path.join(home, "planted")
    if os.path.exists(planted):
        os.unlink(planted)
    control = observe(11, row, "control", in_nsmagic(script, userns=False, host_root=True))
    assert control["reached"], control
    assert not verdict["reached"], verdict
