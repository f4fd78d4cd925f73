"""A table with a header row, as aligned text for terminals and as HTML for notebooks."""

from __future__ import annotations

import html
from collections.abc import Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]],
               rule: bool = False) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks; with rule,
    a line of dashes under the header."""
    lines = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
           for line in lines]
    if rule:
        out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]],
               css_class: str | None = None) -> str:
    """A <table>, every cell escaped and left-aligned."""
    def cells(tag: str, row: Sequence[object]) -> str:
        return "".join(f"<{tag} style='text-align:left'>{html.escape(str(cell))}</{tag}>"
                       for cell in row)

    opening = f"<table class='{html.escape(css_class)}'>" if css_class else "<table>"
    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"{opening}<thead><tr>{cells('th', header)}</tr></thead><tbody>{body}</tbody></table>"
