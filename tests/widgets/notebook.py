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
"""

STOP = """\
dash.stop()
print("frames", dash.frames)
"""


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
