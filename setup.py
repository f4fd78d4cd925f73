"""Builds nsmagic's one native helper with the package: nsmagic-init, a container's pid 1
once its payload runs (nsmagic/native/nsmagic-init.c). Without a C compiler the package
still installs and works, with pid 1 staying a Python process (more memory per container).
"""

from __future__ import annotations

import os
import sys
import tempfile

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

SOURCE = os.path.join("nsmagic", "native", "nsmagic-init.c")
EXECUTABLE = "nsmagic-init"


def build_native_init(output_dir: str) -> bool:
    """Compile nsmagic-init into output_dir: static if the C library allows (it then runs
    in any root filesystem), else dynamic; False when there is no working compiler."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CCompilerError, DistutilsExecError
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    os.makedirs(output_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            objects = compiler.compile([SOURCE], output_dir=scratch, extra_postargs=["-Os"])
        except (CCompilerError, DistutilsExecError) as error:
            print(f"nsmagic: not building {EXECUTABLE} ({error}): pid 1 stays a Python "
                  "process", file=sys.stderr)
            return False
        for link_options in (["-static", "-s"], ["-s"]):
            try:
                compiler.link_executable(objects, EXECUTABLE, output_dir=output_dir,
                                         extra_postargs=link_options)
                return True
            except (CCompilerError, DistutilsExecError) as error:
                print(f"nsmagic: linking {EXECUTABLE} with {link_options} failed ({error})",
                      file=sys.stderr)
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
