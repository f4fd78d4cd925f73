"""The value table, live (HTML) and final (HTML and text): peak, throttling and OOM kills."""

from __future__ import annotations

from nsmagic.monitor import COLUMNS, SeriesSnapshot
from nsmagic.widgets.table import EMPTY, table_html, table_text, values

MIB = 1024 * 1024


def ended_after_an_oom_kill() -> SeriesSnapshot:
    columns = {c: (None, None) for c in COLUMNS}
    columns.update(time=(1.0, 2.0), cpu_percent=(None, 49.6), cpu_limit_percent=(None, 99.2),
                   memory_current=(30 * MIB, 47 * MIB), memory_peak=(30 * MIB, 48 * MIB),
                   throttled_periods=(0, 7), oom_kills=(0, 1))
    events = ({"time": 1.0, "elapsed": 0.0, "kind": "start", "detail": ""},
              {"time": 2.0, "elapsed": 1.0, "kind": "oom", "detail": "1 process(es) killed"})
    return SeriesSnapshot("ab" * 16, "web", "web", 0.5, 48 * MIB, 1.0, 2.5, "exited",
                          "killed: out of memory", "cgroup v1", columns, events)


def test_a_row_says_state_cpu_memory_throttling_and_oom_kills():
    assert values(ended_after_an_oom_kill()) == (
        "web", "exited: killed: out of memory", "50", "99", "47 MiB", "48 MiB", "48 MiB", "7",
        "1")


def test_the_text_form_has_the_same_columns_as_the_html_one():
    item = ended_after_an_oom_kill()
    text, page = table_text([item]), table_html([item], {item.container_id: "#1f77b4"})
    header = text.splitlines()[0]
    for name in ("peak", "throttled", "OOM kills"):
        assert name in header and f">{name}<" in page
    assert "killed: out of memory" in text and "#1f77b4" in page


def test_an_empty_table_says_how_to_fill_it():
    assert table_text([]) == EMPTY and "%%container" in table_html([], {})
