"""Builds nsmagic's one native helper with the package: nsmagic-init, a container's pid 1
once its payload runs (nsmagic/native/nsmagic-init.c). Without a C compiler the package
still installs and works, with pid 1 staying a Python process (more memory per container).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

SOURCE = os.path.join("nsmagic", "native", "nsmagic-init.c")
EXECUTABLE = "nsmagic-init"
# Static first: the program then runs in any root filesystem (a container's --rootfs).
LINK_OPTIONS = (["-static", "-s"], ["-s"])


def c_compiler() -> list[str]:
    """The C compiler command: $CC, else the one this Python was built with, else cc."""
    return shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")


def build_native_init(output_dir: str) -> bool:
    """Compile nsmagic-init into output_dir: static if the C library allows, else dynamic;
    False, saying why on stderr, when there is no working compiler."""
    os.makedirs(output_dir, exist_ok=True)
    target = os.path.join(output_dir, EXECUTABLE)
    # Linked beside the target, then renamed over it: a running container's pid 1 may be
    # executing the old one (writing into it would fail with ETXTBSY).
    scratch = f"{target}.building"
    flags = ["-Os", "-Wall", *shlex.split(os.environ.get("CFLAGS", ""))]
    linker_flags = shlex.split(os.environ.get("LDFLAGS", ""))
    try:
        for link_options in LINK_OPTIONS:
            argv = [*c_compiler(), *flags, SOURCE, "-o", scratch, *link_options, *linker_flags]
            try:
                completed = subprocess.run(argv, capture_output=True, text=True, check=False)
            except OSError as error:  # no compiler at all
                print(f"nsmagic: not building {EXECUTABLE} ({error}): pid 1 stays a Python "
                      "process", file=sys.stderr)
                return False
            if completed.returncode == 0:
                os.replace(scratch, target)
                return True
            print(f"nsmagic: {shlex.join(argv)} failed: {completed.stderr.strip()[-2000:]}",
                  file=sys.stderr)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
    print(f"nsmagic: not building {EXECUTABLE}: pid 1 stays a Python process", file=sys.stderr)
    return False


class BuildPyWithNativeInit(build_py):
    """build_py, plus nsmagic-init: into the source tree for an editable install (the package
    is imported from there), into the build directory otherwise."""

    def run(self) -> None:
        super().run()
        editable = getattr(self, "editable_mode", False)
        target = os.path.join("nsmagic", "native") if editable else os.path.join(
            self.build_lib, "nsmagic", "native")
        build_native_init(target)


class DistributionWithExecutable(Distribution):
    """A wheel that holds a compiled program is for one platform, not py3-none-any."""

    def has_ext_modules(self) -> bool:
        return True


setup(cmdclass={"build_py": BuildPyWithNativeInit}, distclass=DistributionWithExecutable)
