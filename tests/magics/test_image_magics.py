"""%container pull | images | rmi | image-prune | push | diff | commit and %%container build,
through a real in-process IPython shell: a progress line per layer without a front end (bars
in a notebook), a table of images, diff and commit of a named container, a Containerfile cell.

Until ContainerMagics mixes ImageCommands in, the commands are dispatched here as its
container_line will dispatch them (WORD -> _container_WORD, '-' as '_'); once it does, they
go through %container itself."""

from __future__ import annotations

import os
import shlex
import threading

import pytest
from IPython.core.error import UsageError
from IPython.core.magic import Magics, magics_class

from nsmagic import images
from nsmagic.errors import SpecError
from nsmagic.images.files import remove_any
from nsmagic.images.progress import Progress
from nsmagic.magics.container import ContainerMagics
from nsmagic.magics.images import ImageCommandError, ImageCommands, ImageTable, ProgressBars
from nsmagic.runtime.named import MANAGER

from ..images import builders
from ..images.conftest import registry  # noqa: F401 - a fixture
from ..runtime.test_image_containers import python_image  # noqa: F401 - a fixture

WIRED = issubclass(ContainerMagics, ImageCommands)


@pytest.fixture(autouse=True)
def own_store(tmp_path, monkeypatch):
    """A store of each test's own; no named container outlives a test."""
    monkeypatch.setenv("NSMAGIC_IMAGE_STORE", str(tmp_path / "store"))
    yield
    MANAGER.close_all()
    for name in os.listdir(tmp_path):
        remove_any(os.path.join(tmp_path, name))


@pytest.fixture
def magics(ipython_shell):
    """(line, cell): %container LINE and %%container LINE with CELL."""
    if WIRED:
        return (lambda line: ipython_shell.run_line_magic("container", line),
                lambda line, cell: ipython_shell.run_cell_magic("container", line, cell))
    commands = magics_class(type("Wired", (ImageCommands, Magics), {}))(ipython_shell)

    def line(text: str):  # as container_line dispatches its subcommands
        words = shlex.split(text)
        handler = getattr(commands, f"_container_{words[0].replace('-', '_')}")
        try:
            return handler(words[1:], text.split(None, 1)[1] if len(words) > 1 else "")
        except SpecError as error:
            raise UsageError(str(error)) from None

    def cell(text: str, body: str):  # as the hook at the top of ContainerMagics.container
        word, _, rest = text.partition(" ")
        assert word == "build"
        return commands._build_cell(rest, body)

    return line, cell


@pytest.fixture
def busybox(tmp_path) -> str:
    layout = str(tmp_path / "busybox")
    extra = builders.tar_of([builders.Entry("etc", "dir", mode=0o755),
                             builders.Entry("etc/second", "file", b"second\n")])
    builders.write_layout(layout, "1", [builders.busybox_layer(), extra], env=["PATH=/bin"])
    return f"oci:{layout}:1"


def test_pull_prints_a_line_per_layer_then_the_image(magics, busybox, capsys):
    line, _ = magics
    line(f"pull {busybox}")
    out = capsys.readouterr().out.splitlines()
    image = images.get(busybox)
    steps = [text.split()[:2] for text in out[:-1]]
    for layer in image.record.layers:
        assert [layer.digest[7:19], "download"] in steps and [layer.digest[7:19],
                                                              "unpack"] in steps
    assert out[-1].startswith(f"{busybox}  {image.digest}")
    line(f"pull {busybox} -q")
    assert capsys.readouterr().out == ""


def test_images_is_a_table_of_sizes_shared_unique_and_layers(magics, busybox, capsys):
    line, _ = magics
    line(f"pull {busybox} -q")
    line(f"pull {busybox.removesuffix(':1')}:1 -q")
    table = line("images")
    assert isinstance(table, ImageTable)
    text = str(table).splitlines()
    assert text[0].split() == ["IMAGE", "ID", "SIZE", "SHARED", "UNIQUE", "LAYERS", "PLATFORM"]
    row = text[1].split()
    assert row[0] == busybox and row[-2:] == ["2", "linux/amd64"]
    assert "<table" in table._repr_html_() and busybox in table._repr_html_()


def test_rmi_and_image_prune_say_what_they_removed(magics, busybox, capsys):
    line, _ = magics
    line(f"pull {busybox} -q")
    line(f"rmi {busybox}")
    removed = capsys.readouterr().out.splitlines()
    assert removed[0] == f"removed image {busybox}" and len(removed) > 3
    line("image-prune")
    assert capsys.readouterr().out == "nothing to prune\n"
    with pytest.raises(ImageCommandError, match="nothing to remove"):
        line(f"rmi {busybox}")


def test_progress_bars_fill_from_the_pulls_worker_threads():
    bars = ProgressBars(display=False)
    digests = [f"sha256:{n:064x}" for n in range(3)]

    def layer(digest: str) -> None:
        for done in range(0, 1001, 100):
            bars(Progress(digest, "download", done, 1000))

    workers = [threading.Thread(target=layer, args=(d,)) for d in digests]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    bars(Progress(digests[0], "unpack", 5, 10))
    assert len(bars.box.children) == 4  # a row per layer and step
    finished = [bars.rows[(d, "download")].children[0] for d in digests]
    assert all(bar.value == bar.max == 1000 and bar.bar_style == "success" for bar in finished)
    unpacking, label = bars.rows[(digests[0], "unpack")].children
    assert (unpacking.value, unpacking.bar_style, label.value) == (5, "", "5 B / 10 B")


def test_diff_and_commit_of_a_named_container(magics, ipython_shell, python_image,  # noqa: F811
                                               capsys):
    line, _ = magics
    ipython_shell.run_line_magic("container", f"start box --image {python_image}")
    assert ipython_shell.run_cell("%%container box\nimport os\n"
                                  "open('/note.txt', 'w').write('kept')\n"
                                  "os.remove('/usr/bin/python3.11-config') "
                                  "if os.path.exists('/usr/bin/python3.11-config') else None\n"
                                  "os.mkdir('/work')").success
    capsys.readouterr()
    line("diff box")
    changes = capsys.readouterr().out.splitlines()
    assert "A /note.txt" in changes and "A /work" in changes
    # Besides what the cell did, only the bytecode the image's python3 cached for itself.
    others = [c for c in changes if c not in ("A /note.txt", "A /work")]
    assert all(c.split()[1].startswith("/usr/lib/python3.11") or c in ("C /usr", "C /usr/lib")
               for c in others)
    assert all(c.startswith("C ") or "__pycache__" in c for c in others)
    image = line("commit box test/box:1 -c 'ENV FROM_COMMIT=1' -m 'a note' -o")
    assert capsys.readouterr().out.startswith("committed box as docker.io/test/box:1 (ID ")
    assert image.config.environment["FROM_COMMIT"] == "1"
    assert ipython_shell.run_cell("%%container --image test/box:1\nimport os\n"
                                  "print(open('/note.txt').read(), os.environ['FROM_COMMIT'])"
                                  ).success
    assert capsys.readouterr().out == "kept 1\n"


def test_diff_of_an_unknown_container_is_one_sentence(magics):
    line, _ = magics
    with pytest.raises(UsageError, match="there is no container named 'nobody-here'"):
        line("diff nobody-here")


def test_a_build_cell_streams_its_steps_and_makes_a_runnable_image(magics, ipython_shell,
                                                                   busybox, tmp_path, capsys):
    _, cell = magics
    context = tmp_path / "notebook-folder"
    context.mkdir()
    (context / "data.txt").write_text("from the notebook's folder\n")
    result = cell(f"build test/cell:1 --context {context} -o",
                  f"FROM {busybox}\nRUN echo ran in the build\nCOPY data.txt /srv/\n"
                  'CMD ["cat", "/srv/data.txt"]\n')
    out = capsys.readouterr().out
    assert "STEP 2/4: RUN echo ran in the build\nran in the build\n" in out
    assert out.endswith("Successfully tagged docker.io/test/cell:1\n")
    assert result.executed == ["RUN echo ran in the build", "COPY data.txt /srv/",
                               'CMD ["cat", "/srv/data.txt"]']
    assert ipython_shell.run_cell("%%container sh --image test/cell:1\n"
                                  "cat /srv/data.txt /etc/second").success
    assert capsys.readouterr().out == "from the notebook's folder\nsecond\n"
    again = cell(f"build test/cell:1 --context {context} -q -o",
                 f"FROM {busybox}\nRUN echo ran in the build\nCOPY data.txt /srv/\n"
                 'CMD ["cat", "/srv/data.txt"]\n')
    assert again.executed == [] and capsys.readouterr().out == again.image.id + "\n"


def test_a_failing_build_step_is_one_line_and_names_no_image(magics, busybox):
    _, cell = magics
    with pytest.raises(ImageCommandError) as raised:
        cell("build test/broken:1", f"FROM {busybox}\nRUN exit 7\n")
    assert raised.value._render_traceback_() == [
        "ImageError: step 2/2 (RUN exit 7) failed: exit status 7; the build stopped there "
        "and named no image"]
    with pytest.raises(images.ImageError, match="is not in the image store"):
        images.get("test/broken:1")
    with pytest.raises(UsageError, match="is not an instruction nsmagic builds"):
        cell("build test/broken:1", f"FROM {busybox}\nVOLUME /data\n")


def test_push_sends_an_image_to_a_registry(magics, busybox, registry, capsys):  # noqa: F811
    line, _ = magics
    line(f"pull {busybox} -q")
    destination = f"{registry.host}/test/pushed:1"
    line(f"push {busybox} {destination}")
    out = capsys.readouterr().out.splitlines()
    digest = images.get(busybox).digest
    assert out[-1] == f"pushed {destination}@{digest}"
    assert any(text.split()[1] == "upload" for text in out[:-1])


def test_bad_subcommand_arguments_are_usage_errors(magics):
    line, cell = magics
    with pytest.raises(UsageError, match="the following arguments are required: reference"):
        line("pull")
    with pytest.raises(UsageError, match="usage: %container rmi REF"):
        line("rmi")
    with pytest.raises(UsageError, match="cannot name a new image"):
        cell("build oci:/tmp/x:1", "FROM scratch\n")
