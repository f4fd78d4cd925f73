"""The top-level package: its public names, and what importing it costs."""

import subprocess
import sys

import nsmagic


def test_every_public_name_resolves():
    for name in nsmagic.__all__:
        assert getattr(nsmagic, name) is not None, name


def test_an_unknown_name_is_an_attribute_error():
    try:
        nsmagic.no_such_thing  # noqa: B018
    except AttributeError as error:
        assert "no_such_thing" in str(error)
    else:
        raise AssertionError("nsmagic.no_such_thing did not raise")


def test_the_fork_server_imports_neither_the_notebook_api_nor_plotting():
    # Every module the fork server holds is mapped, and partly copied, by every container.
    code = ("import sys, nsmagic.runtime.server.loop; "
            "print(sorted(m for m in sys.modules if m in ('nsmagic.runtime.container', "
            "'nsmagic.monitor', 'nsmagic.stats', 'matplotlib', 'ipywidgets', 'IPython')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"
