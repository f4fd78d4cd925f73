"""Execute a notebook on a real Jupyter kernel and save it with its outputs, as .ipynb and HTML."""

from __future__ import annotations

import argparse
import pathlib
import sys

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebook", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out"))
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args()
    notebook = nbformat.read(args.notebook, as_version=4)
    client = NotebookClient(notebook, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(args.notebook.parent)}})
    client.execute()
    args.out.mkdir(parents=True, exist_ok=True)
    executed = args.out / args.notebook.name
    nbformat.write(notebook, executed)
    html, _ = HTMLExporter().from_notebook_node(notebook)
    page = executed.with_suffix(".html")
    page.write_text(html)
    print(f"executed {args.notebook} -> {executed} and {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
