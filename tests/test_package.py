"""The top-level package: its public names, what importing it costs, and how it installs."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import nsmagic

REPO = Path(__file__).resolve().parent.parent
# What building the package reads (setup.py compiles nsmagic-init from nsmagic/native/).
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "LICENSE")
# What setuptools and pip print about a project whose build uses something on its way out
# (and, for editable installs, setuptools' notices about import hooks).
DEPRECATED = re.compile(r"deprecat|BuildBackendWarning|SetuptoolsWarning", re.IGNORECASE)


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


# -- installing ------------------------------------------------------------------------------
@pytest.fixture
def source(tmp_path: Path) -> Path:
    """The project's build inputs, copied: a build writes into its source folder, which
    'nobody' may not write, and whose nsmagic-init running containers may be executing."""
    tree = tmp_path / "source"
    tree.mkdir()
    for name in BUILD_INPUTS:
        shutil.copy(REPO / name, tree / name)
    # Without the built program, so that finding one after a build proves the build made it;
    # with the benchmark beside the package, as in a checkout, where the build must leave it.
    for package in ("nsmagic", "nsmagic_bench"):
        shutil.copytree(REPO / package, tree / package,
                        ignore=shutil.ignore_patterns("__pycache__", "nsmagic-init"))
    return tree


def pip(*args: str, env: dict[str, str] | None = None) -> str:
    """Run pip (with PyPI for the build dependencies); its whole output, stdout and stderr."""
    completed = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True,
                               text=True, timeout=600, env=env, check=False)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    return output


def deprecation_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if DEPRECATED.search(line)]


def has_c_compiler() -> bool:
    return shutil.which(os.environ.get("CC", "cc")) is not None


def test_building_a_wheel_prints_no_deprecation_and_the_wheel_holds_nsmagic_init(
        source: Path, tmp_path: Path):
    output = pip("wheel", "--no-deps", "--wheel-dir", str(tmp_path / "dist"), str(source))
    assert deprecation_lines(output) == []
    [wheel] = (tmp_path / "dist").glob("nsmagic-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "nsmagic/native/nsmagic-init.c" in names
    if has_c_compiler():
        assert "nsmagic/native/nsmagic-init" in names


def test_the_wheel_holds_the_package_and_no_developer_tooling(source: Path, tmp_path: Path):
    pip("wheel", "--no-deps", "--wheel-dir", str(tmp_path / "dist"), str(source))
    [wheel] = (tmp_path / "dist").glob("nsmagic-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"nsmagic"}
    # The benchmark and the OCI schemas (used by tests only) stay in the checkout.
    assert not [name for name in names if "bench" in name or "schema" in name]


def test_an_editable_install_prints_no_deprecation_and_builds_nsmagic_init_in_place(
        source: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    output = pip("--python", str(python), "install", "--no-deps", "--editable", str(source))
    assert deprecation_lines(output) == []
    if has_c_compiler():
        assert os.access(source / "nsmagic" / "native" / "nsmagic-init", os.X_OK)
    # Imported from the source folder by any Python of the venv, even one that ignores
    # PYTHONPATH and the current folder (-I), as the helpers and the rootless tests need.
    imported = subprocess.run([str(python), "-I", "-c", "import nsmagic; print(nsmagic.__file__)"],
                              cwd="/", capture_output=True, text=True, check=True).stdout
    assert Path(imported.strip()) == source / "nsmagic" / "__init__.py"


def test_without_a_c_compiler_the_wheel_still_builds_and_says_pid_1_stays_python(
        source: Path, tmp_path: Path):
    env = dict(os.environ, CC="no-such-c-compiler")
    output = pip("wheel", "--verbose", "--no-deps", "--wheel-dir", str(tmp_path / "dist"),
                 str(source), env=env)
    assert "pid 1 stays a Python process" in output
    [wheel] = (tmp_path / "dist").glob("nsmagic-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "nsmagic/native/nsmagic-init" not in names
    assert "nsmagic/__init__.py" in names
