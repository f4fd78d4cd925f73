"""%%container build's engine: a Containerfile built into an image of the store. Steps are
cached as Docker's are (a second build runs nothing; a changed instruction or copied file
rebuilds from there on), COPY takes only the build context's files, a failing RUN names its
step and names no image, and what is built runs with nsmagic and with podman alike."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest

import nsmagic
from nsmagic import images
from nsmagic.errors import SpecError
from nsmagic.images import runstep
from nsmagic.images.build import BuildError, build
from nsmagic.images.containerfile import parse, words
from nsmagic.images.store import Store
from tests.conftest import IS_ROOT, wait_until

from . import builders
from .conftest import tool
from .test_interop import podman, podman_dir  # noqa: F401 - a fixture


@pytest.fixture
def busybox(tmp_path) -> str:
    layout = str(tmp_path / "busybox")
    builders.write_layout(layout, "1", [builders.busybox_layer()], env=["PATH=/bin:/sbin"])
    return f"oci:{layout}:1"


@pytest.fixture
def context(tmp_path) -> str:
    """A build context: app.txt, conf/a.conf and conf/b.conf (and a link inside)."""
    root = tmp_path / "context"
    (root / "conf").mkdir(parents=True)
    (root / "app.txt").write_text("app 1\n")
    (root / "conf" / "a.conf").write_text("a\n")
    (root / "conf" / "b.conf").write_text("b\n")
    os.symlink("a.conf", root / "conf" / "link")
    return str(root)


class Counting:
    """The RUN runner, counting the RUNs it executed."""

    def __init__(self) -> None:
        self.ran: list[list[str]] = []

    def __call__(self, store, image, argv, output, label, options):  # noqa: ANN001
        self.ran.append(argv)
        return runstep.run(store, image, argv, output, label, options)


def containerfile(base: str, run: str = "echo built $GREETING > /built") -> str:
    return f"""# a small image
FROM {base}
ENV GREETING=hello \\
    PLACE="the lab"
RUN {run}
WORKDIR /app
COPY app.txt conf ./
LABEL org.example.course=nsmagic
ENTRYPOINT ["/bin/cat"]
CMD ["/built", "app.txt", "a.conf"]
"""


def test_a_built_image_runs_with_nsmagic_its_entrypoint_cmd_env_and_workdir(busybox,
                                                                           context):
    output = []
    result = build(containerfile(busybox), "test/built:1", context=context,
                   output=lambda stream, text: output.append(text))
    assert result.image.name == "docker.io/test/built:1"
    assert [step.cached for step in result.steps[1:]] == [False] * 7
    shown = "".join(output)
    assert "STEP 3/8: RUN echo built $GREETING > /built" in shown
    assert "Successfully tagged docker.io/test/built:1" in shown
    ran = subprocess.run([sys.executable, "-m", "nsmagic", "run", "--image", "test/built:1"],
                         capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stdout) == (0, "built hello\napp 1\na\n"), ran.stderr
    inside = nsmagic.run("pwd; ls; readlink link; echo $PLACE", kind="shell",
                         image="test/built:1")
    assert inside.stdout.split("\n")[:-1] == ["/app", "a.conf", "app.txt", "b.conf", "link",
                                              "a.conf", "the lab"]
    config = result.image.config
    assert config.labels == {"org.example.course": "nsmagic"}
    assert config.working_dir == "/app"
    assert len(result.image.record.layers) == 4  # busybox, RUN, WORKDIR's /app, COPY


def test_run_streams_its_output_as_it_comes(busybox, context):
    seen = []

    def output(stream, text):  # noqa: ANN001
        seen.append((stream, text, time.monotonic()))

    build(f"FROM {busybox}\nRUN echo first; sleep 1; echo second >&2\n", "test/stream:1",
          context=context, output=output)
    first = next(t for s, text, t in seen if "first" in text and s == "stdout")
    second = next(t for s, text, t in seen if "second" in text and s == "stderr")
    assert second - first > 0.5  # the first line arrived before the command ended


def test_a_second_build_executes_nothing_and_gives_the_same_image(busybox, context):
    first = build(containerfile(busybox), "test/cached:1", context=context)
    runner = Counting()
    second = build(containerfile(busybox), "test/cached:1", context=context, runner=runner)
    assert runner.ran == [] and second.executed == []
    assert second.image.id == first.image.id


def test_a_changed_instruction_rebuilds_from_that_step_on(busybox, context):
    build(containerfile(busybox), "test/cached:2", context=context)
    runner = Counting()
    again = build(containerfile(busybox, run="echo changed > /built"), "test/cached:2",
                  context=context, runner=runner)
    assert again.executed[0] == "RUN echo changed > /built" and len(again.executed) == 6
    assert runner.ran == [["/bin/sh", "-c", "echo changed > /built"]]


def test_a_changed_copied_file_rebuilds_from_the_copy_on_not_before(busybox, context):
    build(containerfile(busybox), "test/cached:3", context=context)
    with open(os.path.join(context, "conf", "b.conf"), "w") as handle:
        handle.write("b, changed\n")
    runner = Counting()
    again = build(containerfile(busybox), "test/cached:3", context=context, runner=runner)
    assert runner.ran == []  # the RUN before the COPY came from the cache
    assert again.executed == ["COPY app.txt conf ./", "LABEL org.example.course=nsmagic",
                              'ENTRYPOINT ["/bin/cat"]', 'CMD ["/built", "app.txt", "a.conf"]']
    changed = nsmagic.run("cat b.conf", kind="shell", image="test/cached:3")
    assert changed.stdout == "b, changed\n"


def test_no_cache_executes_every_step(busybox, context):
    build(containerfile(busybox), "test/cached:4", context=context)
    runner = Counting()
    build(containerfile(busybox), "test/cached:4", context=context, no_cache=True,
          runner=runner)
    assert len(runner.ran) == 1


def test_a_failing_run_names_its_step_and_leaves_no_image(busybox, context):
    store = Store()
    before = {record.name for record in store.records()}
    with pytest.raises(BuildError) as raised:
        build(f"FROM {busybox}\nENV A=1\nRUN echo about to fail; exit 3\nCMD [\"true\"]\n",
              "test/failed:1", context=context)
    assert str(raised.value) == ("step 3/4 (RUN echo about to fail; exit 3) failed: exit "
                                 "status 3; the build stopped there and named no image")
    names = {record.name for record in store.records()}
    assert names - before <= {busybox}  # FROM's image was pulled, nothing else named
    assert not os.listdir(store.path("containers"))  # no writable layer left


def test_copy_takes_only_files_of_the_build_context(busybox, context, tmp_path):
    (tmp_path / "secret").write_text("outside\n")
    os.symlink(str(tmp_path / "secret"), os.path.join(context, "sneaky"))
    with pytest.raises(SpecError, match="leads outside the build context"):
        build(f"FROM {busybox}\nCOPY ../secret /\n", "test/copy:1", context=context)
    with pytest.raises(SpecError, match="leads outside the build context"):
        build(f"FROM {busybox}\nCOPY sneaky /\n", "test/copy:1", context=context)
    with pytest.raises(SpecError, match="'missing.txt', which is not in the build context"):
        build(f"FROM {busybox}\nCOPY missing.txt /\n", "test/copy:1", context=context)
    assert all(record.name != "docker.io/test/copy:1" for record in Store().records())


def test_copy_lands_through_the_images_own_links(tmp_path, context):
    # A merged-/usr image: /bin links to usr/bin; COPY into /bin/ must not hide the link.
    layout = str(tmp_path / "merged")
    base = builders.busybox_layer()
    merged = builders.tar_of([builders.Entry("usr", "dir", mode=0o755),
                              builders.Entry("usr/local", "dir", mode=0o755),
                              builders.Entry("opt", "symlink", target="usr/local")])
    builders.write_layout(layout, "1", [base, merged], env=["PATH=/bin"])
    result = build(f"FROM oci:{layout}:1\nCOPY --chown=1000:1000 app.txt /opt/\n",
                   "test/links:1", context=context)
    shown = nsmagic.run("readlink /opt; cat /usr/local/app.txt", kind="shell",
                        image=result.image.name)
    assert shown.stdout.split() == ["usr/local", "app", "1"]
    layer = result.image.record.layers[-1]
    with tarfile.open(Store().blob_path(layer.digest)) as tar:
        # --chown is in the layer (only root can apply it when unpacking, here and in podman)
        assert [(m.name, m.uid, m.gid) for m in tar] == [("usr/local/app.txt", 1000, 1000)]


def test_a_python_image_builds_and_runs_the_copied_program(python_layout, tmp_path):
    # This image has no shell: RUN and CMD in their exec (JSON) form.
    context = tmp_path / "python-context"
    context.mkdir()
    (context / "main.py").write_text("import sys\nprint('hello from', sys.argv[1:])\n")
    result = build(f"""FROM oci:{python_layout}:3.11
COPY main.py /app/
RUN ["/usr/bin/python3", "/app/main.py", "at build time"]
RUN ["python3", "-c", "open('/app/saved.txt', 'w').write('saved at build time')"]
CMD ["python3", "/app/main.py", "at run time"]
""", "test/python-app:1", context=str(context))
    command = [sys.executable, "-m", "nsmagic", "run", "--image", result.image.name]
    ran = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert ran.stdout == "hello from ['at run time']\n", ran.stderr
    saved = subprocess.run([*command, "--", "python3", "-c",
                            "print(open('/app/saved.txt').read())"],
                           capture_output=True, text=True, timeout=60)
    assert saved.stdout == "saved at build time\n", saved.stderr


def test_a_build_killed_in_a_run_leaves_nothing_trusted_and_the_next_build_works(busybox,
                                                                                context,
                                                                                tmp_path):
    text = f"FROM {busybox}\nENV STEP=2\nRUN echo started; sleep 60\n"
    script = ("import sys; from nsmagic.images.build import build; "
              "build(sys.argv[1], 'test/killed:1', context=sys.argv[2], "
              "output=lambda s, t: print(t, end='', flush=True))")
    child = subprocess.Popen([sys.executable, "-c", script, text, context],
                             stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        for line in child.stdout:
            if line.strip() == "started":
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(30)
        child.stdout.close()
    store = Store()
    names = {record.name for record in store.records()}
    assert "docker.io/test/killed:1" not in names
    assert any(name.startswith("localhost/nsmagic-build:") for name in names)  # the step's
    assert wait_until(lambda: any("writable layer" in item for item in images.prune()), 10)
    again = build(text.replace("sleep 60", "true"), "test/killed:1", context=context)
    assert again.image.name == "docker.io/test/killed:1"
    assert not any(record.name.startswith("localhost/nsmagic-build:")
                   for record in store.records())


def test_the_containerfile_is_read_as_docker_reads_it():
    steps = parse("# comment\nfrom busybox AS base\n\nRUN echo a \\\n  # inside\n  b\n"
                  'CMD ["echo", "x"]\nENTRYPOINT echo y\n')
    assert [(s.keyword, s.arguments, s.line) for s in steps] == [
        ("FROM", "busybox AS base", 2), ("RUN", "echo a b", 4),
        ("CMD", '["echo", "x"]', 7), ("ENTRYPOINT", "echo y", 8)]
    assert steps[2].command() == ["echo", "x"]
    assert steps[3].command() == ["/bin/sh", "-c", "echo y"]
    env = {"HOME": "/root", "EMPTY": ""}
    assert words('A="$HOME/x y" B=\'$HOME\' C=${EMPTY:-d} D=${HOME:+set} \\$E', env) == [
        "A=/root/x y", "B=$HOME", "C=d", "D=set", "$E"]


@pytest.mark.parametrize("text, message", [
    ("RUN true\n", "starts with RUN on line 1: the first instruction is FROM IMAGE"),
    ("FROM a\nADD x /\n", "ADD is not an instruction nsmagic builds (use COPY"),
    ("FROM a\nFROM b\n", "multi-stage builds are not supported"),
    ("FROM scratch\nCOPY --from=a x /\n", "multi-stage builds are not supported"),
    ("# nothing\n", "has no instructions"),
])
def test_a_containerfile_nsmagic_cannot_build_is_one_sentence(text, message, context):
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        build(text, "test/bad:1", context=context)


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="podman runs rootful here")
@tool("podman")
def test_podman_runs_the_built_image_with_the_same_output(busybox, context,
                                                         podman_dir):  # noqa: F811
    build(containerfile(busybox), "test/built:2", context=context)
    ours = subprocess.run([sys.executable, "-m", "nsmagic", "run", "--image", "test/built:2"],
                          capture_output=True, text=True, timeout=60)
    layout = podman_dir / "exported"
    images.export("test/built:2", f"oci:{layout}:2")
    theirs = podman(podman_dir, "run", f"oci:{layout}:2")
    assert theirs.returncode == 0, theirs.stderr
    assert theirs.stdout == ours.stdout == "built hello\napp 1\na\n"
