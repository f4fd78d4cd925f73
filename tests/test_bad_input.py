"""Bad input, generated: every option of every magic, and the spec parser, given random and
hostile values. Each invalid value must give exactly an IPython UsageError (IPython then
shows one line, no traceback) whose one-line message names the option and what it accepts,
and must create nothing: the kernel's container registry and the cgroups on the machine are
the same before and after.

Values go in as --option=VALUE, so every one reaches nsmagic's own parser (argparse would
otherwise take '-5M' for an option), and are single tokens: IPython splits these lines with
a non-POSIX shlex that keeps quotes in values, and expands $, { and }. Whether a value is
invalid is decided by the library's own parser; what is tested is the shape of the refusal.
Bugs these tests found were fixed; each test now guards against its return."""

from __future__ import annotations

import os
import re
import shlex

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError

from nsmagic.cgroups.limits import Limits
from nsmagic.errors import SpecError
from nsmagic.runtime.registry import REGISTRY
from nsmagic.runtime.spec import (
    ALL_NAMESPACES,
    ContainerSpec,
    parse_volume,
    validate_hostname,
    validate_name,
)

from .conftest import our_cgroups

FAST = settings(max_examples=50, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
# One token of a magic's line: IPython splits %%container and %cgroup lines with a non-POSIX
# shlex (quotes are kept in the value, whitespace always splits), and expands $, { and }:
# so no whitespace, quotes or expansion characters.
TOKEN = st.text(st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"),
                              exclude_characters="${}'\""), min_size=1, max_size=40)
NUMBER = st.one_of(st.integers(-10**30, 10**30).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr))
WARM = re.compile(r"-w[0-9a-f]{12}$")  # the fork server's warm pool refills on its own


def created_resources() -> tuple[set[str], set[str]]:
    """What a rejected spec must not add: registry entries, and cgroups (not warm ones)."""
    records = {r.container_id for r in REGISTRY.records(include_exited=True)}
    return records, {c for c in our_cgroups() if not WARM.search(c)}


def usage_error(call, *args) -> str:
    """Run call(*args); it must raise exactly UsageError with a one-line message; return it."""
    before = created_resources()
    with pytest.raises(Exception) as info:  # noqa: B017 - the exact type is asserted below
        call(*args)
    assert type(info.value) is UsageError, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert message and len(message.splitlines()) == 1, message
    assert "Traceback" not in message
    assert created_resources() == before
    return message


def cell(shell, line: str) -> str:
    return usage_error(shell.run_cell_magic, "container", line, "print('never runs')")


def rejects(parser, *args, **kwargs) -> bool:  # noqa: ANN001
    """True when the library's own parser refuses the value (the oracle for 'invalid')."""
    try:
        parser(*args, **kwargs)
    except SpecError:
        return True
    return False


# --- limits, for %%container and %cgroup create/set -------------------------------------------

LIMIT_VALUES = st.one_of(
    TOKEN, NUMBER,
    st.from_regex(r"\A-[0-9]{1,6}[KMG]?\Z"),  # negative
    st.from_regex(r"\A[0-9]{1,4}(Q|X|mbb|KiBi|kg)\Z"),  # units that do not exist
    st.from_regex(r"\A[0-9]{7,30}[TtGg]\Z"),  # larger than any machine
    st.sampled_from(["0", "0.0001", "0K", "1e3", "0x10", "1,5G", "NaN", "inf", "-1", "4097",
                     "4194305", "10001", "1.5", "1-0", ",0", "0,,1", "0-"]),
)
# What each option's message must say is accepted.
ACCEPTS = {
    "--memory": ("a size such as 512K", "positive size", "larger than any machine"),
    "--memory-swap": ("a size such as 512K", "positive size", "larger than any machine",
                      "at least --memory"),
    "--cpus": ("number of cores",),
    "--pids": ("whole number from 1 to 4194304",),
    "--cpu-weight": ("whole number from 1 to 10000",),
    "--cpuset": ("CPU list such as", "runs backwards"),
}


def invalid_limit(option: str, value: str) -> bool:
    key = option.lstrip("-").replace("-", "_")
    others = {"memory": "1G"} if key == "memory_swap" else {}
    return rejects(Limits.parse, **{key: value, **others})


@FAST
@given(value=LIMIT_VALUES, option=st.sampled_from(sorted(ACCEPTS)))
def test_bad_limits_in_a_container_cell(ipython_shell, value, option):
    assume(invalid_limit(option, value))
    extra = " --memory=1G" if option == "--memory-swap" else ""
    message = cell(ipython_shell, f"{option}={value}{extra}")
    assert option in message and any(a in message for a in ACCEPTS[option]), message


@FAST
@given(sub=st.sampled_from(["create", "set"]), value=LIMIT_VALUES,
       option=st.sampled_from(sorted(ACCEPTS)))
def test_bad_limits_for_cgroup_create_and_set(ipython_shell, sub, value, option):
    assume(invalid_limit(option, value))
    extra = " --memory=1G" if option == "--memory-swap" else ""
    message = usage_error(ipython_shell.run_line_magic, "cgroup",
                          f"{sub} badinputgroup {option}={value}{extra}")
    assert option in message and any(a in message for a in ACCEPTS[option]), message


@pytest.mark.parametrize("option", ["--memory", "--cpus", "--pids", "--net"])
def test_an_empty_value_is_not_silently_ignored(ipython_shell, option):
    cell(ipython_shell, f"{option}=")


# --- names ----------------------------------------------------------------------------------

BAD_NAMES = st.one_of(
    TOKEN.filter(lambda s: not s.startswith("-")),
    st.from_regex(r"\A[a-z]{0,5}/[a-z./]{0,10}\Z"),  # slashes
    st.from_regex(r"\A[a-z]{0,4}\.\.[a-z./]{0,6}\Z"),  # ..
    st.from_regex(r"\A[_.][a-z0-9]{1,8}\Z"),  # starts with neither letter nor digit
    st.from_regex(r"\A[a-z]{64,80}\Z"),  # too long
    st.sampled_from(["..", ".", "../etc", "a/../b", "/", "x/y", "é", "a:b", "a\\b", "a*",
                     "a..b"]),
)


@FAST
@given(name=BAD_NAMES)
def test_bad_container_names_for_start(ipython_shell, name):
    assume(rejects(validate_name, name))
    message = usage_error(ipython_shell.run_line_magic, "container",
                          f"start {shlex.quote(name)}")
    assert "container name" in message and "1-63 letters" in message, message


@FAST
@given(name=BAD_NAMES)
def test_bad_names_of_background_runs_and_cgroups(ipython_shell, name):
    assume(rejects(validate_name, name))
    message = cell(ipython_shell, f"--bg --name={name}")
    assert "container name" in message and "1-63 letters" in message, message
    message = usage_error(ipython_shell.run_line_magic, "cgroup", f"create {name}")
    assert "cgroup name" in message and "1-63 letters" in message, message
    message = cell(ipython_shell, f"--cgroup={name}")
    assert "cgroup name" in message and "1-63 letters" in message, message


def test_duplicate_names_are_refused_and_the_first_keeps_running(ipython_shell):
    ipython_shell.run_line_magic("container", "start dupname")
    try:
        message = usage_error(ipython_shell.run_line_magic, "container", "start dupname")
        assert "'dupname' exists already" in message
        message = cell(ipython_shell, "--bg --name=dupname")
        assert "'dupname' exists already" in message
        from nsmagic.runtime.named import MANAGER

        assert MANAGER.get("dupname").state == "running"
    finally:
        ipython_shell.run_line_magic("container", "rm -f dupname")
    ipython_shell.run_line_magic("cgroup", "create dupgroup")
    try:
        message = usage_error(ipython_shell.run_line_magic, "cgroup", "create dupgroup")
        assert "'dupgroup' already exists" in message
    finally:
        ipython_shell.run_line_magic("cgroup", "rm dupgroup")


@FAST
@given(name=st.from_regex(r"\A[a-z][a-z0-9]{0,10}\Z"),
       sub=st.sampled_from(["stop", "rm", "logs", "stats", "wait"]))
def test_unknown_container_names_for_every_subcommand(ipython_shell, name, sub):
    from nsmagic.runtime.named import MANAGER

    assume(name not in MANAGER.names())
    message = usage_error(ipython_shell.run_line_magic, "container", f"{sub} {name}")
    assert f"no container named {name!r}" in message


@FAST
@given(name=st.from_regex(r"\A[a-z][a-z0-9]{0,10}\Z"),
       sub=st.sampled_from(["set", "show", "rm", "run"]))
def test_unknown_cgroup_names_for_every_subcommand(ipython_shell, name, sub):
    line = f"{sub} {name}" + (" -- true" if sub == "run" else "")
    message = usage_error(ipython_shell.run_line_magic, "cgroup", line)
    assert f"no cgroup named {name!r}" in message and "%cgroup create" in message


# --- host names, --net, volumes, namespaces -----------------------------------------------------

BAD_HOSTNAMES = st.one_of(
    TOKEN,
    st.from_regex(r"\A[a-z0-9]{0,8}[!@#_/\\:;,*?%&()=+][a-z0-9]{0,8}\Z"),
    st.from_regex(r"\A-[a-z0-9]{0,10}\Z"),  # leading hyphen
    st.from_regex(r"\A[a-z0-9]{1,10}-\Z"),  # trailing hyphen
    st.from_regex(r"\A[a-z]{65,90}\Z"),  # too long
    st.sampled_from([".", "a..b", ".a", "a.", "ünïcode", "-", "a_b"]),
)


@FAST
@given(hostname=BAD_HOSTNAMES)
def test_bad_hostnames(ipython_shell, hostname):
    assume(rejects(validate_hostname, hostname))
    message = cell(ipython_shell, f"--hostname={hostname}")
    assert "--hostname" in message and "letters, digits and hyphens" in message, message


@FAST
@given(mode=TOKEN)
def test_bad_net_modes(ipython_shell, mode):
    assume(mode not in ("none", "bridge", "host") and not mode.startswith("container:"))
    message = cell(ipython_shell, f"--net={mode}")
    assert "--net must be none, bridge, host or container:NAME" in message, message


def test_net_container_of_an_unknown_container_names_the_option(ipython_shell):
    message = cell(ipython_shell, "--net=container:nosuchbox")
    assert "--net" in message


BAD_VOLUMES = st.one_of(
    TOKEN,
    st.from_regex(r"\A[a-z/]{0,10}:[a-z/]{0,10}(:[a-z]{1,4})?\Z"),
    st.sampled_from(["/tmp", "/tmp:", ":/x", "/tmp:/x:rx", "/tmp:x", "tmp:/x", "/tmp:/a/../b",
                     "/nonexistent-nsmagic:/x", "/tmp:/x:ro:ro", "::"]),
)


@FAST
@given(volume=BAD_VOLUMES)
def test_bad_volumes(ipython_shell, volume):
    assume(rejects(parse_volume, volume))
    message = cell(ipython_shell, f"--volume={volume}")
    assert "--volume" in message and ("HOST:CONTAINER" in message or "absolute" in message
                                      or "must not contain '..'" in message
                                      or "does not exist" in message), message


@FAST
@given(names=st.sets(st.one_of(st.sampled_from(sorted(ALL_NAMESPACES)), TOKEN), min_size=1,
                     max_size=4))
def test_unknown_namespaces_in_the_spec_parser(names):
    unknown = names - ALL_NAMESPACES
    assume(unknown)
    before = created_resources()
    with pytest.raises(SpecError) as info:
        ContainerSpec.build(namespaces=names, net="none")
    message = str(info.value)
    assert "unknown namespace" in message and "choose from" in message
    assert all(n in message for n in ALL_NAMESPACES) and "\n" not in message
    assert created_resources() == before


@FAST
@given(option=st.sampled_from(["memory", "memory_swap", "cpus", "pids", "cpu_weight", "cpuset",
                               "hostname", "net", "name", "cgroup"]),
       value=st.one_of(TOKEN, LIMIT_VALUES, BAD_NAMES))
def test_the_python_api_rejects_bad_options_before_creating_anything(option, value):
    import nsmagic

    options = {option: value, **({"memory": "1G"} if option == "memory_swap" else {})}
    before = created_resources()
    try:
        nsmagic.Container(**options).close()  # builds and validates the spec, starts nothing
        valid = True
    except SpecError as error:
        valid, message = False, str(error)
    assume(not valid)
    assert created_resources() == before
    assert len(message.splitlines()) == 1, message
    named = {"hostname": "host name", "name": "container name", "cgroup": "cgroup name"}
    assert (option.replace("_", "-") in message or named.get(option, "--") in message), message


# --- the magics' own words -------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    "", "bogus", "start", "start --memory 1G", "stop", "rm", "logs", "stats a b", "wait",
    "export", "start bash",
])
def test_container_line_magic_misuse(ipython_shell, line):
    usage_error(ipython_shell.run_line_magic, "container", line)


@pytest.mark.parametrize("line", [
    "", "bogus", "create", "set", "show", "rm", "run", "run x", "ls extra", "create x --bogus",
])
def test_cgroup_line_magic_misuse(ipython_shell, line):
    usage_error(ipython_shell.run_line_magic, "cgroup", line)


@pytest.mark.parametrize("line", [
    "--bogus", "python3", "a b c", "--env NOT-A-NAME", "--env =x", "--userns --no-userns",
    "--read-only --overlay", "--in 'a b'", "--out 1x", "--in undefined_variable_x",
    "--rootfs=/nonexistent-nsmagic", "--no-uts --hostname x", "--cgroup x --memory 1G",
    "--timeout abc", "--no-mount --read-only",
])
def test_container_cell_magic_misuse(ipython_shell, line):
    cell(ipython_shell, line)


def test_a_rejected_cell_shows_one_line_and_no_traceback(ipython_shell, capsys):
    for source in ("%%container --memory=12Q\npass", "%container start a/b",
                   "%cgroup create x --cpus=-1"):
        result = ipython_shell.run_cell(source)
        assert type(result.error_in_exec) is UsageError
        out = capsys.readouterr()
        text = out.out + out.err
        assert "Traceback" not in text and text.strip().startswith("UsageError:"), text
        assert len(text.strip().splitlines()) == 1, text


# --- bugs found --------------------------------------------------------------------------------

@pytest.mark.parametrize("magic,line", [
    ("container", "stop \"x"), ("cgroup", "run x -- 'a"), ("cell", "--hostname 'a"),
], ids=["container-line", "cgroup-run", "container-cell"])
def test_an_unbalanced_quote_is_a_usage_error(ipython_shell, magic, line):
    if magic == "cell":
        cell(ipython_shell, line)
    else:
        usage_error(ipython_shell.run_line_magic, magic, line)


@pytest.mark.parametrize("value", ["nan", "-1", "0", "inf"])
def test_bad_timeouts(ipython_shell, value):
    message = cell(ipython_shell, f"--timeout={value}")
    assert "--timeout" in message


def test_an_environment_variable_with_a_nul_character(ipython_shell):
    ipython_shell.user_ns["nul_env"] = "A=b\x00c"
    message = cell(ipython_shell, "--env {nul_env}")
    assert "--env" in message


def test_a_cpuset_beyond_this_hosts_cpus(ipython_shell):
    message = cell(ipython_shell, f"--cpuset={os.cpu_count() + 7}")
    assert "--cpuset" in message


def test_wait_with_a_bad_timeout(ipython_shell):
    ipython_shell.run_line_magic("container", "start waitbad")
    try:
        usage_error(ipython_shell.run_line_magic, "container", "wait waitbad abc")
    finally:
        ipython_shell.run_line_magic("container", "rm -f waitbad")


def test_a_container_name_with_a_space(ipython_shell):
    message = usage_error(ipython_shell.run_line_magic, "container", "start 'a b'")
    assert "container name" in message
