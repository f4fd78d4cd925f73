"""The layers of docs/architecture.md, checked: no import circle, code that runs inside a
container never loads the fork server's code or IPython, the runtime knows nothing of
notebooks, the lower layers import nothing from above them, and the C init says the events
under protocol.py's names."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

from nsmagic.runtime.protocol import Event

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "nsmagic"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(module: str) -> set[str]:
    """Every module of ours that module imports, at any depth of its code (an import inside
    a function is an import too), except those only a type checker sees."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module is None:
                return
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)

    Visitor().visit(ast.parse(MODULES[module].read_text()))
    return {name for name in found if name != module}


def test_no_module_of_nsmagic_is_part_of_an_import_circle():
    graph = {m: {d for d in imports_of(m) if d in MODULES} for m in MODULES}
    circles = []
    for start in graph:
        # Depth-first from each module: a path back to it is a circle.
        stack = [(start, [start])]
        seen = set()
        while stack:
            module, path = stack.pop()
            for dependency in graph[module]:
                if dependency == start:
                    circles.append(" -> ".join([*path, start]))
                elif dependency not in seen:
                    seen.add(dependency)
                    stack.append((dependency, [*path, dependency]))
    assert not circles, circles[:3]


INSIDE_MODULES = sorted(m for m in MODULES if m.startswith("nsmagic.runtime.inside"))


@pytest.mark.parametrize("module", INSIDE_MODULES)
def test_code_that_runs_inside_a_container_loads_no_server_or_notebook_code(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m.startswith(("
            "'nsmagic.runtime.server', 'nsmagic.runtime.container', 'nsmagic.runtime.named', "
            "'nsmagic.runtime.launcher', 'nsmagic.magics', 'nsmagic.widgets', 'IPython', "
            "'ipywidgets', 'matplotlib'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"


def _top_level_imports(prefix: str) -> dict[str, set[str]]:
    return {m: imports_of(m) for m in MODULES if m == prefix or m.startswith(prefix + ".")}


def test_the_runtime_imports_neither_ipython_nor_widgets():
    offending = {m: sorted(d for d in deps if d.split(".")[0] in ("IPython", "ipywidgets")
                           or d.startswith(("nsmagic.magics", "nsmagic.widgets")))
                 for m, deps in _top_level_imports("nsmagic.runtime").items()}
    assert not {m: d for m, d in offending.items() if d}


@pytest.mark.parametrize("layer", ["nsmagic.isolation", "nsmagic.cgroups"])
def test_the_lower_layers_import_nothing_from_above_them(layer):
    allowed = (layer, "nsmagic.errors", "nsmagic.cgroups.limits", "nsmagic.isolation.syscalls")
    offending = {m: sorted(d for d in deps if d.startswith("nsmagic")
                           and not d.startswith(allowed) and d != "nsmagic")
                 for m, deps in _top_level_imports(layer).items()}
    assert not {m: d for m, d in offending.items() if d}


def test_inside_code_never_imports_the_fork_servers_code():
    offending = {m: sorted(d for d in imports_of(m) if d.startswith("nsmagic.runtime.server"))
                 for m in INSIDE_MODULES}
    assert not {m: d for m, d in offending.items() if d}


def test_the_c_init_names_its_event_as_the_protocol_does():
    source = (PACKAGE / "native" / "nsmagic-init.c").read_text()
    assert f'#define EVENT_PAYLOAD_EXITED "{Event.PAYLOAD_EXITED}"' in source
