"""Tables: aligned text for terminals, escaped HTML for notebooks."""

from nsmagic.tables import html_table, text_table


def test_columns_are_as_wide_as_their_widest_cell_without_trailing_blanks():
    text = text_table(["name", "memory"], [["web", "12 MiB"], ["a-longer-name", 3]])
    assert text.split("\n") == ["name           memory",
                                "web            12 MiB",
                                "a-longer-name  3"]


def test_a_rule_can_underline_the_header():
    assert text_table(["a", "bb"], [["1", "2"]], rule=True).split("\n")[1] == "-  --"


def test_html_cells_are_escaped_and_the_class_is_optional():
    table = html_table(["<b>"], [["x & y"]], css_class="nsmagic-cgroups")
    assert table.startswith("<table class='nsmagic-cgroups'><thead>")
    assert "&lt;b&gt;" in table and "x &amp; y" in table and "<b>" not in table
    assert html_table(["a"], []).startswith("<table><thead>")
