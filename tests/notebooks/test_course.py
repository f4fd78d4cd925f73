"""The course notebooks, English and Spanish, executed top to bottom on a real ipykernel.

Twice: on this host as it is (as root in the first pass of scripts/test: namespaces, cgroups,
a bridge, a VM), and inside a Binder-like sandbox (sandbox.py: uid 65534, no user namespaces,
no writable cgroupfs, no_new_privs), where every notebook must still run to its end, the
doctor must say "NOT isolated", and every cell that cannot work must say so.

The assertions read the printed outputs, so they check what a student sees.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import sys
import tempfile

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient

import nsmagic.host

from ..conftest import IS_ROOT, running_containers, wait_until

HERE = pathlib.Path(__file__).resolve().parent
NOTEBOOKS = HERE.parent.parent / "notebooks"
SANDBOX = HERE / "sandbox.py"
NAMES = ("01-what-is-a-container", "02-namespaces", "03-cgroups", "04-containers-vs-vms")
LANGUAGES = {"en": NOTEBOOKS, "es": NOTEBOOKS / "es"}
NOBODY = 65534
CELL_TIMEOUT = 240


class _OneSpec(KernelSpecManager):
    """Hands out a single python kernelspec whose argv we choose."""

    def __init__(self, argv: list[str]) -> None:
        super().__init__()
        self._argv = argv

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:  # noqa: ARG002
        return KernelSpec(argv=self._argv, display_name="nsmagic course", language="python")


class _ReadableConnectionKernelManager(AsyncKernelManager):
    """The sandboxed kernel runs as nobody: it must be able to read its connection file."""

    def write_connection_file(self, **kwargs):  # noqa: ANN003, ANN201
        result = super().write_connection_file(**kwargs)
        os.chmod(self.connection_file, 0o644)
        return result


def _kernel_argv(sandboxed: bool, home: str) -> list[str]:
    kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    if not sandboxed:
        return kernel
    return [sys.executable, str(SANDBOX), "--uid", str(NOBODY), "--home", home, "--", *kernel]


def execute(path: pathlib.Path, sandboxed: bool) -> nbformat.NotebookNode:
    """Run the notebook to its end (an error in any cell fails) and return it with outputs."""
    notebook = nbformat.read(path, as_version=4)
    workdir = tempfile.mkdtemp(prefix="nsmagic-course-")
    try:
        os.chmod(workdir, 0o755)
        if sandboxed:
            os.chown(workdir, NOBODY, NOBODY)
        manager = _ReadableConnectionKernelManager(
            kernel_spec_manager=_OneSpec(_kernel_argv(sandboxed, workdir)),
            kernel_name="python3",
            connection_file=os.path.join(workdir, "kernel.json"),
        )
        client = NotebookClient(notebook, km=manager, timeout=CELL_TIMEOUT,
                                resources={"metadata": {"path": workdir}})
        try:
            client.execute()
        finally:
            # nbclient leaves a kernel it was handed running: shut it down politely, so that
            # its fork server and containers go with it.
            if manager.has_kernel:
                run_sync(manager.shutdown_kernel)()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert wait_until(lambda: not running_containers(), 5), running_containers()
    return notebook


def text_of(notebook: nbformat.NotebookNode) -> str:
    """Everything the notebook printed or displayed as text, in order."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif output.output_type in ("display_data", "execute_result"):
                parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _assert_all(text: str, expected: list[str]) -> None:
    missing = [e for e in expected if e not in text]
    assert not missing, f"missing {missing} in the notebook's output:\n{text[-6000:]}"


def _share(text: str, label: str) -> float:
    match = re.search(re.escape(label) + r"\D*?([0-9.]+) of", text)
    assert match, f"no {label!r} figure in:\n{text[-3000:]}"
    return float(match.group(1))


# What each notebook must show on a host that gives namespaces (tier full or userns), and
# what more it must show with real cgroups and root (tier full).
ISOLATED = {
    "01-what-is-a-container": ["my pid: 2", "processes I can see: ['1', '2']", "host name: lab1",
                               "pid        pid:[", "different", "nsmagic-init",
                               "NSpid (host, container): ['"],
    "02-namespaces": ["my pid: 2 - my parent: 1", "pids: ['1', '2']", "pid 1 is nsmagic-init",
                      "inside, my pid is 2", "host name inside: lab1",
                      "inside: System V queue: ENOENT", "inside: POSIX queue: ENOENT",
                      "inside: /proc/sysvipc/msg has 0 queues",
                      "with --no-ipc: System V queue found", "with --no-ipc: POSIX queue found",
                      "inside: ['lo']", "Network is unreachable", "uid inside: 0",
                      "\nowner seen inside: 0", "inside, /tmp entries: []",
                      "inside, the notebook's file exists: False",
                      "inside, the notebook's /var/tmp file exists: False",
                      "inside, /etc/shadow: 0 bytes",
                      "outside, /tmp/written-inside.txt exists: False",
                      "refused /var/tmp/nsmagic-read-only-test.txt - Read-only file system",
                      "wrote /tmp/scratch.txt", "says: written into /etc",
                      "outside, /etc/nsmagic-overlay-demo.txt exists: False",
                      "HOST ROOT: the container sees the host's own files",
                      "with --host-root: the notebook's /var/tmp file exists: True",
                      "outside, after --host-root: the notebook's /var/tmp file exists: False"],
    # 8999995500000500000: the sum %cgroup run printed, so the command (the notebook's own
    # interpreter, its path quoted) ran in the group.
    "03-cgroups": ["holding 16 MiB", "cgroup exp1", "8999995500000500000"],
    "04-containers-vs-vms": ["10 containers started in"],
}
FULL = {
    "01-what-is-a-container": [],
    "02-namespaces": ["client got: hello from server", "notebook got: hello from server"],
    "03-cgroups": ["killed: out of memory, limit 64 MiB", "light: exit status 0",
                   "heavy: exit status 0", "fork refused after", "BlockingIOError"],
    "04-containers-vs-vms": [],
}
# In the sandbox: the host-side halves still run, every container half explains itself.
SANDBOX_EXPECTED = {
    "01-what-is-a-container": [],
    "02-namespaces": ["host: System V queue key", "host: both queues removed",
                      "(tier 'none': ROOT is False)", "outside: ['lo'"],
    "03-cgroups": ["--cpus 0.25: cpu used:", "The CPU quota (0.25 cores) is NOT enforced",
                   "how it ended: raised MemoryError", "rlimit group", "8999995500000500000"],
    "04-containers-vs-vms": [],
}


def _root_inside_outside(text: str, is_root: bool) -> None:
    """The USER cells: root inside is one uid outside, the same one the notebook sees owning
    the file root wrote in the shared folder. As root, a uid of a 65536-id range of the
    container's own that no host user has, and the notebook's private file (host uid 0, which
    has no id inside) stays unreadable; as a user, root inside is that user itself."""
    mapped = re.search(r"uid_map: \['0', '(\d+)', '(\d+)'", text)
    assert mapped, f"no uid_map line in:\n{text[-3000:]}"
    outside, count = int(mapped.group(1)), int(mapped.group(2))
    owner = re.search(r"owner seen outside: (\d+) \((.*)\)", text)
    assert owner and int(owner.group(1)) == outside, (mapped.group(0), owner and owner.group(0))
    if is_root:
        assert outside not in (0, NOBODY) and count == 65536, mapped.group(0)
        _assert_all(text, [f"owner seen outside: {outside} (no user of this host",
                           "the notebook's private file, owner seen inside: 65534",
                           "reading the notebook's private file: PermissionError"])
    else:
        assert outside == os.geteuid(), mapped.group(0)
        _assert_all(text, ["the notebook's private file, owner seen inside: 0",
                           "reading the notebook's private file: allowed"])


def _vm_figures(text: str) -> None:
    measured = re.search(r"VM: .*(emulated|KVM)", text)
    assert measured or "published, not measured" in text, text[-3000:]


COURSE = [pytest.param(lang, name, id=f"{lang}-{name}",
                       marks=[pytest.mark.vm] if name.startswith("04") else [])
          for lang in LANGUAGES for name in NAMES]


def test_every_notebook_exists_in_both_languages_with_the_same_code():
    for name in NAMES:
        english = nbformat.read(LANGUAGES["en"] / f"{name}.ipynb", as_version=4)
        spanish = nbformat.read(LANGUAGES["es"] / f"{name}.ipynb", as_version=4)
        assert [c.cell_type for c in english.cells] == [c.cell_type for c in spanish.cells]
        for ours, theirs in zip(english.cells, spanish.cells, strict=True):
            if ours.cell_type == "code":  # same code; only comments and explanations differ
                strip = lambda s: re.sub(r"#.*|'[^'\n]*'|\"[^\"\n]*\"|--.*", "", s)  # noqa: E731
                assert strip(ours.source) == strip(theirs.source), ours.source
        assert "<details>" in "".join(c.source for c in english.cells), "no exercises"


@pytest.mark.parametrize(("lang", "name"), COURSE)
def test_notebook_on_this_host(lang, name):
    report = nsmagic.host.probe()
    notebook = execute(LANGUAGES[lang] / f"{name}.ipynb", sandboxed=False)
    text = text_of(notebook)
    assert f"tier: {report.tier}" in text
    if report.tier != "none":
        _assert_all(text, ISOLATED[name])
    if report.tier == "full" and report.is_root:
        _assert_all(text, FULL[name])
    if name == "02-namespaces" and report.tier != "none":
        _root_inside_outside(text, report.is_root)
    if name == "03-cgroups" and report.tier == "full":
        quarter, half = _share(text, "--cpus 0.25: cpu used:"), _share(text, "--cpus 0.5:")
        assert 0.1 < quarter < 0.4 and 0.3 < half < 0.7, (quarter, half)
        light, heavy = _share(text, "light (weight 100):"), _share(text, "heavy (weight 400):")
        assert heavy > light, (light, heavy)
    if name.startswith("04"):
        _vm_figures(text)


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="the sandbox is entered from root (setuid to nobody)")
@pytest.mark.parametrize(("lang", "name"), COURSE)
def test_notebook_in_a_binder_like_sandbox(lang, name):
    notebook = execute(LANGUAGES[lang] / f"{name}.ipynb", sandboxed=True)
    text = text_of(notebook)
    doctor = "".join(o.get("text", "") for o in notebook.cells[2].outputs)
    _assert_all(doctor, ["NOT isolated", "tier: none", "running as: uid 65534 (not root)",
                         "user namespaces are disabled here"])
    _assert_all(text, ["tier: none | ISOLATED: False | LIMITS: False | ROOT: False",
                       "(tier 'none': ISOLATED is False)", *SANDBOX_EXPECTED[name]])
    assert not re.search(r"^my pid: 2\b", text, re.M)  # nothing pretends to be isolated
    if name.startswith("04"):
        _vm_figures(text)
