"""The dashboard's table of current values, as HTML (live and final) and as aligned text.

One row per container: state, CPU (of one core and of its limit), memory (current, peak,
limit), throttled CFS periods and OOM kills. The final, static form of a dashboard or a live
plot keeps this table, so a notebook viewed without widgets still shows peak, throttling and
OOM kills.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from nsmagic.cgroups.limits import format_size
from nsmagic.monitor import SeriesSnapshot
from nsmagic.tables import text_table

HEADER = ("container", "state", "CPU % core", "% of limit", "memory", "peak", "limit",
          "throttled", "OOM kills")
EMPTY = "no container yet: start one with %%container or nsmagic.run()"
CELL = 'style="padding:1px 8px"'


def values(item: SeriesSnapshot) -> tuple[str, ...]:
    """The cells of one container's row (as HEADER), as text."""
    cpu, of_limit = item.last("cpu_percent"), item.last("cpu_limit_percent")
    throttled = sum(v for v in item.columns["throttled_periods"] if v)
    kills = item.last("oom_kills") or sum(1 for e in item.events if e["kind"] == "oom")
    state = item.state if item.state != "exited" else f"exited: {item.outcome or ''}"
    return (item.label, state, "" if cpu is None else f"{cpu:.0f}",
            "" if of_limit is None else f"{of_limit:.0f}", _size(item.last("memory_current")),
            _size(item.last("memory_peak")), _size(item.memory_limit), str(throttled),
            str(kills))


def table_html(series: Sequence[SeriesSnapshot], colours: dict[str, str]) -> str:
    """The table as HTML, a square of each container's colour in front of its row."""
    head = "<tr>" + "".join(f"<th {CELL}>{h}</th>" for h in ("", *HEADER)) + "</tr>"
    rows = []
    for item in series:
        colour = html.escape(colours.get(item.container_id, "#777"))
        swatch = f'<span style="color:{colour};font-size:16px">&#9632;</span>'
        cells = [swatch, *(html.escape(cell) for cell in values(item))]
        rows.append("<tr>" + "".join(f"<td {CELL}>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        rows.append(f'<tr><td colspan="{len(HEADER) + 1}"><i>{html.escape(EMPTY)}</i></td></tr>')
    return ('<table class="nsmagic-dashboard-table" style="font-size:12px;'
            'border-collapse:collapse">' + head + "".join(rows) + "</table>")


def table_text(series: Sequence[SeriesSnapshot]) -> str:
    """The table as aligned text (a notebook's text/plain, a terminal)."""
    if not series:
        return EMPTY
    return text_table(HEADER, [values(item) for item in series], rule=True)


def _size(value: int | None) -> str:
    return "" if value is None else format_size(int(value))


__all__ = ["HEADER", "table_html", "table_text", "values"]
