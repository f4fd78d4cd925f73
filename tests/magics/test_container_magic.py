"""%%container and %nsmagic through a real in-process IPython shell."""

from __future__ import annotations

import re
import time

import pytest
from IPython.core.error import UsageError

from nsmagic.magics import ContainerError
from nsmagic.magics.container import ContainerInterrupted
from nsmagic.runtime.registry import REGISTRY

from ..conftest import running_containers, wait_until
from .interrupting import interrupt_after


def run_cell(shell, source):
    result = shell.run_cell(source)
    return result


def test_a_python_cell_runs_isolated_and_prints(ipython_shell, capsys):
    result = run_cell(ipython_shell, "%%container --hostname lab1\nimport os, socket\n"
                                     "print(os.getpid(), socket.gethostname())\n")
    assert result.success
    assert capsys.readouterr().out == "2 lab1\n"


def test_bash_and_shell_cells(ipython_shell, capsys):
    assert run_cell(ipython_shell, "%%container bash\necho $((6*7)) $(hostname)").success
    assert run_cell(ipython_shell, "%%container --shell --hostname s1\nhostname").success
    assert capsys.readouterr().out.split()[0::2] == ["42", "s1"]


def test_an_exception_fails_the_cell_with_the_containers_traceback(ipython_shell, capsys):
    result = run_cell(ipython_shell, "%%container\nx = 1\nraise ValueError('bad value')\n")
    assert not result.success
    assert isinstance(result.error_in_exec, ContainerError)
    shown = capsys.readouterr()
    text = shown.out + shown.err
    assert "ValueError: bad value" in text
    assert "line 3" in text  # the cell's own line numbering (line 1 is %%container)
    assert "nsmagic/" not in text


def test_a_non_zero_exit_status_fails_the_cell_unless_no_raise(ipython_shell, capsys):
    result = run_cell(ipython_shell, "%%container bash\nexit 3")
    assert not result.success and "exit status 3" in str(result.error_in_exec)
    result = run_cell(ipython_shell, "%%container --no-raise bash\nexit 3")
    assert result.success
    assert "exit status 3" in capsys.readouterr().err


def test_dash_o_returns_the_result_object(ipython_shell):
    result = run_cell(ipython_shell, "%%container -o\nprint('x')")
    assert result.result.stdout == "x\n" and result.result.ok
    assert "exit status 0" in repr(result.result) or "ContainerResult" in repr(result.result)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--memory 12Q", "--memory must be a size such as 512K, 256M, 1.5G, 1GiB or plain bytes"),
        ("--cpus -1", "--cpus must be a number of cores above 0"),
        ("--pids many", "--pids must be a whole number"),
        ("--hostname bad_host!", "is not a valid host name"),
        ("--no-uts --hostname x", "--hostname needs a private UTS namespace"),
        ("--bogus", "unrecognized arguments: --bogus"),
        ("python3", "%%container does not know 'python3'"),
        ("--env NOT-A-NAME=1", "--env takes KEY=VALUE or KEY"),
        ("--userns --no-userns", "contradict"),
    ],
)
def test_bad_options_give_one_clear_usage_error_and_start_nothing(ipython_shell, line, message):
    before = {r.container_id for r in REGISTRY.records(include_exited=True)}
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        ipython_shell.run_cell_magic("container", line, "print('never')")
    assert {r.container_id for r in REGISTRY.records(include_exited=True)} == before


def test_line_variables_are_expanded(ipython_shell, capsys):
    ipython_shell.user_ns["box_name"] = "expanded"
    assert run_cell(ipython_shell, "%%container --hostname {box_name}\n"
                                   "import socket; print(socket.gethostname())").success
    assert capsys.readouterr().out == "expanded\n"


def test_config_gives_defaults(ipython_shell, capsys):
    ipython_shell.run_line_magic("config", "ContainerMagics.pids = 'bad'")
    try:
        with pytest.raises(UsageError, match="--pids"):
            ipython_shell.run_cell_magic("container", "", "pass")
    finally:
        ipython_shell.run_line_magic("config", "ContainerMagics.pids = None")


def test_ctrl_c_interrupts_the_cell_and_kills_the_container(ipython_shell, capsys):
    began = time.monotonic()
    with interrupt_after(0.6):
        result = run_cell(ipython_shell, "%%container\nimport time\nwhile True: time.sleep(0.1)")
    assert isinstance(result.error_in_exec, KeyboardInterrupt)  # Run All stops here
    assert time.monotonic() - began < 0.6 + 1.0
    assert wait_until(lambda: not running_containers(), 3)
    # One line, as IPython's own magics say it, not a traceback through nsmagic.
    shown = capsys.readouterr()
    assert re.fullmatch(r"interrupted: container stopped after 0\.\d s\n", shown.out + shown.err)


def test_ctrl_c_of_a_shell_cell_and_of_the_magic_itself_is_one_line_too(ipython_shell):
    with interrupt_after(0.3), pytest.raises(ContainerInterrupted) as interrupted:
        ipython_shell.run_cell_magic("container", "bash", "sleep 30")
    assert isinstance(interrupted.value, KeyboardInterrupt)
    lines = interrupted.value._render_traceback_()
    assert len(lines) == 1 and re.fullmatch(r"interrupted: container stopped after 0\.\d s",
                                            lines[0])


def test_doctor_reports_every_capability(ipython_shell, capsys):
    ipython_shell.run_line_magic("nsmagic", "doctor")
    out = capsys.readouterr().out
    for expected in ("tier:", "pid namespace", "user namespace", "fresh /proc", "cgroups",
                     "KVM", "nsmagic-init"):
        assert expected in out


def test_unknown_nsmagic_subcommand(ipython_shell):
    with pytest.raises(UsageError, match="try %nsmagic doctor"):
        ipython_shell.run_line_magic("nsmagic", "docter")


def test_help_is_available(ipython_shell):
    doc = ipython_shell.find_cell_magic("container").__doc__
    assert "--memory" in doc and "--hostname" in doc and "--no-net" in doc
    assert doc.lstrip(": \n").startswith("%%container [")  # the cell magic's own name


def test_notes_are_plain_output_and_warnings_go_to_stderr(ipython_shell, capsys, tmp_path):
    # Jupyter shows stderr pink, as an error: what nsmagic did is plain output...
    assert run_cell(ipython_shell, "%%container --bg --name quietly\npass").success
    shown = capsys.readouterr()
    assert "nsmagic: running in the background as 'quietly'" in shown.out
    assert shown.err == ""
    ipython_shell.run_line_magic("container", "wait quietly")
    ipython_shell.run_line_magic("container", "rm quietly")
    assert run_cell(ipython_shell, f"%%container --export-oci {tmp_path / 'b'}\npass").success
    shown = capsys.readouterr()
    assert "nsmagic: wrote an OCI bundle to" in shown.out and shown.err == ""
    # ...and a container less isolated than a default one is a warning, loud and on stderr.
    for line, label in (("--privileged", "PRIVILEGED"), ("--host-root", "HOST ROOT"),
                        ("--security-opt seccomp=unconfined", "NO SECCOMP")):
        assert run_cell(ipython_shell, f"%%container {line}\npass").success
        shown = capsys.readouterr()
        assert f"nsmagic: {label}" in shown.err and label not in shown.out
