"""Writes 00-tour.ipynb (kept as code so that diffs of the course stay readable)."""

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell(
        "# A tour of nsmagic\n\n"
        "A container is not a small virtual machine: it is an ordinary Linux process that the "
        "kernel shows a different world. **Namespaces** decide what it can see (its own process "
        "list, host name, network, mounts, users); **control groups** decide how much it may use "
        "(CPU, memory, processes). `nsmagic` lets you run a notebook cell inside exactly that, "
        "and look at it from both sides."
    ),
    new_code_cell("%load_ext nsmagic\n%nsmagic doctor"),
    new_markdown_cell(
        "`%nsmagic doctor` tells what this machine allows. On a laptop or a lab server run as "
        "root everything says *yes*; on hosted notebook services some lines say *no*, with the "
        "reason, and nsmagic falls back honestly.\n\n"
        "## The view from outside\nFirst, the notebook kernel's own world:"
    ),
    new_code_cell(
        "import os, socket\n"
        "host_processes = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "print('kernel pid:', os.getpid())\n"
        "print('host name:', socket.gethostname())\n"
        "print('processes visible:', len(host_processes))\n"
        "print('network interfaces:', [name for _, name in socket.if_nameindex()])"
    ),
    new_markdown_cell(
        "## The view from inside\nThe same questions, asked from a cell that runs in fresh "
        "namespaces. The cell's code becomes the child of a tiny init process, which is "
        "**pid 1** of its own pid namespace."
    ),
    new_code_cell(
        "%%container --hostname lab1\n"
        "import os, socket\n"
        "print('my pid:', os.getpid(), '- my parent:', os.getppid())\n"
        "print('host name:', socket.gethostname())\n"
        "print('processes visible:', sorted(p for p in os.listdir('/proc') if p.isdigit()))\n"
        "print('network interfaces:', [name for _, name in socket.if_nameindex()])\n"
        "print('uid inside:', os.getuid())"
    ),
    new_markdown_cell(
        "Shell cells work the same way. `ps` reads `/proc`, and inside the container `/proc` "
        "is a fresh one that only knows the container's processes:"
    ),
    new_code_cell("%%container bash --hostname shellbox\nhostname\nps -e -o pid,ppid,comm\n"
                  "echo '/tmp is private and empty:'; ls -A /tmp | wc -l"),
    new_markdown_cell(
        "## Output streams live\nA container's output reaches the notebook as it is printed, "
        "not when the cell ends:"
    ),
    new_code_cell("%%container\nimport time\nfor step in range(3):\n"
                  "    print('step', step, flush=True)\n    time.sleep(0.5)"),
    new_markdown_cell(
        "## How much does a container cost to start?\nBecause a container is just a process, "
        "starting one is about as cheap as starting a process. Let us measure 40 of them with "
        "the Python API (`nsmagic.run`) and compare with starting a fresh Python interpreter."
    ),
    new_code_cell(
        "import io, subprocess, sys, time\n"
        "import nsmagic\n"
        "from matplotlib.figure import Figure\n"
        "from IPython.display import Image, display\n\n"
        "nsmagic.run('pass')  # the first start also starts the fork server\n"
        "container_ms, python_ms = [], []\n"
        "for _ in range(40):\n"
        "    began = time.perf_counter(); nsmagic.run('pass')\n"
        "    container_ms.append((time.perf_counter() - began) * 1000)\n"
        "for _ in range(10):\n"
        "    began = time.perf_counter(); subprocess.run([sys.executable, '-c', 'pass'])\n"
        "    python_ms.append((time.perf_counter() - began) * 1000)\n\n"
        "figure = Figure(figsize=(7, 3))\n"
        "axes = figure.subplots()\n"
        "axes.hist(container_ms, bins=15, label='container (pid, uts, ipc, net, mount, cgroup "
        "namespaces)')\n"
        "axes.axvline(sorted(python_ms)[len(python_ms) // 2], color='red', "
        "label='plain `python -c pass` (median)')\n"
        "axes.set_xlabel('milliseconds to start, run `pass` and clean up')\n"
        "axes.set_ylabel('runs')\n"
        "axes.legend(fontsize=8)\n"
        "png = io.BytesIO(); figure.savefig(png, format='png', bbox_inches='tight')\n"
        "display(Image(png.getvalue()))\n"
        "print(f'median container: {sorted(container_ms)[20]:.1f} ms, '\n"
        "      f'median fresh Python: {sorted(python_ms)[5]:.1f} ms')"
    ),
    new_markdown_cell(
        "## Limits you can watch\nA control group caps what the container may use. Here "
        "half a core and 128 MiB: the plot under the cell is drawn while it runs, and stays "
        "as a picture when it ends."
    ),
    new_code_cell("%%container --plot --cpus 0.5 --memory 128M\n"
                  "import time\nblocks = []\nstarted = time.time()\n"
                  "while time.time() - started < 4:\n"
                  "    blocks.append(bytearray(2 << 20))  # 2 MiB more every pass\n"
                  "    spin = time.time()\n"
                  "    while time.time() - spin < 0.1:\n        pass\n"
                  "print(f'kept {len(blocks) * 2} MiB')"),
    new_markdown_cell(
        "## A container next to a virtual machine\nA VM boots a whole kernel. Measured here, "
        "on this machine, in the same run (when qemu is missing, nsmagic shows published "
        "figures instead and says so):"
    ),
    new_code_cell("%vm_baseline --runs 1"),
    new_markdown_cell(
        "## What next\nThe course notebooks in this folder go through each namespace in turn, "
        "then control groups (CPU, memory, process limits), and then compare containers with a "
        "virtual machine measured on this same host:\n\n"
        "1. `01-what-is-a-container.ipynb`\n2. `02-namespaces.ipynb`\n"
        "3. `03-cgroups.ipynb`\n4. `04-containers-vs-vms.ipynb`\n\n"
        "The same course in Spanish is in `es/` (generated with the English one by "
        "`build_course.py`)."
    ),
]

for number, cell in enumerate(cells):
    cell.id = f"cell-{number:02d}"  # stable ids, so a rebuild's diff shows only real changes

notebook = new_notebook(cells=cells, metadata={
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
})
nbformat.write(notebook, "00-tour.ipynb")
