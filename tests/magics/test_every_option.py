"""Every option of %%container (the list %%container? shows), in both places a cell runs: a
new container, and a named one started with %container start. Each either works there or is
refused in one sentence; none is ignored."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable

import pytest
from IPython.core.error import UsageError

from nsmagic.magics import ContainerError
from nsmagic.magics.container import ContainerMagics
from nsmagic.runtime import groups
from nsmagic.runtime.named import MANAGER
from nsmagic.runtime.options import CONTAINER_OPTIONS
from nsmagic.runtime.registry import REGISTRY

from ..conftest import IS_ROOT

NAMED = "box"


def every_flag() -> set[str]:
    """One name per option of %%container: its long flag, and for the command words the
    three things they can say (a container's NAME, bash, sh)."""
    flags = {"NAME", "bash", "sh"}
    for action in ContainerMagics.container.parser._actions:
        if action.option_strings:
            flags.add(max(action.option_strings, key=len))
    return flags


class Cells:
    """Runs %%container cells through the shell and returns what they printed."""

    def __init__(self, shell, capsys, host_dir: str) -> None:  # noqa: ANN001
        self.shell, self.capsys, self.host_dir = shell, capsys, host_dir
        self.value = None
        self.err = ""

    def run(self, line: str, body: str) -> str:
        self.capsys.readouterr()
        try:
            self.value = self.shell.run_cell_magic("container", line, body)
        finally:
            shown = self.capsys.readouterr()
            self.out, self.err = shown.out, shown.err
        return self.out

    def namespace(self, line: str, kind: str) -> str:
        return self.run(line, f"import os; print(os.readlink('/proc/self/ns/{kind}'))").strip()

    def status(self, line: str, field: str) -> str:
        return self.run(line, f"print([l for l in open('/proc/self/status') "
                              f"if l.startswith('{field}:')][0].split()[1])").strip()


@pytest.fixture(scope="module")
def host_dir():
    """A host directory every container uid can use (not under /tmp, private inside; not
    under a 0700 pytest directory, which nobody cannot traverse)."""
    path = tempfile.mkdtemp(prefix="nsmagic-options-", dir="/var/tmp")
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def cells(ipython_shell, capsys, host_dir):
    yield Cells(ipython_shell, capsys, host_dir)
    MANAGER.close_all()


@pytest.fixture
def plots(monkeypatch):
    """The containers --plot showed a live plot of (no widget drawn in the test shell)."""
    shown: list[str] = []

    @contextlib.contextmanager
    def live_plot(container_id: str, **options):  # noqa: ANN003, ANN202
        shown.append(container_id)
        yield

    class Dashboard:
        def stop(self) -> None:
            shown.append("stopped")

    def show_dashboard(containers, **options):  # noqa: ANN001, ANN003, ANN202
        shown.extend(containers)
        return Dashboard()

    monkeypatch.setattr("nsmagic.widgets.live_plot", live_plot)
    monkeypatch.setattr("nsmagic.widgets.show_dashboard", show_dashboard)
    return shown


def wait_for(predicate: Callable[[], object], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# -- a new container's cell ---------------------------------------------------------------
IN_A_NEW_CONTAINER: dict[str, Callable[[Cells], None]] = {}


def in_a_new_container(*flags: str) -> Callable:
    def register(check: Callable[[Cells], None]) -> Callable[[Cells], None]:
        for flag in flags:
            IN_A_NEW_CONTAINER[flag] = check
        return check
    return register


@in_a_new_container("NAME")
def _unknown_names_are_refused(cells: Cells) -> None:
    with pytest.raises(UsageError, match="does not know 'nobody_here'"):
        cells.run("nobody_here", "print('never')")


@in_a_new_container("bash")
def _bash(cells: Cells) -> None:
    assert cells.run("bash", 'echo "$BASH_VERSION"').strip()


@in_a_new_container("sh", "--shell")
def _sh(cells: Cells) -> None:
    assert cells.run("sh", "echo $((6*7))") == "42\n"
    assert cells.run("--shell", "echo $0") == "/bin/sh\n"


@in_a_new_container("--hostname")
def _hostname(cells: Cells) -> None:
    assert cells.run("--hostname lab9", "import socket; print(socket.gethostname())") == "lab9\n"


@in_a_new_container("--no-pid", "--no-uts", "--no-ipc", "--no-net", "--no-mount",
                    "--no-cgroupns")
def _no_namespace(cells: Cells) -> None:
    for flag, kind in (("--no-pid", "pid"), ("--no-uts", "uts"), ("--no-ipc", "ipc"),
                       ("--no-net", "net"), ("--no-mount", "mnt"), ("--no-cgroupns", "cgroup")):
        assert cells.namespace("", kind) != os.readlink(f"/proc/self/ns/{kind}")
        assert cells.namespace(flag, kind) == os.readlink(f"/proc/self/ns/{kind}"), flag


@in_a_new_container("--userns")
def _userns(cells: Cells) -> None:
    inside, outside, _ = cells.run("--userns", "print(open('/proc/self/uid_map').read())").split()
    assert inside == "0" and outside != "0"


@in_a_new_container("--no-userns")
def _no_userns(cells: Cells) -> None:
    if not IS_ROOT:
        with pytest.raises(UsageError, match="needs root"):
            cells.run("--no-userns", "print('never')")
        return
    assert cells.run("--no-userns", "print(open('/proc/self/uid_map').read())").split() == \
        ["0", "0", "4294967295"]


LIMITS = {"--cpus": ("0.5", "cpus", 0.5), "--memory": ("256M", "memory", 256 << 20),
          "--memory-swap": ("512M", "memory_swap", 512 << 20), "--pids": ("64", "pids", 64),
          "--cpu-weight": ("50", "cpu_weight", 50), "--cpuset": ("0", "cpuset", "0")}


@in_a_new_container(*LIMITS)
def _limits(cells: Cells) -> None:
    for flag, (value, field, expected) in LIMITS.items():
        extra = "--memory 256M " if flag == "--memory-swap" else ""
        cells.run(f"{extra}{flag} {value} -o", "pass")
        assert getattr(cells.value.limits, field) == expected, flag


@in_a_new_container("--net")
def _net(cells: Cells) -> None:
    assert cells.namespace("--net host", "net") == os.readlink("/proc/self/ns/net")
    assert cells.namespace("--net none", "net") != os.readlink("/proc/self/ns/net")


@in_a_new_container("--read-only")
def _read_only(cells: Cells) -> None:
    with pytest.raises(ContainerError, match="Read-only file system"):
        cells.run("--read-only", "open('/probe', 'w')")


@in_a_new_container("--overlay")
def _overlay(cells: Cells) -> None:
    assert cells.run("--overlay", "open('/etc/nsmagic-overlay-probe', 'w').write('x')\n"
                                  "print('written')") == "written\n"
    assert not os.path.exists("/etc/nsmagic-overlay-probe")


@in_a_new_container("--rootfs")
def _rootfs(cells: Cells) -> None:
    if not os.path.exists("/bin/busybox"):
        pytest.skip("needs busybox-static (/bin/busybox)")
    root = os.path.join(cells.host_dir, "busybox-root")
    if not os.path.exists(root):
        for directory in ("bin", "etc", "proc", "dev", "tmp", "sys/fs/cgroup"):
            os.makedirs(os.path.join(root, directory))
        shutil.copy2("/bin/busybox", os.path.join(root, "bin", "busybox"))
        os.symlink("busybox", os.path.join(root, "bin", "sh"))
        os.symlink("busybox", os.path.join(root, "bin", "cat"))
        with open(os.path.join(root, "etc", "marker"), "w") as handle:
            handle.write("busybox root\n")
    assert cells.run(f"--rootfs {root} sh", "cat /etc/marker") == "busybox root\n"


@in_a_new_container("--image")
def _image(cells: Cells) -> None:
    from ..images import builders

    store, layout = os.path.join(cells.host_dir, "store"), os.path.join(cells.host_dir, "bb")
    if not os.path.exists(layout):
        builders.write_layout(layout, "1", [builders.busybox_layer()], cmd=["/bin/sh"])
    previous = os.environ.get("NSMAGIC_IMAGE_STORE")
    os.environ["NSMAGIC_IMAGE_STORE"] = store
    try:
        assert cells.run(f"--image oci:{layout}:1 sh", "test -e /bin/busybox && echo yes "
                         "&& test ! -e /usr/lib/python3 && echo no-host") == "yes\nno-host\n"
    finally:
        if previous is None:
            del os.environ["NSMAGIC_IMAGE_STORE"]
        else:
            os.environ["NSMAGIC_IMAGE_STORE"] = previous


@in_a_new_container("--user")
def _user(cells: Cells) -> None:
    wanted = "65534" if os.geteuid() == 0 else "0"  # rootless, only root inside is mapped
    assert cells.run(f"--user {wanted}", "import os; print(os.getuid())") == f"{wanted}\n"


@in_a_new_container("--host-root")
def _host_root(cells: Cells) -> None:
    probe = f"import os; print(os.path.isdir({cells.host_dir!r}))"
    assert cells.run("", probe) == "False\n"
    assert cells.run("--host-root", probe) == "True\n"
    assert "HOST ROOT" in cells.err


@in_a_new_container("--volume")
def _volume(cells: Cells) -> None:
    cells.run(f"-v {cells.host_dir}:/data", "open('/data/from-inside', 'w').write('hi')")
    with open(os.path.join(cells.host_dir, "from-inside")) as handle:
        assert handle.read() == "hi"
    cells.run(f"--volume {cells.host_dir}:/data:ro", "print(open('/data/from-inside').read())")
    assert cells.out == "hi\n"


@in_a_new_container("--env")
def _env(cells: Cells) -> None:
    assert cells.run("-e GREETING=hi --env OTHER=2",
                     "import os; print(os.environ['GREETING'], os.environ['OTHER'])") == "hi 2\n"


@in_a_new_container("--security-opt")
def _security_opt(cells: Cells) -> None:
    assert cells.status("--security-opt seccomp=unconfined", "Seccomp") == "0"
    assert "NO SECCOMP FILTER" in cells.err


@in_a_new_container("--privileged")
def _privileged(cells: Cells) -> None:
    default = int(cells.status("", "CapEff"), 16)
    assert int(cells.status("--privileged", "CapEff"), 16) > default
    assert "PRIVILEGED" in cells.err


@in_a_new_container("--cgroup")
def _cgroup(cells: Cells) -> None:
    cells.shell.run_line_magic("cgroup", "create optiongroup --pids 48")
    try:
        cells.run("--cgroup optiongroup -o", "pass")
        assert cells.value.ok and cells.value.limits.pids == 48
    finally:
        groups.remove("optiongroup")


@in_a_new_container("--in", "--out")
def _in_and_out(cells: Cells) -> None:
    cells.shell.user_ns["numbers"] = [1, 2, 3]
    cells.run("--in numbers --out total", "total = sum(numbers)")
    assert cells.shell.user_ns.pop("total") == 6


@in_a_new_container("--plot")
def _plot(cells: Cells, plots: list[str]) -> None:
    cells.run("--plot", "pass")
    assert len(plots) == 1 and REGISTRY.get(plots[0]).state == "exited"


@in_a_new_container("--bg", "--name")
def _background(cells: Cells) -> None:
    with pytest.raises(UsageError, match="--name names a background run"):
        cells.run("--name job", "print('never')")
    began = time.monotonic()
    cells.run("--bg --name job", "import time\ntime.sleep(1)\nprint('slept')")
    assert time.monotonic() - began < 1 and MANAGER.get("job").state == "running"
    cells.shell.run_line_magic("container", "wait job")
    assert MANAGER.get("job").logs() == "slept\n"


@in_a_new_container("--timeout")
def _timeout(cells: Cells) -> None:
    with pytest.raises(ContainerError, match=r"still running after 0.5 s; it was killed"):
        cells.run("--timeout 0.5", "while True: pass")


@in_a_new_container("--no-raise")
def _no_raise(cells: Cells) -> None:
    cells.run("--no-raise bash", "exit 3")
    assert "exit status 3" in cells.err
    cells.run("--no-raise --timeout 0.3", "while True: pass")
    assert "still running after 0.3 s; it was killed" in cells.err


@in_a_new_container("--output-result")
def _output_result(cells: Cells) -> None:
    cells.run("-o", "print('x')")
    assert cells.value.ok and cells.value.stdout == "x\n"
    cells.run("--output-result", "pass")
    assert cells.value.ok


@in_a_new_container("--quiet")
def _quiet(cells: Cells) -> None:
    cells.run("--security-opt seccomp=unconfined", "pass")
    assert "NO SECCOMP FILTER" in cells.out + cells.err
    cells.run("--security-opt seccomp=unconfined -q", "pass")
    assert cells.out + cells.err == ""


@in_a_new_container("--export-oci")
def _export_oci(cells: Cells) -> None:
    bundle = os.path.join(cells.host_dir, "bundle")
    printed = cells.run(f"--export-oci {bundle}", "print('ran')").splitlines()
    assert printed[0].startswith("nsmagic: wrote an OCI bundle to") and printed[-1] == "ran"
    assert os.path.isfile(os.path.join(bundle, "config.json"))


# -- a named container's cell ---------------------------------------------------------------
# Options of the container itself: %container start set them, so a cell there refuses them.
SAMPLE_VALUES = {"--hostname": "h", "--cpus": "0.5", "--memory": "64M", "--memory-swap": "64M",
                 "--pids": "8", "--cpu-weight": "50", "--cpuset": "0", "--net": "host",
                 "--rootfs": "/var/tmp", "--volume": "/var/tmp:/data", "--env": "A=1",
                 "--security-opt": "seccomp=unconfined", "--cgroup": "g",
                 "--export-oci": "/var/tmp/never", "--name": "other"}
FIXED_AT_START = [option.flags[0] for option in CONTAINER_OPTIONS] + [
    "--cgroup", "--export-oci"]
SWITCHES = {option.flags[0] for option in CONTAINER_OPTIONS
            if option.settings.get("action") == "store_true"}
IN_A_NAMED_CONTAINER: dict[str, Callable[[Cells], None]] = {}


def in_a_named_container(*flags: str) -> Callable:
    def register(check: Callable[[Cells], None]) -> Callable[[Cells], None]:
        for flag in flags:
            IN_A_NAMED_CONTAINER[flag] = check
        return check
    return register


@pytest.mark.parametrize("flag", [*FIXED_AT_START, "--name"])
def test_a_named_container_cell_refuses_the_containers_own_options(cells, flag):
    cells.shell.run_line_magic("container", f"start {NAMED}")
    line = f"{NAMED} {flag} {'' if flag in SWITCHES else SAMPLE_VALUES.get(flag, 'x')}"
    with pytest.raises(UsageError) as refused:
        cells.run(line, "print('never')")
    sentence = str(refused.value)
    assert sentence.count(". ") == 0 and sentence.endswith((".", ")")), sentence
    expected = {"--export-oci": f"%container export {NAMED} --oci DIR",
                "--name": f"%%container {NAMED} --bg"}.get(flag, "give it to %container start")
    assert flag in sentence and expected in sentence
    assert "never" not in cells.out


@in_a_named_container("NAME")
def _named_keeps_state(cells: Cells) -> None:
    cells.run(NAMED, "kept = 41")
    assert cells.run(NAMED, "print(kept + 1)") == "42\n"


@in_a_named_container("bash")
def _named_bash(cells: Cells) -> None:
    # The cell runs in bash itself, not in the agent's /bin/sh (dash here).
    assert cells.run(f"{NAMED} bash", '[[ -n "$BASH_VERSION" ]] && echo bash') == "bash\n"


@in_a_named_container("sh", "--shell")
def _named_sh(cells: Cells) -> None:
    assert cells.run(f"{NAMED} sh", "echo $((6*7))") == "42\n"
    assert cells.run(f"{NAMED} --shell", "echo $((6*7))") == "42\n"


@in_a_named_container("--in", "--out")
def _named_in_and_out(cells: Cells) -> None:
    cells.shell.user_ns["numbers"] = [1, 2, 3]
    cells.run(f"{NAMED} --in numbers --out total", "total = sum(numbers)")
    assert cells.shell.user_ns.pop("total") == 6


@in_a_named_container("--plot")
def _named_plot(cells: Cells, plots: list[str]) -> None:
    cells.run(f"{NAMED} --plot", "pass")
    assert plots == [MANAGER.get(NAMED).spec.container_id]


@in_a_named_container("--bg")
def _named_background(cells: Cells) -> None:
    began = time.monotonic()
    cells.run(f"{NAMED} --bg --out done", "import time\ntime.sleep(1)\nprint('slept')\n"
                                           "done = True")
    assert time.monotonic() - began < 1
    with pytest.raises(UsageError, match=f"{NAMED!r} is busy with a background cell"):
        cells.run(NAMED, "print('never')")
    cells.shell.run_line_magic("container", f"wait {NAMED}")
    assert cells.shell.user_ns.pop("done") is True
    assert "slept\n" in MANAGER.get(NAMED).logs()
    assert cells.run(NAMED, "print('free again')") == "free again\n"


@in_a_named_container("--timeout")
def _named_timeout(cells: Cells) -> None:
    with pytest.raises(ContainerError, match=f"timed out after 0.5 s; the cell was interrupted "
                                             f"and container {NAMED!r} runs on"):
        cells.run(f"{NAMED} --timeout 0.5", "import time\nkept = 1\nwhile True: time.sleep(0.05)")
    assert cells.run(NAMED, "print(kept)") == "1\n"


@in_a_named_container("--no-raise")
def _named_no_raise(cells: Cells) -> None:
    cells.run(f"{NAMED} --no-raise", "raise ValueError('reported')")
    assert "ValueError: reported" in cells.err


@in_a_named_container("--output-result")
def _named_output_result(cells: Cells) -> None:
    cells.run(f"{NAMED} -o", "pass")
    assert cells.value.ok and cells.value.describe() == "exit status 0"


@in_a_named_container("--quiet")
def _named_quiet(cells: Cells) -> None:
    cells.run(f"{NAMED} --bg", "pass")
    assert "running in the background" in cells.out + cells.err
    MANAGER.get(NAMED).background.wait(10)
    cells.run(f"{NAMED} --bg -q", "pass")
    assert cells.out + cells.err == ""
    MANAGER.get(NAMED).background.wait(10)


# -- both tables cover every option -------------------------------------------------------
def test_every_option_is_checked_in_both_places():
    # A new option needs a check in a new container's cell here; in a named container's
    # cell, a container option is refused (above) without more ado.
    assert sorted(every_flag() - set(IN_A_NEW_CONTAINER)) == [], "add in_a_new_container checks"
    assert sorted(set(IN_A_NEW_CONTAINER) - every_flag()) == []
    assert set(IN_A_NAMED_CONTAINER) | {*FIXED_AT_START, "--name"} == every_flag()
    assert not set(IN_A_NAMED_CONTAINER) & {*FIXED_AT_START, "--name"}


def test_the_help_documents_a_named_container_cell_and_the_options_it_takes(ipython_shell):
    doc = ipython_shell.find_cell_magic("container").__doc__
    named = doc[doc.index("In a named container"):doc.index("positional arguments")]
    assert "%%container NAME [bash|sh]" in named and "%container start NAME" in named
    parser = ContainerMagics.container.parser
    for flag in set(IN_A_NAMED_CONTAINER) - {"NAME", "bash", "sh"}:
        spellings = parser._option_string_actions[flag].option_strings
        assert any(re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", named)
                   for f in spellings), flag
    # And the options it refuses, by what they are and where they go.
    assert "refused in its cells" in named and "--cgroup, --export-oci" in named


def _call(check: Callable, cells: Cells, request) -> None:  # noqa: ANN001
    if "plots" in check.__code__.co_varnames[:check.__code__.co_argcount]:
        check(cells, request.getfixturevalue("plots"))
    else:
        check(cells)


@pytest.mark.parametrize("flag", sorted(IN_A_NEW_CONTAINER))
def test_each_option_in_a_new_container_cell(cells, flag, request):
    _call(IN_A_NEW_CONTAINER[flag], cells, request)


@pytest.mark.parametrize("flag", sorted(IN_A_NAMED_CONTAINER))
def test_each_option_in_a_named_container_cell(cells, flag, request):
    cells.shell.run_line_magic("container", f"start {NAMED}")
    _call(IN_A_NAMED_CONTAINER[flag], cells, request)


# -- options together ---------------------------------------------------------------------
def test_a_background_run_shows_its_plot_and_is_killed_at_its_timeout(cells, plots):
    cells.run("--bg --name slow --plot --timeout 0.5", "import time\ntime.sleep(30)")
    slow = MANAGER.get("slow")
    assert plots == [slow.spec.container_id]  # the plot stops by itself when it ends
    cells.shell.run_line_magic("container", "wait slow 10")
    assert "slow: killed after its timeout of 0.5 s" in cells.capsys.readouterr().out
    assert "still running after its timeout of 0.5 s: killed" in slow.logs()


def test_a_background_cell_in_a_named_container_shows_its_plot_until_it_ends(cells, plots):
    cells.shell.run_line_magic("container", f"start {NAMED}")
    cells.run(f"{NAMED} --bg --plot", "import time\ntime.sleep(0.3)")
    assert plots == [MANAGER.get(NAMED).spec.container_id]
    MANAGER.get(NAMED).background.wait(10)
    wait_for(lambda: plots[-1:] == ["stopped"])


def test_a_named_cell_that_ignores_its_timeout_costs_the_container(cells):
    cells.shell.run_line_magic("container", f"start {NAMED}")
    with pytest.raises(ContainerError, match=f"timed out after 0.5 s; the cell would not stop, "
                                             f"so container {NAMED!r} was killed"):
        cells.run(f"{NAMED} --timeout 0.5", "import signal, time\n"
                  "signal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: time.sleep(0.05)")
    assert MANAGER.get(NAMED).state == "exited"


def test_a_background_cell_that_times_out_says_so_under_its_cell(cells):
    cells.shell.run_line_magic("container", f"start {NAMED}")
    cells.run(f"{NAMED} --bg --timeout 0.3", "import time\nwhile True: time.sleep(0.05)")
    result = MANAGER.get(NAMED).background.wait(10)
    assert result.describe() == (f"timed out after 0.3 s; the cell was interrupted and "
                                 f"container {NAMED!r} runs on")


@pytest.mark.parametrize("option", ["--bg", "--in x", "--out x", "--plot", "--timeout 3",
                                    "--name other", "--export-oci /var/tmp/never"])
def test_start_refuses_a_cells_options(cells, option):
    cells.shell.user_ns["x"] = 1
    with pytest.raises(UsageError, match=f"{option.split()[0]} is a cell's: %%container lab"):
        cells.shell.run_line_magic("container", f"start lab {option}")
    assert "lab" not in MANAGER.names()


def test_start_takes_quiet_output_result_and_no_raise(cells, capsys):
    managed = cells.shell.run_line_magic("container", "start lab -q -o "
                                                      "--security-opt seccomp=unconfined")
    assert managed is MANAGER.get("lab") and managed.state == "running"
    shown = capsys.readouterr()
    assert shown.out + shown.err == ""
    cells.shell.run_line_magic("container", f"start bad --no-raise -v {cells.host_dir}:/no/such "
                                            "--read-only")
    assert "ContainerError: " in capsys.readouterr().err and "bad" not in MANAGER.names()
