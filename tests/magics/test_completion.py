"""Tab completion of our magics through the shell's own completer, as Jupyter asks it (the
whole cell and the cursor's offset): options, subcommands and names, never Python's builtins."""

from __future__ import annotations

import pytest
from IPython.core.completer import provisionalcompleter

from nsmagic.magics.completion import candidates
from nsmagic.runtime.named import MANAGER


@pytest.fixture(autouse=True)
def no_named_containers_left():
    yield
    MANAGER.close_all()


def completions(shell, cell: str, line: int = 0) -> list[str]:  # noqa: ANN001
    """What Tab offers at the end of that line of the cell."""
    lines = cell.split("\n")
    offset = sum(len(text) + 1 for text in lines[:line]) + len(lines[line])
    with provisionalcompleter():
        return [c.text for c in shell.Completer.completions(cell, offset)]


def test_options_of_a_container_cell(ipython_shell):
    assert completions(ipython_shell, "%%container --me\nprint(1)") == [
        "--memory", "--memory-swap"]
    assert completions(ipython_shell, "%%container --hostname lab --no-u") == [
        "--no-uts", "--no-userns"]
    # The cell's body is Python again.
    assert "print" in completions(ipython_shell, "%%container --me\nprin", line=1)


def test_subcommands_of_container_and_cgroup(ipython_shell):
    assert completions(ipython_shell, "%container st") == ["start", "stats", "stop"]
    assert completions(ipython_shell, "%cgroup r") == ["rm", "run"]
    assert completions(ipython_shell, "%cgroup create exp1 --mem") == [
        "--memory", "--memory-swap"]


def test_container_names_where_a_name_goes(ipython_shell):
    ipython_shell.run_line_magic("container", "start web")
    ipython_shell.run_line_magic("container", "start gone")
    ipython_shell.run_line_magic("container", "stop gone")
    assert completions(ipython_shell, "%container stop ") == ["web"]  # the running ones
    assert completions(ipython_shell, "%container rm ") == ["web", "gone"]
    assert completions(ipython_shell, "%%container ") == ["web", "bash", "sh"]
    assert completions(ipython_shell, "%%container w") == ["web"]
    assert completions(ipython_shell, "%%container web ") == ["bash", "sh"]
    assert completions(ipython_shell, "%%container --net container:w") == ["container:web"]


def test_values_of_options(ipython_shell):
    ipython_shell.user_ns["dataset"] = [1, 2]
    assert completions(ipython_shell, "%%container --net ") == ["none", "bridge", "host"]
    assert completions(ipython_shell, "%%container --in data") == ["dataset"]
    assert completions(ipython_shell, "%%container --security-opt s") == [
        "seccomp=unconfined", "seccomp=default"]


def test_start_offers_a_containers_options_not_a_cells(ipython_shell):
    offered = completions(ipython_shell, "%container start web --")
    assert "--memory" in offered and "--cgroup" in offered and "--quiet" in offered
    assert not {"--bg", "--in", "--out", "--plot", "--timeout", "--name"} & set(offered)


def test_a_line_magic_on_a_later_line_completes_too(ipython_shell):
    assert completions(ipython_shell, "x = 1\n%container l", line=1) == ["ls", "logs"]


def test_the_completer_outside_our_magics_is_untouched():
    assert candidates("print(") is None and candidates("%%container") is None
    assert candidates("%timeit --") is None


def test_unloading_takes_the_completion_away(ipython_shell):
    ipython_shell.run_line_magic("unload_ext", "nsmagic")
    try:
        assert completions(ipython_shell, "%container st") == []
    finally:
        ipython_shell.run_line_magic("load_ext", "nsmagic")
    assert completions(ipython_shell, "%container st") == ["start", "stats", "stop"]


def test_a_subcommand_a_mixin_adds_is_served_and_offered(ipython_shell):
    from nsmagic.magics.container import ContainerMagics, subcommands

    class WithMore(ContainerMagics):
        def _container_frob_nicate(self, rest: list[str], text: str) -> str:
            return "done"

    assert "frob-nicate" in subcommands(WithMore)
    assert WithMore(ipython_shell).container_line("frob-nicate") == "done"
    assert "frob-nicate" not in subcommands(ContainerMagics)
