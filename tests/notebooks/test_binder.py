"""binder/ is complete: repo2docker can build an image in which every notebook's imports work.

Imports are collected with `ast` from every code cell of every notebook, including the
bodies of `%%container` and `%%when` cells (a container runs the kernel's own interpreter,
so its imports need the same packages). Each top-level module must be in the standard
library, be nsmagic itself, or come from a distribution binder/requirements.txt installs
(directly, or as a dependency of this project when it lists ".").
"""

from __future__ import annotations

import ast
import os
import pathlib
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

import nbformat
from IPython.core.inputtransformer2 import TransformerManager

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
BINDER = ROOT / "binder"
SHELL_MAGICS = {"bash", "sh", "--shell"}


def _requirement_name(line: str) -> str:
    return re.split(r"[\s<>=!~;\[@]", line, maxsplit=1)[0]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def binder_requirements() -> tuple[set[str], bool]:
    """Distributions binder/requirements.txt names, and whether it installs this project."""
    names, installs_project = set(), False
    for raw in (BINDER / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line in (".", "./", "-e .", "-e ./"):
            installs_project = True
        else:
            names.add(_normalise(_requirement_name(line)))
    return names, installs_project


def project_dependencies() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {_normalise(_requirement_name(d)) for d in data["project"]["dependencies"]}


def python_sources(source: str) -> list[str]:
    """The Python a cell runs: the cell itself, or the body under its cell magics."""
    lines = source.splitlines()
    while lines and lines[0].startswith("%%"):
        words = lines[0][2:].split(" -- ", 1)[0].split()
        if words[0] == "container" and SHELL_MAGICS & set(words[1:]):
            return []  # a shell script
        lines = lines[1:]
    return [TransformerManager().transform_cell("\n".join(lines))]


def notebook_imports() -> dict[str, set[str]]:
    """{top-level module: notebooks importing it} over notebooks/ and notebooks/es/."""
    found: dict[str, set[str]] = {}
    paths = sorted((ROOT / "notebooks").rglob("*.ipynb"))
    assert len(paths) >= 9, paths  # the tour and the course in two languages
    for path in paths:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            for code in python_sources(cell.source):
                for node in ast.walk(ast.parse(code)):
                    if isinstance(node, ast.Import):
                        modules = [alias.name for alias in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        modules = [node.module]
                    else:
                        continue
                    for module in modules:
                        found.setdefault(module.split(".")[0], set()).add(path.name)
    return found


def test_binder_folder_has_what_repo2docker_needs():
    assert (BINDER / "requirements.txt").is_file()
    names, installs_project = binder_requirements()
    assert installs_project, "binder/requirements.txt must install this repository ('.')"
    packages = [p.split("#", 1)[0].strip() for p in (BINDER / "apt.txt").read_text().splitlines()]
    packages = [p for p in packages if p]
    assert packages and all(re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", p) for p in packages), packages
    post_build = BINDER / "postBuild"
    if post_build.exists():
        assert os.access(post_build, os.X_OK) and "set -e" in post_build.read_text()
    start = BINDER / "start"
    if start.exists():
        assert os.access(start, os.X_OK) and 'exec "$@"' in start.read_text()


def test_every_notebook_import_is_installable_from_binder():
    names, installs_project = binder_requirements()
    provided = names | (project_dependencies() if installs_project else set())
    distributions = packages_distributions()
    imports = notebook_imports()
    assert {"nsmagic", "IPython", "matplotlib"} <= set(imports), sorted(imports)
    missing = {}
    for module, notebooks in sorted(imports.items()):
        if module in sys.stdlib_module_names or module == "nsmagic":
            continue
        owners = {_normalise(d) for d in distributions.get(module, [])}
        if not owners & provided:
            missing[module] = (sorted(owners), sorted(notebooks))
    assert not missing, f"imports binder/ does not install (module: distributions, notebooks): " \
                        f"{missing}"
