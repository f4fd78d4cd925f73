"""Containers of an image (--image): the image's layers stacked with overlayfs are the root,
under a private writable layer; the image's Env, WorkingDir, User, Entrypoint and Cmd are
honoured; a Python cell runs under the image's own python3. Images are built locally
(tests/images/builders.py: busybox from Debian's busybox-static, python3.11 from Debian's
packages) as OCI layouts, never downloaded from a registry."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile

import pytest

import nsmagic
from nsmagic.runtime.named import ContainerManager
from nsmagic.runtime.options import build_spec

from ..images import builders


@pytest.fixture(scope="module", autouse=True)
def image_store(tmp_path_factory):
    """A store of this module's own (not the user's), readable by the user namespace."""
    store = tmp_path_factory.mktemp("store")
    os.chmod(store, 0o755)
    before = os.environ.get("NSMAGIC_IMAGE_STORE")
    os.environ["NSMAGIC_IMAGE_STORE"] = str(store)
    yield str(store)
    if before is None:
        del os.environ["NSMAGIC_IMAGE_STORE"]
    else:
        os.environ["NSMAGIC_IMAGE_STORE"] = before


@pytest.fixture(scope="module")
def busybox(tmp_path_factory) -> str:
    """oci:... of a busybox image with an Env, a WorkingDir and an Entrypoint/Cmd."""
    layout = str(tmp_path_factory.mktemp("layouts") / "busybox")
    extra = builders.tar_of([builders.Entry("srv", "dir", mode=0o755),
                             builders.Entry("srv/hello", "file", b"from the image\n")])
    builders.write_layout(layout, "1", [builders.busybox_layer(), extra],
                          env=["PATH=/bin:/sbin", "GREETING=hello"],
                          extra_config={"WorkingDir": "/srv", "Entrypoint": ["/bin/echo"],
                                        "Cmd": ["default", "cmd"]})
    return f"oci:{layout}:1"


@pytest.fixture(scope="module")
def python_image() -> str:
    """oci:... of a Debian python3.11 image with its standard library (cached)."""
    final = os.path.join(builders.cache_dir(), "python-stdlib-image-layout")
    if not os.path.exists(os.path.join(final, "index.json")):
        work = tempfile.mkdtemp(dir=builders.cache_dir(), prefix=".python-stdlib-")
        try:
            base = builders.tar_of_directory(builders._deb_tree(
                ("libc6", "libgcc-s1", "zlib1g", "libexpat1", "libssl3", "libffi8"),
                os.path.join(work, "base")))
            top_root = builders._deb_tree(("libpython3.11-minimal", "python3.11-minimal",
                                           "libpython3.11-stdlib"), os.path.join(work, "top"))
            os.symlink("python3.11", os.path.join(top_root, "usr", "bin", "python3"))
            builders.write_layout(os.path.join(work, "layout"), "3.11",
                                  [base, builders.tar_of_directory(top_root)],
                                  cmd=["/usr/bin/python3"],
                                  env=["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"])
            os.rename(os.path.join(work, "layout"), final)
        except (subprocess.CalledProcessError, OSError) as error:
            pytest.skip(f"cannot build the python image here ({error})")
    return f"oci:{final}:3.11"


def run_ok(code: str, **options) -> nsmagic.ContainerResult:
    result = nsmagic.run(code, **options)
    assert result.ok, (result.describe(), result.stdout, result.stderr, result.exception)
    return result


def test_the_root_is_the_images_layers_not_the_host(busybox):
    out = run_ok("ls /; cat /srv/hello; test -e /etc/os-release || echo no-host-files; pwd;"
                 " echo $GREETING", kind="shell", image=busybox).stdout.split()
    assert "bin" in out and "srv" in out and "work" not in out
    assert out[-4:] == ["image", "no-host-files", "/srv", "hello"]


def test_writes_go_to_a_private_layer_and_the_images_layers_stay_byte_identical(busybox):
    layers = build_spec(image=busybox).spec.image_layers
    before = _digest_of(layers)
    first = run_ok("echo changed > /srv/hello; echo new > /srv/new; cat /srv/hello",
                   kind="shell", image=busybox)
    second = run_ok("cat /srv/hello; test -e /srv/new || echo no-new", kind="shell",
                    image=busybox)
    assert first.stdout.split() == ["changed"]
    assert second.stdout.split() == ["from", "the", "image", "no-new"]
    assert _digest_of(layers) == before


def test_the_images_user_is_honoured_and_user_overrides_it(busybox):
    assert run_ok("id -u", kind="shell", image=busybox).stdout.strip() == "0"
    result = nsmagic.run("id -u", kind="shell", image=busybox, user="1000")
    if os.geteuid() == 0:  # a range of the container's own is mapped
        assert result.ok and result.stdout.strip() == "1000", result.stderr
    else:  # only the user itself, as root inside: said in one line
        assert result.exit_code == 126
        assert "cannot run as user 1000: that id is not mapped" in result.stderr


def test_a_python_cell_runs_under_the_images_own_python(python_image):
    result = run_ok("import sys, os\nprint(sys.executable, sys.prefix, os.getcwd())\n"
                    "total = sum(numbers)", image=python_image,
                    inputs={"numbers": [1, 2, 3]}, outputs=["total"])
    assert result.stdout.split() == ["/usr/bin/python3", "/usr", "/"]
    assert result.outputs == {"total": 6}


def test_a_python_cells_traceback_names_the_cells_line(python_image):
    result = nsmagic.run("x = 1\n1 / 0\n", image=python_image, filename="cell", first_line=1)
    assert result.exception is not None and result.exception.type == "ZeroDivisionError"
    assert 'File "cell", line 2' in "".join(result.exception.traceback)


def test_an_image_without_python_says_so_in_one_sentence(busybox):
    with pytest.raises(nsmagic.SpecError) as raised:
        nsmagic.run("print(1)", image=busybox)
    message = str(raised.value)
    assert "has no python3" in message and "%%container bash --image" in message
    assert message.count(". ") == 0


def test_a_named_container_of_an_image_keeps_its_variables(python_image):
    manager = ContainerManager()
    try:
        box = manager.start("imgbox", build_spec(image=python_image, name="imgbox").spec)
        box.exec("value = 21")
        seen = []
        result = box.exec("import sys\nprint(value * 2, sys.executable)",
                          on_stdout=seen.append)
        assert result.ok and "".join(seen).split() == ["42", "/usr/bin/python3"]
    finally:
        manager.close_all()


def test_nsmagic_run_runs_the_images_entrypoint_and_cmd(busybox):
    command = [sys.executable, "-m", "nsmagic", "run", "--image", busybox]
    default = subprocess.run(command, capture_output=True, text=True, timeout=60)
    given = subprocess.run([*command, "--", "given", "args"], capture_output=True, text=True,
                           timeout=60)
    assert (default.returncode, default.stdout) == (0, "default cmd\n"), default.stderr
    assert (given.returncode, given.stdout) == (0, "given args\n"), given.stderr


def test_an_unknown_image_is_one_sentence():
    with pytest.raises(nsmagic.SpecError, match="--image oci:/nsmagic-no-such-layout"):
        nsmagic.run("pass", kind="shell", image="oci:/nsmagic-no-such-layout:1")


def _digest_of(directories: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for directory in directories:
        for parent, folders, files in sorted(os.walk(directory)):
            folders.sort()
            for name in sorted(files):
                path = os.path.join(parent, name)
                digest.update(path.encode())
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as handle:
                        digest.update(handle.read())
    return digest.hexdigest()
