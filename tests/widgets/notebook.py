"""The demo notebook the kernel and browser tests run: a dashboard and two containers under
different CPU quotas, run in background threads so the cells return while they work."""

from __future__ import annotations

import nbformat

SETUP = """\
%load_ext nsmagic
import threading, time
import nsmagic
from nsmagic.widgets import show_dashboard
dash = show_dashboard(fps={fps}, window=60, rate=10, title="nsmagic dashboard test")
"""

START = """\
BUSY = \"\"\"
import time
t, x = time.monotonic(), []
while (elapsed := time.monotonic() - t) < {seconds}:
    if len(x) < elapsed * 800:  # about 16 MB a second
        x.append(bytearray(20000))
\"\"\"
results = {{}}
def run(name, cpus):
    results[name] = nsmagic.run(BUSY, cpus=cpus, memory="256M", name=name)
workers = [threading.Thread(target=run, args=(f"quota-{{c}}", c)) for c in (0.25, 0.5)]
for w in workers:
    w.start()
"""

WAIT = """\
for w in workers:
    w.join()
time.sleep({linger})
print({{k: r.describe() for k, r in sorted(results.items())}})
open("container.pids", "w").write(" ".join(str(r.pid) for r in results.values()))
"""

STOP = """\
dash.stop()
print("frames", dash.frames)
"""


def gone(pid: int) -> bool:
    """True when no live process has this pid (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def containers_gone(folder) -> bool:  # noqa: ANN001 - a pathlib.Path
    """The containers' pid 1s the notebook wrote to folder/container.pids have all ended."""
    pids = [int(p) for p in (folder / "container.pids").read_text().split()]
    return bool(pids) and all(gone(pid) for pid in pids)


def dashboard_notebook(seconds: float = 4.0, fps: float = 4.0, linger: float = 1.0,
                       stop: bool = True) -> nbformat.NotebookNode:
    """Cells: load + dashboard, start two containers, wait for them, stop the dashboard."""
    cells = [SETUP.format(fps=fps), START.format(seconds=seconds), WAIT.format(linger=linger)]
    if stop:
        cells.append(STOP)
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    return notebook
