"""The image commands: a line per layer, a measured table, one line on stderr for an error."""

from __future__ import annotations

import io

from nsmagic.images.cli import human, main


def test_pull_images_and_rmi_from_the_command_line(busybox_layout, capsys):
    out = io.StringIO()
    assert main(["pull", f"oci:{busybox_layout}:2"], out) == 0
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines[:-1]].count("download") == 2
    assert lines[-1].startswith(f"oci:{busybox_layout}:2  sha256:")
    out = io.StringIO()
    assert main(["images"], out) == 0
    header, row = out.getvalue().splitlines()
    assert header.split() == ["IMAGE", "ID", "SIZE", "SHARED", "UNIQUE", "LAYERS", "PLATFORM"]
    assert row.split()[0] == f"oci:{busybox_layout}:2" and row.split()[-2:] == ["2",
                                                                                "linux/amd64"]
    out = io.StringIO()
    assert main(["rmi", f"oci:{busybox_layout}:2"], out) == 0
    assert out.getvalue().count("removed layer") == 2
    out = io.StringIO()
    assert main(["images"], out) == 0
    assert out.getvalue() == "no images: pull one with nsmagic pull REF\n"


def test_a_bad_reference_is_one_line_on_stderr_and_status_1(capsys):
    assert main(["pull", "oci-archive:/tmp/x.tar"], io.StringIO()) == 1
    error = capsys.readouterr().err
    assert error.startswith("nsmagic: unknown transport 'oci-archive' in image reference")
    assert error.count("\n") == 1


def test_sizes_print_in_decimal_units_as_docker_images_does():
    assert [human(n) for n in (512, 1500, 43_300_000, 2_000_000_000)] == \
        ["512 B", "1.5 kB", "43.3 MB", "2.0 GB"]
